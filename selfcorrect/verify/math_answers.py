"""Final-answer extraction and equivalence for math problems (MATH, MATH500, GSM8K).

Three steps, cheapest first:
1. `extract_answer(response)`: the answer string a response commits to, by preference
   (a) after the last "final answer is" / "Final Answer:" (the paper's prompt asks for
   "Final Answer: The final answer is $answer$. I hope it is correct."), (b) the content of the
   last \\boxed{...} (nested braces; also "\\boxed 9"), (c) the last "#### N" line (GSM8K).
   Pure Python, linear in the response length, never hangs: it runs in the caller's process.
2. `reject_reason(answer)`: a cheap string pre-check that refuses inputs sympy may never
   finish (exponent towers such as 9^{9^{9^9}}, giant factorials, absurdly long strings).
   It is best effort; the hard deadline of the worker pool (workers.py) is the guarantee.
3. `exact_compare` (both answers plain numbers: +, -, *, /, \\frac, integer powers,
   factorials; compared as exact fractions, in-process, under a size budget), then
   `quick_compare` (string identity after cosmetic normalisation, in-process) and, when that
   is undecided, `sympy_equivalent` (math-verify `parse` + `verify`, meant to run inside a
   VerifierPool worker: it has no timeout of its own).

Policy for debatable cases (what the golden tests in tests/test_math_answers.py pin down):
- Exact vs decimal: a decimal matches an exact value when it agrees after rounding to 6
  decimal places (math-verify's float_rounding=6): 1/3 ~ 0.333333 but not 0.333; pi ~ 3.141593
  but not 3.14. Fractions in any spelling match: \\frac12, \\dfrac{1}{2}, 1/2, 0.5.
- Units, degrees, currency and thousands separators are ignored: 30^\\circ ~ 30,
  15\\text{ cm}^2 ~ 15, \\$70,000 ~ 70000, and a plain number followed by words ("5 apples")
  matches a purely numeric reference.
- Percentages: 25\\% matches both 25 and 0.25 (math-verify accepts either reading).
- Equations vs values: "x=3" ~ "3" both ways, and "y=2x+3" ~ "2x+3" (the right-hand side of a
  single assignment counts); a different variable name ("y=3" for "x=3") does not match.
- Collections: unordered answer lists ("-2, 1" ~ "1, -2") and sets compare as sets; ordered
  pairs keep their order ((15,-29) ~ "15,-29" but not (-29,15)); intervals keep their
  endpoints' openness ([5,\\infty) is not (5,\\infty)).
- \\pm expands to both values: 1\\pm\\sqrt2 ~ "1+\\sqrt2, 1-\\sqrt2" but not one root alone.
- Text answers compare case-insensitively with or without \\text{}; multiple-choice letters
  match with or without parentheses ("(C)" ~ "C" ~ \\text{(C)}).
- A base subscript is dropped (2516_8 ~ 2516), as math-verify does.
- Malformed LaTeX is repaired when math-verify can ("\\frac{3}{2" ~ 1.5); otherwise the
  answer is wrong, not a verifier failure, because the model wrote it.
- Two plain numbers are compared exactly, never by rounding: \\frac{1}{2006!} is not
  \\frac{1}{2004!} and 10^{-31} is not 10^{-30}, although both pairs agree to 6 decimal places
  (math-verify's rounding would call them equal). A decimal point leaves the decision to
  math-verify (1/3 ~ 0.333333 above).
- A candidate refused by the pre-check is wrong (reward 0): no reference answer in MATH or
  GSM8K comes close to those limits (tested), so a correct answer is never refused.
- With several \\boxed{} answers only the last counts.
"""

from __future__ import annotations

import ast
import logging
import math
import re
from typing import NamedTuple

# Limits of the pre-check, far above any MATH / GSM8K reference answer (at most 159
# characters; largest power 2^{4950}; exponents of symbols at most 26; no big factorials).
MAX_ANSWER_CHARS = 1000
MAX_SYMBOLIC_EXPONENT = 200  # of a non-numeric base: sympy takes seconds on (x+1)^{300}
MAX_POWER_DIGITS = 10_000  # decimal digits of a numeric power (2^{10000} has 3011)
MAX_FACTORIAL = 2_000
MAX_BINOMIAL_TOP = 10_000
MAX_BRACE_DEPTH = 40
# Exact arithmetic (exact_compare) gives up, undecided, past numbers of this many bits
# (about 30,000 digits: 2004! has 5,700, 2^{4950} has 1,490); each step is then a few ms.
MAX_EXACT_BITS = 100_000

# ----------------------------------------------------------------------------- extraction

_FINAL_ANSWER = re.compile(r"final\s+answer(?:\*\*|__)?\s*(?:is\b|:)", re.IGNORECASE)  # "**Final Answer**:"
_BOXED = re.compile(r"\\(?:boxed|fbox)\b")
_HASHES = re.compile(r"^[ \t]*####[ \t]*(.*)$", re.MULTILINE)
_HOPE = re.compile(r"\.?\s*I hope it is correct.*$", re.IGNORECASE | re.DOTALL)


def _match_braces(text: str, open_at: int) -> int | None:
    """Index just past the brace group that opens at text[open_at] == "{", or None when it
    never closes. Escaped braces (\\{ \\}) are characters, not grouping."""
    depth = 0
    i = open_at
    while i < len(text):
        ch = text[i]
        if ch == "\\":
            i += 2
            continue
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    return None


def _boxed_content(text: str) -> str | None:
    """Content of the last \\boxed{...} / \\fbox{...} / "\\boxed 9" in text, else None."""
    matches = list(_BOXED.finditer(text))
    if not matches:
        return None
    end = matches[-1].end()
    rest = text[end:].lstrip()
    if rest.startswith("{"):
        close = _match_braces(rest, 0)
        if close is None:  # unbalanced: keep the line, math-verify may still read it
            return rest[1:].split("\n", 1)[0]
        return rest[1 : close - 1]
    token = re.match(r"[^\s$]+", rest)  # "\boxed 9": one token up to a space or a dollar
    return token.group(0) if token else ""


def _math_span(text: str) -> str:
    """The answer right after "final answer is": a $...$, $$...$$, \\(...\\) or \\[...\\] span
    if it starts with one, else the rest of the line up to "I hope it is correct"."""
    text = text.lstrip(" \t:*_")
    if text.startswith("\n"):  # "Final Answer:" alone on its line: the answer is on the next one
        text = text.lstrip()
    for opener, closer in (("$$", "$$"), ("\\[", "\\]"), ("\\(", "\\)")):
        if text.startswith(opener):
            close = text.find(closer, len(opener))
            return text[len(opener) : close] if close >= 0 else text[len(opener) :].split("\n", 1)[0]
    if text.startswith("$"):
        i = 1
        while i < len(text):
            if text[i] == "\\":
                i += 2  # "\$" is a dollar sign inside the answer
                continue
            if text[i] == "$":
                return text[1:i]
            i += 1
        return text[1:].split("\n", 1)[0]
    return _HOPE.sub("", text.split("\n", 1)[0])


def _clean(answer: str) -> str:
    """Strip what surrounds an answer but is not part of it."""
    answer = answer.strip()
    for opener, closer in (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
        if answer.startswith(opener) and answer.endswith(closer) and len(answer) >= len(opener) + len(closer):
            answer = answer[len(opener) : len(answer) - len(closer)].strip()
    answer = answer.replace("\\displaystyle", "").strip()
    for emphasis in ("**", "__"):  # markdown bold: "is **5**." (the span already lost the opening pair)
        body = answer.rstrip(".")
        if body.endswith(emphasis) and emphasis not in body[:-2].lstrip("*_"):
            answer = body[:-2].lstrip("*_").strip()
    # Trailing sentence punctuation goes, LaTeX spacing (\, \;) stays. An index walk, not a
    # regex or repeated slicing, so a response ending in 10^6 dots stays linear.
    end = len(answer)
    while end > 0 and answer[end - 1] in ".,; \t\n" and not (end > 1 and answer[end - 2] == "\\"):
        end -= 1
    return answer[:end]


def extract_answer(response: str) -> str | None:
    """The final answer of a response, or None when it gives none (see module docstring)."""
    finals = list(_FINAL_ANSWER.finditer(response))
    if finals:
        after = response[finals[-1].end() :]
        span = _math_span(after)
        # a box in the span, else a box later on ("the final answer is found by ... so \\boxed{12}")
        boxed = _boxed_content(span)
        boxed = boxed if boxed is not None else _boxed_content(after)
        answer = _clean(boxed if boxed is not None else span)
        if answer:
            return answer
    boxed = _boxed_content(response)
    if boxed is not None:
        return _clean(boxed) or None
    hashes = _HASHES.findall(response)
    if hashes:
        return _clean(hashes[-1]) or None
    return None


def reference_from_solution(solution: str) -> str | None:
    """A Hendrycks-style solution's reference answer: its last \\boxed{} (the dataset's
    convention), cleaned; None without one. Not extract_answer, whose "final answer is" rule
    is for model responses: solutions use that phrase in prose ("the final answer is the same
    if ...")."""
    boxed = _boxed_content(solution)
    return (_clean(boxed) or None) if boxed is not None else None


def gsm8k_reference(solution: str) -> str | None:
    """The number after "####" in a GSM8K solution, thousands commas removed, else None."""
    found = _HASHES.findall(solution)
    if not found:
        return None
    return found[-1].strip().replace(",", "") or None


# ----------------------------------------------------------------------------- pre-check

_NUMERIC_CHARS = re.compile(r"[\d+\-*/().]*")


def _magnitude(expr: str) -> float | None:
    """An upper bound on |value| of a purely numeric LaTeX expression (inf when it overflows
    a float), or None when the expression is not purely numeric or not understood.
    Exponent chains are read right-associatively, as a person reads 9^9^9."""
    s = re.sub(r"\s+", "", expr)
    s = s.replace("\\cdot", "*").replace("\\times", "*").replace("{", "(").replace("}", ")")
    s = s.replace("^", "**")
    s = re.sub(r"(?<=[\d)])(?=\()", "*", s)  # 2(3) -> 2*(3)
    s = re.sub(r"(?<![\d.])0+(?=\d)", "", s)  # 09 is not a Python literal
    if not s or not _NUMERIC_CHARS.fullmatch(s) or not re.search(r"\d", s):
        return None
    try:
        return _bound(ast.parse(s, mode="eval").body)
    except (SyntaxError, ValueError, RecursionError, MemoryError, TypeError):
        return None


def _bound(node: ast.AST) -> float:
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
        try:
            return abs(float(node.value))
        except OverflowError:
            return math.inf
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        return _bound(node.operand)
    if isinstance(node, ast.BinOp):
        a, b = _bound(node.left), _bound(node.right)
        if isinstance(node.op, (ast.Add, ast.Sub)):
            return a + b
        if isinstance(node.op, ast.Mult):
            return a * b
        if isinstance(node.op, ast.Div):
            return a  # an upper bound whenever |divisor| >= 1; good enough to spot towers
        if isinstance(node.op, ast.Pow):
            if a <= 1.0:
                return 1.0
            try:
                return math.inf if b == math.inf else a**b
            except OverflowError:
                return math.inf
    raise ValueError("not a numeric expression")


def _exponent_after(s: str, caret: int) -> tuple[str, int]:
    """The exponent that starts after s[caret] == "^" (a brace group, a command, a digit run or
    one character), extended
    over an unbraced chain (9^9^9), and the index after it."""
    i = caret + 1
    while i < len(s) and s[i] == " ":
        i += 1
    if i < len(s) and s[i] == "{":
        end = _match_braces(s, i) or len(s)
    elif i < len(s) and s[i] == "\\":
        # a command, an escaped character, or a lone backslash at the end of a cut-off answer
        command = re.match(r"\\[A-Za-z]+", s[i:]) or re.match(r"\\.", s[i:], re.S)
        end = i + (command.end() if command else 1)
    elif i < len(s) and s[i].isdigit():  # latex2sympy reads 10^10 as 10^{10}
        end = re.match(r"\d+", s[i:]).end() + i
    else:
        end = min(i + 1, len(s))
    j = end
    while j < len(s) and s[j] == " ":
        j += 1
    if j < len(s) and s[j] == "^":  # a^b^c: c is part of b's exponent
        rest, end = _exponent_after(s, j)
        return s[i:j] + "^" + rest, end
    return s[i:end], end


def _operand_before(s: str, at: int) -> str:
    """The number or bracket group that ends just before s[at] (for ^ and !)."""
    i = at
    while i > 0 and s[i - 1] == " ":
        i -= 1
    if i > 0 and s[i - 1] in ")}":
        closer = s[i - 1]
        opener = "(" if closer == ")" else "{"
        depth, j = 0, i - 1
        while j >= 0:
            if s[j] == closer:
                depth += 1
            elif s[j] == opener:
                depth -= 1
                if depth == 0:
                    return s[j:i]
            j -= 1
        return ""
    match = re.search(r"\d+(?:\.\d+)?$", s[:i])
    return match.group(0) if match else ""


_BINOMIAL = re.compile(r"\\[dt]?binom\s*\{")


def reject_reason(answer: str) -> str | None:
    """Why sympy should not be asked about this answer, or None when it looks harmless."""
    if len(answer) > MAX_ANSWER_CHARS:
        return f"answer is {len(answer)} characters long (limit {MAX_ANSWER_CHARS})"
    deepest = _nesting(answer)
    if deepest > MAX_BRACE_DEPTH:
        return f"brackets nested {deepest} deep (limit {MAX_BRACE_DEPTH})"
    s = answer.replace("**", "^")
    for caret in (m.start() for m in re.finditer(r"\^", s)):
        exponent, _ = _exponent_after(s, caret)
        size = _magnitude(exponent)
        if size is None:
            continue
        base = _magnitude(_operand_before(s, caret))
        if base is None:  # not a plain number: expanding the power is what makes sympy crawl
            if size > MAX_SYMBOLIC_EXPONENT:
                return f"exponent {exponent!r} of a non-numeric base is too large (limit {MAX_SYMBOLIC_EXPONENT})"
        elif base > 1 and size * math.log10(base) > MAX_POWER_DIGITS:
            return f"power with exponent {exponent!r} has more than {MAX_POWER_DIGITS} digits"
    for bang in (m.start() for m in re.finditer(r"!", s)):
        operand = _magnitude(_operand_before(s, bang))
        if operand is not None and operand > MAX_FACTORIAL:
            return f"factorial of a number above {MAX_FACTORIAL}"
    for match in _BINOMIAL.finditer(s):
        close = _match_braces(s, match.end() - 1)
        top = _magnitude(s[match.end() - 1 : close]) if close else None
        if top is not None and top > MAX_BINOMIAL_TOP:
            return f"binomial coefficient of a number above {MAX_BINOMIAL_TOP}"
    return None


# ----------------------------------------------------------------------------- exact numbers


class _Frac(NamedTuple):
    """num / den with den > 0, not reduced: reducing costs a gcd per step and is never needed,
    since comparison is by cross-multiplication."""

    num: int
    den: int


class _Undecided(Exception):
    """The expression is not a plain number this evaluator reads, or it is too big."""


_EXACT_TOKEN = re.compile(r"\s+|(\d+)|\\(?:[dt]?frac|cdot|times|div|left|right)(?![A-Za-z])|\\[,;:! ]|[-+*/^!(){}]")
_SPACES = re.compile(r"\s+|\\[,;:! ]")


def _exact_tokens(text: str) -> list[str]:
    r"""The tokens of a plain-number expression; _Undecided at anything else (a decimal point,
    a letter, a comma, \sqrt, ...), so that only plain numbers are ever decided exactly."""
    tokens, i = [], 0
    while i < len(text):
        match = _EXACT_TOKEN.match(text, i)
        if match is None:
            raise _Undecided(f"unexpected {text[i]!r}")
        token = match.group(0)
        if not _SPACES.fullmatch(token) and token not in ("\\left", "\\right"):
            tokens.append(token.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac"))
        i = match.end()
    return tokens


def _fits(*bits: int) -> None:
    if sum(bits) > MAX_EXACT_BITS:
        raise _Undecided("number too large")


class _ExactParser:
    r"""Recursive descent over plain-number LaTeX, evaluating as it goes:

        sum     := product (("+" | "-") product)*
        product := signed (("*" | \cdot | \times | "/" | \div) signed)*
        signed  := ("-" | "+") signed | power
        power   := factorial ("^" exponent)?       exponent: {sum}, or one digit
        factorial := atom "!"?
        atom    := digits | (sum) | {sum} | \frac A B   (A, B: {sum} or one digit)

    Ambiguous spellings stay undecided (math-verify reads them): juxtaposition such as
    2\frac{1}{2} or 2(3), unbraced multi-digit or chained exponents (10^10, 2^3^2), "!!".
    """

    def __init__(self, tokens: list[str]):
        self.tokens, self.i = tokens, 0

    def peek(self) -> str | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def take(self, expected: str | None = None) -> str:
        token = self.peek()
        if token is None or (expected is not None and token != expected):
            raise _Undecided(f"expected {expected or 'more'}, got {token!r}")
        self.i += 1
        return token

    def whole(self) -> _Frac:
        value = self.sum()
        if self.peek() is not None:
            raise _Undecided(f"unexpected {self.peek()!r}")
        return value

    def sum(self) -> _Frac:
        value = self.product()
        while self.peek() in ("+", "-"):
            sign = 1 if self.take() == "+" else -1
            other = self.product()
            _fits(max(value.num.bit_length() + other.den.bit_length(),
                      other.num.bit_length() + value.den.bit_length()), 1)
            _fits(value.den.bit_length(), other.den.bit_length())
            value = _Frac(value.num * other.den + sign * other.num * value.den, value.den * other.den)
        return value

    def product(self) -> _Frac:
        value = self.signed()
        while self.peek() in ("*", "\\cdot", "\\times", "/", "\\div"):
            op = self.take()
            other = self.signed()
            value = _times(value, other) if op in ("*", "\\cdot", "\\times") else _divide(value, other)
        return value

    def signed(self) -> _Frac:
        if self.peek() in ("-", "+"):
            sign = -1 if self.take() == "-" else 1
            value = self.signed()
            return _Frac(sign * value.num, value.den)
        return self.power()

    def power(self) -> _Frac:
        base = self.factorial()
        if self.peek() != "^":
            return base
        self.take("^")
        if self.peek() == "{":
            exponent = self.group()
        else:
            digit = self.take()
            if not (digit.isdigit() and len(digit) == 1):
                raise _Undecided("unbraced exponent longer than one digit")
            exponent = _Frac(int(digit), 1)
        if self.peek() == "^":
            raise _Undecided("chained exponent")
        return _power(base, exponent)

    def factorial(self) -> _Frac:
        value = self.atom()
        if self.peek() == "!":
            self.take("!")
            if self.peek() == "!":
                raise _Undecided("double factorial")
            value = _factorial(value)
        return value

    def atom(self) -> _Frac:
        token = self.take()
        if token.isdigit():
            if len(token) > 300:
                raise _Undecided("literal too long")
            return _Frac(int(token), 1)
        if token == "(":
            value = self.sum()
            self.take(")")
            return value
        if token == "{":
            self.i -= 1
            return self.group()
        if token == "\\frac":
            run = self.peek() or ""
            if run.isdigit() and len(run) == 2:  # \frac12: one digit per argument
                self.take()
                return _divide(_Frac(int(run[0]), 1), _Frac(int(run[1]), 1))
            return _divide(self.frac_argument(), self.frac_argument())
        raise _Undecided(f"unexpected {token!r}")

    def group(self) -> _Frac:
        self.take("{")
        value = self.sum()
        self.take("}")
        return value

    def frac_argument(self) -> _Frac:
        """{sum} or a single digit (\\frac1{2})."""
        if self.peek() == "{":
            return self.group()
        token = self.take()
        if len(token) == 1 and token.isdigit():
            return _Frac(int(token), 1)
        raise _Undecided("\\frac argument must be {...} or one digit")


def _times(a: _Frac, b: _Frac) -> _Frac:
    _fits(a.num.bit_length(), b.num.bit_length())
    _fits(a.den.bit_length(), b.den.bit_length())
    return _Frac(a.num * b.num, a.den * b.den)


def _divide(a: _Frac, b: _Frac) -> _Frac:
    if b.num == 0:
        raise _Undecided("division by zero")
    sign = -1 if b.num < 0 else 1
    return _times(a, _Frac(sign * b.den, abs(b.num)))


def _power(base: _Frac, exponent: _Frac) -> _Frac:
    if exponent.num % exponent.den:
        raise _Undecided("non-integer exponent")
    e = exponent.num // exponent.den
    if base.num == 0:
        if e <= 0:
            raise _Undecided("0 to a power <= 0")
        return _Frac(0, 1)
    if e < 0:
        base, e = _divide(_Frac(1, 1), base), -e
    if abs(base.num) == 1 and base.den == 1:
        return _Frac(base.num ** (e % 2), 1)
    _fits(max(base.num.bit_length(), base.den.bit_length()) * min(e, MAX_EXACT_BITS + 1))
    return _Frac(base.num**e, base.den**e)


def _factorial(value: _Frac) -> _Frac:
    if value.num % value.den or value.num < 0:
        raise _Undecided("factorial of a non-natural number")
    n = value.num // value.den
    if n > MAX_EXACT_BITS or math.lgamma(n + 1) / math.log(2) > MAX_EXACT_BITS:
        raise _Undecided("factorial too large")
    return _Frac(math.factorial(n), 1)


def exact_value(answer: str) -> tuple[int, int] | None:
    """(numerator, denominator > 0), not reduced, of a plain-number answer (integers, +, -,
    *, /, \\frac, integer powers, factorials), or None when the answer is anything else or
    exceeds MAX_EXACT_BITS. Bounded work: safe on model output in any process."""
    text = answer.strip().strip("$")
    if not text or len(text) > MAX_ANSWER_CHARS or _nesting(text) > MAX_BRACE_DEPTH:
        return None
    try:
        value = _ExactParser(_exact_tokens(text)).whole()
    except (_Undecided, RecursionError):
        return None
    return value.num, value.den


def _nesting(text: str) -> int:
    """How deep brackets nest (the parser recurses once per level)."""
    depth = deepest = 0
    for ch in text:
        depth += (ch in "{([") - (ch in "})]")
        deepest = max(deepest, depth)
    return deepest


def exact_compare(gold: str, candidate: str) -> bool | None:
    """True / False when both answers are plain numbers (see exact_value), compared exactly;
    None when either is not, so that math-verify decides."""
    a = exact_value(gold)
    if a is None:
        return None
    b = exact_value(candidate)
    if b is None:
        return None
    return a[0] * b[1] == b[0] * a[1]


# ----------------------------------------------------------------------------- comparison

_TEXT_WRAPPERS = re.compile(r"\\(?:text|textbf|textit|mathrm|mathbf|mbox|operatorname)\s*\{([^{}]*)\}")
_SPACING = re.compile(r"\\(?:left|right|big|Big|bigl|bigr|Bigl|Bigr)(?![A-Za-z])|\\[!,;: ]|~|\s+")
_DEGREES = re.compile(r"\^\s*\{?\s*\\circ\s*\}?|°")
_NUMBER = r"[-\u2212]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|[-\u2212]?\.\d+"
_PLAIN_NUMBER = re.compile(rf"(?:\\\$|\$)?({_NUMBER})")
_NUMBER_THEN_WORDS = re.compile(rf"(?:\\\$|\$)?({_NUMBER})(?:\s+[A-Za-z]{{2,}}\.?)+")


def canonical(answer: str) -> str:
    """A cosmetic normal form: same string => same answer (the converse is sympy's job)."""
    s = answer.strip().strip("$")
    s = _TEXT_WRAPPERS.sub(r"\1", s)
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac").replace("\\varnothing", "\\emptyset")
    s = _DEGREES.sub("", s)
    s = _SPACING.sub("", s)
    s = s.replace("\\%", "%").rstrip(".")
    if re.fullmatch(r"\(?[A-Za-z]+\)?", s):  # text or a choice letter: (C) ~ C ~ c
        s = s.strip("()").lower()
    return s


def quick_compare(gold: str, candidate: str) -> bool | None:
    """True when the answers are cosmetically identical, False when the candidate is refused
    by the pre-check or differs from it as an exact number, None when sympy has to decide.
    Cheap; safe in any process."""
    exact = exact_compare(gold, candidate)
    if exact is not None:
        return exact
    if reject_reason(candidate) is not None:
        return False
    if canonical(gold) == canonical(candidate):
        return True
    return None


#: words after a number that change its value or hedge it: never stripped as units
_VALUE_WORDS = frozenset("""hundred hundreds thousand thousands million millions billion billions trillion
    trillions dozen dozens score pi squared cubed or and more less fewer plus minus times over half""".split())


def _strip_unit_words(gold: str, candidate: str) -> str:
    """'5 apples' -> '5' when the reference is a plain number (GSM8K-style answers); '5 thousand',
    '3 pi' or '5 or more' keep their words (_VALUE_WORDS), so they are not read as 5 or 3."""
    if _PLAIN_NUMBER.fullmatch(gold.strip()):
        match = _NUMBER_THEN_WORDS.fullmatch(candidate.strip())
        words = candidate.strip()[match.end(1):].lower().replace(".", " ").split() if match else []
        if match and not _VALUE_WORDS.intersection(words):
            return match.group(1)
    return candidate


class _DropTimeoutDisabledWarning(logging.Filter):
    """math-verify warns once per process that its own timeout is off; here that is on
    purpose (the worker pool owns the deadline), so the warning is noise."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Timeout is disabled" not in record.getMessage()


for _name in ("math_verify.parser", "math_verify.grader"):
    logging.getLogger(_name).addFilter(_DropTimeoutDisabledWarning())


def _parse(answer: str) -> list:
    from math_verify import parse  # imported here: the parent process never needs sympy

    # Wrapped in \boxed{} so math-verify reads the whole string as one LaTeX answer and
    # repairs unbalanced braces; its SIGALRM timeout is off (the pool's deadline rules).
    return parse("\\boxed{" + answer + "}", parsing_timeout=None)


def sympy_equivalent(gold: str, candidate: str) -> bool:
    """math-verify's verdict on candidate vs gold. No timeout of its own: run it in a
    VerifierPool worker. Raises ValueError when the reference itself cannot be read (a data
    problem, reported as verifier_error rather than scored)."""
    exact = exact_compare(gold, candidate)
    if exact is not None:  # math-verify rounds: it would call 1/2006! equal to 1/2004!
        return exact
    reason = reject_reason(gold)
    if reason is not None:
        raise ValueError(f"reference answer {gold[:80]!r} refused by the pre-check: {reason}")
    if reject_reason(candidate) is not None:
        return False
    from math_verify import verify

    gold_parsed = _parse(gold)
    if not gold_parsed:
        raise ValueError(f"math-verify cannot read the reference answer {gold[:80]!r}")
    candidate_parsed = _parse(_strip_unit_words(gold, candidate))
    if not candidate_parsed:
        return False
    return bool(verify(gold_parsed, candidate_parsed, timeout_seconds=None))


def answers_match(gold: str, candidate: str) -> bool:
    """quick_compare, then sympy_equivalent, in this process and without a deadline: for
    trusted inputs and tests. Model outputs go through MathTask.score (worker pool)."""
    quick = quick_compare(gold, candidate)
    return quick if quick is not None else sympy_equivalent(gold, candidate)


def warmup() -> None:
    """Worker initializer: pay math-verify's lazy imports and regex compilation up front, so
    they are not charged to the first real check's deadline."""
    sympy_equivalent("\\frac{1}{2}", "0.5")
    sympy_equivalent("(1, 2) \\cup [3, \\infty)", "x = 2")
