"""Task data from the Hugging Face hub, offline: the standard ids are what a task asks for when
no local file is given, and a folder written by `save_to_disk` goes through the same loader as
a hub id (no network anywhere in this file). Also: load errors are one line naming the source,
and loading starts no verifier."""

import sys
import types

import pytest

from selfcorrect.tasks import build_task


MATH_ROWS = [
    {"problem": "What is $1+1$?", "solution": "It is $\\boxed{2}$.", "answer": "2", "subject": "Algebra",
     "level": 1, "unique_id": "test/algebra/1.json"},
    {"problem": "What is $\\frac{1}{2}+\\frac{1}{2}$?", "solution": "$\\boxed{1}$", "answer": "1",
     "subject": "Prealgebra", "level": 2, "unique_id": "test/prealgebra/2.json"},
]
HENDRYCKS_ROWS = [{"problem": "Compute $3!$.", "level": "Level 1", "type": "Counting & Probability",
                   "solution": "$3! = \\boxed{6}$."}]
GSM8K_ROWS = [{"question": "Tom has 3 apples and buys 4. How many?", "answer": "3+4=<<3+4=7>>7\n#### 7"}]


def mbpp_row(task_id):
    return {"task_id": task_id, "text": f"Write a function f{task_id} that returns x.",
            "code": f"def f{task_id}(x):\n    return x", "test_list": [f"assert f{task_id}(1) == 1"],
            "test_setup_code": "", "challenge_test_list": []}


def save(tmp_path, name, splits):
    """A DatasetDict (or, given a list, a single Dataset) saved the way a user would save one
    (needs the real `datasets`, a test dependency; the stand-in tests below do not)."""
    datasets = pytest.importorskip("datasets")
    folder = tmp_path / name
    if isinstance(splits, list):
        datasets.Dataset.from_list(splits).save_to_disk(str(folder))
    else:
        datasets.DatasetDict({k: datasets.Dataset.from_list(v) for k, v in splits.items()}).save_to_disk(str(folder))
    return str(folder)


# ----------------------------------------------------------------------------- save_to_disk folders


def test_math500_from_a_saved_dataset(tmp_path):
    folder = save(tmp_path, "m500", MATH_ROWS)  # a plain Dataset serves whichever split is asked
    problems = build_task("math500", {"hf_id": folder}).load("test")
    assert [(p.id, p.reference, p.meta["level"]) for p in problems] == [
        ("test/algebra/1.json", "2", 1), ("test/prealgebra/2.json", "1", 2)]


def test_math_and_gsm8k_splits_from_a_saved_dataset_dict(tmp_path):
    folder = save(tmp_path, "math", {"train": HENDRYCKS_ROWS, "test": MATH_ROWS})
    task = build_task("math", {"hf_id": folder})
    train = task.load("train")
    assert [(p.reference, p.meta["subject"]) for p in train] == [("6", "Counting & Probability")]
    assert len(task.load("test")) == 2

    folder = save(tmp_path, "gsm", {"train": GSM8K_ROWS, "test": GSM8K_ROWS})
    problems = build_task("gsm8k", {"hf_id": folder}).load("test")
    assert [(p.id, p.reference) for p in problems] == [("gsm8k/test/1", "7")]


def test_a_local_file_wins_over_the_hub(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text('{"problem": "p", "answer": "3"}\n')
    folder = save(tmp_path, "m500", MATH_ROWS)
    assert [p.reference for p in build_task("math500", {"test_path": str(path), "hf_id": folder}).load("test")] == ["3"]


def test_mbpp_from_a_saved_dataset_dict(tmp_path):
    folder = save(tmp_path, "mbpp", {"prompt": [mbpp_row(i) for i in (2, 3, 4)], "test": [mbpp_row(11)]})
    task = build_task("mbpp", {"hf_id": folder})
    problems = task.load("test")
    assert [p.id for p in problems] == ["mbpp/11"]
    prompt = task.first_turn(problems[0])[0]["content"]
    assert prompt.count("[BEGIN]") == 4 and "Write a function f11" in prompt  # 3 shots from the prompt split


def test_a_missing_split_names_the_folder_and_the_splits(tmp_path):
    folder = save(tmp_path, "gsm", {"train": GSM8K_ROWS})
    with pytest.raises(ValueError, match=r"gsm: no split 'test' \(splits: train\)"):
        build_task("gsm8k", {"hf_id": folder}).load("test")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="not a folder written by save_to_disk") as info:
        build_task("math500", {"hf_id": str(tmp_path / "empty")}).load("test")
    assert "\n" not in str(info.value)


# ----------------------------------------------------------------------------- the standard hub ids


@pytest.fixture()
def hub(monkeypatch):
    """A stand-in `datasets` module that records what a task asks the hub for."""
    calls = []
    rows = {"HuggingFaceH4/MATH-500": MATH_ROWS, "EleutherAI/hendrycks_math": HENDRYCKS_ROWS,
            "openai/gsm8k": GSM8K_ROWS, "google-research-datasets/mbpp": [mbpp_row(i) for i in (2, 3, 4, 11)]}

    def load_dataset(hf_id, config=None, split=None):
        calls.append((hf_id, config, split))
        if hf_id not in rows:
            raise FileNotFoundError(f"Dataset '{hf_id}' doesn't exist on the Hub\nor cannot be accessed.")
        return rows[hf_id]

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    return calls


def test_standard_datasets_are_the_default(hub):
    build_task("math500").load("test")
    assert hub.pop() == ("HuggingFaceH4/MATH-500", None, "test")
    build_task("gsm8k").load("train")
    assert hub.pop() == ("openai/gsm8k", "main", "train")
    build_task("mbpp").load("test")
    assert hub.pop() == ("google-research-datasets/mbpp", "full", "test")
    task = build_task("math")
    assert len(task.load("train")) == 7  # one stand-in row per subject config
    assert [c[1] for c in hub[-7:]] == ["algebra", "counting_and_probability", "geometry", "intermediate_algebra",
                                       "number_theory", "prealgebra", "precalculus"]
    assert {c[0] for c in hub[-7:]} == {"EleutherAI/hendrycks_math"}
    task.load("test")
    assert hub.pop() == ("HuggingFaceH4/MATH-500", None, "test")


def test_hub_ids_and_configs_are_configurable(hub):
    build_task("math", {"hf_id": "EleutherAI/hendrycks_math", "hf_config": "algebra, geometry"}).load("train")
    assert hub[-2:] == [("EleutherAI/hendrycks_math", "algebra", "train"), ("EleutherAI/hendrycks_math", "geometry", "train")]
    with pytest.raises(ValueError, match=r"could not load Hugging Face dataset 'me/nothing' \(config None, split 'test'\)") as info:
        build_task("math500", {"hf_id": "me/nothing"}).load("test")
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("name", ["math500", "gsm8k", "mbpp", "math"])
def test_without_the_datasets_package_the_error_says_how_to_get_it(monkeypatch, name):
    monkeypatch.setitem(sys.modules, "datasets", None)  # import datasets -> ImportError
    task = build_task(name)  # building needs no data
    with pytest.raises(ValueError, match=r"pip install datasets") as info:
        task.load("test")
    assert "\n" not in str(info.value)


# ----------------------------------------------------------------------------- load errors, before any model work


@pytest.mark.parametrize("name,options", [
    ("math500", {"test_path": "{tmp}/nope.jsonl"}),
    ("math", {"test_path": "{tmp}"}),
    ("gsm8k", {"test_path": "{tmp}/data.csv"}),
    ("mbpp", {"data_path": "{tmp}/nope.jsonl"}),
    ("humaneval", {"data_path": "{tmp}/nope.jsonl"}),
    ("custom", {"test_path": "{tmp}/nope.jsonl"}),
])
def test_load_errors_are_one_line_naming_the_path(tmp_path, name, options):
    (tmp_path / "data.csv").write_text("a,b\n")
    options = {k: v.format(tmp=tmp_path) for k, v in options.items()}
    task = build_task(name, options)
    with pytest.raises(ValueError) as info:
        task.load("test")
    message = str(info.value)
    assert str(tmp_path) in message and "\n" not in message, message


def test_loading_starts_no_verifier(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text('{"problem": "p", "answer": "3", "question": "q"}\n')
    math = build_task("math500", {"test_path": str(path)})
    custom = build_task("custom", {"test_path": str(path), "scorer": "json:loads"})
    assert math.load("test") and custom.load("test")
    assert math._pool is None and custom._pool is None
