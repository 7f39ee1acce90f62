"""prefixrep.stats on made-up data with known answers: interval coverage, clusters, seeds, the 8-target average,
MDE, McNemar, verdicts, the oracle null, constant predictors and claims rows."""
import numpy as np
import pytest

import prefixrep.stats as S
from prefixrep.stats import (CLAIMS_COLUMNS, claims_row, claims_table, expected_max_normal, is_constant, mcnemar,
                             mde_from_data, min_detectable_effect, oracle_null, paired_bootstrap, paired_bootstrap_avg,
                             paper_effect_inside, simulate_pair, verdict)

CLUSTERED = dict(cluster_size=20, w_cluster=0.4, w_shared=0.3, w_method=0.1)


def _intervals(n_draws, truth_ab=(0.70, 0.66), cluster=False, seed=0, n_rows=600, n_boot=300, **sim):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n_draws):
        a, b, cl = simulate_pair(rng, n_rows, 3, *truth_ab, **sim)
        out.append(paired_bootstrap(a, b, cl if cluster else None, n_boot=n_boot, seed=i))
    return out


def _coverage(results, truth):
    return np.mean([r.ci_low <= truth <= r.ci_high for r in results])


def test_simulated_accuracies_are_the_truth():
    rng = np.random.default_rng(0)
    draws = [simulate_pair(rng, 1000, 2, 0.70, 0.66, seed_sd=0.03, **CLUSTERED) for _ in range(200)]
    assert abs(np.mean([d[0].mean() for d in draws]) - 0.70) < 0.004
    assert abs(np.mean([d[1].mean() for d in draws]) - 0.66) < 0.004
    with pytest.raises(ValueError):
        simulate_pair(rng, w_shared=0.8, w_method=0.3)


def test_coverage_of_a_4_point_difference():
    res = _intervals(200, seed_sd=0.02)
    assert 0.88 <= _coverage(res, 4.0) <= 0.99


def test_no_effect_is_mostly_inconclusive():
    res = _intervals(200, truth_ab=(0.68, 0.68), seed=1)
    share = np.mean([verdict(r.ci_low, r.ci_high, 1.0) == "inconclusive" for r in res])
    assert 0.88 <= share <= 0.99


def test_clustered_rows_need_the_cluster_bootstrap():
    rows = _intervals(200, seed=2, **CLUSTERED)
    clus = _intervals(200, seed=2, cluster=True, **CLUSTERED)
    assert 0.88 <= _coverage(clus, 4.0) <= 0.99
    assert _coverage(rows, 4.0) < 0.85
    assert np.mean([c.se for c in clus]) > 1.5 * np.mean([r.se for r in rows])
    assert clus[0].n_clusters == 30 and clus[0].n_rows == 600 and rows[0].n_clusters == 600


def test_clusters_are_resampled_whole():
    # every row repeated 10 times as one cluster holds no more information than the rows once
    a, b, _ = simulate_pair(np.random.default_rng(3), 800, 1)
    once = paired_bootstrap(a, b, n_boot=3000)
    rep_a, rep_b, cl = np.repeat(a, 10, axis=1), np.repeat(b, 10, axis=1), np.repeat(np.arange(800), 10)
    whole = paired_bootstrap(rep_a, rep_b, cl, n_boot=3000)
    naive = paired_bootstrap(rep_a, rep_b, n_boot=3000)
    assert whole.estimate == pytest.approx(once.estimate)
    assert whole.se == pytest.approx(once.se, rel=0.06)
    assert naive.se == pytest.approx(once.se / np.sqrt(10), rel=0.06)
    # cluster ids need not be integers or sorted
    shuffled = np.random.default_rng(4).permutation(8000)
    ids = np.array([f"p{c}" for c in cl])[shuffled]
    again = paired_bootstrap(rep_a[:, shuffled], rep_b[:, shuffled], ids, n_boot=3000)
    assert again.n_clusters == 800 and again.se == pytest.approx(once.se, rel=0.06)


def test_unequal_cluster_sizes_use_all_rows_of_a_cluster():
    # one big cluster all right for A, many singletons all wrong: replicates are the share of rows drawn from the big one
    a = np.r_[np.ones(50), np.zeros(50)]
    b = np.zeros(100)
    cl = np.r_[np.zeros(50, int), np.arange(1, 51)]
    r = paired_bootstrap(a, b, cl, n_boot=4000)
    assert r.estimate == 50 and r.n_clusters == 51
    # a replicate with j draws of the big cluster among 51 has 100 * 50 j / (50 j + 51 - j) points
    j = np.arange(0, 52)
    values = 100 * 50 * j / (50 * j + 51 - j)
    assert np.isin(np.round(r.reps, 9), np.round(values, 9)).all()


def test_textbook_se_pairing_and_identity():
    a, b, _ = simulate_pair(np.random.default_rng(5), 2000, 1)
    r = paired_bootstrap(a, b, n_boot=4000)
    assert r.se == pytest.approx(100 * (a - b).std(ddof=1) / np.sqrt(2000), rel=0.05)
    assert r.se < 0.85 * 100 * np.sqrt((a.var() + b.var()) / 2000)
    z = paired_bootstrap(a, a)
    assert z.estimate == z.ci_low == z.ci_high == z.se == 0


def test_seeds_are_resampled():
    # rows carry no noise, the seeds all of it: A's seeds score 100, 0, 0 on every row, B's 0
    a, b = np.ones((3, 40)) * [[1], [0], [0]], np.zeros((3, 40))
    r = paired_bootstrap(a, b, n_boot=20000)
    assert r.estimate == pytest.approx(100 / 3)
    assert r.se == pytest.approx(100 * np.sqrt(2 / 9 / 3), rel=0.03)   # sd of a mean of 3 draws from {1, 0, 0}
    assert paired_bootstrap(a, b, resample_seeds=False).se < 1e-9
    assert r.n_seeds_a == 3 and paired_bootstrap(a, b[:1]).n_seeds_b == 1   # seed counts may differ


def test_deterministic_and_blocked(monkeypatch):
    a, b, cl = simulate_pair(np.random.default_rng(6), 300, 2, **CLUSTERED)
    r1, r2 = paired_bootstrap(a, b, cl, n_boot=500, seed=1), paired_bootstrap(a, b, cl, n_boot=500, seed=1)
    assert np.array_equal(r1.reps, r2.reps) and not np.array_equal(r1.reps, paired_bootstrap(a, b, cl, n_boot=500, seed=2).reps)
    monkeypatch.setattr(S, "MAX_BLOCK", 7)   # a few replicates at a time
    small = paired_bootstrap(a, b, cl, n_boot=500, seed=1)
    assert len(small.reps) == 500 and np.isfinite(small.reps).all() and small.se == pytest.approx(r1.se, rel=0.2)


def test_bad_inputs():
    with pytest.raises(ValueError):
        paired_bootstrap(np.ones(5), np.ones(6))
    with pytest.raises(ValueError):
        paired_bootstrap(np.ones(5), np.ones(5), clusters=[0, 1])
    with pytest.raises(ValueError):
        paired_bootstrap(np.r_[1.0, np.nan], np.ones(2))
    with pytest.raises(ValueError):
        paired_bootstrap(np.ones((2, 2, 2)), np.ones((2, 2, 2)))


def test_average_over_targets():
    truths = [(0.70, 0.72), (0.80, 0.80), (0.60, 0.59), (0.75, 0.73), (0.66, 0.63), (0.70, 0.66), (0.72, 0.67), (0.65, 0.60)]
    true_avg = 100 * np.mean([p - q for p, q in truths])
    rng, hits = np.random.default_rng(7), []
    for i in range(100):
        data = {f"t{t}": simulate_pair(rng, 300, 3, p, q, seed_sd=0.02, **(CLUSTERED if t >= 5 else {}))
                for t, (p, q) in enumerate(truths)}
        avg, per = paired_bootstrap_avg(data, n_boot=200, seed=i)
        hits.append(avg.ci_low <= true_avg <= avg.ci_high)
    assert 0.88 <= np.mean(hits) <= 1.0
    assert avg.estimate == pytest.approx(np.mean([r.estimate for r in per.values()]))
    assert avg.se == pytest.approx(np.sqrt(sum(r.se ** 2 for r in per.values())) / 8, rel=0.15)
    assert np.mean([r.ci_high - r.ci_low for r in per.values()]) > 2 * (avg.ci_high - avg.ci_low)
    assert avg.n_rows == 2400 and per["t7"].n_clusters == 15 and set(per) == set(data)
    two = paired_bootstrap_avg({k: v[:2] for k, v in data.items()}, n_boot=50)[0]   # (a, b) without clusters works
    assert two.n_clusters == 2400


def test_shared_seeds():
    same = {t: (np.ones((3, 50)) * [[1], [0], [0]], np.zeros((3, 50))) for t in "xyz"}
    ind, _ = paired_bootstrap_avg(same, n_boot=4000)
    shr, _ = paired_bootstrap_avg(same, n_boot=4000, shared_seeds=True)
    assert shr.se / ind.se == pytest.approx(np.sqrt(3), rel=0.08)
    with pytest.raises(ValueError):
        paired_bootstrap_avg({"x": same["x"], "y": (np.ones((2, 50)), np.zeros((3, 50)))}, shared_seeds=True)
    with pytest.raises(ValueError):
        paired_bootstrap_avg({})


def test_minimum_detectable_effect():
    assert min_detectable_effect(1.0) == pytest.approx(2.8016, abs=1e-4)
    assert min_detectable_effect(1.0, 0.05, 0.5) == pytest.approx(1.95996, abs=1e-4)
    assert min_detectable_effect(2.0, 0.01, 0.9) == pytest.approx(2 * (2.57583 + 1.28155), abs=1e-3)
    with pytest.raises(ValueError):
        min_detectable_effect(1.0, alpha=0)
    # a true difference equal to the MDE is detected about 80% of the time
    mde = mde_from_data(*simulate_pair(np.random.default_rng(8), 600, 3)[:2], n_boot=1000)
    res = _intervals(200, truth_ab=(0.66 + mde / 100, 0.66), seed=9)
    assert 0.68 <= np.mean([r.ci_low > 0 for r in res]) <= 0.92


def test_mcnemar():
    a = np.array([1] * 9 + [0] * 1 + [1] * 20 + [0] * 5)
    b = np.array([0] * 9 + [1] * 1 + [1] * 20 + [0] * 5)
    m = mcnemar(a, b)
    assert (m.b10, m.b01) == (9, 1) and m.p_value == pytest.approx(22 / 1024, abs=1e-12)
    assert mcnemar(b, a).p_value == m.p_value and (mcnemar(b, a).b10, mcnemar(b, a).b01) == (1, 9)
    assert mcnemar(a, a).p_value == 1.0 and mcnemar([True, False], [False, True]).p_value == 1.0
    assert mcnemar([1, 1, 1, 0], [0, 0, 0, 0]).p_value == 0.25
    for bad in [([0, 2], [0, 1]), ([0, 1], [0, 1, 1]), (np.ones((2, 3)), np.ones((2, 3)))]:
        with pytest.raises(ValueError):
            mcnemar(*bad)


@pytest.mark.parametrize("lo,hi,paper,expected,inside", [
    (0.5, 2.0, 1.2, "reproduced", True), (0.5, 2.0, 3.0, "reproduced", False), (-2.0, -0.5, 1.2, "contradicted", False),
    (-2.0, -0.5, -1.0, "reproduced", True), (0.5, 2.0, -1.0, "contradicted", False), (-0.3, 2.0, 1.2, "inconclusive", True),
    (0.0, 2.0, 1.2, "inconclusive", True), (-1.0, 0.0, -3.0, "inconclusive", False)])
def test_verdict(lo, hi, paper, expected, inside):
    assert verdict(lo, hi, paper) == expected
    assert paper_effect_inside(lo, hi, paper) is inside


@pytest.mark.parametrize("bad", [(1.0, 2.0, 0.0), (2.0, 1.0, 1.0), (0.0, 1.0, float("nan"))])
def test_verdict_refuses(bad):
    with pytest.raises(ValueError):
        verdict(*bad)


def test_expected_max_normal():
    known = {1: 0.0, 2: 1 / np.sqrt(np.pi), 3: 1.5 / np.sqrt(np.pi), 7: 1.3522, 22: 1.9097}
    for k, v in known.items():
        assert expected_max_normal(k) == pytest.approx(v, abs=1e-3)
    for bad in (0, 2.5):
        with pytest.raises(ValueError):
            expected_max_normal(bad)


def test_oracle_null():
    rng, n = np.random.default_rng(10), 2000
    cands = (rng.random((7, n)) < 0.7).astype(float)
    se = 100 * np.sqrt(0.21 / n)
    o = oracle_null(cands, np.zeros(n), n_boot=1000)
    assert o.k == 7 and o.expected == pytest.approx(expected_max_normal(7) * se, rel=0.08) and o.q_high > o.expected
    assert o.observed == pytest.approx(100 * cands.mean(1).max()) and o.best == int(cands.mean(1).argmax())
    assert oracle_null(cands, (rng.random(n) < 0.7).astype(float), n_boot=1000).expected == pytest.approx(
        expected_max_normal(7) * se, rel=0.08)   # the reference's noise is common to all and cancels in the max
    assert abs(oracle_null(np.repeat(cands[:1], 5, 0), np.zeros(n), n_boot=500).expected) < 0.1
    better = cands.copy()
    better[3, rng.random(n) < 0.2] = 1
    found = oracle_null(better, np.full(n, 0.7), n_boot=1000)
    assert found.best == 3 and found.p_value < 0.05 and found.observed > found.q_high
    # seeds are averaged per row; clusters are resampled whole (identical rows in 10s: the null gain grows ~sqrt(10))
    cl = np.repeat(np.arange(200), 10)
    wide = oracle_null(np.repeat(cands[:, :200], 10, axis=1)[:, None].repeat(2, 1), np.zeros(n), cl, n_boot=1000)
    narrow = oracle_null(np.repeat(cands[:, :200], 10, axis=1), np.zeros(n), n_boot=1000)
    assert wide.expected / narrow.expected == pytest.approx(np.sqrt(10), rel=0.15)


def test_is_constant():
    assert is_constant([1, 1, 1]) and is_constant(np.zeros(500)) and is_constant(["yes"] * 3)
    assert not is_constant([0, 1, 1]) and not is_constant(np.r_[np.zeros(499), 2])
    with pytest.raises(ValueError):
        is_constant([])


def test_claims_row():
    a, b, cl = simulate_pair(np.random.default_rng(11), 600, 3, **CLUSTERED)
    r = paired_bootstrap(a, b, cl, n_boot=500)
    row = claims_row("table2", "A > B", r, 1.2)
    assert list(row) == CLAIMS_COLUMNS
    assert row["mde"] == pytest.approx(2.8016 * r.se, rel=1e-4)
    assert row["verdict"] == verdict(r.ci_low, r.ci_high, 1.2) and row["paper_effect_inside"] == paper_effect_inside(r.ci_low, r.ci_high, 1.2)
    null = claims_row("table2", "B = B", paired_bootstrap(b[0], b[0].copy(), cl), -1.0)   # one run: interval [0, 0]
    assert null["verdict"] == "inconclusive" and null["estimate"] == 0 and not null["paper_effect_inside"]
    t = claims_table([row, null])
    assert list(t.columns) == CLAIMS_COLUMNS and len(t) == 2
