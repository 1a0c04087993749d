"""Task registry: a task name from the config → the module that builds it.

Imports are lazy so that `selfcorrect eval --task arithmetic` does not load sympy or the
sandbox. A user's own task is the "custom" task (docs/TASKS.md) or any `Task` subclass passed
to the Python API directly.
"""

from __future__ import annotations

import importlib

from .base import Problem, Task, Verdict

_MODULES = {
    "arithmetic": "selfcorrect.tasks.arithmetic",
    "math": "selfcorrect.tasks.math",
    "math500": "selfcorrect.tasks.math",
    "gsm8k": "selfcorrect.tasks.math",
    "humaneval": "selfcorrect.tasks.code",
    "mbpp": "selfcorrect.tasks.code",
    "custom": "selfcorrect.tasks.custom",
}

TASK_NAMES = tuple(_MODULES)


def build_task(name: str, options: dict | None = None) -> Task:
    """Build a task by name; `options` are the task's keyword options (see docs/TASKS.md)."""
    if name not in _MODULES:
        raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(TASK_NAMES)}")
    module = importlib.import_module(_MODULES[name])
    try:
        return module.build(name, **(options or {}))
    except TypeError as exc:  # an unknown option name: say which task rejected it
        raise ValueError(f"task {name!r}: bad options {sorted(options or {})}: {exc}") from exc


__all__ = ["Problem", "Task", "Verdict", "build_task", "TASK_NAMES"]
