"""The evidence instrument on real data: the pool policy's evaluation sets, the committed per-example predictions
(each gives back its record's score exactly), and the reports' claims (never a verdict without its interval)."""
import json
import re
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
VERDICT = re.compile(r"\b(reproduced|contradicted|inconclusive)\b", re.I)


@pytest.fixture(scope="module")
def pool_splits(data_dir):
    from prefixrep.core import get_profile
    from prefixrep.experiment import prepare_raw
    prof = get_profile("small")
    return prof, prepare_raw(prof, data_dir)


def test_pool_policy_sizes_and_disjoint_splits(pool_splits, data_dir):
    "Dev >= 300 and test >= 1,500 rows per target where the labelled data has them; no row or passage in two splits."
    prof, (targets, sources, checks) = pool_splits
    short = {"rte"}  # 2,767 labelled rows: 1,000 train + 300 dev leave 1,467 (minus the overlap filter's drops)
    for t, sp in targets.items():
        n = {s: len(v) for s, v in sp.items()}
        assert n["train"] <= prof.target_train_rows and n["dev"] >= prof.min_dev_rows, (t, n)
        assert n["test"] >= (1400 if t in short else 1500), (t, n)
        ids = [{e.rid for e in v} for v in sp.values()]
        assert sum(map(len, ids)) == len(set().union(*ids)), f"{t}: a row is in two splits"
        groups = [{e.group for e in v if e.group is not None} for v in sp.values()]
        assert sum(map(len, groups)) == len(set().union(*groups)), f"{t}: a passage is in two splits"
    # the train rows of the ungrouped targets are the paper policy's capped train rows (the same fixed subset)
    from prefixrep.data import load_task
    assert [e.rid for e in targets["mr"]["train"]] == [e.rid for e in load_task("mr", data_dir, train_rows=1000)["train"]]


def _table2_records():
    "Table 2's committed units under `small` and under the `small` of the reports before the learning curves."
    from prefixrep.core import SMALL_BEFORE_CURVES, Store, get_profile
    from prefixrep.transfer import table2_records
    ledger = Store(ROOT / "results", ROOT / "artifacts").ledger.frame()
    return pd.concat([table2_records(ledger, get_profile("small", **o), "mirror") for o in ({}, SMALL_BEFORE_CURVES)])


def test_committed_table2_units_carry_predictions_that_give_their_scores():
    "Every committed Table 2 unit on the pool-policy sets has per-example predictions, and they give its score exactly."
    from prefixrep.evidence import check_scores
    recs = _table2_records()
    if recs.empty: pytest.skip("no committed Table 2 records on the pool-policy evaluation sets yet")
    assert recs.pred_test.notna().all() and recs.rows_test.notna().all()
    chk = check_scores(recs, ROOT / "results")
    assert len(chk) == len(recs) and chk.ok.all(), chk[~chk.ok]


def test_claims_csv_covers_every_experiment_with_intervals():
    from prefixrep.stats import CLAIMS_COLUMNS
    p = ROOT / "reports" / "claims.csv"
    if not p.exists(): pytest.skip("reports/claims.csv not written yet")
    c = pd.read_csv(p)
    assert list(c.columns) == CLAIMS_COLUMNS and {"table2", "table3", "figure2"} <= set(c.experiment)
    assert (c.ci_low <= c.estimate + 1e-9).all() and (c.estimate <= c.ci_high + 1e-9).all()
    inside = (c.ci_low > 0) | (c.ci_high < 0)
    assert (c.verdict[~inside] == "inconclusive").all() and (c.verdict[inside] != "inconclusive").all()


@pytest.mark.parametrize("report", ["table2.md", "table3.md", "figure2.md"])
def test_no_report_sentence_gives_a_verdict_without_its_interval(report):
    p = ROOT / "reports" / report
    if not p.exists(): pytest.skip(f"reports/{report} not written yet")
    bad = [l for l in p.read_text().splitlines() if VERDICT.search(l) and "interval [" not in l]
    assert not bad, bad
