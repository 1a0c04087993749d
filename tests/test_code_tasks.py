"""HumanEval and MBPP: extraction, loaders and their errors, prompts, and sandboxed scoring.
The full reference runs (164 + 974 programs) are marked slow."""

import collections
import gzip
import json
import re
import sys
from pathlib import Path

import pytest

from selfcorrect.tasks import build_task
from selfcorrect.tasks.base import CORRECT, NO_ANSWER, TIMEOUT, WRONG_ANSWER
from selfcorrect.tasks.code import (CODE_CORRECTION, MBPP_RANGES, build, extract_code,
                                    humaneval_program, load_humaneval, mbpp_interface)

SCORE_MD = Path(__file__).resolve().parents[2] / "shared" / "SCORE.md"
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="sandbox is Linux only")


# ----------------------------------------------------------------------------- extraction
def test_extract_takes_the_last_python_block():
    text = "Try:\n```python\ndef f():\n    return 1\n```\nBetter:\n```python\ndef f():\n    return 2\n```\nDone."
    assert extract_code(text) == "def f():\n    return 2"
    shell = "```bash\npip install x\n```\n```\ndef g():\n    pass\n```"
    assert extract_code(shell) == "def g():\n    pass"


def test_extract_prefers_the_block_that_defines_the_entry_point():
    text = "```python\ndef add(a, b):\n    return a + b\n```\nUsage:\n```python\nprint(add(1, 2))\n```"
    assert extract_code(text, "add") == "def add(a, b):\n    return a + b"
    assert extract_code(text) == "print(add(1, 2))"


def test_extract_handles_a_truncated_fence_and_mbpp_markers():
    assert extract_code("Here:\n```python\ndef f(x):\n    return x") == "def f(x):\n    return x"
    assert extract_code("def f(x):\n    return x\n[DONE]") == "def f(x):\n    return x"
    assert extract_code("[BEGIN]\ndef f(x):\n    return x\n[DONE]\nmore") == "def f(x):\n    return x"
    # A base model that goes on to invent the next few-shot task: keep the first program only.
    invented = ("def f(x):\n    return x\n[DONE]\nYou are an expert Python programmer, and here is "
                "your task: ...\n[BEGIN]\ndef other():\n    pass\n[DONE]")
    assert extract_code(invented) == "def f(x):\n    return x"


def test_extract_bare_code_bodies_and_prose():
    assert extract_code("def f():\n    return 3\n") == "def f():\n    return 3"
    assert extract_code("    return sorted(xs)\n") == "    return sorted(xs)"  # a bare body
    assert extract_code("I am not sure how to solve this problem.") is None
    assert extract_code("") is None and extract_code("```python\n\n```") is None
    assert extract_code(None) is None


def test_humaneval_program_accepts_bodies_and_full_definitions():
    prompt = 'from typing import List\n\n\ndef total(xs: List[int]) -> int:\n    """Sum."""\n'
    for code in ("    return sum(xs)", "return sum(xs)",
                 "def total(xs: List[int]) -> int:\n    return sum(xs)",
                 "    def total(xs):\n        return sum(xs)"):
        namespace = {}
        exec(humaneval_program(prompt, code, "total"), namespace)
        assert namespace["total"]([1, 2, 3]) == 6, code


# ----------------------------------------------------------------------------- loaders
HE_ROW = {"task_id": "T/0", "prompt": "def f(x):\n    \"\"\"Double.\"\"\"\n",
          "canonical_solution": "    return 2 * x\n", "test": "def check(c):\n    assert c(2) == 4\n",
          "entry_point": "f"}


def write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_humaneval_loader_reads_gzip_and_names_the_bad_line(tmp_path):
    gz = tmp_path / "he.jsonl.gz"
    with gzip.open(gz, "wt") as handle:
        handle.write(json.dumps(HE_ROW) + "\n")
    assert [p.id for p in load_humaneval(gz)] == ["T/0"]
    broken = {k: v for k, v in HE_ROW.items() if k != "entry_point"}
    bad = write_jsonl(tmp_path / "he.jsonl", [HE_ROW, {**HE_ROW, "task_id": "T/1"}, broken])
    with pytest.raises(ValueError, match=re.escape(f"{bad}:3: missing field 'entry_point'")):
        load_humaneval(bad)
    with pytest.raises(ValueError, match=r"he2.jsonl:2: not valid JSON"):
        load_humaneval(write_jsonl(tmp_path / "he2.jsonl", [HE_ROW, "{not json"]))
    with pytest.raises(ValueError, match=r":2: duplicate task_id 'T/0'"):
        load_humaneval(write_jsonl(tmp_path / "he3.jsonl", [HE_ROW, HE_ROW]))
    with pytest.raises(ValueError, match=r":1: field 'prompt' must be str"):
        load_humaneval(write_jsonl(tmp_path / "he4.jsonl", [{**HE_ROW, "prompt": 3}]))


def mbpp_row(task_id, **extra):
    return {"task_id": task_id, "text": f"Write f{task_id}.", "code": f"def f{task_id}(x):\n    return x",
            "test_list": [f"assert f{task_id}(1) == 1"], "test_setup_code": "",
            "challenge_test_list": [], **extra}


def test_mbpp_loader_errors_name_file_line_field_and_split(tmp_path):
    rows = [mbpp_row(i) for i in range(1, 13)]
    rows[2] = {k: v for k, v in rows[2].items() if k != "test_list"}
    data = write_jsonl(tmp_path / "mbpp.jsonl", rows)
    with pytest.raises(ValueError, match=re.escape(f"{data}:3: missing field 'test_list'")):
        build("mbpp", data_path=str(data)).load("test")
    rows[2] = mbpp_row(3, test_list="assert f3(1) == 1")
    write_jsonl(data, rows)
    with pytest.raises(ValueError, match=":3: field 'test_list' must be a list of strings"):
        build("mbpp", data_path=str(data)).load("test")
    rows[2] = mbpp_row(3)
    write_jsonl(data, rows)
    splits = tmp_path / "splits.json"
    splits.write_text(json.dumps({"test": [11, 12], "train": [99]}))
    task = build("mbpp", data_path=str(data), splits_path=str(splits))
    assert [p.id for p in task.load("test")] == ["mbpp/11", "mbpp/12"]
    with pytest.raises(ValueError, match=r"no split 'validation'"):
        task.load("validation")
    with pytest.raises(ValueError, match=r"not in the file: \[99\]"):
        task.load("train")
    with pytest.raises(ValueError, match="no split 'dev'"):
        task.load("dev")


def test_mbpp_interface_comes_from_the_reference_solution():
    code = "import sys\nimport re\nR = 3\nclass Node:\n    pass\ndef f(n):\n    return n\n"
    tests = "root = Node()\nassert f(root) is not None\nassert sys.getsizeof(1) > 0\n"
    assert mbpp_interface(code, tests, "x") == (("Node", "f"), "import sys")


def test_task_options_are_checked():
    with pytest.raises(ValueError, match="humaneval"):
        build_task("humaneval", {"bogus": 1})
    with pytest.raises(ValueError, match="unknown code task"):
        build("apps")
    with pytest.raises(ValueError, match="instruction"):
        build("mbpp", data_path="x.jsonl", instruction="Write code.")
    with pytest.raises(ValueError, match="not both"):
        build("mbpp", data_path="x.jsonl", hf_id="mbpp")
    with pytest.raises(ValueError, match="only the 'test' split"):
        build("humaneval").load("train")


# ----------------------------------------------------------------------------- prompts
def test_correction_instruction_is_the_papers():
    if SCORE_MD.exists():
        assert CODE_CORRECTION in SCORE_MD.read_text()
    assert build("humaneval").correction_instruction == CODE_CORRECTION


def test_humaneval_prompt_shows_the_function_but_never_the_tests():
    task = build("humaneval")
    problems = task.load("test")
    assert len(problems) == 164 and len({p.id for p in problems}) == 164
    for problem in problems[:20]:
        content = task.first_turn(problem)[0]["content"]
        assert problem.reference["prompt"] in content and "```python" in content
        assert "def check(candidate)" not in content and "METADATA" not in content


def test_mbpp_splits_and_the_three_shot_prompt(shared_data):
    task = build("mbpp", data_path=str(shared_data / "mbpp.jsonl"))
    with_file = build("mbpp", data_path=str(shared_data / "mbpp.jsonl"),
                      splits_path=str(shared_data / "mbpp_splits.json"))
    sizes = {}
    for split in MBPP_RANGES:
        ids = [p.id for p in task.load(split)]
        assert ids == [p.id for p in with_file.load(split)]
        sizes[split] = len(ids)
    assert sizes == {"prompt": 10, "test": 500, "validation": 90, "train": 374}
    problem = task.load("test")[0]
    content = task.first_turn(problem)[0]["content"]
    first_shot = ("You are an expert Python programmer, and here is your task: Write a function to "
                  "find the similar elements from the given two tuple lists. Your code should pass "
                  "these tests:\n\nassert similar_elements((3, 4, 5, 6),(5, 7, 4, 10)) == (4, 5)\n")
    assert content.startswith(first_shot)
    assert content.count("[BEGIN]") == 4 and content.count("[DONE]") == 3
    assert "def similar_elements" in content and "def is_not_prime" in content
    assert "def heap_queue_largest" in content and "\r" not in content
    assert content.endswith("assert remove_Occ(\"PHP\",\"P\") == \"H\"\n[BEGIN]\n")
    assert problem.reference["solution"].split("(")[0] not in content.split("[DONE]")[-1]


# ----------------------------------------------------------------------------- scoring
@pytest.fixture(scope="module")
def humaneval():
    task = build("humaneval", timeout_s=4, workers=3)
    yield task, {p.id: p for p in task.load("test")}
    task.close()


@linux_only
def test_humaneval_verdicts_and_reasons(humaneval):
    task, problems = humaneval
    p0 = problems["HumanEval/0"]
    full = ("```python\ndef has_close_elements(numbers, threshold):\n    return any(abs(a - b) < "
            "threshold for i, a in enumerate(numbers) for b in numbers[i + 1:])\n```")
    responses = [task.reference_response(p0), full, "    return True\n",
                 "Sorry, I cannot help with that.", "    while True:\n        pass\n",
                 "    raise RuntimeError('no')\n"]
    verdicts = task.score([p0] * len(responses), responses)
    assert [v.reason for v in verdicts] == [CORRECT, CORRECT, WRONG_ANSWER, NO_ANSWER, TIMEOUT,
                                            WRONG_ANSWER]
    assert [v.reward for v in verdicts] == [1.0, 1.0, 0.0, 0.0, 0.0, 0.0]
    tier = task.sandbox.tier
    assert all(v.detail.startswith(f"tier={tier};") for v in verdicts if v.reason != NO_ANSWER)
    assert "assert candidate([1.0, 2.0, 3.9, 4.0, 5.0, 2.2], 0.05) == False" in verdicts[2].detail
    assert "RuntimeError" in verdicts[5].detail
    assert verdicts[3].extracted is None and "def has_close_elements" in verdicts[1].extracted


@linux_only
def test_scoring_never_raises_on_strange_responses(humaneval):
    task, problems = humaneval
    strange = ["def has_close_elements(a, b):\n    return \x00True\n", "\ud800 ```python\n\ud800\n```",
               "```python\n" + "x = 1\n" * 20000 + "```", 12345]
    verdicts = task.score([problems["HumanEval/0"]] * len(strange), strange)
    assert [v.reward for v in verdicts] == [0.0] * len(strange)


@linux_only
def test_humaneval_tests_use_the_prompts_helpers_not_the_models(humaneval):
    # HumanEval/38's check calls encode_cyclic from the prompt: redefining it to match a
    # wrong decode_cyclic must not pass.
    task, problems = humaneval
    cheat = ("```python\ndef encode_cyclic(s):\n    return s\n\ndef decode_cyclic(s):\n"
             "    return s\n```")
    verdicts = task.score([problems["HumanEval/38"]] * 2,
                          [cheat, task.reference_response(problems["HumanEval/38"])])
    assert [v.reason for v in verdicts] == [WRONG_ANSWER, CORRECT]


@linux_only
def test_mbpp_reference_and_wrong_programs(shared_data):
    with build("mbpp", data_path=str(shared_data / "mbpp.jsonl"), timeout_s=20, workers=3) as task:
        problems = {p.id: p for p in task.load("test")}
        p, q = problems["mbpp/11"], problems["mbpp/17"]
        right = f"[BEGIN]\n{p.reference['solution']}\n[DONE]"
        wrong = "def remove_Occ(s, ch):\n    return s[1:-1]\n[DONE]"
        misnamed = "```python\ndef remove_occurrences(s, ch):\n    return s\n```"
        verdicts = task.score([p, p, p, q], [right, wrong, misnamed, task.reference_response(q)])
    assert [v.reason for v in verdicts] == [CORRECT, WRONG_ANSWER, WRONG_ANSWER, CORRECT]
    assert 'assert remove_Occ("hello","l") == "heo"' in verdicts[1].detail
    assert "does not define 'remove_Occ'" in verdicts[2].detail


def _tier_or_skip(tier: str) -> None:
    from selfcorrect.verify.sandbox import Sandbox, SandboxUnavailable

    try:
        Sandbox(tier=tier, timeout_s=10).tier
    except SandboxUnavailable as exc:
        pytest.skip(f"the {tier} tier does not work on this host: {exc}")


# Both tiers: the rlimit tier as root runs programs as uid 65534, which must still import the
# whole standard library when the interpreter lives under root's home (pyenv).
@linux_only
@pytest.mark.slow
@pytest.mark.parametrize("tier", ["bwrap", "rlimit"])
def test_all_humaneval_canonical_solutions_pass_and_wrong_ones_fail(tier):
    _tier_or_skip(tier)
    with build("humaneval", timeout_s=30, workers=4, sandbox_tier=tier) as task:
        problems = task.load("test")
        right = task.score(problems, [task.reference_response(p) for p in problems])
        wrong = task.score(problems, ["    return None\n"] * len(problems))
    assert all(v.detail.startswith(f"tier={tier};") for v in right)
    assert [v.reason for v in right].count(CORRECT) == 164, [
        (p.id, v.detail) for p, v in zip(problems, right) if v.reason != CORRECT]
    assert not [p.id for p, v in zip(problems, wrong) if v.reward != 0.0]


@linux_only
@pytest.mark.slow
@pytest.mark.parametrize("tier", ["bwrap", "rlimit"])
def test_all_mbpp_reference_solutions_pass_and_wrong_ones_fail(shared_data, tier):
    _tier_or_skip(tier)
    # A generous limit: task 123 takes ~2.5 s alone and far longer on a loaded machine.
    with build("mbpp", data_path=str(shared_data / "mbpp.jsonl"), timeout_s=60, workers=4,
               sandbox_tier=tier) as task:
        problems = [p for split in MBPP_RANGES for p in task.load(split)]
        right = task.score(problems, [task.reference_response(p) for p in problems])
        sample = problems[::5]
        stubs = [f"def {p.reference['entry_point']}(*args, **kwargs):\n    return None\n"
                 for p in sample]
        wrong = task.score(sample, stubs)
    assert all(v.detail.startswith(f"tier={tier};") for v in right)
    failures = [(p.id, v.reason, v.detail) for p, v in zip(problems, right) if v.reason != CORRECT]
    assert len(problems) == 974 and failures == []
    assert collections.Counter(v.reason for v in wrong) == {WRONG_ANSWER: len(sample)}


@linux_only
@pytest.mark.parametrize("tier", ["bwrap", "rlimit"])
def test_standard_library_imports_work_in_every_tier(tier):
    _tier_or_skip(tier)
    from selfcorrect.verify.sandbox import Program, Sandbox

    modules = ["textwrap", "glob", "shutil", "signal", "subprocess", "email.mime.text",
               "json.decoder", "concurrent.futures", "xml.etree.ElementTree", "decimal",
               "fractions", "statistics", "string", "unicodedata", "zlib", "csv", "asyncio"]
    with Sandbox(tier=tier, timeout_s=30, workers=2) as box:
        results = box.run([Program(code=f"import {m}\n") for m in modules])
    assert [(m, r.status) for m, r in zip(modules, results)] == [(m, "passed") for m in modules], [
        (m, r.detail) for m, r in zip(modules, results) if not r.passed]
