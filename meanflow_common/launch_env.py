"""The multi-process launch variables of both trainers, checked before any process joins.

A trainer process is one of several when its launcher set a group of environment
variables: JAX `JAX_COORDINATOR_ADDRESS`, `JAX_NUM_PROCESSES`, `JAX_PROCESS_ID`; torchrun
(or any env:// launch) `MASTER_ADDR`, `MASTER_PORT`, `WORLD_SIZE`, `RANK`. A group set
only in part used to fall back to an ordinary single process, so two hosts with a typo in
one variable trained two independent runs into one folder. Here any partial group is an
error naming the missing variables, and the process id must be an integer in [0, count).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Mapping, Optional

__all__ = ["LaunchEnvError", "LaunchVars", "Launch", "JAX_VARS", "TORCHRUN_VARS", "read_launch"]


class LaunchEnvError(ValueError):
    """The multi-process environment is set in part, or with values that cannot be used."""


@dataclass(frozen=True)
class LaunchVars:
    """The names of one launcher's variables."""

    launcher: str
    address: tuple  # where the processes meet (one or more variables)
    count: str  # number of processes
    rank: str  # this process, 0-based


JAX_VARS = LaunchVars("jax.distributed", ("JAX_COORDINATOR_ADDRESS",), "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")
TORCHRUN_VARS = LaunchVars("torchrun", ("MASTER_ADDR", "MASTER_PORT"), "WORLD_SIZE", "RANK")


@dataclass(frozen=True)
class Launch:
    """A complete multi-process launch: `count` processes, this one `rank`."""

    count: int
    rank: int


def _int(env: Mapping[str, str], name: str) -> int:
    value = env[name].strip()
    try:
        return int(value)
    except ValueError:
        raise LaunchEnvError(f"{name}={env[name]!r} is not an integer") from None


def read_launch(spec: LaunchVars, env: Optional[Mapping[str, str]] = None) -> Optional[Launch]:
    """The launch `spec`'s variables describe; None when none of them is set (one process).

    LaunchEnvError naming the missing variables when only some are set, or the bad value
    when the count is not >= 1 or the rank not in [0, count).
    """
    env = os.environ if env is None else env
    names = (*spec.address, spec.count, spec.rank)
    given = [n for n in names if env.get(n, "") != ""]
    if not given:
        return None
    missing = [n for n in names if n not in given]
    if missing:
        raise LaunchEnvError(
            f"{', '.join(f'{n}={env[n]}' for n in given)} set but {', '.join(missing)} not: a {spec.launcher} "
            f"launch needs all of {', '.join(names)} (set the missing one(s), or unset the others to run as one "
            "process)")
    count, rank = _int(env, spec.count), _int(env, spec.rank)
    if count < 1:
        raise LaunchEnvError(f"{spec.count}={count} must be >= 1")
    if not 0 <= rank < count:
        raise LaunchEnvError(f"{spec.rank}={rank} is out of range for {spec.count}={count} (it must be in "
                             f"[0, {count - 1}])")
    if spec is TORCHRUN_VARS:
        port = _int(env, "MASTER_PORT")
        if not 0 < port < 65536:
            raise LaunchEnvError(f"MASTER_PORT={port} is not a port number (1..65535)")
    return Launch(count=count, rank=rank)
