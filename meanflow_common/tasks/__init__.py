"""Training tasks: one `Task` object per task (`base.py`), looked up by name (`registry.py`).

Built-ins: `digits.py` (class-conditional DiT on 8x8 digits), `reach.py` (FLOWER policy on
the point-robot demonstrations). A new task is a `Task` with its data, presets, checks,
evaluation and per-backend hooks, passed to `register_task`; the trainers need no edit
(docs/TRAINING.md, "Your own training task").
"""
from meanflow_common.tasks.base import EvalOptions, Task
from meanflow_common.tasks.registry import (get_dataset, get_task, register_task, registered_tasks, task_names,
                                            unregister_task)
from meanflow_common.tasks import digits, reach  # noqa: E402,F401  the built-ins register themselves

__all__ = ["Task", "EvalOptions", "get_task", "get_dataset", "register_task", "registered_tasks", "task_names",
           "unregister_task"]
