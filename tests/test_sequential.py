"""Figure 2 (sequentially adding source tasks) on the smoke profile: task orders, papermill run, outputs, resume."""
import hashlib
import json
from pathlib import Path

import pandas as pd
import pytest

from prefixrep.core import get_profile
from prefixrep.sequential import PAPER_ORDERS, schedule, task_orders

ROOT = Path(__file__).resolve().parents[1]


def _digest(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()} if folder.exists() else {}


def test_orders_are_restricted_to_the_profiles_sources():
    small = get_profile("small")  # no ReCoRD
    orders = task_orders(small.source_tasks)
    assert len(orders) == 8 and all(sorted(o) == sorted(small.source_tasks) for o in orders)
    assert orders[0] == ("mnli", "qqp", "qnli", "sst2", "winogrande", "yelp2")  # ReCoRD dropped, relative order kept
    assert orders[3] == ("yelp2", "winogrande", "qqp", "mnli", "sst2", "qnli")
    assert task_orders(get_profile("paper").source_tasks) == list(PAPER_ORDERS)
    assert task_orders(("sst2", "mnli"), [6]) == [("sst2", "mnli")]
    with pytest.raises(ValueError, match="no order"): task_orders(("mnli", "rte"))
    with pytest.raises(ValueError, match="order indices"): task_orders(("mnli",), [8])
    s = schedule(small)
    assert len(s) == len(small.sequential_orders) * 6 and s.groupby("order")["round"].max().eq(6).all()
    assert s[s["round"] == 6].tasks.nunique() == 1  # every order ends with all sources


def test_papermill_smoke_writes_figure2_into_a_temp_dir(tmp_path, data_dir):
    import papermill as pm
    committed = _digest(ROOT / "reports")
    params = dict(seed=0, profile="smoke", data_dir=str(data_dir), results_dir=str(tmp_path / "res"),
                  cache_dir=str(tmp_path / "cache"), reports_dir=str(tmp_path / "rep"))
    pm.execute_notebook(str(ROOT / "nbs" / "07_sequential.ipynb"), str(tmp_path / "out.ipynb"), cwd=str(ROOT / "nbs"),
                        progress_bar=False, parameters=params)
    rep = tmp_path / "rep"
    f = pd.read_csv(rep / "figure2.csv")
    assert {"method", "steps_per_round", "order", "round", "avg_score", "seed", "profile", "backbone"} <= set(f.columns)
    assert set(f.method) == {"prefix", "multitask"} and set(f.steps_per_round) == {2, 4}
    assert set(f.order) == {0, 1, 2} and set(f["round"]) == {0, 1, 2, 3}
    assert f.groupby(["method", "steps_per_round", "order", "round"]).size().eq(1).all()
    assert f.avg_score.between(0, 100).all() and (f.profile == "smoke").all()
    assert (rep / "figure2.png").stat().st_size > 0 and (rep / "figure2.pdf").stat().st_size > 0
    md = (rep / "figure2.md").read_text()
    assert "Measured update cost" in md and "Deviations from the paper" in md
    assert "record" in md.split("**Deviations from the paper**")[1] and "dropped from every order" in md
    led = pd.DataFrame([json.loads(p.read_text()) for p in (tmp_path / "res" / "ledger").glob("*.json")])
    assert "frozen" not in set(led.method)  # Figure 2's round-0 heads never pass for Table 2's frozen row
    assert led[led.method == "figure2_round"].units.map(lambda u: isinstance(u, dict)).all()
    claims = pd.read_csv(rep / "claims.csv")  # the rounds name their heads, whose predictions give paired intervals
    assert len(claims[claims.experiment == "figure2"]) and set(claims[claims.experiment == "figure2"].interval) == {"paired bootstrap"}
    # multi-task weights and scratch representations do not pile up in the cache
    assert not list((tmp_path / "cache").rglob("*.pt"))
    # a second run finds every round in the ledger: nothing is retrained, the ledger is unchanged
    before = _digest(tmp_path / "res")
    from prefixrep.sequential import run_sequential
    recs = run_sequential(0, "smoke", data_dir, tmp_path / "res", tmp_path / "cache", rep, progress=False)
    assert len(recs) == 1 + 2 * 2 * 3 and _digest(tmp_path / "res") == before
    assert committed == _digest(ROOT / "reports"), "CI must not write to reports/"
    # (results/ may change under a background run of the project; none of its records may come from this smoke run)
    tiny = [p for p in (ROOT / "results" / "ledger").glob("*.json") if json.loads(p.read_text()).get("backbone") == "tiny-bert"]
    assert not tiny, "CI must not write to results/"


def test_round_prefixes_are_read_off_the_curve_run(tmp_path, data_dir):
    """Figure 2's prefix rounds at a budget the curve run passed are read off its snapshots and recorded in the
    ledger (so a later machine finds them); the budget equal to the curve run is that unit itself."""
    from prefixrep.core import Store
    from prefixrep.experiment import prepare_data, source_prefix_encoder
    from prefixrep.prefix import load_backbone
    from prefixrep.sequential import round_prefixes
    prof = get_profile("smoke", prefix_steps=4, prefix_eval_every=2, sequential_budgets=(2, 4))
    model, tok = load_backbone(prof.backbone)
    _, sources, _ = prepare_data(prof, data_dir, tok)
    kw = dict(results_dir=tmp_path / "results", cache_dir=tmp_path / "cache")
    source_prefix_encoder(model, prof, sources, 0, Store(kw["results_dir"], kw["cache_dir"]), tok.pad_token_id, "cpu", False)
    r = round_prefixes(0, prof, data_dir, device="cpu", progress=False, **kw)
    assert sorted(zip(r.budget, r.task)) == sorted((b, t) for b in (2, 4) for t in prof.source_tasks)
    assert r[r.budget == 2].snapshot_of.notna().all() and r[r.budget == 4].get("snapshot_of", pd.Series(dtype=object)).isna().all()
    assert (r[r.budget == 2].steps == 2).all() and len(set(r.config_hash)) == len(r)


def test_sequential_rows_cap_figure2s_rows_to_a_subset_of_table3s(data_dir):
    "Figure 2's `sequential_rows` cut train, dev and test to fixed subsets of Table 3's rows (passages kept whole, never empty)."
    from prefixrep.experiment import prepare_raw, sequential_profile, update_profile
    p = get_profile("smoke", sequential_rows=(8, 10, 12))
    t3, f2 = (prepare_raw(p, data_dir, tp)[0] for tp in (update_profile(p), sequential_profile(p)))
    assert (len(f2["rte"]["train"]), len(f2["rte"]["dev"]), len(f2["rte"]["test"])) == (8, 10, 12)
    assert len(t3["rte"]["dev"]) == 16 and len(t3["rte"]["test"]) == 24
    for t in t3:
        for s in ("dev", "test"):
            assert f2[t][s] and {e.rid for e in f2[t][s]} <= {e.rid for e in t3[t][s]}
    assert prepare_raw(p, data_dir, update_profile(get_profile("smoke")))[0]["rte"]["test"] == t3["rte"]["test"]
