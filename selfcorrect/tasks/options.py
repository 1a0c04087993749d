"""Task options: one declaration per option, read by the task, the checker and the help text.

Each task module declares its options as a tuple of `Option`s. That tuple is the single source
of truth: `resolve` checks a user's options against it (unknown or renamed names, types,
ranges) and fills in defaults, and `describe` turns it into the lines `options_help()` prints.

Options arrive from Python (real types), from YAML (real types) or from the command line
(`--task.options.timeout_s 5`, always a string), so a string given for a non-string option is
read as a YAML scalar first ("5" -> 5, "true" -> True, "null" -> None, "[2, 3]" -> [2, 3]).
"""

from __future__ import annotations

import os
import textwrap
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

KINDS = ("str", "path", "int", "float", "bool", "int-list")


@dataclass(frozen=True)
class Option:
    """One task option.

    kind: "str", "path" (a str or os.PathLike, kept as str), "int", "float" (an int is fine),
        "bool", or "int-list".
    nullable: None is a legal value (and then means what `help` says).
    choices: the legal values, when there are few.
    positive / at_least: range checks for numbers (> 0, >= at_least).
    """

    name: str
    kind: str
    default: Any
    help: str
    nullable: bool = False
    choices: tuple = ()
    positive: bool = False
    at_least: float | None = None

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"Option {self.name!r}: unknown kind {self.kind!r}; expected one of {KINDS}")

    @property
    def type_text(self) -> str:
        """The type as a user reads it: "float > 0", "int >= 0", "str or None", "one of a, b"."""
        text = "one of " + ", ".join(map(str, self.choices)) if self.choices else self.kind
        if self.positive:
            text += " > 0"
        elif self.at_least is not None:
            text += f" >= {self.at_least:g}"
        return text + (" or None" if self.nullable else "")


# ----------------------------------------------------------------------------- the options every verifier shares


def verifier_options(*, timeout_reward: float | None, timeout_means: str, auto_workers: str,
                     memory_means: str) -> tuple[Option, ...]:
    """timeout_s, workers, memory_mb, timeout_reward: the same names, types and meaning in
    every task that runs a verifier outside the training process; only defaults and the
    one-line detail of what runs differ."""
    return (
        Option("timeout_s", "float", 10.0, f"seconds per check ({timeout_means})", positive=True),
        Option("workers", "int", 0, f"verifier processes; 0 = automatic, {auto_workers}", at_least=0),
        Option("memory_mb", "int", 2048, f"memory limit per verifier process, MB ({memory_means})", positive=True),
        Option("timeout_reward", "float", timeout_reward,
               "reward of a check past timeout_s; None = excluded from training, counted",
               nullable=True, choices=(0.0,)),
    )


# ----------------------------------------------------------------------------- checking


def resolve(task: str, options: Iterable[Option], given: Mapping[str, Any] | None,
            renamed: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Every option's value: the given one, checked and converted, else the default.

    Raises ValueError (one line, naming the task and the option) for an unknown or renamed
    name, a wrong type or a value out of range.
    """
    specs = {spec.name: spec for spec in options}
    given = dict(given or {})
    for key in given:
        if renamed and key in renamed:
            raise ValueError(f"task {task!r}: option {key!r} was renamed; use {renamed[key]!r}")
        if key not in specs:
            raise ValueError(f"task {task!r}: unknown option {key!r}; options: {', '.join(specs)}")
    return {name: convert(task, spec, given[name]) if name in given else spec.default
            for name, spec in specs.items()}


def convert(task: str, spec: Option, value: Any) -> Any:
    """`value` as the option's kind, or ValueError naming the task, the option and the value."""
    if isinstance(value, str) and spec.kind not in ("str", "path"):
        value = _yaml_scalar(value)
    if value is None:
        if spec.nullable:
            return None
        raise ValueError(f"task {task!r}: option {spec.name} must be {spec.type_text}, got None")
    converted = _as_kind(spec.kind, value)
    if converted is None:
        raise ValueError(f"task {task!r}: option {spec.name} must be {spec.type_text}, "
                         f"got {value!r} ({type(value).__name__})")
    if spec.choices and converted not in spec.choices:
        raise ValueError(f"task {task!r}: option {spec.name} must be {spec.type_text}, got {value!r}")
    if spec.positive and not converted > 0:
        raise ValueError(f"task {task!r}: option {spec.name} must be > 0, got {value!r}")
    if spec.at_least is not None and not converted >= spec.at_least:
        raise ValueError(f"task {task!r}: option {spec.name} must be >= {spec.at_least:g}, got {value!r}")
    return converted


def _yaml_scalar(text: str) -> Any:
    """A command-line string read the way the config file would read it."""
    import yaml

    try:
        return yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError:
        return text  # left as a string: the type check names it


def _as_kind(kind: str, value: Any) -> Any:
    """The value converted to `kind`, or None when it is not one (bool is never a number)."""
    if kind == "str":
        return value if isinstance(value, str) else None
    if kind == "path":
        return os.fspath(value) if isinstance(value, (str, os.PathLike)) else None
    if kind == "bool":
        return value if isinstance(value, bool) else None
    if isinstance(value, bool):
        return None
    if kind == "int":
        return value if isinstance(value, int) else None
    if kind == "float":
        return float(value) if isinstance(value, (int, float)) else None
    if isinstance(value, (list, tuple)) and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        return tuple(value)  # int-list
    return None


# ----------------------------------------------------------------------------- help text


def describe(options: Iterable[Option], width: int = 98) -> list[str]:
    """Lines describing each option: "name (type, default D): meaning", wrapped at `width`
    with continuation lines indented, so a terminal shows it without ragged wrapping."""
    lines = []
    for spec in options:
        text = f"{spec.name} ({spec.type_text}, default {default_text(spec.default)}): {spec.help}"
        lines += textwrap.wrap(text, width, subsequent_indent="    ", break_on_hyphens=False)
    return lines


def default_text(value: Any) -> str:
    """A default as help text shows it: long strings shortened."""
    if isinstance(value, str):
        return repr(value) if len(value) <= 24 else repr(value[:21] + "...")
    if isinstance(value, tuple):
        return str(list(value))
    return str(value)
