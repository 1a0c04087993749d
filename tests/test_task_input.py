"""Task input that used to crash or mislead is refused with one clear line naming the file.

MBPP splits files of the wrong shape, custom prompt templates that use attribute access, the
custom task's error for a split it does not have, and last_number references that are not
numbers: each is a ValueError at load (exit 2 from the CLI), never a traceback or a run in
which every check silently fails.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from selfcorrect import models
from selfcorrect.cli import main
from selfcorrect.tasks import build_task
from selfcorrect.tasks.code import build as build_code


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def mbpp_row(task_id):
    return {"task_id": task_id, "text": f"Write f{task_id}.", "code": f"def f{task_id}(x):\n    return x",
            "test_list": [f"assert f{task_id}(1) == 1"], "test_setup_code": "", "challenge_test_list": []}


@pytest.fixture
def mbpp_file(tmp_path) -> Path:
    return write_jsonl(tmp_path / "mbpp.jsonl", [mbpp_row(i) for i in range(1, 13)])


# ----------------------------------------------------------------------------- 1. MBPP splits_path

BAD_SPLITS = [
    ("top-level-list", [1, 2, 3], "expected a JSON object of splits", "got list"),
    ("ranges-a-list", {"ranges": ["1", "3"]}, "'ranges' must be an object", "got list"),
    ("ranges-bounds-strings", {"ranges": {"test": ["1", "3"]}}, "'ranges'.test must be two integer task ids",
     "['1', '3']"),
    ("ranges-three-bounds", {"ranges": {"test": [1, 2, 3]}}, "'ranges'.test must be two integer task ids",
     "[1, 2, 3]"),
    ("ranges-bool-bound", {"ranges": {"test": [True, 3]}}, "'ranges'.test must be two integer task ids",
     "[True, 3]"),
    ("ranges-not-a-list", {"ranges": {"test": 11}}, "'ranges'.test must be two integer task ids", "11"),
]


@pytest.mark.parametrize("spec, needle, detail", [c[1:] for c in BAD_SPLITS], ids=[c[0] for c in BAD_SPLITS])
def test_a_malformed_mbpp_splits_file_is_a_value_error_naming_it(spec, needle, detail, mbpp_file, tmp_path):
    splits = tmp_path / "splits.json"
    splits.write_text(json.dumps(spec))
    task = build_code("mbpp", data_path=str(mbpp_file), splits_path=str(splits))
    with pytest.raises(ValueError) as info:
        task.load("test")
    message = str(info.value)
    assert str(splits) in message and needle in message and detail in message, message
    assert "\n" not in message


def test_well_formed_mbpp_ranges_still_load(mbpp_file, tmp_path):
    splits = tmp_path / "splits.json"
    splits.write_text(json.dumps({"ranges": {"test": [11, 12]}}))
    task = build_code("mbpp", data_path=str(mbpp_file), splits_path=str(splits))
    assert [p.id for p in task.load("test")] == ["mbpp/11", "mbpp/12"]
    with pytest.raises(ValueError, match="no split 'train'"):
        task.load("train")


# ----------------------------------------------------------------------------- the custom task


def custom(tmp_path, rows, **options):
    data = write_jsonl(tmp_path / "data.jsonl", rows)
    return data, build_task("custom", {"test_path": str(data), **options})


ROW = {"id": "a", "question": "1+1?", "answer": "2", "info": {"lvl": 1}}


# ----------------------------------------------------------------------------- 2. prompt templates


@pytest.mark.parametrize("prompt, row, detail", [
    ("Level {info.lvl}: {question}", ROW, "'dict' object has no attribute 'lvl'"),  # AttributeError
    ("First digit {answer[0]}: {question}", {**ROW, "answer": 2}, "not subscriptable"),  # TypeError
    ("{question:d}", ROW, "Unknown format code"),  # ValueError, as before
    ("{0} {question}", ROW, ""),  # IndexError, as before
], ids=["attribute", "index-a-number", "format-spec", "positional"])
def test_a_prompt_template_that_cannot_format_a_row_is_a_value_error(prompt, row, detail, tmp_path):
    data, task = custom(tmp_path, [row], prompt=prompt)
    with pytest.raises(ValueError, match=re.escape(f"{data}:1: prompt template {prompt!r} is malformed")) as info:
        task.load("test")
    assert detail in str(info.value)


def test_a_prompt_template_with_item_access_that_works_still_works(tmp_path):
    _, task = custom(tmp_path, [ROW], prompt="Level {info[lvl]}: {question}")
    assert task.load("test")[0].question == "Level 1: 1+1?"


# ----------------------------------------------------------------------------- 3. a split without a file


def test_a_split_the_custom_task_lacks_names_options_that_exist(tmp_path):
    _, task = custom(tmp_path, [ROW])
    with pytest.raises(ValueError, match="no file for split 'validation'") as info:
        task.load("validation")
    message = str(info.value)
    assert "validation_path" not in message
    assert "train_path" in message and "test_path" in message
    # every option the message names is one the task accepts; the one it used to name is not
    for option in re.findall(r"\b(\w+_path)\b", message):
        build_task("custom", {option: str(tmp_path / "data.jsonl")})
    with pytest.raises(ValueError, match="unknown option 'validation_path'"):
        build_task("custom", {"validation_path": str(tmp_path / "data.jsonl")})


def test_a_known_split_without_its_file_names_its_option(tmp_path):
    _, task = custom(tmp_path, [ROW])
    with pytest.raises(ValueError, match="no file for split 'train'; set task option train_path"):
        task.load("train")


# ----------------------------------------------------------------------------- 4. last_number references


@pytest.mark.parametrize("answer", ["two", "", "1,000", True, [2], {"n": 2}, "nan", "inf", 10 ** 400],
                         ids=["word", "empty", "thousands-comma", "bool", "list", "object", "nan", "inf",
                              "past-float-range"])
def test_last_number_refuses_a_reference_that_is_not_a_number_at_load(answer, tmp_path):
    rows = [ROW, {"id": "b", "question": "2+2?", "answer": answer}]
    data, task = custom(tmp_path, rows, scorer="last_number")
    with pytest.raises(ValueError, match=re.escape(f"{data}:2: field 'answer' must be a number for scorer "
                                                   "last_number")):
        task.load("test")


def test_last_number_accepts_numbers_and_numeric_text(tmp_path):
    rows = [{"id": str(i), "question": "q", "answer": a} for i, a in enumerate([2, "2", 2.5, "-3", " 7 ", "1e3"])]
    _, task = custom(tmp_path, rows, scorer="last_number")
    problems = task.load("test")
    verdicts = task.score(problems[:4], ["it is 2", "2", "2.5", "-3"])
    assert [v.reward for v in verdicts] == [1.0, 1.0, 1.0, 1.0]


def test_exact_still_accepts_any_answer(tmp_path):
    _, task = custom(tmp_path, [{**ROW, "answer": "two"}], scorer="exact")
    assert task.load("test")[0].reference == "two"


# ----------------------------------------------------------------------------- the same through the CLI


@pytest.fixture
def no_model_loading(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setattr(models, "resolve_model_path",
                        lambda *a, **k: pytest.fail("a model was loaded before the input was checked"))


def cli_cases(tmp: Path) -> dict[str, tuple[list[str], list[str]]]:
    good = write_jsonl(tmp / "good.jsonl", [ROW])
    splits = tmp / "splits.json"
    splits.write_text(json.dumps({"ranges": {"test": ["1", "3"]}}))
    mbpp = write_jsonl(tmp / "mbpp.jsonl", [mbpp_row(i) for i in range(1, 13)])
    words = write_jsonl(tmp / "words.jsonl", [ROW, {"id": "b", "question": "2+2?", "answer": "two"}])
    custom_argv = ["--task", "custom"]
    return {
        "mbpp-splits": (["--task", "mbpp", "--data", str(mbpp), "--task.options", f"{{splits_path: {splits}}}"],
                        ["splits.json", "'ranges'.test must be two integer task ids"]),
        "prompt-attribute": (custom_argv + ["--data", str(good), "--task.options.prompt", "{info.lvl}: {question}"],
                             ["good.jsonl:1: prompt template", "malformed"]),
        "split-without-option": (custom_argv + ["--data", str(good), "--task.test_split", "validation"],
                                 ["no file for split 'validation'", "test_path"]),
        "last-number-word": (custom_argv + ["--data", str(words), "--task.options.scorer", "last_number"],
                             ["words.jsonl:2: field 'answer' must be a number"]),
    }


@pytest.mark.parametrize("case", ["mbpp-splits", "prompt-attribute", "split-without-option", "last-number-word"])
def test_the_cli_refuses_each_with_one_line_and_exit_2(case, tmp_path, capsys, no_model_loading):
    argv, needles = cli_cases(tmp_path)[case]
    code = main(["eval", "--model", "demo", "--output", str(tmp_path / "run"), "--limit", "1",
                 "--run.progress", "false"] + argv)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("selfcorrect eval: error: "), err
    assert "Traceback" not in err and "validation_path" not in err
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"
