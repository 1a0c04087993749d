"""The paper-format tables and the numbers derived from records, checked against hand arithmetic."""

import numpy as np
import pytest

from selfcorrect.report import collect
from selfcorrect.report.collect import read_outcomes
from selfcorrect.report.derived import accuracy_by_attempt, edit_ratios, transition_counts
from selfcorrect.report.tables import budget_table, duration, mean_sd, percent, seed_table, summary_table
from test_report_folders import make_comparison, records_from_counts


@pytest.fixture(scope="module")
def comparison(tmp_path_factory):
    return collect(make_comparison(tmp_path_factory.mktemp("report") / "cmp"))


def row_of(table, label):
    rows = [row for row in table.rows if row[0] == label]
    assert len(rows) == 1, f"{label}: {len(rows)} rows in {table.rows}"
    return dict(zip(table.header, rows[0]))


def test_mean_and_sample_sd_over_seeds_by_hand(comparison):
    # SCoRe seeds (of 100 problems): Acc@t1 52, 54, 54 -> mean 53.33, sd sqrt(((4/3)^2 + 2 (2/3)^2) / 2) = 1.15
    # Acc@t2 60, 60, 58; Δ 8, 6, 4; Δi→c 10, 6, 8; Δc→i 2, 0, 4 (each: sd 2)
    score = row_of(summary_table(comparison), "SCoRe")
    assert score == {"Approach": "SCoRe", "seeds": "3", "Acc@t1": "53.3 ± 1.2", "Acc@t2": "59.3 ± 1.2",
                     "Δ(t1,t2)": "+6.0 ± 2.0", "Δi→c": "8.0 ± 2.0", "Δc→i": "2.0 ± 2.0"}


def test_a_single_seed_shows_its_bootstrap_interval_and_unfinished_methods_show_pending(comparison):
    table = summary_table(comparison)
    base = row_of(table, "Base")  # 40 c->c, 5 i->c, 15 c->i, 40 i->i; fabricated intervals are ±5 points
    assert base["Acc@t1"] == "55.0 [50.0, 60.0]" and base["Acc@t2"] == "45.0 [40.0, 50.0]"
    assert base["Δ(t1,t2)"] == "-10.0 [-15.0, -5.0]" and base["Δc→i"] == "15.0 [10.0, 20.0]"
    assert base["seeds"] == "1"
    star = row_of(table, "STaR")
    assert star["seeds"] == "0 of 1" and star["Acc@t1"] == "pending"
    assert row_of(table, "Self-Refine")["Δi→c"] == "pending"  # listed in compare.yaml, never started
    assert [row[0] for row in table.rows] == ["Base", "Self-Refine", "STaR", "Pair-SFT", "Single-turn RL", "SCoRe"]


def test_per_seed_rows_and_the_budget(comparison):
    per_seed = seed_table(comparison)
    assert [(r[0], r[1]) for r in per_seed.rows] == [("Base", "0"), ("SCoRe", "0"), ("SCoRe", "1"), ("SCoRe", "2")]
    seed2 = dict(zip(per_seed.header, per_seed.rows[3]))
    assert seed2["Δ(t1,t2) [95% CI]"] == "+4.0 [-1.0, 9.0]" and seed2["problems"] == "100"
    budget = row_of(budget_table(comparison), "SCoRe")
    # 600, 660, 720 s -> mean 11 min, and the seeds differ, so the range too
    assert budget["train time (per run)"] == "11.0 min (10.0 min–12.0 min)"
    assert budget["episodes sampled (per run)"] == "1,280" and budget["gradient updates (per run)"] == "80"
    assert row_of(budget_table(comparison), "Pair-SFT")["gradient updates (per run)"] == "pending"


def test_formatting_helpers():
    assert percent(-0.0004) == "0.0" and percent(0.0, signed=True) == "0.0"
    assert percent(0.044, signed=True) == "+4.4" and percent(-0.112, signed=True) == "-11.2"
    assert mean_sd([0.5]) == (0.5, None)
    mean, sd = mean_sd([1.0, 2.0, 3.0, 4.0])
    assert mean == 2.5 and sd == pytest.approx(1.2909944)  # sample sd (n - 1), not population (1.118)
    assert (duration(42), duration(750), duration(3 * 3600)) == ("42 s", "12.5 min", "3.0 h")


def test_transition_counts_from_hand_made_records():
    correct = np.array([[1, 1], [1, 0], [0, 1], [0, 0], [0, 1], [np.nan, 1], [1, np.nan]], dtype=float)
    assert transition_counts(correct) == {"c→c": 1, "c→i": 2, "i→c": 3, "i→i": 1}
    assert transition_counts(np.array([[1, 1, 0]])) == {"c→c": 1, "i→c": 0, "c→i": 0, "i→i": 0}
    with pytest.raises(ValueError, match=">= 2 attempts"):
        transition_counts(np.array([[1.0], [0.0]]))
    outcomes = read_outcomes(records_from_counts((3, 2, 1, 4)))
    assert transition_counts(outcomes.correct) == {"c→c": 3, "i→c": 2, "c→i": 1, "i→i": 4}


def test_edit_ratios_are_zero_for_copies_and_positive_for_edits():
    outcomes = read_outcomes(records_from_counts((2, 1, 1, 0)))
    ratios = edit_ratios(outcomes)
    assert ratios.shape == (4,) and list(ratios[:2]) == [0.0, 0.0] and (ratios[2:] > 0.2).all()
    outcomes.first_two_texts = [("kitten", "sitting")]  # 3 edits / 13 characters
    assert edit_ratios(outcomes)[0] == pytest.approx(3 / 13)


def test_accuracy_by_attempt_prefers_records_then_scaling(comparison):
    base_run = comparison.methods[0].runs[0]  # records with 5 attempts: 3-5 repeat attempt 2
    assert accuracy_by_attempt(base_run) == ([1, 2, 3, 4, 5], [0.55, 0.45, 0.45, 0.45, 0.45], "greedy")
    score_run = comparison.methods[-1].runs[0]  # 2 attempts in records: scaling.json's by_attempt
    attempts, acc, source = accuracy_by_attempt(score_run)
    assert attempts == [1, 2, 3, 4, 5] and acc[0] == pytest.approx(0.55) and source == "sampled, T = 0.7"
    assert accuracy_by_attempt(comparison.methods[-1].runs[2]) is None  # neither


def test_a_skipped_method_is_not_applicable_not_pending(tmp_path):
    import json

    from selfcorrect.report.collect import collect
    from selfcorrect.report.tables import summary_table

    folder = tmp_path / "cmp" / "self_refine" / "seed-0"
    folder.mkdir(parents=True)
    (folder / "summary.json").write_text(json.dumps({"method": "self_refine", "label": "Self-Refine", "seed": 0,
                                                     "done": True, "skipped": "no feedback format"}))
    comparison = collect(tmp_path / "cmp")
    assert comparison.pending() == []
    assert summary_table(comparison).rows[0][1:3] == ["n/a", "n/a"]


def test_a_metric_only_one_of_several_seeds_has_shows_that_seed_not_a_crash(tmp_path):
    import json

    root = make_comparison(tmp_path / "cmp")
    for seed in (1, 2):  # e.g. a NaN the collector dropped
        path = root / "score" / f"seed-{seed}" / "eval" / "metrics.json"
        data = json.loads(path.read_text())
        del data["metrics"]["delta_c_to_i"]
        path.write_text(json.dumps(data))
    score = row_of(summary_table(collect(root)), "SCoRe")
    assert score["Δc→i"].startswith("2.0 [") and score["Δc→i"].endswith("(1 seed)")
    assert score["Δi→c"] == "8.0 ± 2.0"
