"""Reading comparison folders for the report, and the helper that fabricates them for every
report test: runs whose numbers follow from counts of transitions, so tables can be checked by
hand, plus the broken, unfinished and missing runs a live comparison folder really contains."""

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from selfcorrect.report import collect

TRANSITION_ORDER = ("cc", "ic", "ci", "ii")  # attempt 1 right/wrong -> attempt 2 right/wrong

# Hand-checkable numbers (100 problems each): per seed (c->c, i->c, c->i, i->i)
SCORE_SEEDS = {0: (50, 10, 2, 38), 1: (54, 6, 0, 40), 2: (50, 8, 4, 38)}
BASE_SEED = (40, 5, 15, 40)


def records_from_counts(counts: tuple[int, int, int, int], attempts: int = 2) -> list[dict]:
    """Problems whose first two attempts realise the given transition counts. A changed answer
    gets a new text, an unchanged one the same text (edit ratio 0); further attempts repeat attempt 2."""
    records = []
    for kind, count in zip(TRANSITION_ORDER, counts):
        for _ in range(count):
            i = len(records)
            first, second = float(kind[0] == "c"), float(kind[1] == "c")
            text1 = f"We add the numbers: {i} + 1 = {i + 1}. The answer is {i + 1}."
            text2 = text1 if first == second else f"Checking digit by digit, {i} + 1 = {i + 2}. Answer: {i + 2}."
            tries = [(text1, first), (text2, second)] + [(text2, second)] * (attempts - 2)
            records.append({"id": f"p{i}", "attempts": [
                {"text": t, "extracted": str(i), "reward": r} for t, r in tries]})
    return records


def metrics_from_counts(counts) -> dict:
    cc, ic, ci, ii = counts
    n = cc + ic + ci + ii
    m = {"n": n, "n_verifier_failed": 0, "acc_t1": (cc + ci) / n, "acc_t2": (cc + ic) / n,
         "delta": (ic - ci) / n, "delta_i_to_c": ic / n, "delta_c_to_i": ci / n, "edit_ratio": 0.2}
    intervals = {k: [m[k] - 0.05, m[k] + 0.05] for k in ("acc_t1", "acc_t2", "delta", "delta_i_to_c", "delta_c_to_i")}
    return {"metrics": m, "intervals": intervals}


def rl_curve(steps: int, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    rows = []
    for step in range(1, steps + 1):
        t1 = min(1.0, 0.5 + 0.1 * step / steps + rng.normal(0, 0.02))
        t2 = min(1.0, t1 + 0.08 * step / steps)
        rows.append({"step": step, "stage": 1 if step <= steps // 2 else 2, "acc_t1": t1, "acc_t2": t2,
                     "delta": t2 - t1, "reward_t1": t1, "reward_t2": t2, "kl_t1": 0.001 * step,
                     "kl_t2": 0.002 * step, "loss": -0.01 * rng.random()})
    return rows


def sft_curve(steps: int) -> list[dict]:
    return [{"step": s, "loss": 2.0 / s, "iteration": 1 + 3 * (s - 1) // steps} for s in range(1, steps + 1)]


def write_run(root: Path, method: str, seed: int, *, counts=None, label=None, done=True, curve=None,
              budget=(1280, 80, 600.0), attempts=2, scaling=None, evaluated=True) -> Path:
    """One <method>/seed-<s>/ folder as the comparison runner writes it."""
    folder = root / method / f"seed-{seed}"
    (folder / "eval").mkdir(parents=True, exist_ok=True)
    summary = {"method": method, "seed": seed, "done": done, "episodes_sampled": budget[0],
               "gradient_updates": budget[1], "train_seconds": budget[2]}
    if label:
        summary["label"] = label
    (folder / "summary.json").write_text(json.dumps(summary))
    if curve:
        (folder / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in curve))
    if counts and evaluated:
        (folder / "eval" / "metrics.json").write_text(json.dumps(metrics_from_counts(counts)))
        (folder / "eval" / "records.jsonl").write_text(
            "".join(json.dumps(r) + "\n" for r in records_from_counts(counts, attempts)))
    if scaling:
        (folder / "scaling.json").write_text(json.dumps(scaling))
    return folder


def scaling_result(shift: float) -> dict:
    return {"temperature": 0.7,
            "parallel": {"k": [1, 2, 4, 8], "samples": [2, 4, 8, 16], "acc": [0.5 + shift, 0.53 + shift, 0.55 + shift, 0.56 + shift]},
            "sequential": {"k": [1, 2, 4, 8], "samples": [2, 4, 8, 16], "acc": [0.52 + shift, 0.56 + shift, 0.6 + shift, 0.62 + shift]},
            "by_attempt": {"attempt": [1, 2, 3, 4, 5], "acc": [0.5 + shift, 0.55 + shift, 0.56 + shift, 0.56 + shift, 0.57 + shift]}}


def make_comparison(root: Path, *, quick: bool = False) -> Path:
    """A comparison mid-way: base and SCoRe finished (3 seeds of SCoRe), STaR still training,
    Pair-SFT trained but not evaluated, Self-Refine not started, one run with a corrupt metrics.json."""
    root.mkdir(parents=True, exist_ok=True)
    config = {"title": "SCoRe vs baselines (fabricated)", "quick": quick, "seeds": [0, 1, 2],
              "methods": ["base", "self_refine", "star", "pair_sft", "score", "single_turn"]}
    (root / "compare.yaml").write_text(yaml.safe_dump(config))
    write_run(root, "base", 0, counts=BASE_SEED, label="Base", budget=(0, 0, 0.0), attempts=5, scaling=scaling_result(0.0))
    for seed, counts in SCORE_SEEDS.items():
        write_run(root, "score", seed, counts=counts, label="SCoRe", curve=rl_curve(90, seed),
                  budget=(1280, 80, 600.0 + 60 * seed), scaling=scaling_result(0.05) if seed < 2 else None)
    write_run(root, "star", 0, counts=None, label="STaR", done=False, curve=sft_curve(20)[:12])
    write_run(root, "pair_sft", 0, counts=(45, 10, 5, 40), label="Pair-SFT", curve=sft_curve(30), evaluated=False)
    broken = write_run(root, "single_turn", 0, counts=(50, 5, 5, 40), curve=rl_curve(20, 7))
    (broken / "eval" / "metrics.json").write_text('{"metrics": {"acc_t1": 0.5,')  # cut off mid-write
    return root


# ---------------------------------------------------------------------------------------------
# collect
# ---------------------------------------------------------------------------------------------

def test_collect_groups_runs_by_method_in_the_papers_order(tmp_path):
    comparison = collect(make_comparison(tmp_path / "cmp"))
    assert comparison.title == "SCoRe vs baselines (fabricated)" and not comparison.quick
    assert [m.name for m in comparison.methods] == ["base", "self_refine", "star", "pair_sft", "single_turn", "score"]
    score = comparison.methods[-1]
    assert score.label == "SCoRe" and [r.seed for r in score.finished_runs] == [0, 1, 2]
    assert score.runs[1].metrics["acc_t1"] == 0.54 and score.runs[1].intervals["delta"] == pytest.approx((0.01, 0.11))
    assert score.runs[0].outcomes.correct.shape == (100, 2) and len(score.runs[0].curve) == 90
    base = comparison.methods[0]
    assert base.runs[0].outcomes.attempts == 5 and base.runs[0].scaling["temperature"] == 0.7


def test_unfinished_missing_and_broken_runs_are_pending_not_errors(tmp_path):
    comparison = collect(make_comparison(tmp_path / "cmp"))
    pending = {(p.method, p.seed): p.status for p in comparison.pending()}
    assert pending[("star", 0)] == "training"
    assert pending[("pair_sft", 0)] == "trained, not evaluated"
    assert pending[("single_turn", 0)] == "trained, not evaluated"  # its metrics.json is cut off
    assert pending[("self_refine", 0)] == "not started"  # in compare.yaml, no folder at all
    assert pending[("star", 1)] == pending[("base", 2)] == "not started"  # compare.yaml asks for seeds 0-2
    assert not any(method == "score" for method, _ in pending) and ("base", 0) not in pending
    single = next(m for m in comparison.methods if m.name == "single_turn")
    assert single.label == "Single-turn RL"  # no label in its summary: the paper's name
    assert any("metrics.json could not be read" in note for note in single.runs[0].notes)


def test_half_written_files_and_stray_folders_are_tolerated(tmp_path):
    root = tmp_path / "cmp"
    write_run(root, "score", 0, counts=(1, 1, 1, 1), curve=rl_curve(4, 0))
    with open(root / "score" / "seed-0" / "metrics.jsonl", "a") as fh:
        fh.write('{"step": 5, "acc_')  # the trainer is writing this line right now
    (root / "figures").mkdir()
    (root / "notes").mkdir()  # not a method: no seed-* folders
    (root / "score" / "seed-x").mkdir()  # not a seed
    comparison = collect(root)
    assert [m.name for m in comparison.methods] == ["score"]
    run = comparison.methods[0].runs[0]
    assert len(run.curve) == 4 and run.notes == [] and run.finished
    assert comparison.notes == ["compare.yaml is missing"] and comparison.title == "Self-correction comparison"


def test_null_rewards_count_as_wrong_and_ragged_attempts_are_padded(tmp_path):
    root = tmp_path / "cmp"
    folder = write_run(root, "base", 0, counts=(1, 0, 0, 0))
    records = [{"id": "a", "attempts": [{"text": "x", "reward": None}, {"text": "y", "reward": 1.0}]},
               {"id": "b", "attempts": [{"text": "x", "reward": 1.0}, {"text": "x", "reward": 0.0},
                                        {"text": "x", "reward": 1.0}]}]
    (folder / "eval" / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    outcomes = collect(root).methods[0].runs[0].outcomes
    np.testing.assert_array_equal(outcomes.correct, [[np.nan, 1.0, np.nan], [1.0, 0.0, 1.0]])
    assert outcomes.first_two_texts == [("x", "y"), ("x", "x")]


def test_a_missing_folder_is_an_error_but_an_empty_one_is_not(tmp_path):
    with pytest.raises(FileNotFoundError):
        collect(tmp_path / "nowhere")
    comparison = collect(tmp_path)
    assert comparison.methods == [] and comparison.pending() == []


def test_scaling_is_read_from_the_eval_label_folder_that_selfcorrect_eval_writes(tmp_path):
    root = tmp_path / "cmp"
    (root / "score" / "seed-0" / "eval" / "SCoRe").mkdir(parents=True)
    (root / "compare.yaml").write_text("methods: [score]\nseeds: [0]\n")
    folder = root / "score" / "seed-0" / "eval" / "SCoRe"
    (folder / "metrics.json").write_text(json.dumps({"metrics": {"n": 2, "acc_t1": 0.5}, "intervals": {}}))
    (folder / "scaling.json").write_text(json.dumps(scaling_result(0.0)))
    [run] = collect(root).methods[0].runs
    assert run.metrics["acc_t1"] == 0.5 and run.scaling == scaling_result(0.0)
