"""The built-in arithmetic task: offline, generated, checkable in microseconds.

Problems are every `a op b` whose operands have exactly `digits` digits (0..9 for one digit).
The split is by fact, not by problem: a + b and b + a (and a x b, b x a) are one fact, and a
fact's problems always land in the same split, so no test problem's commuted twin is trained on.
Each fact's place comes from a hash of (seed, fact); facts are taken into the held-out test split
in hash order until it holds `n_test` problems (a pair that would overflow it is skipped and goes
to train), the rest are train. Neither split depends on Python's hash seed or on the machine.

Two prompt styles share the problems and the verifier:
- "demo": the compact format the built-in tiny model (demo_model.py) is trained on:
  user "47+38", a short correction instruction, and the answer is the last integer written.
- "chat": natural prompts for real instruct models ("What is 7 * 5? ..."), a correction
  instruction in the spirit of the paper's (it never says whether the first answer was right),
  and the answer is taken from an "Answer: N" line, else the last "= N", else the last number
  that is not an operand (extract_chat_answer says exactly how).
"""

from __future__ import annotations

import hashlib
import re
from typing import Sequence

from selfcorrect.tasks.base import CORRECT, NO_ANSWER, WRONG_ANSWER, Problem, Task, Verdict
from selfcorrect.tasks.options import Option, resolve

STYLES = ("demo", "chat")
OPS = "+-*"
COMMUTATIVE = "+*"  # a op b == b op a: one fact, kept in one split
#: 1: split by problem (until 2026-12-06); 2: split by fact. `compare` records it with each unit.
SPLIT_RULE = 2

DEMO_CORRECTION = "Recheck."
CHAT_CORRECTION = (
    "There might be an error in your answer above. Please check your work, correct the error "
    'if there is one, and end your reply with the final answer in the form "Answer: N".'
)
OPTIONS = (
    Option("digits", "int", 2, "operand length (1 digit = 0..9)", choices=(1, 2, 3, 4)),
    Option("ops", "str", "+", 'operators used, distinct, from "+-*" (e.g. "+" or "+-*")'),
    Option("style", "str", "demo", "demo = compact, for the built-in tiny model; chat = natural prompts",
           choices=STYLES),
    Option("n_test", "int", None, "size of the held-out test split; None = 500, or half when there are "
           "fewer than 1000 problems", nullable=True, at_least=1),
    Option("seed", "int", 0, "split seed: the same seed always gives the same split"),
)
_CHAT_QUESTION = 'What is {a} {op} {b}? End your reply with the final answer in the form "Answer: N".'

# A number as a model writes it: optional sign glued to the digits (so the minus of "7-5" is
# read as an operator, not a sign), optional thousands commas, optional decimals ("12.0").
_NUMBER = re.compile(r"(?:(?<![\w)\]])[-\u2212])?\d+(?:,\d{3})*(?:\.\d+)?")
_ANSWER_MARK = re.compile(r"answer\s*(?:is)?\s*[:=]?", re.IGNORECASE)
_EQUALS_NUMBER = re.compile(r"=\s*\$?\s*(" + _NUMBER.pattern + ")")
# An operand is a number with an operator and another number on one side ("9 * 0", "(47 + 38)"):
# a restated question, not an answer, unless "=" names it as a result.
_OPERATOR = r"[-+*/x\u00d7\u00f7\u2212]"
_OPERATOR_AFTER = re.compile(r"\s*" + _OPERATOR + r"\s*[-\u2212]?\d")
_OPERATOR_BEFORE = re.compile(r"\d\s*" + _OPERATOR + r"\s*$")


def _apply(a: int, op: str, b: int) -> int:
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    raise ValueError(f"unknown operator {op!r}; expected one of {OPS!r}")


def _to_int(text: str) -> int | None:
    """The integer a number string stands for, or None when it is not integral ("2.5") or too
    long to be any answer of this task (int() refuses over 4300 digits and must not raise)."""
    if len(text) > 64:
        return None
    cleaned = text.replace(",", "").replace("\u2212", "-")
    if "." in cleaned:
        whole, frac = cleaned.split(".", 1)
        if frac.strip("0"):
            return None
        cleaned = whole
    return int(cleaned)


def last_integer(text: str) -> str | None:
    """The last number written in `text` (as written), or None when there is none."""
    found = _NUMBER.findall(text)
    return found[-1] if found else None


def _answers(text: str) -> list[str]:
    """The numbers of `text` (as written) that are not operands of an expression."""
    # the look back is a short window: a search over the whole prefix per number is quadratic
    return [m.group() for m in _NUMBER.finditer(text)
            if not _OPERATOR_AFTER.match(text, m.end())
            and not _OPERATOR_BEFORE.search(text, max(0, m.start() - 16), m.start())]


def extract_chat_answer(text: str) -> str | None:
    """The answer of a chat-style response, by preference:
    1. on the line after the last "answer" marker that has one: the number after its last "="
       ("Answer: 7 - 5 = 2" -> "2"), else its first number that is not an operand
       ("Answer: 85 (47 + 38)" -> "85", "The correct answer is 8, not 7." -> "8");
    2. else the number after the last "=" anywhere;
    3. else the last number that is not an operand ("5 - 0 is 5." -> "5"; "9 * 0 = N" -> None:
       restating the question answers nothing)."""
    for mark in reversed(list(_ANSWER_MARK.finditer(text))):
        line = text[mark.end():].split("\n", 1)[0]
        equals = _EQUALS_NUMBER.findall(line)
        answers = equals[-1:] or _answers(line)[:1]
        if answers:
            return answers[0]
    equals = _EQUALS_NUMBER.findall(text)
    if equals:
        return equals[-1]
    answers = _answers(text)
    return answers[-1] if answers else None


def fact_of(a: int, op: str, b: int) -> tuple[int, str, int]:
    """The fact a problem states: commuted + and x problems are one fact (operands ordered)."""
    return (min(a, b), op, max(a, b)) if op in COMMUTATIVE else (a, op, b)


def split_by_fact(space: list[tuple[int, str, int]], n_test: int, seed: int) -> dict[str, list]:
    """{'test': ..., 'train': ...} lists of (a, op, b): facts in a seeded hash order fill the test
    split with exactly n_test problems (a pair that would overflow it goes to train; if that
    leaves it one short, its last single-problem fact swaps with the first skipped pair), and
    every other problem is train. Each split is then in its problems' own hash order, so twins
    are not neighbours (`eval.limit` takes a spread)."""
    def key(problem) -> bytes:
        # sha256, not hash(): Python salts str hashes per process, and the split must not move
        a, op, b = problem
        return hashlib.sha256(f"arithmetic|{seed}|{a}{op}{b}".encode()).digest()

    facts: dict[tuple, list] = {}
    for problem in space:
        facts.setdefault(fact_of(*problem), []).append(problem)
    test, train, size = [], [], 0  # lists of facts' problem groups
    for fact in sorted(facts, key=key):  # a fact's key is that of its ordered problem
        group = facts[fact]
        fits = size + len(group) <= n_test
        (test if fits else train).append(group)
        size += len(group) if fits else 0
    if size == n_test - 1:  # only pairs were left: trade the last single for the first skipped pair
        single = max(i for i, g in enumerate(test) if len(g) == 1)
        pair = min(i for i, g in enumerate(train) if len(g) == 2)
        test[single], train[pair] = train[pair], test[single]
    flat = lambda groups: sorted((p for g in groups for p in g), key=key)  # noqa: E731
    return {"test": flat(test), "train": flat(train)}


class ArithmeticTask(Task):
    """`a op b` with `digits`-digit operands (d digits = 10**(d-1) .. 10**d - 1; one digit =
    0..9); reference = the exact integer result. Options: OPTIONS (digits, ops, style, n_test,
    seed), the single source of truth for their checks, defaults and help."""

    name = "arithmetic"
    # Self-Refine prompts (chat style; the demo model cannot follow them: docs/SELF_REFINE.md)
    feedback_prompt = (
        "Check the calculation in your answer above step by step. Do not write a new answer yet. "
        'If the answer is correct, end your feedback with "{marker}".')
    refine_prompt = (
        "Using your feedback above, solve the problem again and end your reply with the final "
        'answer in the form "Answer: N".')

    def __init__(self, **options):
        opts = resolve("arithmetic", OPTIONS, options)
        digits, ops, style, n_test, seed = (opts[k] for k in ("digits", "ops", "style", "n_test", "seed"))
        if not ops or any(op not in OPS for op in ops) or len(set(ops)) != len(ops):
            raise ValueError(f"arithmetic option ops={ops!r}: expected distinct operators from {OPS!r}")
        self.digits, self.ops, self.style, self.seed = digits, ops, style, seed
        self.correction_instruction = DEMO_CORRECTION if style == "demo" else CHAT_CORRECTION
        low = 0 if digits == 1 else 10 ** (digits - 1)
        operands = range(low, 10 ** digits)
        space = [(a, op, b) for op in ops for a in operands for b in operands]
        if n_test is None:
            n_test = 500 if len(space) >= 1000 else len(space) // 2
        if not isinstance(n_test, int) or not 1 <= n_test <= len(space):
            raise ValueError(f"arithmetic option n_test={n_test!r}: expected 1..{len(space)} "
                             f"(there are {len(space)} problems with digits={digits}, ops={ops!r})")
        self.n_test = n_test
        self._splits = split_by_fact(space, n_test, seed)

    def question(self, a: int, op: str, b: int) -> str:
        """The user text of problem (a, op, b) in this task's style."""
        if self.style == "demo":
            return f"{a}{op}{b}"
        return _CHAT_QUESTION.format(a=a, op=op, b=b)

    def problem(self, a: int, op: str, b: int) -> Problem:
        """Problem (a, op, b), whichever split holds it."""
        return Problem(id=f"{a}{op}{b}", question=self.question(a, op, b),
                       reference=_apply(a, op, b),
                       # the fact: commuted twins share it, and the bootstrap resamples it as one unit
                       meta={"a": a, "op": op, "b": b, "cluster": "{}{}{}".format(*fact_of(a, op, b))})

    def load(self, split: str) -> list[Problem]:
        if split not in self._splits:
            raise ValueError(f"arithmetic task has no split {split!r}; expected one of {sorted(self._splits)}")
        if not self._splits[split]:
            raise ValueError(f"arithmetic split {split!r} is empty: n_test={self.n_test} takes every problem")
        return [self.problem(*p) for p in self._splits[split]]

    def first_turn(self, problem: Problem) -> list[dict]:
        return [{"role": "user", "content": problem.question}]

    def extract(self, response: str) -> str | None:
        """The answer string of a response in this task's style (None when there is none)."""
        return last_integer(response) if self.style == "demo" else extract_chat_answer(response)

    def score(self, problems: Sequence[Problem], responses: Sequence[str]) -> list[Verdict]:
        if len(problems) != len(responses):
            raise ValueError(f"score got {len(problems)} problems but {len(responses)} responses")
        verdicts = []
        for problem, response in zip(problems, responses):
            extracted = self.extract(response)
            if extracted is None:
                verdicts.append(Verdict(0.0, None, NO_ANSWER))
                continue
            value = _to_int(extracted)
            if value is not None and value == problem.reference:
                verdicts.append(Verdict(1.0, extracted, CORRECT))
            else:
                verdicts.append(Verdict(0.0, extracted, WRONG_ANSWER,
                                        f"expected {problem.reference}, got {extracted}"))
        return verdicts


def options_for(name: str = "arithmetic") -> tuple[Option, ...]:
    """The arithmetic task's options (the single source of truth for checks and help)."""
    return OPTIONS


def build(name: str = "arithmetic", **options) -> Task:
    """The arithmetic task from config options (digits, ops, style, n_test, seed)."""
    if name != "arithmetic":
        raise ValueError(f"arithmetic.build got task name {name!r}; expected 'arithmetic'")
    return ArithmeticTask(**options)
