"""MATH / MATH500 / GSM8K tasks: loading (local files, clear errors), prompts, scoring."""

import json
import os
import time
from pathlib import Path

import pytest

from selfcorrect.tasks import build_task
from selfcorrect.tasks.base import CORRECT, NO_ANSWER, TIMEOUT, VERIFIER_ERROR, WRONG_ANSWER, Problem
from selfcorrect.tasks.math import MATH_CORRECTION, MATH_PROMPT, MathTask, build
SCORE_MD = Path(__file__).resolve().parents[2] / "shared" / "SCORE.md"  # beside the checkout, like the data


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def final(answer: str) -> str:
    return f"Some steps.\nFinal Answer: The final answer is ${answer}$. I hope it is correct."


# ----------------------------------------------------------------------------- loading


def test_shared_data_loads_with_the_known_quirks(shared_data):
    task = build("math", train_path=shared_data / "math_train.jsonl", test_path=shared_data / "math500_test.jsonl")
    train, test = task.load("train"), task.load("test")
    assert (len(train), len(test)) == (7498, 500)  # two empty-answer rows skipped, and counted
    assert task.stats["skipped_rows"] == 2
    unknown = [p for p in train if p.meta["level"] is None]
    assert len(unknown) == 2 and {p.id for p in unknown} == {"train/geometry/377.json", "train/geometry/471.json"}
    assert test[0].id == "test/precalculus/807.json" and test[0].meta == {"level": 2, "subject": "Precalculus"}
    assert all(p.reference for p in train + test)
    assert len({p.id for p in train}) == len(train)

    gsm = build("gsm8k", train_path=shared_data / "gsm8k_train.jsonl", test_path=shared_data / "gsm8k_test.jsonl")
    g_train, g_test = gsm.load("train"), gsm.load("test")
    assert (len(g_train), len(g_test)) == (7473, 1319)
    assert g_test[0].reference == "18" and g_test[0].id == "gsm8k/test/1"

    m500 = build("math500", test_path=shared_data / "math500_test.jsonl")
    assert [p.id for p in m500.load("test")] == [p.id for p in test]


def test_without_datasets_the_hub_default_says_how_to_install_it(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "datasets", None)  # import datasets -> ImportError
    with pytest.raises(ValueError, match=r"pip install datasets") as info:
        build("math").load("train")
    assert "EleutherAI/hendrycks_math" in str(info.value) and "\n" not in str(info.value)


def test_splits_are_checked():
    with pytest.raises(ValueError, match="no split 'train'"):
        build("math500").load("train")
    with pytest.raises(ValueError, match="only a test split"):
        build("math500", train_path="x.jsonl")


def test_missing_field_names_file_line_and_field(tmp_path):
    path = write_jsonl(tmp_path / "bad.jsonl", [{"problem": "1+1?", "answer": "2"}, {"answer": "3"}])
    with pytest.raises(ValueError, match=r"bad\.jsonl:2: missing field 'problem'"):
        build("math", train_path=path).load("train")
    path = write_jsonl(tmp_path / "noanswer.jsonl", [{"problem": "1+1?"}])
    with pytest.raises(ValueError, match=r"noanswer\.jsonl:1: missing field 'answer'"):
        build("math", train_path=path).load("train")
    path = write_jsonl(tmp_path / "gsm.jsonl", [{"question": "q", "answer": "4"}])
    with pytest.raises(ValueError, match=r"gsm\.jsonl:1: field 'answer' has no '####"):
        build("gsm8k", test_path=path).load("test")
    path = write_jsonl(tmp_path / "gsm2.jsonl", [{"question": "q", "answer": "#### 4"}, {"q": "x"}])
    with pytest.raises(ValueError, match=r"gsm2\.jsonl:2: missing field 'question'"):
        build("gsm8k", test_path=path).load("test")


def test_malformed_files_fail_loudly(tmp_path):
    bad_json = tmp_path / "broken.jsonl"
    bad_json.write_text('{"problem": "a", "answer": "1"}\n{"problem": \n')
    with pytest.raises(ValueError, match=r"broken\.jsonl:2: not valid JSON"):
        build("math", train_path=bad_json).load("train")
    with pytest.raises(ValueError, match="does not exist"):
        build("math", train_path=tmp_path / "nope.jsonl").load("train")
    (tmp_path / "data.csv").write_text("a,b\n")
    with pytest.raises(ValueError, match="expected a .jsonl, .jsonl.gz or .parquet"):
        build("math", train_path=tmp_path / "data.csv").load("train")
    dup = write_jsonl(tmp_path / "dup.jsonl", [{"problem": "a", "answer": "1", "unique_id": "u"},
                                               {"problem": "b", "answer": "2", "unique_id": "u"}])
    with pytest.raises(ValueError, match=r"dup\.jsonl:2: id 'u' already used on line 1"):
        build("math", train_path=dup).load("train")
    empty = write_jsonl(tmp_path / "empty.jsonl", [{"problem": "a", "answer": " "}])
    with pytest.raises(ValueError, match="no usable problems"):
        build("math", train_path=empty).load("train")


def test_answer_from_solution_and_levels(tmp_path):
    path = write_jsonl(tmp_path / "hendrycks.jsonl", [
        {"problem": "p1", "solution": "so it is $\\boxed{\\frac{1}{2}}$.", "level": "Level 3", "type": "Algebra"},
        {"problem": "p2", "solution": "Thus $\\boxed{}$.", "level": "Level 5"},  # empty: skipped
        {"problem": "p3", "answer": "7", "level": "Level ?", "subject": "Geometry"},
    ])
    task = build("math", train_path=path)
    problems = task.load("train")
    assert [(p.reference, p.meta["level"], p.meta["subject"]) for p in problems] == [
        ("\\frac{1}{2}", 3, "Algebra"), ("7", None, "Geometry")]
    assert task.stats["skipped_rows"] == 1
    assert problems[0].id == "math/train/1"


def test_parquet(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"problem": ["a", "b"], "answer": ["1", "2"]}), path)
    assert [p.reference for p in build("math500", test_path=path).load("test")] == ["1", "2"]


def test_hugging_face_stand_in_without_network(monkeypatch):
    """The hf_id code path, with a stand-in for the datasets package (tests stay offline)."""
    import sys
    import types

    calls = []

    def load_dataset(hf_id, config, split):
        calls.append((hf_id, config, split))
        return [{"question": "2+2?", "answer": "4 apples\n#### 4"}]

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    problems = build("gsm8k", hf_id="openai/gsm8k", hf_config="main").load("test")
    assert calls == [("openai/gsm8k", "main", "test")]
    assert [(p.question, p.reference) for p in problems] == [("2+2?", "4")]


def test_numeric_answers_are_accepted(tmp_path):
    path = write_jsonl(tmp_path / "n.jsonl", [{"problem": "p", "answer": 42}, {"problem": "q", "answer": ["x"]}])
    with pytest.raises(ValueError, match=r"n\.jsonl:2: field 'answer' must be a string"):
        build("math", train_path=path).load("train")
    path = write_jsonl(tmp_path / "m.jsonl", [{"problem": "p", "answer": 42}])
    assert build("math", train_path=path).load("train")[0].reference == "42"


# ----------------------------------------------------------------------------- prompts


def test_default_prompts_are_the_papers():
    task = build("gsm8k")
    assert task.correction_instruction == MATH_CORRECTION
    if SCORE_MD.is_file():  # the verbatim source, where this checkout has it
        text = SCORE_MD.read_text()
        assert f'MATH first turn: "{MATH_PROMPT}"' in text
        assert f'MATH correction instruction: "{MATH_CORRECTION}"' in text
    message = task.first_turn(Problem("p", "What is 2+2?", "4"))
    assert message == [{"role": "user", "content": MATH_PROMPT + "\n\nProblem:\nWhat is 2+2?"}]


def test_prompts_can_be_overridden():
    task = build("math", prompt="Solve: {question} Box it.", correction_instruction="Check again.")
    assert task.first_turn(Problem("p", "1+1", "2"))[0]["content"] == "Solve: 1+1 Box it."
    assert task.correction_instruction == "Check again."
    assert build("math", prompt="Be brief.").first_turn(Problem("p", "1+1", "2"))[0]["content"].startswith("Be brief.")
    with pytest.raises(ValueError, match="prompt"):
        build("math", prompt="  ")


def test_options_are_validated():
    with pytest.raises(ValueError, match="unknown option 'no_such_option'"):
        build("math", no_such_option=1)
    with pytest.raises(ValueError, match="task 'gsm8k': unknown option 'no_such_option'; options: train_path"):
        build_task("gsm8k", {"no_such_option": 1})
    with pytest.raises(ValueError, match="timeout_s must be > 0"):
        build("math", timeout_s=0)
    with pytest.raises(ValueError, match="workers must be >= 0"):
        build("math", workers=-1)
    with pytest.raises(ValueError, match="max_memory_mb' was renamed; use 'memory_mb'"):
        build("math", max_memory_mb=512)
    with pytest.raises(ValueError):
        build("algebra")
    task = build_task("math500", {"timeout_s": 3, "workers": 0, "memory_mb": 512})
    assert isinstance(task, MathTask) and (task.timeout_s, task.workers, task.memory_mb) == (3.0, 0, 512)


# ----------------------------------------------------------------------------- scoring


@pytest.fixture(scope="module")
def task():
    with build("math", workers=2, timeout_s=30) as t:  # generous: the test machine may be busy
        yield t


def test_score_reasons(task):
    problems = [
        Problem("a", "q", "\\frac{1}{2}"),  # string match
        Problem("b", "q", "\\frac{1}{2}"),  # math-verify
        Problem("c", "q", "5"),  # wrong
        Problem("d", "q", "5"),  # no answer
        Problem("e", "q", "5"),  # refused by the pre-check: wrong, decided in-process
        Problem("f", "q", "9^{9^{9^{9}}}"),  # a reference we refuse to check
        Problem("h", "q", "70000"),  # GSM8K-style, with units and separators
    ]
    responses = [final("\\dfrac{1}{2}"), "so \\boxed{0.5}", final("6"), "I give up.", final("9^{9^{9^{9}}}"),
                 final("5"), "The final answer is \\$70,000 dollars."]
    verdicts = task.score(problems, responses)
    got = [(v.reward, v.reason) for v in verdicts]
    assert got == [(1.0, CORRECT), (1.0, CORRECT), (0.0, WRONG_ANSWER), (0.0, NO_ANSWER), (0.0, WRONG_ANSWER),
                   (None, VERIFIER_ERROR), (1.0, CORRECT)]
    assert [v.extracted for v in verdicts][:4] == ["\\dfrac{1}{2}", "0.5", "6", None]
    assert "refused" in verdicts[4].detail
    assert task.stats[VERIFIER_ERROR] >= 1 and task.stats["rejected"] >= 1


def test_a_hanging_check_gives_timeout_not_zero():
    with build("math", workers=1, timeout_s=1.0) as task:
        task.score([Problem("w", "q", "1")], [final("1/1")])  # start the worker: start-up is not timed
        start = time.monotonic()
        verdict, = task.score([Problem("g", "q", "5")], [final("\\sum_{k=1}^{200} k^{k^{k}}")])
        assert time.monotonic() - start < 15
        assert (verdict.reward, verdict.reason) == (None, TIMEOUT)
        assert task.stats[TIMEOUT] == 1


def test_tiny_exact_answers_are_wrong_not_unverifiable(task):
    """The review's case: 1/2006! against 1/2004! was refused as a verifier error (the
    reference has a factorial above the pre-check's limit) and math-verify would have called it
    equal (both round to 0). Plain numbers are now compared exactly, in-process."""
    gold = "\\frac{1}{2004!}"
    problems = [Problem(str(i), "q", gold) for i in range(4)]
    responses = [final("\\frac{1}{2006!}"), final("\\frac{1}{2004 \\cdot 2003!}"), final("10^{-30}"),
                 final("9^{9^{9^{9}}}")]
    verdicts = task.score(problems, responses)
    assert [(v.reward, v.reason) for v in verdicts[:3]] == [(0.0, WRONG_ANSWER), (1.0, CORRECT), (0.0, WRONG_ANSWER)]
    # A tower against that reference is not a plain number within budget: the pre-check still
    # refuses the reference, so it is a counted verifier error, decided without sympy.
    assert (verdicts[3].reward, verdicts[3].reason) == (None, VERIFIER_ERROR)


def test_a_timeout_reward_of_zero_scores_a_hang_as_wrong():
    with build("math", workers=1, timeout_s=1.0, timeout_reward=0.0) as task:
        verdict, = task.score([Problem("g", "q", "5")], [final("\\sum_{k=1}^{200} k^{k^{k}}")])
    assert (verdict.reward, verdict.reason) == (0.0, TIMEOUT)


def test_repeated_answers_are_checked_once(task):
    before = task.stats["sympy"] + task.stats["cache_hit"]
    problems = [Problem(str(i), "q", "\\frac{2}{4}") for i in range(6)]
    verdicts = task.score(problems, [final("0.5")] * 6)
    assert all(v.reward == 1.0 for v in verdicts)
    verdicts = task.score(problems[:2], [final("0.5")] * 2)
    assert all(v.reward == 1.0 for v in verdicts)
    assert task.stats["cache_hit"] >= 2 and task.stats["sympy"] + task.stats["cache_hit"] - before == 8


def test_score_rejects_caller_mistakes(task):
    with pytest.raises(ValueError, match="2 problems but 1 responses"):
        task.score([Problem("a", "q", "1"), Problem("b", "q", "2")], ["x"])
    with pytest.raises(TypeError, match="response 0"):
        task.score([Problem("a", "q", "1")], [None])


def test_close_leaves_no_worker_behind():
    task = build("math", workers=2)
    assert task.score([Problem("a", "q", "1/2")] * 2, [final("0.5"), final("0.25")])[0].reward == 1.0
    pids = task._pool.pids
    assert pids, "the verifier pool should have started"
    task.close()
    task.close()
    for pid in pids:
        assert not os.path.exists(f"/proc/{pid}")
        with pytest.raises(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
    # A later score starts a fresh pool rather than failing.
    assert task.score([Problem("a", "q", "1/2")], [final("0.50")])[0].reward == 1.0
    task.close()
