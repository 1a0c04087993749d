"""Math tasks: MATH (train; or PRM800K's 12k training split), MATH500 and GSM8K.

Data comes from a local JSONL / Parquet file or, for users who are online, a Hugging Face
datasets id; there is no default location (the MATH text is under a takedown claim, so we do
not fetch it behind the user's back). Splits per task name:

    "math"    train: train_path (MATH train, or PRM800K math_splits/train.jsonl)  test: MATH500
    "math500" test: MATH500 only
    "gsm8k"   train / test

Rows: MATH-style {"problem", "answer"} (or no "answer" but a "solution" whose last \\boxed{}
is the answer), optional "level" (3 or "Level 3"; "Level ?" -> unknown), "subject" or
"type", "unique_id"; GSM8K-style {"question", "answer": "... #### 42"}. A row with an empty
answer (two in MATH train) is skipped with a counted warning; a missing field is an error
naming the file, the line and the field.

Scoring (SCORE.md §1: r ∈ {0, 1}): extract the final answer (math_answers.extract_answer),
refuse pathological answers cheaply, accept cosmetically identical ones in-process, and send
the rest to math-verify in a VerifierPool whose workers are killed at a hard deadline. A
timeout or a verifier failure gives reward None (counted in `stats`, logged, excluded by
the trainer), never 0. Policy for debatable answers: see math_answers.py.
"""

from __future__ import annotations

import logging
from collections import Counter, OrderedDict
from pathlib import Path
from typing import Sequence

from selfcorrect.tasks.base import (
    CORRECT,
    NO_ANSWER,
    TIMEOUT,
    VERIFIER_ERROR,
    WRONG_ANSWER,
    Problem,
    Task,
    Verdict,
)
from selfcorrect.tasks.rows import read_hf, read_rows
from selfcorrect.verify import math_answers
from selfcorrect.verify.workers import TIMEOUT as POOL_TIMEOUT
from selfcorrect.verify.workers import VerifierPool

logger = logging.getLogger(__name__)

# The paper's prompts, verbatim (SCORE.md §1, from the paper's appendix).
MATH_PROMPT = (
    "You are a math expert. When you respond, respond only with the Solution of the final Problem, "
    "thinking step by step. At the end of the Solution, when you give your final answer, write it in "
    'the form "Final Answer: The final answer is $answer$. I hope it is correct."'
)
MATH_CORRECTION = (
    "There might be an error in the solution above because of lack of understanding of the question. "
    "Please correct the error, if any, and rewrite the solution. Only output the final solution! At the "
    "end of the Solution, when you give your final answer, write it in the form "
    '"Final Answer: The final answer is $answer$. I hope it is correct."'
)

NAMES = ("math", "math500", "gsm8k")
_SPLITS = {"math": ("train", "test"), "math500": ("test",), "gsm8k": ("train", "test")}
_CACHE_SIZE = 50_000  # (reference, answer) verdicts kept: k samples often repeat an answer


# ----------------------------------------------------------------------------- reading rows


def _field(row: dict, key: str, where: str) -> str:
    if key not in row or row[key] is None:
        raise ValueError(f"{where}: missing field {key!r} (fields present: {sorted(row)})")
    if isinstance(row[key], (int, float)) and not isinstance(row[key], bool):
        return str(row[key])  # {"answer": 42} is unambiguous
    if not isinstance(row[key], str):
        raise ValueError(f"{where}: field {key!r} must be a string, got {type(row[key]).__name__}")
    return row[key]


def _level(value) -> int | None:
    """3, "3" or "Level 3" -> 3; "Level ?" or anything else -> None (unknown)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        digits = value.removeprefix("Level").strip()
        if digits.isdigit():
            return int(digits)
    return None


# ----------------------------------------------------------------------------- the task


class MathTask(Task):
    """MATH / MATH500 / GSM8K with the paper's prompts and a deadline-guarded verifier.

    name: "math", "math500" or "gsm8k" (which splits exist and how rows are read).
    train_path, test_path: local .jsonl / .parquet files for the splits.
    hf_id, hf_config: a Hugging Face dataset used for every split without a local path
        (e.g. "HuggingFaceH4/MATH-500"; "openai/gsm8k" with hf_config="main").
    prompt: the first-turn instruction; the problem follows after "Problem:". If it contains
        "{question}", it is a template instead and the problem replaces that placeholder.
    correction_instruction: p, the turn-2 instruction (never reveals correctness).
    timeout_s: per-check deadline in the verifier worker (hard kill 0.5 s later).
    workers: verifier processes (default min(4, CPU count)), started on first use.
    max_memory_mb: extra address space a verifier worker may allocate.
    """

    def __init__(
        self,
        name: str = "math",
        *,
        train_path: str | Path | None = None,
        test_path: str | Path | None = None,
        hf_id: str | None = None,
        hf_config: str | None = None,
        prompt: str = MATH_PROMPT,
        correction_instruction: str = MATH_CORRECTION,
        timeout_s: float = 10.0,
        workers: int | None = None,
        max_memory_mb: int | None = 2048,
    ):
        if name not in NAMES:
            raise ValueError(f"unknown math task {name!r}; expected one of {NAMES}")
        if name == "math500" and train_path is not None:
            raise ValueError("task 'math500' has only a test split; train_path is not used (use task 'math')")
        for key, text in (("prompt", prompt), ("correction_instruction", correction_instruction)):
            if not isinstance(text, str) or not text.strip():
                raise ValueError(f"task {name!r}: option {key} must be a non-empty string")
        if not timeout_s or timeout_s <= 0:
            raise ValueError(f"task {name!r}: option timeout_s must be > 0, got {timeout_s!r}")
        if workers is not None and workers < 1:
            raise ValueError(f"task {name!r}: option workers must be >= 1, got {workers!r}")
        self.name = name
        self.paths = {"train": train_path, "test": test_path}
        self.hf_id, self.hf_config = hf_id, hf_config
        self.prompt = prompt
        self.correction_instruction = correction_instruction
        self.timeout_s = float(timeout_s)
        self.workers = workers
        self.max_memory_mb = max_memory_mb
        #: counts over the task's life: checks, correct, wrong_answer, no_answer, timeout,
        #: verifier_error, rejected, string_match, sympy, cache_hit, skipped_rows
        self.stats: Counter = Counter()
        self._pool: VerifierPool | None = None
        self._cache: OrderedDict[tuple[str, str], bool] = OrderedDict()
        self._loaded: dict[str, list[Problem]] = {}

    # -- data -------------------------------------------------------------------------

    def load(self, split: str) -> list[Problem]:
        if split not in _SPLITS[self.name]:
            raise ValueError(f"task {self.name!r} has no split {split!r}; splits: {_SPLITS[self.name]}")
        if split not in self._loaded:
            self._loaded[split] = self._load(split)
        return list(self._loaded[split])

    def _load(self, split: str) -> list[Problem]:
        path = self.paths[split]
        if path is not None:
            source = str(path)
            rows = read_rows(path)
        elif self.hf_id is not None:
            source = f"hf:{self.hf_id}[{split}]"
            rows = read_hf(self.hf_id, self.hf_config, split)
        else:
            raise ValueError(f"task {self.name!r}, split {split!r}: no data source; pass {split}_path="
                             f"<file.jsonl|file.parquet> or hf_id=<Hugging Face dataset id> (there is no default)")
        problems: list[Problem] = []
        seen: dict[str, int] = {}
        skipped: list[int] = []
        for number, row in rows:
            where = f"{source}:{number}"
            read_row = self._gsm8k_row if self.name == "gsm8k" else self._math_row
            problem = read_row(row, where, split, number)
            if problem is None:
                skipped.append(number)
                continue
            if problem.id in seen:
                raise ValueError(f"{where}: id {problem.id!r} already used on line {seen[problem.id]}")
            seen[problem.id] = number
            problems.append(problem)
        if skipped:
            self.stats["skipped_rows"] += len(skipped)
            logger.warning("%s: skipped %d row(s) with an empty answer (lines %s)", source, len(skipped),
                           ", ".join(map(str, skipped[:10])) + (" ..." if len(skipped) > 10 else ""))
        if not problems:
            raise ValueError(f"{source}: no usable problems for task {self.name!r}, split {split!r}")
        return problems

    def _math_row(self, row: dict, where: str, split: str, number: int) -> Problem | None:
        question = _field(row, "problem", where)
        if "answer" in row and row["answer"] is not None:
            answer = _field(row, "answer", where).strip()
        elif "solution" in row:  # Hendrycks-style rows: the answer is the solution's last box
            answer = math_answers.extract_answer(_field(row, "solution", where)) or ""
        else:
            raise ValueError(f"{where}: missing field 'answer' (and no 'solution' to take it from; "
                             f"fields present: {sorted(row)})")
        if not answer:
            return None
        subject = row.get("subject", row.get("type"))
        meta = {"level": _level(row.get("level")), "subject": subject if isinstance(subject, str) else None}
        uid = row.get("unique_id")
        return Problem(id=str(uid) if uid else f"{self.name}/{split}/{number}", question=question,
                       reference=answer, meta=meta)

    def _gsm8k_row(self, row: dict, where: str, split: str, number: int) -> Problem | None:
        question = _field(row, "question", where)
        solution = _field(row, "answer", where)
        answer = math_answers.gsm8k_reference(solution)
        if answer is None:
            raise ValueError(f"{where}: field 'answer' has no '#### <number>' line")
        return Problem(id=f"gsm8k/{split}/{number}", question=question, reference=answer)

    # -- prompts ----------------------------------------------------------------------

    def first_turn(self, problem: Problem) -> list[dict]:
        if "{question}" in self.prompt:
            content = self.prompt.replace("{question}", problem.question)
        else:
            content = f"{self.prompt}\n\nProblem:\n{problem.question}"
        return [{"role": "user", "content": content}]

    # -- scoring ----------------------------------------------------------------------

    def _get_pool(self) -> VerifierPool:
        if self._pool is None:
            self._pool = VerifierPool(self.workers, preload=("math_verify",), initializer=math_answers.warmup,
                                      max_memory_mb=self.max_memory_mb)
        return self._pool

    def score(self, problems: Sequence[Problem], responses: Sequence[str]) -> list[Verdict]:
        if len(problems) != len(responses):
            raise ValueError(f"score: {len(problems)} problems but {len(responses)} responses")
        verdicts: list[Verdict | None] = [None] * len(problems)
        jobs: dict[tuple[str, str], list[int]] = {}
        for i, (problem, response) in enumerate(zip(problems, responses)):
            if not isinstance(response, str):
                raise TypeError(f"score: response {i} must be a string, got {type(response).__name__}")
            if not isinstance(problem.reference, str):
                raise TypeError(f"score: problem {problem.id!r} has a non-string reference {problem.reference!r}")
            verdicts[i] = self._decide_cheaply(problem.reference, response, jobs, i)

        if jobs:
            results = self._get_pool().map(math_answers.sympy_equivalent, list(jobs), self.timeout_s)
            for (gold, answer), result in zip(jobs, results):
                if result.ok:
                    self._remember(gold, answer, bool(result.value))
                    self.stats["sympy"] += len(jobs[(gold, answer)])
                    verdict = _graded(bool(result.value), answer, "math-verify")
                elif result.error == POOL_TIMEOUT:
                    verdict = Verdict(None, answer, TIMEOUT, result.detail)
                else:
                    verdict = Verdict(None, answer, VERIFIER_ERROR, f"{result.error}: {result.detail}")
                for i in jobs[(gold, answer)]:
                    verdicts[i] = verdict

        failed = Counter(v.reason for v in verdicts if v.reward is None)
        for v in verdicts:
            self.stats[v.reason] += 1
        self.stats["checks"] += len(verdicts)
        if failed:
            logger.warning("task %s: %d of %d answers could not be verified (%s); they are excluded, not scored 0",
                           self.name, sum(failed.values()), len(verdicts), dict(failed))
        return verdicts  # type: ignore[return-value]  # every slot is filled

    def _decide_cheaply(self, gold: str, response: str, jobs: dict, i: int) -> Verdict | None:
        """A verdict without sympy when one is possible; else queue the check and return None."""
        answer = math_answers.extract_answer(response)
        if answer is None:
            return Verdict(0.0, None, NO_ANSWER)
        bad_gold = math_answers.reject_reason(gold)
        if bad_gold is not None:
            return Verdict(None, answer, VERIFIER_ERROR, f"reference answer refused by the pre-check: {bad_gold}")
        bad = math_answers.reject_reason(answer)
        if bad is not None:
            self.stats["rejected"] += 1
            return Verdict(0.0, answer, WRONG_ANSWER, f"refused before sympy: {bad}")
        if math_answers.canonical(gold) == math_answers.canonical(answer):
            self.stats["string_match"] += 1
            return Verdict(1.0, answer, CORRECT, "string match")
        key = (gold, answer)
        if key in self._cache:
            self._cache.move_to_end(key)
            self.stats["cache_hit"] += 1
            return _graded(self._cache[key], answer, "math-verify (cached)")
        jobs.setdefault(key, []).append(i)
        return None

    def _remember(self, gold: str, answer: str, equal: bool) -> None:
        self._cache[(gold, answer)] = equal
        if len(self._cache) > _CACHE_SIZE:
            self._cache.popitem(last=False)

    def close(self) -> None:
        """Stop the verifier workers (a later score starts new ones). Safe to call twice."""
        if self._pool is not None:
            self._pool.close()
            self._pool = None


def _graded(equal: bool, answer: str, how: str) -> Verdict:
    return Verdict(1.0, answer, CORRECT, how) if equal else Verdict(0.0, answer, WRONG_ANSWER, how)


def build(name: str = "math", **options) -> MathTask:
    """The task registry's entry point: build("math" | "math500" | "gsm8k", **MathTask options)."""
    if name not in NAMES:
        raise ValueError(f"selfcorrect.tasks.math builds {NAMES}, not {name!r}")
    return MathTask(name, **options)
