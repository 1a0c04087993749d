"""`selfcorrect compare`: the file, each unit's config, and a small comparison end to end
(every kind of method, then a re-run that skips finished units and finishes an interrupted one)."""

import json

import pytest
import yaml

from selfcorrect.compare import METHODS, is_finished, load_comparison, method_config, run_comparison, unit_dir


def write_comparison(tmp_path, model, methods, **extra) -> str:
    base = {
        "model": {"name": str(model), "device": "cpu"},
        "task": {"name": "arithmetic", "options": {"digits": 1, "ops": "+", "style": "chat", "n_test": 6}},
        "rollout": {"samples_per_problem": 2, "max_new_tokens": 4, "batch_size": 16},
        "algo": {"stage1_steps": 1, "stage2_steps": 1},
        "optim": {"problems_per_step": 3, "micro_batch_size": 8, "lr": 1e-3},
        "sft": {"batch_size": 4, "micro_batch_size": 4, "iterations": 2},
        "eval": {"bootstrap": 50, "batch_size": 16, "max_new_tokens": 4, "scaling_k": "1,2", "scaling_attempts": 2},
        "run": {"progress": False, "save_every": 1},
    }
    spec = {"title": "tiny", "output_dir": str(tmp_path / "cmp"), "seeds": [0], "base": base,
            "methods": methods, **extra}
    path = tmp_path / "compare.yaml"
    path.write_text(yaml.safe_dump(spec))
    return str(path)


def test_the_file_is_checked_before_anything_runs(tmp_path, saved_tiny):
    with pytest.raises(ValueError, match="unknown method 'scor'"):
        load_comparison(write_comparison(tmp_path, saved_tiny, ["scor"]))
    path = tmp_path / "bad.yaml"
    path.write_text("methodz: [score]\n")
    with pytest.raises(ValueError, match="unknown keys"):
        load_comparison(path)
    bad_override = write_comparison(tmp_path, saved_tiny, [{"star": {"sft": {"lrr": 1}}}])
    with pytest.raises(ValueError, match="sft.lrr"):
        load_comparison(bad_override)


def test_unit_configs_keep_the_budget_and_switch_one_thing(tmp_path, saved_tiny):
    c = load_comparison(write_comparison(tmp_path, saved_tiny, list(METHODS)), seeds=[3])
    score = method_config(c, "score", 3)
    assert score.run.seed == 3 and score.run.output_dir == str(unit_dir(c, "score", 3))
    no_stage1 = method_config(c, "score_no_stage1", 3)
    assert (no_stage1.algo.stage1_steps, no_stage1.algo.stage2_steps) == (0, 2)  # same number of updates
    assert method_config(c, "score_no_shaping", 3).algo.alpha == 0
    assert method_config(c, "score_offline_turn1", 3).algo.turn1 == "base"
    assert method_config(c, "score_star_stage2", 3).algo.stage2 == "star"
    assert method_config(c, "star_plus", 3).algo.method == "star_plus"
    assert method_config(c, "self_refine", 3).eval.method == "self_refine"


def test_a_small_comparison_runs_every_kind_of_method_and_resumes(tmp_path, saved_tiny):
    methods = ["base", "self_refine", "score", "star", "pair_sft", "single_turn", "score_offline_turn1"]
    path = write_comparison(tmp_path, saved_tiny, methods, scaling=["base"])
    c = load_comparison(path)
    md, html = run_comparison(c)
    assert md.exists() and html.exists()
    for m in methods:
        summary = json.loads((unit_dir(c, m, 0) / "summary.json").read_text())
        assert summary["done"] and summary["method"] == m and summary["label"] == METHODS[m][0]
        metrics = json.loads((unit_dir(c, m, 0) / "eval" / "metrics.json").read_text())["metrics"]
        assert metrics["n"] == 6 and 0 <= metrics["acc_t2"] <= 1
        assert is_finished(c, m, 0)
    for m in ("score", "single_turn", "score_offline_turn1"):
        assert json.loads((unit_dir(c, m, 0) / "summary.json").read_text())["gradient_updates"] == 2
    for m in ("star", "pair_sft"):  # a random model is never right: nothing to fine-tune on, and it says so
        summary = json.loads((unit_dir(c, m, 0) / "summary.json").read_text())
        lines = [json.loads(x) for x in (unit_dir(c, m, 0) / "metrics.jsonl").read_text().splitlines()]
        kept = sum(x.get("kept_rows", 0) for x in lines)
        assert summary["gradient_updates"] == (0 if kept == 0 else summary["gradient_updates"]) <= 2
        assert summary["episodes_sampled"] > 0
    assert (unit_dir(c, "base", 0) / "eval" / "scaling.json").exists()
    assert "Pair-SFT" in md.read_text() and "<img" in html.read_text()

    # an interrupted unit (evaluation lost) is finished again; the others are skipped untouched
    stamps = {m: (unit_dir(c, m, 0) / "summary.json").stat().st_mtime_ns for m in methods}
    (unit_dir(c, "score", 0) / "eval" / "metrics.json").unlink()
    run_comparison(load_comparison(path))
    assert is_finished(c, "score", 0)
    for m in methods:
        changed = (unit_dir(c, m, 0) / "summary.json").stat().st_mtime_ns != stamps[m]
        assert changed == (m == "score"), m
    steps = [json.loads(x)["step"] for x in (unit_dir(c, "score", 0) / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2]  # evaluated again, not trained again
