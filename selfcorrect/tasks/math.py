"""Math tasks: MATH (train; or PRM800K's 12k training split), MATH500 and GSM8K.

Data comes from a local JSONL / Parquet file per split (`train_path`, `test_path`) or a
Hugging Face dataset: by default the standard one for the task and split (HUB_DEFAULTS; needs
the `datasets` package and a network once, then its cache), or `hf_id` (a hub id, or a local
folder written by `save_to_disk`). Splits per task name:

    "math"    train: MATH train (EleutherAI/hendrycks_math, 7 subjects, 7,500 problems)
              test: MATH500 (HuggingFaceH4/MATH-500)
    "math500" test: MATH500 only
    "gsm8k"   train / test (openai/gsm8k, config "main")

The MATH text is under a takedown claim by AoPS (the original hendrycks/competition_math
copy was disabled in 2025); the default ids are the mirrors most evaluation code uses today.

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
from selfcorrect.tasks.options import Option, resolve, verifier_options
from selfcorrect.tasks.rows import HubSource, read_hf, read_rows
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

MATH_SUBJECTS = ("algebra", "counting_and_probability", "geometry", "intermediate_algebra", "number_theory",
                 "prealgebra", "precalculus")
MATH500 = HubSource("HuggingFaceH4/MATH-500")
GSM8K = HubSource("openai/gsm8k", ("main",))
#: (task, split) -> the dataset read when neither {split}_path nor hf_id is given.
HUB_DEFAULTS = {
    ("math", "train"): HubSource("EleutherAI/hendrycks_math", MATH_SUBJECTS),
    ("math", "test"): MATH500,
    ("math500", "test"): MATH500,
    ("gsm8k", "train"): GSM8K,
    ("gsm8k", "test"): GSM8K,
}
#: Old option names and their new ones (rejected with a message naming the new one).
RENAMED = {"max_memory_mb": "memory_mb"}


def options_for(name: str) -> tuple[Option, ...]:
    """The options of task `name` ("math", "math500" or "gsm8k"): the single source of truth
    for checking them, their defaults and the help text."""
    if name not in NAMES:
        raise ValueError(f"unknown math task {name!r}; expected one of {NAMES}")
    sources = {split: HUB_DEFAULTS[(name, split)] for split in _SPLITS[name]}
    standard = (str(sources[_SPLITS[name][0]]) if len(set(sources.values())) == 1
                else "; ".join(f"{split}: {source}" for split, source in sources.items()))
    paths = tuple(Option(f"{split}_path", "path", None, f"local .jsonl[.gz] / .parquet file of the {split} split",
                         nullable=True) for split in _SPLITS[name])
    return paths + (
        Option("hf_id", "str", None, "Hugging Face dataset id or save_to_disk folder for the splits without "
               f"a file; None = {standard}", nullable=True),
        Option("hf_config", "str", None, "config(s) of hf_id, comma-separated", nullable=True),
        Option("prompt", "str", MATH_PROMPT, "first turn (the paper's); the problem follows it, or "
               "replaces {question} if present"),
        Option("correction_instruction", "str", MATH_CORRECTION, "the turn-2 instruction (the paper's)"),
    ) + verifier_options(timeout_reward=None, timeout_means="math-verify in a worker, killed 0.5 s later",
                         auto_workers="min(4, CPUs)", memory_means="what a check may add")


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
    options: see `options_for(name)` (docs/TASKS.md has them as tables): local files per split,
    or a Hugging Face dataset (the standard one by default); the prompts; and the verifier's
    timeout_s, workers, memory_mb and timeout_reward.
    """

    # Self-Refine prompts: the answer form of the task's own prompts (docs/SELF_REFINE.md)
    feedback_prompt = (
        "Review the solution above step by step and point out any errors in its reasoning or "
        "calculations. Do not rewrite the solution yet. If the solution and its final answer are "
        'correct, end your feedback with "{marker}".')
    refine_prompt = (
        "Using your feedback above, rewrite the solution, correcting the errors it found. Only "
        "output the final solution! At the end of the Solution, when you give your final answer, "
        'write it in the form "Final Answer: The final answer is $answer$. I hope it is correct."')

    def __init__(self, name: str = "math", **options):
        if name == "math500" and "train_path" in options:
            raise ValueError("task 'math500' has only a test split; train_path is not used (use task 'math')")
        opts = resolve(name, options_for(name), options, RENAMED)
        for key in ("prompt", "correction_instruction"):
            if not opts[key].strip():
                raise ValueError(f"task {name!r}: option {key} must be a non-empty string")
        self.name = name
        self.paths = {split: opts.get(f"{split}_path") for split in ("train", "test")}
        self.hf_id, self.hf_config = opts["hf_id"], opts["hf_config"]
        self.prompt = opts["prompt"]
        self.correction_instruction = opts["correction_instruction"]
        self.timeout_s = opts["timeout_s"]
        self.workers = opts["workers"]
        self.memory_mb = opts["memory_mb"]
        self.timeout_reward = opts["timeout_reward"]
        #: counts over the task's life: checks, correct, wrong_answer, no_answer, timeout,
        #: verifier_error, rejected, exact, string_match, sympy, cache_hit, skipped_rows
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
        else:
            hub = self.hub_source(split)
            source = f"hf:{hub.id}[{split}]"
            rows = read_hf(hub, split=split)
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

    def hub_source(self, split: str) -> HubSource:
        """The Hugging Face dataset read for `split` when it has no local file."""
        if self.hf_id is not None:
            return HubSource.from_options(self.hf_id, self.hf_config)
        return HUB_DEFAULTS[(self.name, split)]

    def _math_row(self, row: dict, where: str, split: str, number: int) -> Problem | None:
        question = _field(row, "problem", where)
        if "answer" in row and row["answer"] is not None:
            answer = _field(row, "answer", where).strip()
        elif "solution" in row:  # Hendrycks-style rows: the answer is the solution's last box
            answer = math_answers.reference_from_solution(_field(row, "solution", where)) or ""
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
            self._pool = VerifierPool(self.workers or None, preload=("math_verify",),
                                      initializer=math_answers.warmup, max_memory_mb=self.memory_mb)
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
                    verdict = Verdict(self.timeout_reward, answer, TIMEOUT, result.detail)
                else:
                    verdict = Verdict(None, answer, VERIFIER_ERROR, f"{result.error}: {result.detail}")
                for i in jobs[(gold, answer)]:
                    verdicts[i] = verdict

        failed = Counter(v.reason for v in verdicts if v.reward is None)
        for v in verdicts:
            self.stats[v.reason] += 1
        self.stats["checks"] += len(verdicts)
        if failed:
            logger.warning("task %s: %d of %d answers could not be verified (%s); they are excluded from training "
                           "and count as not correct in evaluation (n_verifier_failed)",
                           self.name, sum(failed.values()), len(verdicts), dict(failed))
        return verdicts  # type: ignore[return-value]  # every slot is filled

    def _decide_cheaply(self, gold: str, response: str, jobs: dict, i: int) -> Verdict | None:
        """A verdict without sympy when one is possible; else queue the check and return None."""
        answer = math_answers.extract_answer(response)
        if answer is None:
            return Verdict(0.0, None, NO_ANSWER)
        exact = math_answers.exact_compare(gold, answer)
        if exact is not None:  # both are plain numbers: decided exactly, whatever their size
            self.stats["exact"] += 1
            return _graded(exact, answer, "exact arithmetic")
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

    # -- majority votes (inference-time scaling) ------------------------------------------

    #: At most this many math-verify checks per problem when grouping answers for a vote;
    #: 496 is every pair of 32 distinct answers (2K = 32 samples at K = 16).
    vote_checks_per_problem: int = 500

    def answer_key(self, extracted: str | None) -> str | None:
        """The cosmetic normal form (math_answers.canonical): \\dfrac12 and \\frac12 share a key."""
        key = math_answers.canonical(extracted) if extracted is not None else ""
        return key or None

    def vote_classes(self, problems: Sequence[Problem], answers: Sequence[Sequence[str | None]],
                     rewards: Sequence[Sequence[float | None]] | None = None) -> list[list[int | None]]:
        """Classes of answers that are equal as mathematics, not only as strings (see Task).

        Two distinct keys (answer_key) join when exact arithmetic finds them equal ("1/2" and
        "\\frac{1}{2}"), when math-verify does (in the worker pool, under the scoring deadline;
        a timeout or error keeps them apart), or when both were scored right (each equals the
        reference). One scored right and one scored wrong never join: the verifier told them
        apart already. Classes are the transitive closure of these pairwise matches.
        Bounded: pairs only among one problem's distinct keys, at most
        `vote_checks_per_problem` of them sent to math-verify (earliest pairs first; the
        rest stay apart); all problems' checks go to the pool at once."""
        plans = []  # per problem: (keys, index of each distinct key, parent of each key)
        jobs: dict[tuple[str, str], list[tuple[int, int, int]]] = {}  # (a, b) -> [(problem, i, j)]

        def find(parent: list[int], i: int) -> int:
            while parent[i] != i:
                parent[i] = parent[parent[i]]
                i = parent[i]
            return i

        def join(parent: list[int], i: int, j: int) -> None:
            parent[max(find(parent, i), find(parent, j))] = min(find(parent, i), find(parent, j))

        for p, row in enumerate(answers):
            keys = [self.answer_key(a) for a in row]
            index: dict[str, int] = {}
            reps: list[str] = []  # the first raw answer of each distinct key
            right: list[float | None] = []  # 1.0 if any sample of the key was right, else 0.0 / None
            for s, key in enumerate(keys):
                if key is None:
                    continue
                if key not in index:
                    index[key] = len(reps)
                    reps.append(row[s].strip())
                    right.append(None)
                reward = rewards[p][s] if rewards is not None else None
                if reward is not None and right[index[key]] != 1.0:
                    right[index[key]] = reward
            parent = list(range(len(reps)))
            checks = 0
            for i in range(len(reps)):
                for j in range(i + 1, len(reps)):
                    if right[i] == right[j] == 1.0:
                        join(parent, i, j)
                        continue
                    if {right[i], right[j]} == {0.0, 1.0}:
                        continue
                    exact = math_answers.exact_compare(reps[i], reps[j])
                    if exact is not None:  # two plain numbers: decided exactly
                        if exact:
                            join(parent, i, j)
                        continue
                    if any(math_answers.reject_reason(x) for x in (reps[i], reps[j])):
                        continue  # an answer sympy might never finish with matches nothing
                    pair = (reps[i], reps[j])
                    cached = self._cache.get(pair, self._cache.get(pair[::-1]))
                    if cached is not None:
                        if cached:
                            join(parent, i, j)
                    elif checks < self.vote_checks_per_problem:
                        checks += 1
                        jobs.setdefault(pair, []).append((p, i, j))
            plans.append((keys, index, parent))

        if jobs:
            results = self._get_pool().map(math_answers.sympy_equivalent, list(jobs), self.timeout_s)
            self.stats["vote_checks"] += len(jobs)
            for pair, result in zip(jobs, results):
                if result.ok:
                    self._remember(*pair, bool(result.value))
                    if result.value:
                        for p, i, j in jobs[pair]:
                            join(plans[p][2], i, j)

        labels: list[list[int | None]] = []
        for keys, index, parent in plans:
            first: dict[int, int] = {}  # class root -> position of its first sample
            labels.append([None if k is None else first.setdefault(find(parent, index[k]), s)
                           for s, k in enumerate(keys)])
        return labels

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
