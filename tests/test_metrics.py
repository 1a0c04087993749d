"""Self-correction metrics, bootstrap intervals, edit-distance ratio and the results table."""

import time

import numpy as np
import pytest

from selfcorrect.metrics import bootstrap_intervals, edit_distance_ratio, format_table, self_correction_metrics

NAN = float("nan")


def test_metrics_by_hand_with_verifier_failure():
    correct = np.array(
        [
            [0, 1],  # i -> c
            [1, 1],  # c -> c
            [1, 0],  # c -> i
            [0, 0],  # i -> i
            [1, NAN],  # c -> verifier failed: counts as c -> i
        ]
    )
    m = self_correction_metrics(correct)
    assert m["n"] == 5 and m["n_verifier_failed"] == 1
    assert m["acc_t1"] == pytest.approx(3 / 5)
    assert m["acc_t2"] == pytest.approx(2 / 5)
    assert m["delta"] == pytest.approx(-1 / 5)
    assert m["delta_i_to_c"] == pytest.approx(1 / 5)
    assert m["delta_c_to_i"] == pytest.approx(2 / 5)
    assert "delta_t1_t2" not in m


def test_identity_on_random_data():
    rng = np.random.default_rng(0)
    for _ in range(20):
        n, a = int(rng.integers(1, 200)), int(rng.integers(2, 5))
        c = (rng.random((n, a)) < rng.random()).astype(float)
        c[rng.random((n, a)) < 0.05] = NAN
        m = self_correction_metrics(c)
        assert m["acc_t2"] == pytest.approx(m["acc_t1"] + m["delta_i_to_c"] - m["delta_c_to_i"])
        assert m["delta"] == pytest.approx(m["acc_t2"] - m["acc_t1"])
        assert m["n_verifier_failed"] == int(np.isnan(c).sum())


def test_more_attempts_and_single_attempt():
    c = np.array([[0, 0, 1], [1, 0, 0], [0, 1, 1], [0, 0, 0]])
    m = self_correction_metrics(c)
    assert [m["acc_t1"], m["acc_t2"], m["acc_t3"]] == pytest.approx([0.25, 0.25, 0.5])
    assert m["delta"] == pytest.approx(0.0)  # delta is always t1 -> t2
    assert m["delta_t1_t3"] == pytest.approx(0.25)

    m1 = self_correction_metrics(np.array([[1], [0], [NAN]]))
    assert set(m1) == {"n", "n_verifier_failed", "acc_t1"}
    assert m1["acc_t1"] == pytest.approx(1 / 3)


@pytest.mark.parametrize(
    "bad, match",
    [(np.array([[0, 2]]), r"correct\[0, 1\] = 2"), (np.zeros((0, 2)), "at least one"), (np.zeros(3), r"\[N problems")],
)
def test_metrics_reject_bad_input(bad, match):
    with pytest.raises(ValueError, match=match):
        self_correction_metrics(bad)


def test_bootstrap_intervals_cover_point_estimate_and_shrink_with_n():
    rng = np.random.default_rng(1)
    small = (rng.random((100, 2)) < 0.5).astype(float)
    big = (rng.random((2000, 2)) < 0.5).astype(float)
    ci_small, ci_big = bootstrap_intervals(small, seed=3), bootstrap_intervals(big, seed=3)
    assert set(ci_small) == {"acc_t1", "acc_t2", "delta", "delta_i_to_c", "delta_c_to_i"}
    m = self_correction_metrics(small)
    for name, (lo, hi) in ci_small.items():
        assert lo <= m[name] <= hi
        assert ci_big[name][1] - ci_big[name][0] < 0.5 * (hi - lo)
    # binomial standard error check: 95% width of a proportion near 0.5 with N = 2000 ≈ 0.044
    lo, hi = ci_big["acc_t1"]
    assert 0.035 < hi - lo < 0.055
    assert bootstrap_intervals(small, seed=3) == ci_small  # seeded: reproducible
    assert bootstrap_intervals(small, seed=4) != ci_small


def test_bootstrap_constant_data_has_zero_width_and_level_matters():
    ci = bootstrap_intervals(np.ones((50, 2)), n_boot=200)
    assert ci["acc_t1"] == (1.0, 1.0) and ci["delta"] == (0.0, 0.0)
    c = (np.random.default_rng(2).random((300, 2)) < 0.3).astype(float)
    wide, narrow = bootstrap_intervals(c, level=0.99), bootstrap_intervals(c, level=0.5)
    assert wide["acc_t2"][1] - wide["acc_t2"][0] > narrow["acc_t2"][1] - narrow["acc_t2"][0]
    with pytest.raises(ValueError, match="level"):
        bootstrap_intervals(c, level=95)


def test_bootstrap_resamples_clusters_as_units():
    rng = np.random.default_rng(5)
    c = (rng.random((200, 2)) < 0.5).astype(float)
    # clusters of one problem each give exactly the plain problem bootstrap
    assert bootstrap_intervals(c, seed=1, clusters=list(range(200))) == bootstrap_intervals(c, seed=1)
    # every problem twice (perfectly correlated twins): drawn as pairs, the intervals are those of
    # the 200 distinct problems; drawn one by one they would be about sqrt(2) too narrow
    twins = np.repeat(c, 2, axis=0)
    labels = np.repeat(np.arange(200), 2).tolist()
    width = lambda ci: ci["acc_t1"][1] - ci["acc_t1"][0]  # noqa: E731
    alone = width(bootstrap_intervals(c, n_boot=4000, seed=2))
    as_pairs = width(bootstrap_intervals(twins, n_boot=4000, seed=2, clusters=labels))
    as_problems = width(bootstrap_intervals(twins, n_boot=4000, seed=2))
    assert abs(as_pairs - alone) < 0.15 * alone
    assert as_pairs / as_problems > 1.25
    # unequal cluster sizes: each resample's metric is the mean over the problems it drew
    ci = bootstrap_intervals(np.array([[1.0, 1.0]] * 3 + [[0.0, 0.0]]), n_boot=500, clusters=["a", "a", "a", "b"])
    assert ci["acc_t1"][0] == 0.0 and ci["acc_t1"][1] == 1.0
    with pytest.raises(ValueError, match="labels"):
        bootstrap_intervals(c, clusters=[0, 1])


def test_summarise_draws_problems_of_one_cluster_together():
    from selfcorrect.results import clusters_of

    records = [{"id": "1+2", "meta": {"cluster": "1+2"}}, {"id": "2+1", "meta": {"cluster": "1+2"}},
               {"id": "5-3", "meta": {"cluster": "5-3"}}, {"id": "x", "meta": {}},
               {"id": "y", "meta": {"cluster": [1, 2]}}, {"id": "z", "meta": {"cluster": [1, 2]}}]
    labels = clusters_of(records)
    assert labels[0] == labels[1] != labels[2] and labels[4] == labels[5] and labels[3] == ("id", "x")
    assert len(set(labels)) == 4  # any JSON value is a label (a custom task's file field)
    assert bootstrap_intervals(np.ones((6, 2)), n_boot=10, clusters=labels)["acc_t1"] == (1.0, 1.0)
    assert clusters_of([{"id": "x", "meta": {}}, {"id": "y"}]) is None


def test_bootstrap_is_fast():
    c = (np.random.default_rng(0).random((500, 2)) < 0.5).astype(float)
    bootstrap_intervals(c, n_boot=10)  # warm up numpy
    t = time.perf_counter()
    bootstrap_intervals(c, n_boot=1000)
    # well under a second on an idle core; generous bound because CI machines are shared
    assert time.perf_counter() - t < 2.0


def _levenshtein_reference(a, b) -> int:
    prev = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        cur = [i]
        for j, y in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y)))
        prev = cur
    return prev[-1]


def test_edit_distance_ratio_known_values():
    assert edit_distance_ratio("", "") == 0.0
    assert edit_distance_ratio("abc", "abc") == 0.0
    assert edit_distance_ratio("abc", "") == 1.0
    assert edit_distance_ratio("kitten", "sitting") == pytest.approx(3 / 13)
    assert edit_distance_ratio([1, 2, 3, 4], [1, 3, 4, 5]) == pytest.approx(2 / 8)
    assert edit_distance_ratio((7, 8), [9]) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="like with like"):
        edit_distance_ratio("12", [1, 2])


def test_edit_distance_matches_reference_on_random_sequences():
    rng = np.random.default_rng(0)
    for _ in range(200):
        a = rng.integers(0, 4, int(rng.integers(0, 15))).tolist()
        b = rng.integers(0, 4, int(rng.integers(0, 15))).tolist()
        expected = _levenshtein_reference(a, b) / (len(a) + len(b)) if a or b else 0.0
        assert edit_distance_ratio(a, b) == pytest.approx(expected)
        sa, sb = "".join("abcd"[i] for i in a), "".join("abcd"[i] for i in b)
        assert edit_distance_ratio(sa, sb) == pytest.approx(expected)


def test_format_table_matches_paper_layout():
    base = {"acc_t1": 0.526, "acc_t2": 0.414, "delta": -0.112, "delta_i_to_c": 0.046, "delta_c_to_i": 0.158}
    score = {"acc_t1": 0.6, "acc_t2": 0.644, "delta": 0.044, "delta_i_to_c": 0.058, "delta_c_to_i": 0.014}
    ci = {k: (v - 0.044, v + 0.044) for k, v in base.items()}
    table = format_table([("Base", base), ("SCoRe", score)], intervals={"Base": ci})
    lines = table.splitlines()
    assert lines[0] == "| Approach | Acc@t1 | Acc@t2 | Δ | Δi→c | Δc→i |"
    assert lines[1] == "|---|---|---|---|---|---|"
    assert lines[2] == (
        "| Base | 52.6 [48.2, 57.0] | 41.4 [37.0, 45.8] | -11.2 [-15.6, -6.8] "
        "| 4.6 [0.2, 9.0] | 15.8 [11.4, 20.2] |"
    )
    assert lines[3] == "| SCoRe | 60.0 | 64.4 | 4.4 | 5.8 | 1.4 |"


def test_format_table_from_metrics_single_attempt_and_escaping():
    m = self_correction_metrics(np.array([[1, 1], [0, 0], [1, 0]]))
    single = self_correction_metrics(np.array([[1], [0]]))
    table = format_table([("a|b", m), ("one", single)])
    lines = table.splitlines()
    assert lines[2] == "| a\\|b | 66.7 | 33.3 | -33.3 | 0.0 | 33.3 |"
    assert lines[3] == "| one | 50.0 | – | – | – | – |"
    with pytest.raises(ValueError, match="missing"):
        format_table([("a", m)], intervals={"missing": {}})
