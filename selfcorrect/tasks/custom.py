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
        correction_instruction: "There might be an error in the solution above. ..."

A scorer is called as `score(problem, response)` with a `Problem` and the model's text, and
returns True/False, 1/0, None (the check itself failed: excluded from training and counted), or
a full `Verdict`. An exception raised by the scorer counts as None, never as a wrong answer.
See docs/TASKS.md for a worked example.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
from pathlib import Path
from typing import Callable, Sequence

from .rows import read_rows, require_fields
from .base import CORRECT, NO_ANSWER, VERIFIER_ERROR, WRONG_ANSWER, Problem, Task, Verdict

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


def load_scorer(spec: str) -> Callable:
    """'exact' / 'last_number' / 'module.path:function' / 'path/to/file.py:function'."""
    if spec in BUILTIN_SCORERS:
        return BUILTIN_SCORERS[spec]
    target, sep, func = spec.rpartition(":")
    if not sep or not func:
        raise ValueError(f"scorer {spec!r}: expected 'module:function', 'file.py:function' or one of "
                         f"{sorted(BUILTIN_SCORERS)} / math")
    if target.endswith(".py"):
        path = Path(target)
        if not path.exists():
            raise FileNotFoundError(f"scorer file {path} does not exist")
        module_spec = importlib.util.spec_from_file_location(f"selfcorrect_user_scorer_{path.stem}", path)
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
    else:
        module = importlib.import_module(target)
    fn = getattr(module, func, None)
    if not callable(fn):
        raise ValueError(f"scorer {spec!r}: {target} has no function {func!r}")
    return fn


def _as_verdict(value, response: str) -> Verdict:
    if isinstance(value, Verdict):
        return value
    if value is None:
        return Verdict(None, None, VERIFIER_ERROR, "scorer returned None")
    reward = float(value)
    if reward not in (0.0, 1.0):
        raise ValueError(f"scorer returned {value!r}; expected True/False, 1/0, None or a Verdict")
    return Verdict(reward, response, CORRECT if reward else WRONG_ANSWER)


class CustomTask(Task):
    name = "custom"

    def __init__(self, *, train_path: str | None = None, test_path: str | None = None,
                 scorer: str = "exact", question_field: str = "question", answer_field: str = "answer",
                 id_field: str = "id", prompt: str = "{question}", system: str | None = None,
                 correction_instruction: str = DEFAULT_INSTRUCTION):
        self.paths = {"train": train_path, "test": test_path}
        self.fields = (question_field, answer_field, id_field)
        self.prompt, self.system = prompt, system
        self.correction_instruction = correction_instruction
        if scorer == "math":
            from .math import build as build_math  # math-verify equivalence in killable workers

            self._math = build_math("math500")
            self._scorer = None
        else:
            self._math = None
            self._scorer = load_scorer(scorer)

    def load(self, split: str) -> list[Problem]:
        path = self.paths.get(split)
        if not path:
            raise ValueError(f"custom task: no file for split {split!r}; set task option {split}_path")
        question, answer, ident = self.fields
        problems = []
        for number, row in read_rows(path):
            require_fields(row, (question, answer), f"{path}:{number}")
            try:
                text = self.prompt.format(**row)
            except KeyError as exc:
                raise ValueError(f"{path}:{number}: prompt template needs field {exc.args[0]!r}") from exc
            meta = {k: v for k, v in row.items() if k not in (answer,)}
            problems.append(Problem(id=str(row.get(ident, number)), question=text, reference=row[answer], meta=meta))
        return problems

    def first_turn(self, problem: Problem) -> list[dict]:
        messages = [{"role": "system", "content": self.system}] if self.system else []
        return messages + [{"role": "user", "content": problem.question}]

    def score(self, problems: Sequence[Problem], responses: Sequence[str]) -> list[Verdict]:
        if self._math is not None:
            return self._math.score(problems, responses)
        verdicts = []
        for problem, response in zip(problems, responses):
            try:
                verdicts.append(_as_verdict(self._scorer(problem, response), response))
            except Exception as exc:  # a broken scorer must not look like a wrong answer
                verdicts.append(Verdict(None, None, VERIFIER_ERROR, f"{type(exc).__name__}: {exc}"))
        return verdicts

    def close(self) -> None:
        if self._math is not None:
            self._math.close()


def build(name: str = "custom", **options) -> Task:
    return CustomTask(**options)
