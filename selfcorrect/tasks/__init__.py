"""Task registry: a task name from the config → the module that builds it.

Imports are lazy so that `selfcorrect eval --task arithmetic` does not load sympy or the
sandbox. A user's own task is the "custom" task (docs/TASKS.md) or any `Task` subclass passed
to the Python API directly.

Every task module declares its options once (`options_for(name)`, a tuple of
`options.Option`); building a task checks the given options against that declaration, and
`options_help()` / `options_table()` print it, so the help and the docs cannot drift.
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


def _module(name: str):
    if name not in _MODULES:
        raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(TASK_NAMES)}")
    return importlib.import_module(_MODULES[name])


def eval_data_option(name: str) -> str:
    """The option that names a task's local evaluation data (what `--data` sets): code tasks
    read one file holding every problem, the others a file per split."""
    if name not in _MODULES:
        raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(TASK_NAMES)}")
    names = {o.name for o in task_options(name)}
    for option in ("test_path", "data_path"):
        if option in names:
            return option
    raise ValueError(f"task {name!r} reads no local data file; --data does not apply")


def build_task(name: str, options: dict | None = None) -> Task:
    """Build a task by name; `options` are the task's keyword options (see docs/TASKS.md).
    An unknown, renamed or ill-typed option is a one-line ValueError naming the task and it."""
    module = _module(name)
    try:
        return module.build(name, **(options or {}))
    except TypeError as exc:  # a non-string key, or a Task subclass with a fixed signature
        raise ValueError(f"task {name!r}: bad options {sorted(map(str, options or {}))}: {exc}") from exc


def task_options(name: str) -> tuple:
    """The declared options of task `name` (a tuple of `selfcorrect.tasks.options.Option`)."""
    return _module(name).options_for(name)


def options_help() -> str:
    """Every task's options as compact plain text (name, type, default, meaning), one block per
    task, for `selfcorrect train --help`."""
    from .options import describe

    blocks = []
    for name in TASK_NAMES:
        lines = describe(task_options(name))
        blocks.append(f"{name}:\n" + "\n".join("  " + line for line in lines))
    return "Task options (--task.options '{key: value}' or --task.options.KEY VALUE):\n" + "\n".join(blocks)


def options_table(name: str) -> str:
    """Task `name`'s options as a Markdown table (docs/TASKS.md holds these verbatim)."""
    from .options import default_text

    rows = ["| option | type | default | meaning |", "|---|---|---|---|"]
    for spec in task_options(name):
        rows.append(f"| `{spec.name}` | {spec.type_text} | `{default_text(spec.default)}` | "
                    f"{spec.help.replace('|', '/')} |")
    return "\n".join(rows)


#: the rule a record that names none was made under (records predate the first change of a rule)
FIRST_SPLIT_RULE = 1


def split_rule(name: str) -> int | None:
    """The version of a built-in task's train/test split rule, for the tasks whose rule has
    changed (arithmetic: 2 since 2026-12-07, commuted twins in one split), else None. Runs and
    comparison units record it: one made under another rule was trained and scored on other problems."""
    if name == "arithmetic":
        from .arithmetic import SPLIT_RULE

        return SPLIT_RULE
    return None


__all__ = ["FIRST_SPLIT_RULE", "Problem", "Task", "Verdict", "build_task", "options_help", "options_table",
           "split_rule", "task_options", "TASK_NAMES"]
