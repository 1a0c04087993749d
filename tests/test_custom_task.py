import json
import time

import pytest

from selfcorrect.config import Config
from selfcorrect.tasks import build_task
from selfcorrect.tasks.base import TIMEOUT, VERIFIER_ERROR, Problem
from selfcorrect.train import Trainer
from tiny import tiny_model, tiny_tokenizer

SCORER = '''
import os
import signal
import time


def score(problem, response):
    if "boom" in response:
        raise RuntimeError("scorer bug")
    return problem.reference in response


def moody(problem, response):
    """Hangs, hangs deaf to the soft deadline, dies or answers nonsense, as the response asks."""
    if response == "hang":
        while True:
            time.sleep(1)
    if response == "deaf":
        signal.signal(signal.SIGALRM, signal.SIG_IGN)
        while True:
            time.sleep(1)
    if response == "die":
        os._exit(3)
    if response == "yes":
        return "yes"
    if response == "0.7":
        return 0.7
    return problem.reference in response
'''


@pytest.fixture()
def files(tmp_path):
    rows = [{"id": f"p{i}", "question": f"say {w}", "answer": w} for i, w in enumerate(["ab", "cd", "ef", "gh"])]
    for split in ("train", "test"):
        (tmp_path / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "scoring.py").write_text(SCORER)
    return tmp_path


def options(files):
    return {"train_path": str(files / "train.jsonl"), "test_path": str(files / "test.jsonl"),
            "scorer": f"{files / 'scoring.py'}:score", "prompt": "Please {question}."}


def test_custom_task_loads_prompts_and_scores(files):
    task = build_task("custom", options(files))
    problems = task.load("train")
    assert [p.id for p in problems] == ["p0", "p1", "p2", "p3"]
    assert task.first_turn(problems[0]) == [{"role": "user", "content": "Please say ab."}]
    verdicts = task.score(problems[:3], ["it is ab", "no", "boom"])
    assert [v.reward for v in verdicts] == [1.0, 0.0, None]
    assert verdicts[2].reason == VERIFIER_ERROR and "scorer bug" in verdicts[2].detail


def test_custom_task_errors_name_file_line_and_field(files):
    bad = files / "bad.jsonl"
    bad.write_text('{"question": "q", "answer": "a"}\n{"question": "q2"}\n')
    task = build_task("custom", dict(options(files), train_path=str(bad)))
    with pytest.raises(ValueError, match=r"bad.jsonl:2: missing field 'answer'"):
        task.load("train")
    with pytest.raises(ValueError, match="no function 'nope'"):
        build_task("custom", dict(options(files), scorer=f"{files / 'scoring.py'}:nope"))
    with pytest.raises(ValueError, match="unknown task"):
        build_task("nosuchtask")


def test_a_hanging_or_crashing_scorer_costs_one_verdict_not_the_run(files):
    opts = dict(options(files), scorer=f"{files / 'scoring.py'}:moody", timeout_s=1, workers=2)
    p = Problem("1", "q", "ab")
    with build_task("custom", opts) as task:
        assert [v.reward for v in task.score([p, p], ["ab", "cd"])] == [1.0, 0.0]  # workers started: not timed
        start = time.monotonic()
        verdicts = task.score([p, p, p, p], ["hang", "deaf", "die", "ab"])
        assert time.monotonic() - start < 1 + 2 + 2  # deadline + kill grace + a busy machine's slack
    assert [(v.reward, v.reason) for v in verdicts] == [
        (None, TIMEOUT), (None, TIMEOUT), (None, VERIFIER_ERROR), (1.0, "correct")]
    assert all("moody" in v.detail for v in verdicts[:3])
    assert task.stats[TIMEOUT] == 2 and task.stats[VERIFIER_ERROR] == 1


def test_a_scorer_returning_the_wrong_type_is_named(files):
    opts = dict(options(files), scorer=f"{files / 'scoring.py'}:moody")
    p = Problem("1", "q", "ab")
    with build_task("custom", opts) as task:
        verdicts = task.score([p, p], ["yes", "0.7"])
    for verdict, shown in zip(verdicts, ("'yes'", "0.7")):
        assert (verdict.reward, verdict.reason) == (None, VERIFIER_ERROR)
        assert "moody" in verdict.detail and shown in verdict.detail, verdict.detail


def test_a_timeout_reward_of_zero_scores_a_hang_as_wrong(files):
    opts = dict(options(files), scorer=f"{files / 'scoring.py'}:moody", timeout_s=1, timeout_reward=0.0)
    with build_task("custom", opts) as task:
        verdict, = task.score([Problem("1", "q", "ab")], ["hang"])
    assert (verdict.reward, verdict.reason) == (0.0, TIMEOUT)


@pytest.mark.parametrize("spec,named", [
    ("no_such_module_xyz:score", "no_such_module_xyz"),
    ("{files}/missing.py:score", "missing.py"),
    ("{files}/broken.py:score", "broken.py"),
    ("{files}/scoring.py:nope", "no function 'nope'"),
    ("json:nope", "no function 'nope'"),
    ("score", "expected 'module:function'"),
])
def test_a_scorer_that_cannot_be_imported_fails_at_build_time(files, spec, named):
    (files / "broken.py").write_text("def score(problem, response)\n    return True\n")
    with pytest.raises(ValueError) as info:
        build_task("custom", dict(options(files), scorer=spec.format(files=files)))
    message = str(info.value)
    assert named in message and "\n" not in message, message


def test_builtin_scorers():
    task = build_task("custom", {"scorer": "last_number"})
    p = Problem("1", "q", "12")
    assert [v.reward for v in task.score([p, p, p], ["so 3 then 12", "12 or 13", "none"])] == [1.0, 0.0, 0.0]


def test_trains_two_steps_on_a_custom_task(files, tmp_path):
    cfg = Config()
    cfg.task.name, cfg.task.options = "custom", options(files)
    cfg.run.output_dir, cfg.run.progress = str(tmp_path / "run"), False
    cfg.model.device = "cpu"
    cfg.rollout.max_new_tokens = 4
    cfg.rollout.samples_per_problem = 2
    cfg.optim.problems_per_step = 2
    cfg.algo.stage1_steps, cfg.algo.stage2_steps = 1, 1
    tok = tiny_tokenizer()
    with build_task("custom", cfg.task.options) as task:
        history = Trainer(cfg, task, model=tiny_model(tok), tokenizer=tok).train()
    assert [m["stage"] for m in history] == [1, 2]
    assert (tmp_path / "run" / "final" / "config.json").exists()
