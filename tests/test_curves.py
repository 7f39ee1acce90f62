"""Learning curves (nbs/12): the curve units, the budget rule on them, and the smoke run of the notebook end to end."""
import hashlib
import json
from pathlib import Path

import pandas as pd
import pytest

from prefixrep.core import get_profile, plateau_step
from prefixrep.curves import curve_profile, run_curves

ROOT = Path(__file__).resolve().parents[1]


def _digest(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()} if folder.exists() else {}


def test_the_rule_needs_half_a_point_over_a_doubling():
    assert plateau_step([[250, .5], [500, .504], [1000, .52]]) == (500, True)
    assert plateau_step([[250, .5], [500, .506], [1000, .52]]) == (1000, False)
    with pytest.raises(ValueError):
        plateau_step([])


def test_curve_profile_needs_caps():
    assert curve_profile(get_profile("smoke")).prefix_eval_every == 2
    with pytest.raises(ValueError, match="learning-curve caps"):
        curve_profile(get_profile("paper"))


def test_papermill_smoke_writes_curves_and_resumes(tmp_path, data_dir):
    import papermill as pm
    committed = _digest(ROOT / "reports")
    params = dict(seed=0, profile="smoke", data_dir=str(data_dir), results_dir=str(tmp_path / "res"),
                  cache_dir=str(tmp_path / "cache"), reports_dir=str(tmp_path / "rep"))
    pm.execute_notebook(str(ROOT / "nbs" / "12_curves.ipynb"), str(tmp_path / "out.ipynb"), cwd=str(ROOT / "nbs"),
                        progress_bar=False, parameters=params)
    rep = tmp_path / "rep"
    table = pd.read_csv(rep / "source_tasks.csv")
    assert set(table.source) == set(get_profile("smoke").source_tasks)
    assert table.prefix_best_dev.between(0, 100).all() and table.multitask_dev.between(0, 100).all()
    assert (rep / "learning_curves.png").stat().st_size > 0 and "Budgets chosen" in (rep / "source_tasks.md").read_text()
    recs = [json.loads(p.read_text()) for p in (tmp_path / "res" / "ledger").glob("*.json")]
    curves = [r for r in recs if r.get("eval_every") == 2]
    assert len(curves) == 3 + 1 and all([s for s, _ in r["curve"]] == [2, 4] for r in curves)
    before = _digest(tmp_path / "res")
    run_curves(0, "smoke", data_dir, tmp_path / "res", tmp_path / "cache", rep, progress=False)
    assert _digest(tmp_path / "res") == before  # every curve was found in the ledger: nothing retrained
    assert committed == _digest(ROOT / "reports"), "CI must not write to reports/"
