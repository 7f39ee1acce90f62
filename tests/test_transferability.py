"""Transferability prediction (nbs/14): the metrics on hand-made cases with known answers, CKA's invariances, the
truth read from Table 3's records, the seed intervals, and the smoke run of the notebook end to end."""
import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from prefixrep.core import Store, get_profile
from prefixrep.experiment import profile_key, update_profile
from prefixrep.transferability import (EMBEDDING_STEPS, claims_rows, embedding_similarities, evaluate_methods, linear_cka, loto_scores,
                                       method_scores, prefix_embedding, random_metrics, ranking_metrics, ratio_interval,
                                       removal_truth, run_transferability, summarise_methods)

ROOT = Path(__file__).resolve().parents[1]


def _digest(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()} if folder.exists() else {}


def test_regret_spearman_and_gain_on_a_hand_made_target():
    d_test, d_dev, sec = np.array([1.0, 3.0, 2.0, -4.0]), np.array([0.5, -1.0, 2.0, -3.0]), np.full(4, 10.0)
    m = ranking_metrics(np.array([4.0, 3.0, 2.0, 1.0]), d_test, d_dev, 7.0, sec, 20.0)
    assert m["spearman"] == pytest.approx(0.4)  # ranks (4,3,2,1) vs (2,4,3,1): 1 - 6*(4+1+1+0)/(4*15)
    assert m["regret1"] == 2.0 and m["regret3"] == 0.0  # the first pick removes a (+1) not b (+3); b is in the top 3
    assert m["oracle"] == 3.0
    assert m["gain1"] == 1.0, "a's dev change +0.5 beats all prefixes on dev: its test change +1 is the gain"
    assert m["gain3"] == 2.0, "among a, b, c the dev-best is c (+2 dev), whose test change is +2, not b's +3"
    assert m["compute1"] == 7 + 20 + 10 and m["compute3"] == 7 + 20 + 30 and m["brute_seconds"] == 60
    bad = ranking_metrics(np.array([0.0, 0.0, 0.0, 1.0]), d_test, d_dev, 0.0, sec, 20.0)
    assert bad["gain1"] == 0.0 and bad["regret1"] == 7.0, "a first pick that hurts on dev keeps all prefixes"
    assert np.isnan(ranking_metrics(np.ones(4), d_test, d_dev, 0.0, sec, 0.0)["spearman"]), "a constant score has no rank"


def test_random_is_the_exact_expectation_over_orders():
    d_test, d_dev, sec = np.array([1.0, 3.0, 2.0, -4.0]), np.array([1.0, 3.0, 2.0, -4.0]), np.zeros(4)
    r = random_metrics(d_test, d_dev, sec, 0.0)
    assert r["regret1"] == pytest.approx(np.mean(3.0 - d_test))   # each source is first in a quarter of the orders
    assert r["spearman"] == pytest.approx(0.0, abs=1e-12) and r["regret3"] == pytest.approx(0.25 * (3 - 2))  # b out of the top 3
    assert r["gain1"] == pytest.approx(np.mean([1, 3, 2, 0]))


def test_linear_cka_invariances():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 20))
    q, _ = np.linalg.qr(rng.normal(size=(20, 20)))
    assert linear_cka(x, x) == pytest.approx(1.0)
    assert linear_cka(x, 5 * x @ q + 3) == pytest.approx(1.0), "orthogonal transform, isotropic scale and shift"
    skew = np.diag(np.r_[np.full(2, 30.0), np.ones(18)])
    assert linear_cka(x, x @ skew) < 0.9, "linear CKA is not invariant to arbitrary invertible maps"
    assert linear_cka(x, rng.normal(size=(300, 20))) < 0.15
    with pytest.raises(ValueError):
        linear_cka(x, x[:10])


def test_prefix_embeddings_and_cosine():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(2, 2, 4, 5, 8, generator=g)
    assert prefix_embedding(a, "mean").shape == (2 * 2 * 4 * 8,) and prefix_embedding(a, "flat").shape == (a.numel(),)
    sims = embedding_similarities(a, {"same": a.clone(), "neg": -a, "perm": a[:, :, :, [4, 3, 2, 1, 0]]})
    assert sims["flat"]["same"] == pytest.approx(1) and sims["flat"]["neg"] == pytest.approx(-1)
    assert sims["mean"]["perm"] == pytest.approx(1) and sims["flat"]["perm"] < 0.5
    with pytest.raises(ValueError):
        prefix_embedding(a, "max")


def _ledger(prof, effects: dict, seeds=(0, 1), drop=None) -> pd.DataFrame:
    "Table 3 records of the update profile: all prefixes at 60% test / 50% dev, each single removal `effects[task][source]`."
    h = profile_key(update_profile(prof), None)["profile_hash"]
    rows = []
    for t, eff in effects.items():
        for s in seeds:
            rows.append(dict(method="removal", task=t, seed=s, profile_hash=h, removed=[], dev=0.5, score=0.6, seconds=4.0))
            rows += [dict(method="removal", task=t, seed=s, profile_hash=h, removed=[x], dev=0.5 + (e + s) / 200, score=0.6 + e / 100,
                          seconds=2.0) for x, e in eff.items() if (t, s, x) != drop]
    return pd.DataFrame(rows)


def test_truth_and_leave_one_target_out_from_table3_records():
    prof = get_profile("smoke")  # sources mnli, sst2, winogrande
    eff = {"rte": {"mnli": -2.0, "sst2": 3.0, "winogrande": 0.0}, "mr": {"mnli": 1.0, "sst2": -1.0, "winogrande": 0.5},
           "cr": {"mnli": 4.0, "sst2": 0.0, "winogrande": -3.0}}
    truth = removal_truth(_ledger(prof, eff, drop=("cr", 1, "sst2")), prof)
    assert set(zip(truth.task, truth.seed)) == {("rte", 0), ("rte", 1), ("mr", 0), ("mr", 1), ("cr", 0)}, "incomplete pairs are left out"
    t = truth.set_index(["task", "seed", "source"])
    assert t.loc[("rte", 1, "sst2"), "d_test"] == pytest.approx(3.0) and t.loc[("rte", 1, "sst2"), "d_dev"] == pytest.approx(2.0)
    assert t.loc[("rte", 0, "mnli"), "seconds"] == 2.0 and t.loc[("rte", 0, "mnli"), "seconds_all"] == 4.0
    lo = loto_scores(truth).set_index(["task", "seed", "source"]).score
    assert lo[("rte", 0, "mnli")] == pytest.approx((1.0 + 4.0) / 2) and lo[("rte", 1, "mnli")] == pytest.approx(1.0)
    other = removal_truth(_ledger(get_profile("smoke", update_train_rows=7), eff), prof)
    assert other.empty, "another profile's records are not this profile's truth"


def test_methods_are_judged_per_pair_with_intervals():
    rng = np.random.default_rng(3)
    truth = pd.DataFrame([dict(task=t, seed=s, source=x, d_test=d, d_dev=d, seconds=1.0, seconds_all=1.0)
                          for t in "abcde" for s in range(3) for x, d in zip("uvwxyz", rng.normal(0, 2, 6))])
    recs = pd.DataFrame([dict(method="transfer_cka", task=t, seed=s, profile_hash="h", seconds=0.5,
                              cka_shift={x: 0.0 for x in "uvwxyz"},
                              cka_label=dict(zip(g.source, g.d_test))) for (t, s), g in truth.groupby(["task", "seed"])])
    scores = method_scores(recs, truth, "h")
    assert set(scores.method) == {"cka_shift", "cka_label", "loto", "brute_dev"}
    assert method_scores(recs, truth, "other").method.isin(["loto", "brute_dev"]).all()
    cells = evaluate_methods(scores, truth)
    assert len(cells) == 5 * 3 * 5  # 4 methods + random per (target, seed)
    s = summarise_methods(cells, n_boot=300).set_index("method")
    assert s.loc["cka_label", "spearman"] == pytest.approx(1) and s.loc["cka_label", "regret1_hi"] == 0
    assert s.loc["cka_label", "spearman_vs_random_lo"] > 0 and s.loc["cka_label", "share3"] == pytest.approx(1)
    assert "spearman" not in s.columns or np.isnan(s.loc["cka_shift", "spearman"]), "a constant score has no Spearman"
    assert s.loc["random", "regret1_lo"] > 0
    assert s.loc["cka_label", "compute1"] == pytest.approx((0.5 + 1 + 1) / 7)
    assert s.loc["brute_dev", "compute1"] == s.loc["brute_dev", "compute3"] == 1, "ranking on dev needs every subset first"
    claims = pd.DataFrame(claims_rows(cells, n_boot=300))
    assert len(claims) == 2 * 2 + 1, "cka_label and loto: Spearman and Regret@1; cka_shift: Regret@1 only (no Spearman)"
    assert (claims[claims.claim.str.startswith("CKA label")].verdict == "reproduced").all()


def test_ratio_interval_uses_aligned_replicates():
    num, den = pd.DataFrame([[1.0, 3.0, 2.0], [0.0, 4.0, 1.0]]), pd.DataFrame([[2.0, 6.0, 4.0], [0.0, 8.0, 2.0]])
    est, lo, hi = ratio_interval(num, den, n_boot=300)
    assert est == pytest.approx(0.5) and lo == pytest.approx(0.5) and hi == pytest.approx(0.5)
    est, lo, hi = ratio_interval(pd.DataFrame([[1.0, 0.0, 2.0]]), pd.DataFrame([[2.0, 2.0, 2.0]]), n_boot=300)
    assert est == pytest.approx(0.5) and lo < 0.5 < hi


def test_papermill_smoke_writes_the_report_and_resumes(tmp_path, data_dir):
    import papermill as pm
    reports_before = _digest(ROOT / "reports")
    res, cache, rep = tmp_path / "res", tmp_path / "cache", tmp_path / "rep"
    pm.execute_notebook(str(ROOT / "nbs" / "14_transferability.ipynb"), str(tmp_path / "out.ipynb"), cwd=str(ROOT / "nbs"),
                        progress_bar=False, parameters=dict(seeds="0 1", profile="smoke", data_dir=str(data_dir),
                                                            results_dir=str(res), cache_dir=str(cache), reports_dir=str(rep)))
    summary = pd.read_csv(rep / "transferability.csv")
    assert set(summary.method) == {"embedding_mean", "embedding_flat", "cka_shift", "cka_label", "loto", "brute_dev", "random"}
    assert (summary.n_seeds == 2).all() and (summary.n_targets == 8).all() and (summary.regret1 >= 0).all()
    md = (rep / "transferability.md").read_text()
    assert "Regret@1" in md and "oracle share" in md and f"{EMBEDDING_STEPS['smoke']} steps" in md
    led = Store(res, cache).ledger.frame()
    prof = get_profile("smoke")
    short = led[(led.method == "source_prefix") & led.task.isin(prof.target_tasks)]
    assert len(short) == 8 * 2 and (short.steps == EMBEDDING_STEPS["smoke"]).all(), "one short target prefix per target and seed"
    assert (short.max_length == prof.target_length).all() and (short.train_rows == update_profile(prof).target_train_rows).all()
    assert (led.method == "transfer_cka").sum() == (led.method == "transfer_embedding").sum() == 16
    before = _digest(res / "ledger")
    run_transferability(1, "smoke", str(data_dir), str(res), str(cache), str(rep), progress=False)
    assert _digest(res / "ledger") == before, "every scoring unit is found in the ledger: nothing recomputed"
    assert reports_before == _digest(ROOT / "reports"), "tests must not write to reports/"
