"""Table 3 (removing source prefixes): the subsets, dev-selected vs oracle choice, and the smoke run end to end."""
import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from prefixrep.core import Store, get_profile
from prefixrep.removal import ROWS, removal_sets, run_removal, table3, update_profile
from prefixrep.experiment import profile_key

ROOT = Path(__file__).resolve().parents[1]
TARGETS = ["rte", "mrpc", "cr", "mr", "mpqa", "boolq", "multirc", "cosmosqa"]


def _digest(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()} if folder.exists() else {}


def test_removal_sets_of_six_sources():
    six = get_profile("small").source_tasks
    sets = removal_sets(six, 2)
    assert len(sets) == len({frozenset(r) for r in sets}) == 22
    assert sets[0] == () and all(set(r) <= set(six) and len(r) <= 2 for r in sets)
    assert removal_sets(six, 1) == sets[:7] and removal_sets(six, 0) == [()]
    for bad in (-1, 6, 1.5, True):
        with pytest.raises(ValueError):
            removal_sets(six, bad)


def _fake_ledger(prof, dev, test, seeds=(0, 1)) -> pd.DataFrame:
    "Records as run_removal writes them; `dev`/`test` map a removed tuple to accuracy (fraction)."
    key = profile_key(update_profile(prof), None)
    recs = [dict(method="removal", task=t, seed=s, removed=list(r), dev=dev(r) + s / 100, score=test(r),
                 seconds=1.0, **key)
            for t in TARGETS for s in seeds for r in removal_sets(prof.source_tasks, 2)]
    recs += [dict(method="multitask", task=t, seed=s, dev=0.5, score=0.5, seconds=1.0, **key) for t in TARGETS for s in seeds]
    recs += [dict(method="source_prefix", task="sst2", seed=0, dev=0.9)]  # other units are ignored
    return pd.DataFrame(recs)


def test_dev_selection_picks_by_dev_and_oracle_by_test():
    prof = get_profile("smoke")  # sources: mnli, sst2, winogrande
    dev = lambda r: 0.8 if r == ("sst2",) else 0.6                       # best on dev: remove sst2 ...
    test = lambda r: {("sst2",): 0.6, ("mnli", "winogrande"): 0.85}.get(r, 0.7)  # ... which is worst on test
    m = table3(_fake_ledger(prof, dev, test), prof).set_index(["method", "selection", "task"])
    assert set(m.index.droplevel(2)) == set(ROWS)
    for t in TARGETS:
        assert m.loc[("remove_le1", "dev", t), "removed"] == "sst2" and m.loc[("remove_le1", "dev", t), "mean"] == pytest.approx(60)
        assert m.loc[("remove_le2", "dev", t), "removed"] == "sst2"
        assert m.loc[("remove_le1", "oracle", t), "removed"] == "none", "test ties go to removing fewer sources"
        assert m.loc[("remove_le2", "oracle", t), "removed"] == "mnli+winogrande"
        assert m.loc[("remove_le2", "oracle", t), "mean"] == pytest.approx(85)
        assert m.loc[("prefix", "none", t), "mean"] == pytest.approx(70) and m.loc[("multitask", "none", t), "removed"] == "n/a"
    assert (m.xs("Avg", level=2).n_seeds == 2).all()
    assert np.isnan(m.loc[("remove_le2", "dev", "rte"), "paper"]) and m.loc[("remove_le2", "oracle", "rte"), "paper"] == 87.30
    # the dev-selected choice never depends on the test scores
    rng = np.random.default_rng(0)
    for _ in range(5):
        noise = {r: rng.uniform(0.3, 0.9) for r in removal_sets(prof.source_tasks, 2)}
        m2 = table3(_fake_ledger(prof, dev, lambda r: noise[r]), prof).set_index(["method", "selection", "task"])
        assert (m2.loc[("remove_le2", "dev"), "removed"].drop("Avg") == "sst2").all()


def test_a_half_finished_seed_counts_in_no_row():
    "Every row of Table 3 averages the same seeds: a seed missing some subsets is left out of all of them."
    prof = get_profile("smoke")
    led = _fake_ledger(prof, lambda r: 0.6, lambda r: 0.7)
    assert (table3(led, prof).n_seeds == 2).all()
    half = led[(led.seed == 1) & led.removed.map(lambda r: isinstance(r, list) and len(r) == 2)].index
    m = table3(led.drop(half), prof)
    assert set(m.method) == {"multitask", "prefix", "remove_le1", "remove_le2"} and (m.n_seeds == 1).all()


def test_papermill_smoke_writes_table3_and_resumes(tmp_path, data_dir):
    import papermill as pm
    # (a background run may be writing results/ meanwhile: only files that this test could have written are checked)
    reports_before, results_before = _digest(ROOT / "reports"), set(_digest(ROOT / "results"))
    res, cache, rep = tmp_path / "res", tmp_path / "cache", tmp_path / "rep"
    pm.execute_notebook(str(ROOT / "nbs" / "06_removal.ipynb"), str(tmp_path / "out.ipynb"), cwd=str(ROOT / "nbs"),
                        progress_bar=False, parameters=dict(seed=0, profile="smoke", data_dir=str(data_dir),
                                                            results_dir=str(res), cache_dir=str(cache), reports_dir=str(rep)))
    t3 = pd.read_csv(rep / "table3.csv", keep_default_na=False)
    assert {"method", "selection", "task", "mean", "std", "n_seeds", "removed", "profile", "backbone", "paper"} <= set(t3.columns)
    assert set(zip(t3.method, t3.selection)) == set(ROWS)
    assert set(t3.task) == set(TARGETS) | {"Avg"} and (t3.n_seeds == 1).all() and t3["mean"].between(0, 100).all()
    # 3 sources, at most 2 removed: 1 + 3 + 3 = 7 subsets, each scored once per target
    led = Store(res, cache).ledger.frame()
    rem = led[led.method == "removal"].assign(removed=lambda d: d.removed.map(tuple))
    assert len(rem) == 7 * 8 and (rem.groupby("task").removed.nunique() == 7).all()
    # the dev-selected subset is the one with the best dev score; the table's number is its test score
    sel = t3[(t3.method == "remove_le2") & (t3.selection == "dev") & (t3.task != "Avg")].set_index("task")
    for t, row in sel.iterrows():
        g = rem[rem.task == t]
        chosen = g[g.removed.map(lambda r: "+".join(r) or "none") == row.removed].iloc[0]
        assert chosen.dev == g.dev.max() and 100 * chosen.score == pytest.approx(row["mean"], abs=1e-3)
    md = (rep / "table3.md").read_text()
    assert "Deviations from the paper" in md and "dev-selected" in md and "oracle" in md and "87.30" in md
    assert (rep / "table3.tex").exists()
    claims = pd.read_csv(rep / "claims.csv")  # the units carry predictions: every Table 3 interval is the paired one
    assert len(claims[claims.experiment == "table3"]) and set(claims[claims.experiment == "table3"].interval) == {"paired bootstrap"}
    assert "selection noise" in md  # the oracle rows against their null from predictions
    # a rerun finds every unit in the ledger and changes nothing
    before = _digest(res / "ledger")
    again = run_removal(0, "smoke", str(data_dir), str(res), str(cache), str(rep), progress=False)
    assert _digest(res / "ledger") == before and len(again) == 7 * 8 + 8
    assert {k: v for k, v in _digest(ROOT / "reports").items() if "table3" in k} == \
           {k: v for k, v in reports_before.items() if "table3" in k}, "tests must not write to reports/"
    new = [ROOT / "results" / k for k in set(_digest(ROOT / "results")) - results_before]
    assert not [p for p in new if p.suffix == ".json" and ('"smoke"' in p.read_text() or "tiny-bert" in p.read_text())], \
        "tests must not write to results/"
