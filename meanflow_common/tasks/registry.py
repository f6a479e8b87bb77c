"""The task registry: `TrainConfig.task` names a `Task` registered here.

The built-in tasks ("digits", "reach") register themselves exactly as a user's task does,
`register_task(TASK)`, when the package `meanflow_common.tasks` is imported (which importing
this module does first); the registry itself imports no task.
"""
from __future__ import annotations

from meanflow_common.tasks.base import Task

__all__ = ["register_task", "unregister_task", "get_task", "get_dataset", "registered_tasks", "task_names"]

_REGISTRY: dict[str, Task] = {}
_BUILTIN: set[str] = set()


def register_task(task: Task, *, replace_existing: bool = False, builtin: bool = False) -> Task:
    """Make `task` known by its name (`TrainConfig(task=name)`, `get_task`). Returns `task`.

    A name already taken by another Task is refused unless replace_existing.
    """
    if not isinstance(task, Task):
        raise TypeError(f"register_task needs a meanflow_common.tasks.Task, got {type(task).__name__}")
    old = _REGISTRY.get(task.name)
    if old is not None and old is not task and not replace_existing:
        raise ValueError(f"a task named {task.name!r} is already registered; pass replace_existing=True to replace it")
    _REGISTRY[task.name] = task
    if builtin:  # the package's own: never unregistered
        _BUILTIN.add(task.name)
    return task


def unregister_task(task) -> None:
    """Forget a registered task (by name or Task); the built-ins stay."""
    name = task.name if isinstance(task, Task) else task
    if name in _BUILTIN:
        raise ValueError(f"the built-in task {name!r} cannot be unregistered")
    _REGISTRY.pop(name, None)


def registered_tasks() -> dict[str, Task]:
    """{name: Task}, the built-ins first."""
    return dict(_REGISTRY)


def task_names() -> tuple[str, ...]:
    return tuple(registered_tasks())


def get_task(task) -> Task:
    """The registered Task named `task` (a Task is returned as it is); ValueError naming the
    registered tasks for an unknown name."""
    if isinstance(task, Task):
        return task
    if not isinstance(task, str) or task not in _REGISTRY:
        raise ValueError(f"unknown task {task!r}; registered: {', '.join(_REGISTRY)} "
                         "(add one with meanflow_common.tasks.register_task)")
    return _REGISTRY[task]


def get_dataset(task, seed: int = 0):
    """The data set of `task` (a registered task's name, or a `Task`): its `dataset(seed)`
    (`meanflow_common.data.Dataset`). An unknown name is a ValueError naming the registered
    tasks; the seed is checked by the data set."""
    return get_task(task).dataset(seed)
