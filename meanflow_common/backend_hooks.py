"""One backend's hooks object of a task or a training method, given as the object or as a
"package.module:NAME" string imported on first use (so the owner's module stays framework-free)."""
from __future__ import annotations

import importlib
from typing import Any, Mapping

__all__ = ["resolve_hooks"]


def resolve_hooks(owner: str, hooks: Mapping[str, Any], backend: str):
    """hooks[backend], imported when a "package.module:NAME" string; ValueError naming `owner`
    (e.g. "task 'digits'") when the backend has none or the import fails."""
    if backend not in hooks:
        raise ValueError(f"{owner} has no {backend} hooks (it has: {', '.join(sorted(hooks))})")
    entry = hooks[backend]
    if not isinstance(entry, str):
        return entry
    module, _, attr = entry.partition(":")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"{owner}: cannot load its {backend} hooks {entry!r} ({err})") from err
