"""The task registry: `TrainConfig.task` names a `Task` registered here.

The built-in tasks ("digits", "reach") register themselves exactly as a user's task does,
`register_task(TASK)`, when their modules are imported; the registry imports them on its
first lookup rather than at import time, because their data sets and evaluators sit above
this module (`meanflow_common.data` looks tasks up here).
"""
from __future__ import annotations

import importlib

from meanflow_common.tasks.base import Task

__all__ = ["register_task", "unregister_task", "get_task", "registered_tasks", "task_names"]

_BUILTIN_MODULES = ("meanflow_common.tasks.digits", "meanflow_common.tasks.reach")
_REGISTRY: dict[str, Task] = {}


def _load_builtins() -> tuple[Task, ...]:
    """The built-in Tasks (their modules register them when first imported)."""
    return tuple(v for m in _BUILTIN_MODULES for v in vars(importlib.import_module(m)).values()
                 if isinstance(v, Task))


def register_task(task: Task, *, replace_existing: bool = False) -> Task:
    """Make `task` known by its name (`TrainConfig(task=name)`, `get_task`). Returns `task`.

    A name already taken by another Task is refused unless replace_existing.
    """
    if not isinstance(task, Task):
        raise TypeError(f"register_task needs a meanflow_common.tasks.Task, got {type(task).__name__}")
    old = _REGISTRY.get(task.name)
    if old is not None and old is not task and not replace_existing:
        raise ValueError(f"a task named {task.name!r} is already registered; pass replace_existing=True to replace it")
    _REGISTRY[task.name] = task
    return task


def unregister_task(task) -> None:
    """Forget a registered task (by name or Task); the built-ins stay."""
    name = task.name if isinstance(task, Task) else task
    if name in {t.name for t in _load_builtins()}:
        raise ValueError(f"the built-in task {name!r} cannot be unregistered")
    _REGISTRY.pop(name, None)


def registered_tasks() -> dict[str, Task]:
    """{name: Task}, the built-ins first."""
    _load_builtins()
    return dict(_REGISTRY)


def task_names() -> tuple[str, ...]:
    return tuple(registered_tasks())


def get_task(task) -> Task:
    """The registered Task named `task` (a Task is returned as it is); ValueError naming the
    registered tasks for an unknown name."""
    if isinstance(task, Task):
        return task
    if isinstance(task, str) and task in _REGISTRY:  # the trainers ask often: no import on this path
        return _REGISTRY[task]
    _load_builtins()
    if not isinstance(task, str) or task not in _REGISTRY:
        raise ValueError(f"unknown task {task!r}; registered: {', '.join(_REGISTRY)} "
                         "(add one with meanflow_common.tasks.register_task)")
    return _REGISTRY[task]
