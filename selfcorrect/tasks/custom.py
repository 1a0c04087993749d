"""Bring your own task: problems from a JSONL file plus a scoring function.

    task:
      name: custom
      options:
        train_path: data/train.jsonl        # one JSON object per line
        test_path: data/test.jsonl
        question_field: question            # defaults shown
        answer_field: answer
        id_field: id                        # optional; the line number otherwise
        scorer: my_package.scoring:score    # or path/to/file.py:score, or exact / last_number / math
        prompt: "{question}"                # first-turn template, any row field may be used
        timeout_s: 10                       # per check; the scorer runs in a killable worker
        correction_instruction: "There might be an error in the solution above. ..."

A scorer is called as `score(problem, response)` with a `Problem` and the model's text, and
returns True/False, 1/0, None (the check itself failed: excluded from training and counted), or
a full `Verdict`. A user's scorer runs in a VerifierPool worker process under a deadline, so a
scorer that hangs, crashes or raises costs one verdict (reward None, reason timeout or
verifier_error, counted in `stats`), never the training run; a return value of another type is
a verifier_error naming the scorer. It is imported once at build time, so a scorer that cannot
be imported fails before any model work. The built-in `exact` and `last_number` are linear
scans and run in process; `math` is the math task's verifier (its own worker pool).
See docs/TASKS.md for a worked example.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import math
import numbers
import re
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Sequence

from .base import CORRECT, NO_ANSWER, TIMEOUT, VERIFIER_ERROR, WRONG_ANSWER, Problem, Task, Verdict
from .options import Option, resolve, verifier_options
from .rows import one_line, read_rows, require_fields

logger = logging.getLogger(__name__)

DEFAULT_INSTRUCTION = ("There might be an error in the solution above because of lack of understanding of the "
                       "question. Please correct the error, if any, and rewrite the solution.")
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def _exact(problem: Problem, response: str) -> Verdict:
    answer = response.strip().splitlines()[-1].strip() if response.strip() else ""
    if not answer:
        return Verdict(0.0, None, NO_ANSWER)
    ok = answer.casefold() == str(problem.reference).strip().casefold()
    return Verdict(1.0 if ok else 0.0, answer, CORRECT if ok else WRONG_ANSWER)


def _last_number(problem: Problem, response: str) -> Verdict:
    found = _NUMBER.findall(response)
    if not found:
        return Verdict(0.0, None, NO_ANSWER)
    ok = float(found[-1]) == float(problem.reference)
    return Verdict(1.0 if ok else 0.0, found[-1], CORRECT if ok else WRONG_ANSWER)


BUILTIN_SCORERS = {"exact": _exact, "last_number": _last_number}


def _require_number(value: Any, field: str, where: str) -> None:
    """last_number compares float(reference): a reference that is not a finite number would make
    every check of the problem a verifier error, so refuse it at load with the line named."""
    try:
        ok = not isinstance(value, bool) and math.isfinite(float(value))
    except (TypeError, ValueError, OverflowError):  # OverflowError: an int past float range
        ok = False
    if not ok:
        raise ValueError(f"{where}: field {field!r} must be a number for scorer last_number, got "
                         f"{type(value).__name__} {value!r:.60}")


OPTIONS = (
    Option("train_path", "path", None, "JSONL file of the train split", nullable=True),
    Option("test_path", "path", None, "JSONL file of the test split", nullable=True),
    Option("scorer", "str", "exact", "module:function, file.py:function, or exact / last_number / math"),
    Option("question_field", "str", "question", "row field holding the question"),
    Option("answer_field", "str", "answer", "row field holding the reference answer (Problem.reference)"),
    Option("id_field", "str", "id", "row field holding the problem id (the line number when absent)"),
    Option("prompt", "str", "{question}", "first-turn template; any row field may be used"),
    Option("system", "str", None, "system message before the first turn", nullable=True),
    Option("correction_instruction", "str", DEFAULT_INSTRUCTION, "the turn-2 instruction"),
) + verifier_options(timeout_reward=None, timeout_means="your scorer in a worker, killed 0.5 s later; "
                     "exact / last_number run in process", auto_workers="min(4, CPUs)",
                     memory_means="what a check may add")


# ----------------------------------------------------------------------------- loading a scorer

_LOADED: dict[str, Callable] = {}  # per process: the worker imports a scorer once


def load_scorer(spec: str) -> Callable:
    """'exact' / 'last_number' / 'module.path:function' / 'path/to/file.py:function'.

    Raises a one-line ValueError naming the scorer when it cannot be imported or is not a
    function, so a typo fails at task build time rather than at the first training step."""
    if spec in BUILTIN_SCORERS:
        return BUILTIN_SCORERS[spec]
    if spec not in _LOADED:
        _LOADED[spec] = _import_scorer(spec)
    return _LOADED[spec]


def _import_scorer(spec: str) -> Callable:
    target, sep, func = spec.rpartition(":")
    if not sep or not target or not func:
        raise ValueError(f"scorer {spec!r}: expected 'module:function', 'file.py:function' or one of "
                         f"{', '.join(sorted(BUILTIN_SCORERS))}, math")
    try:
        module = _import_file(Path(target)) if target.endswith(".py") else importlib.import_module(target)
    except Exception as exc:  # any import failure, including the module's own top-level code
        raise ValueError(f"scorer {spec!r}: cannot import {target}: {type(exc).__name__}: {one_line(exc)}") from None
    fn = getattr(module, func, None)
    if not callable(fn):
        raise ValueError(f"scorer {spec!r}: {target} has no function {func!r}")
    return fn


def _import_file(path: Path):
    if not path.is_file():
        raise FileNotFoundError(f"no file {path}")
    module_spec = importlib.util.spec_from_file_location(f"selfcorrect_user_scorer_{path.stem}", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def _absolute(spec: str) -> str:
    """A file scorer's path made absolute, so the worker finds it whatever its folder."""
    target, sep, func = spec.rpartition(":")
    if sep and target.endswith(".py"):
        return f"{Path(target).expanduser().resolve()}:{func}"
    return spec


# ----------------------------------------------------------------------------- running a scorer


def as_verdict(value: Any, response: str, spec: str) -> Verdict:
    """A scorer's return value as a Verdict; a value of another type is a verifier error that
    names the scorer (a string "yes" or a 0.7 is a bug in the scorer, not a wrong answer)."""
    if isinstance(value, Verdict):
        return value
    if value is None:
        return Verdict(None, None, VERIFIER_ERROR, f"scorer {spec} returned None")
    if type(value).__module__ == "numpy" and hasattr(value, "item"):
        value = value.item()  # numpy.bool_ / numpy.int64 from a vectorised check
    if isinstance(value, (bool, numbers.Real)) and value in (0, 1):
        reward = float(value)
        return Verdict(reward, response, CORRECT if reward else WRONG_ANSWER)
    return Verdict(None, None, VERIFIER_ERROR, f"scorer {spec} returned {value!r:.80} ({type(value).__name__}); "
                   "expected True/False, 1/0, None or a Verdict")


def run_scorer(spec: str, problem: Problem, response: str) -> Verdict:
    """Call a user's scorer and convert its answer; runs inside a VerifierPool worker, so the
    conversion happens there too (an odd return type never has to cross the pipe)."""
    return as_verdict(load_scorer(spec)(problem, response), response, spec)


def preload_scorer(spec: str) -> None:
    """Worker initializer: import the scorer before the first deadline starts."""
    load_scorer(spec)


# ----------------------------------------------------------------------------- the task


class CustomTask(Task):
    """JSONL problems and a scoring function; options in OPTIONS (docs/TASKS.md)."""

    name = "custom"

    def __init__(self, **options):
        opts = resolve("custom", OPTIONS, options)
        self.paths = {"train": opts["train_path"], "test": opts["test_path"]}
        self.fields = (opts["question_field"], opts["answer_field"], opts["id_field"])
        self.prompt, self.system = opts["prompt"], opts["system"]
        self.correction_instruction = opts["correction_instruction"]
        self.timeout_s, self.workers = opts["timeout_s"], opts["workers"]
        self.memory_mb, self.timeout_reward = opts["memory_mb"], opts["timeout_reward"]
        #: counts over the task's life: checks and one per verdict reason
        self.stats: Counter = Counter()
        self._pool = None
        self._math = None
        self.scorer = opts["scorer"]
        if self.scorer == "math":
            from .math import build as build_math  # math-verify equivalence in killable workers

            self._math = build_math("math500", **{k: opts[k] for k in ("timeout_s", "workers", "memory_mb",
                                                                        "timeout_reward")})
        elif self.scorer not in BUILTIN_SCORERS:
            self.scorer = _absolute(self.scorer)
            load_scorer(self.scorer)  # fail now, with the scorer named, if it cannot be imported

    def load(self, split: str) -> list[Problem]:
        if split not in self.paths:
            # only train_path / test_path exist as options: never point at a '<split>_path' option
            raise ValueError(f"custom task: no file for split {split!r}; the custom task has splits 'train' "
                             f"(task option train_path) and 'test' (task option test_path; --data sets it)")
        path = self.paths[split]
        if not path:
            raise ValueError(f"custom task: no file for split {split!r}; set task option {split}_path")
        question, answer, ident = self.fields
        problems = []
        first_line: dict[str, int] = {}  # id -> the line that first used it
        for number, row in read_rows(path):
            require_fields(row, (question, answer), f"{path}:{number}")
            if self.scorer == "last_number":
                _require_number(row[answer], answer, f"{path}:{number}")
            if not isinstance(row[question], (str, int, float)) or isinstance(row[question], bool):
                raise ValueError(f"{path}:{number}: field {question!r} must be text, got "
                                 f"{type(row[question]).__name__} {row[question]!r:.60}")
            ident_value = row.get(ident, number)
            if not isinstance(ident_value, (str, int)) or isinstance(ident_value, bool):
                raise ValueError(f"{path}:{number}: field {ident!r} must be a string or an integer, got "
                                 f"{type(ident_value).__name__}")
            if str(ident_value) in first_line:
                raise ValueError(f"{path}:{number}: duplicate id {str(ident_value)!r} (first on line "
                                 f"{first_line[str(ident_value)]}); ids must be unique within a split")
            first_line[str(ident_value)] = number
            try:
                text = self.prompt.format(**row)
            except KeyError as exc:
                raise ValueError(f"{path}:{number}: prompt template needs field {exc.args[0]!r}") from None
            except (IndexError, ValueError, AttributeError, TypeError) as exc:
                # {info.lvl} on a dict, {answer[0]} on a number, {0}, "{" ...: all the template's fault
                raise ValueError(f"{path}:{number}: prompt template {self.prompt!r} is malformed: {exc}") from None
            meta = {k: v for k, v in row.items() if k not in (answer,)}
            problems.append(Problem(id=str(ident_value), question=text, reference=row[answer], meta=meta))
        if not problems:
            raise ValueError(f"task 'custom' split {split!r}: no problems to evaluate or train on: {path} holds no rows")
        return problems

    def first_turn(self, problem: Problem) -> list[dict]:
        messages = [{"role": "system", "content": self.system}] if self.system else []
        return messages + [{"role": "user", "content": problem.question}]

    def score(self, problems: Sequence[Problem], responses: Sequence[str]) -> list[Verdict]:
        if len(problems) != len(responses):
            raise ValueError(f"score: {len(problems)} problems but {len(responses)} responses")
        if self._math is not None:
            return self._math.score(problems, responses)
        if self.scorer in BUILTIN_SCORERS:
            verdicts = [self._score_in_process(p, r) for p, r in zip(problems, responses)]
        else:
            verdicts = self._score_in_workers(problems, responses)
        self._count(verdicts)
        return verdicts

    def _score_in_process(self, problem: Problem, response: str) -> Verdict:
        try:
            return as_verdict(BUILTIN_SCORERS[self.scorer](problem, response), response, self.scorer)
        except Exception as exc:  # e.g. last_number with a reference that is not a number
            return Verdict(None, None, VERIFIER_ERROR, f"scorer {self.scorer}: {type(exc).__name__}: {exc}")

    def _score_in_workers(self, problems: Sequence[Problem], responses: Sequence[str]) -> list[Verdict]:
        from selfcorrect.verify.workers import TIMEOUT as POOL_TIMEOUT

        items = [(self.scorer, problem, response) for problem, response in zip(problems, responses)]
        verdicts = []
        for result in self._get_pool().map(run_scorer, items, self.timeout_s):
            if result.ok:
                verdicts.append(result.value)
            elif result.error == POOL_TIMEOUT:
                verdicts.append(Verdict(self.timeout_reward, None, TIMEOUT, f"scorer {self.scorer}: {result.detail}"))
            else:  # it raised, or its process died
                verdicts.append(Verdict(None, None, VERIFIER_ERROR,
                                        f"scorer {self.scorer}: {result.error}: {result.detail}"))
        return verdicts

    def _get_pool(self):
        if self._pool is None:
            from functools import partial

            from selfcorrect.verify.workers import VerifierPool

            self._pool = VerifierPool(self.workers or None, initializer=partial(preload_scorer, self.scorer),
                                      max_memory_mb=self.memory_mb)
        return self._pool

    def _count(self, verdicts: list[Verdict]) -> None:
        self.stats["checks"] += len(verdicts)
        self.stats.update(v.reason for v in verdicts)
        failed = Counter(v.reason for v in verdicts if v.reward is None)
        if failed:
            logger.warning("task custom: %d of %d responses could not be scored by %s (%s); they are excluded "
                           "from training and count as not correct in evaluation (n_verifier_failed)",
                           sum(failed.values()), len(verdicts), self.scorer, dict(failed))

    def close(self) -> None:
        """Stop the scorer's worker processes (a later score starts new ones). Safe to call twice."""
        if self._pool is not None:
            self._pool.close()
            self._pool = None
        if self._math is not None:
            self._math.close()


def build(name: str = "custom", **options) -> Task:
    if name != "custom":
        raise ValueError(f"selfcorrect.tasks.custom builds 'custom', not {name!r}")
    return CustomTask(**options)


def options_for(name: str = "custom") -> tuple[Option, ...]:
    """The custom task's options (the single source of truth for checks and help)."""
    return OPTIONS
