"""A lock on a run folder, so that one trainer at a time writes it.

The lock is the file `<run_dir>/.lock`, created with O_EXCL and holding
`{"pid", "host"}` of its owner. A second trainer (or `--overwrite` while one runs) is
refused with an error naming the owner. A lock whose owner is gone (same host, the pid no
longer runs) is stale: it is replaced, and the replacement is reported. A lock written on
another host cannot be checked from here and is refused, naming the host and the file.
"""
from __future__ import annotations

import json
import os
import socket
import warnings
from typing import Optional

__all__ = ["LOCK_NAME", "RunLockedError", "RunLock"]

LOCK_NAME = ".lock"


class RunLockedError(FileExistsError):
    """Another trainer holds the run folder."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


class RunLock:
    """`with RunLock(run_dir):` holds the folder's lock (the folder must exist).

    acquire() raises RunLockedError when a live trainer holds it; release() removes the
    file if it is still ours. Not re-entrant: a second acquire of a held folder, even from
    the same process, is refused.
    """

    def __init__(self, run_dir: str):
        self.path = os.path.join(run_dir, LOCK_NAME)
        self._held = False

    def _owner(self) -> Optional[dict]:
        try:
            with open(self.path) as f:
                return json.load(f)
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}  # being written, or garbage: treated as held by an unknown owner

    def acquire(self) -> "RunLock":
        me = {"pid": os.getpid(), "host": socket.gethostname()}
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = self._owner()
                if owner is None:
                    continue  # released in between: try again
                pid, host = owner.get("pid"), owner.get("host")
                if not isinstance(pid, int) or host != me["host"] or _alive(pid):
                    where = f"pid {pid} on {host}" if isinstance(pid, int) else "an unknown trainer"
                    raise RunLockedError(
                        f"{os.path.dirname(self.path)} is in use by another trainer ({where}; lock file "
                        f"{self.path}); wait for it to finish or stop it (delete the lock file only if no "
                        "trainer runs)") from None
                warnings.warn(f"removed a stale lock of {self.path} (pid {pid} is not running)", RuntimeWarning,
                              stacklevel=2)
                try:
                    os.remove(self.path)
                except FileNotFoundError:
                    pass
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            self._held = True
            return self
        raise RunLockedError(f"could not take the lock {self.path}: it keeps changing hands")

    def release(self) -> None:
        if not self._held:
            return
        self._held = False
        owner = self._owner()
        if owner and owner.get("pid") == os.getpid():
            os.remove(self.path)

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
