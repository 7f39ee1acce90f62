"""Table 2 end to end on the smoke profile: papermill run, resumability, the table's shape."""
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _digest(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()} if folder.exists() else {}


def not_written_by_smoke(before: dict, folder: Path) -> bool:
    "Files of `folder` that existed are unchanged, and none of the new ones is a smoke-profile (tiny-bert) file."
    now = _digest(folder)
    new = [folder / k for k in set(now) - set(before)]
    return all(now.get(k) == v for k, v in before.items()) and \
        not [p for p in new if p.suffix in (".json", ".md", ".csv") and ("smoke" in p.read_text() or "tiny-bert" in p.read_text())]


def test_papermill_smoke_writes_table2_into_a_temp_dir(tmp_path, data_dir):
    import papermill as pm
    # (a real run may be adding to results/ meanwhile: no existing file of results/ or reports/ may change, and no new
    # one may come from this smoke run)
    reports, results = _digest(ROOT / "reports"), _digest(ROOT / "results")
    out = tmp_path / "out.ipynb"
    pm.execute_notebook(str(ROOT / "nbs" / "05_transfer.ipynb"), str(out), cwd=str(ROOT / "nbs"), progress_bar=False,
                        parameters=dict(seed=0, profile="smoke", data_dir=str(data_dir), results_dir=str(tmp_path / "res"),
                                        cache_dir=str(tmp_path / "cache"), reports_dir=str(tmp_path / "rep")))
    t2 = pd.read_csv(tmp_path / "rep" / "table2.csv")
    assert {"method", "task", "mean", "std", "n_seeds", "profile", "backbone", "ci_low", "ci_high", "n_test"} <= set(t2.columns)
    cells = t2[t2.method.isin(["finetune", "frozen", "multitask", "prefix"])]
    assert set(cells.method) == {"finetune", "frozen", "multitask", "prefix"} and "majority" in set(t2.method)
    assert "prefix - multitask" in set(t2.method)                                    # the difference rows
    assert set(t2.task) == {"rte", "mrpc", "cr", "mr", "mpqa", "boolq", "multirc", "cosmosqa", "Avg"}
    assert (cells.n_seeds == 1).all() and cells["mean"].between(0, 100).all()
    assert (cells.ci_low <= cells["mean"] + 1e-9).all() and (cells["mean"] <= cells.ci_high + 1e-9).all()
    claims = pd.read_csv(tmp_path / "rep" / "claims.csv")                            # every claim with its interval
    assert set(claims.experiment) == {"table2"} and len(claims) == 5 and claims.verdict.isin(["reproduced", "contradicted", "inconclusive"]).all()
    md = (tmp_path / "rep" / "table2.md").read_text()
    assert "Deviations from the paper" in md and "Prefix-based training" in md
    assert "**Diagnosis of the frozen row**" in md and "probe_const" in md  # the diagnosis section and its table
    assert (tmp_path / "rep" / "table2.tex").exists()
    # every number in the table comes from a ledger record
    led = pd.DataFrame([json.loads(p.read_text()) for p in (tmp_path / "res" / "ledger").glob("*.json")])
    scores = led[led.method == "prefix"].set_index("task").score * 100
    got = t2[(t2.method == "prefix") & (t2.task != "Avg")].set_index("task")["mean"]
    from prefixrep.evidence import check_scores                                     # and its predictions give it back
    scored = led[led.method.isin(["finetune", "frozen", "multitask", "prefix", "frozen_probe", "frozen_long"])]
    assert scored.pred_test.notna().all() and check_scores(scored, tmp_path / "res").ok.all()
    assert (abs(got - scores[got.index]) < 1e-3).all()
    # the frozen row's diagnosis: one seed-free linear probe per target, recording how much the max length truncates
    probes = led[led.method == "frozen_probe"]
    assert sorted(probes.task) == sorted(set(t2.task) - {"Avg"}) and probes.truncated.between(0, 1).all()
    assert probes.seed.isna().all() and probes.score.between(0, 1).all()
    assert (led.method == "frozen_long").sum() <= (probes.truncated > 0).sum()  # where the frozen row is at chance
    assert not (led.method == "frozen_probe_all").any()  # the pool policy leaves no train rows beyond the budget
    assert not_written_by_smoke(reports, ROOT / "reports") and not_written_by_smoke(results, ROOT / "results"), \
        "CI must not write to reports/ or results/"


def test_killed_run_resumes_without_losing_finished_units(tmp_path, data_dir):
    res, cache = tmp_path / "res", tmp_path / "cache"
    code = ("from prefixrep.transfer import run_transfer; "
            f"run_transfer(0, 'smoke', {str(data_dir)!r}, {str(res)!r}, {str(cache)!r}, progress=False)")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, start_new_session=True)
    ledger = res / "ledger"
    t0 = time.time()
    while len(list(ledger.glob("*.json"))) < 10 and time.time() - t0 < 300 and proc.poll() is None:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL); proc.wait()
    before = _digest(ledger)
    assert len(before) >= 10, "the run should have finished some units before it was killed"
    for p in ledger.glob("*.json"): json.loads(p.read_text())  # no half-written record
    subprocess.run([sys.executable, "-c", code], env=env, check=True)
    after = _digest(ledger)
    assert all(after[k] == v for k, v in before.items()), "finished units must be untouched by the rerun"
    recs = [json.loads(p.read_text()) for p in ledger.glob("*.json")]
    assert sum(r["method"] in ("finetune", "frozen", "multitask", "prefix") for r in recs) == 32


def test_committed_table2_records_still_match_the_small_profile():
    "Adding a profile field (e.g. `extract_dtype`) must not orphan the committed records: their hash is still small's."
    from prefixrep.core import get_profile
    from prefixrep.experiment import profile_key
    hashes = {json.loads(p.read_text()).get("profile_hash") for p in (ROOT / "results" / "ledger").glob("*.json")}
    if not hashes - {None}: pytest.skip("no committed ledger records")
    from prefixrep.core import SMALL_BEFORE_CURVES
    from prefixrep.experiment import update_profile
    before = get_profile("small", **SMALL_BEFORE_CURVES)  # the committed reports' small (budgets before the curves)
    assert profile_key(get_profile("small-v1"), "mirror")["profile_hash"] == profile_key(before, "mirror")["profile_hash"]
    assert profile_key(before, "mirror")["profile_hash"] in hashes                   # Table 2
    assert profile_key(update_profile(before), "mirror")["profile_hash"] in hashes   # Table 3, Figure 2


def test_bf16_representations_are_their_own_units():
    "A bf16 profile hashes differently (its records never join fp32 Table 2 rows); bad dtypes fail early."
    from prefixrep.core import get_profile
    from prefixrep.target import extract_features
    from prefixrep.experiment import profile_key
    fp32, bf16 = (profile_key(get_profile("small", extract_dtype=d), "mirror")["profile_hash"] for d in ("float32", "bfloat16"))
    assert fp32 != bf16
    from prefixrep.transfer import finetune_key  # fine-tuning uses no fixed representation: shared by both dtypes
    ft = lambda **o: finetune_key(get_profile("small", **o), "mirror")["profile_hash"]
    assert ft(extract_dtype="bfloat16") == ft(extract_dtype="float32")
    with pytest.raises(ValueError, match="extract_dtype"): get_profile("small", extract_dtype="fp16")
    with pytest.raises(ValueError, match="dtype"): extract_features(None, [], 0, dtype="float16")


def test_finetune_lr_is_chosen_on_seed_0_dev(tmp_path, data_dir):
    "With an lr grid, seed 0 runs every lr; each target's lr is the best on seed-0 dev, and Table 2 reads only those units."
    from prefixrep.core import Store, get_profile
    from prefixrep.transfer import run_transfer, table2_records
    prof = get_profile("smoke", finetune_lrs=(1e-5, 1e-3), finetune_eval_every=1, checkpoint_every=1)
    for seed in (1, 0):  # a later seed first: it runs seed 0's grid itself
        run_transfer(seed, prof, data_dir, tmp_path / "r", tmp_path / "c", tmp_path / "rep", methods=("finetune",), progress=False)
    led = Store(tmp_path / "r", tmp_path / "c").ledger.frame()
    assert len(led) == 8 * 3 and led.curve.map(len).eq(prof.finetune_steps).all()  # dev at every step (eval_every 1)
    assert not list((tmp_path / "c").rglob("ckpt/*.pt"))  # a recorded unit's resume checkpoint (written every step) is removed
    recs = table2_records(led, prof, data_dir)
    assert len(recs) == 16 and recs.groupby("task").lr.nunique().eq(1).all()
    for t, g in led[led.seed == 0].groupby("task"):
        best = g.sort_values("lr").loc[g.dev.idxmax()] if g.dev.nunique() > 1 else g[g.lr == 1e-5].iloc[0]
        assert recs[(recs.task == t)].lr.iloc[0] == best.lr
    # new prefix / multi-task budgets keep these units (their key is the fine-tuning fields only)
    recs2 = table2_records(led, get_profile(prof, prefix_steps=99, multitask_steps=99), data_dir)
    assert len(recs2) == 16 and len(table2_records(led, get_profile(prof, finetune_wd=0.5), data_dir)) == 0


def test_target_rows_are_encoded_at_the_target_length(data_dir):
    "target_max_length truncates every target pair (and only targets) at its own length, and names a new Table 2 key."
    from prefixrep.core import get_profile
    from prefixrep.prefix import load_backbone
    from prefixrep.experiment import prepare_data, profile_key
    prof = get_profile("smoke", target_tasks=("boolq", "multirc"), target_max_length=24)
    _, tok = load_backbone(prof.backbone)
    targets, sources, _ = prepare_data(prof, data_dir, tok)
    longest = lambda splits: max(len(v) for sp in splits.values() for rows in sp.values() for e in rows for v in e.input_ids)
    assert longest(targets) == 24 and longest(sources) == prof.max_length == 48
    assert profile_key(prof, data_dir) != profile_key(get_profile("smoke", target_tasks=("boolq", "multirc")), data_dir)
    assert profile_key(get_profile("smoke", target_max_length=None), data_dir) == profile_key(get_profile("smoke"), data_dir)


def test_per_source_prefix_budgets_name_the_units(tmp_path, data_dir):
    "prefix_steps_by_task trains each listed source for its own steps (the others for prefix_steps) and keys Table 2 by it."
    from prefixrep.core import Ledger, get_profile
    from prefixrep.transfer import run_transfer
    from prefixrep.experiment import profile_key
    prof = get_profile("smoke", target_tasks=("rte",), prefix_steps_by_task=(("sst2", 2),))
    run_transfer(0, prof, data_dir, tmp_path / "r", tmp_path / "c", tmp_path / "rep", methods=("prefix",), progress=False)
    steps = {r["task"]: r["steps"] for r in Ledger(tmp_path / "r" / "ledger").records() if r["method"] == "source_prefix"}
    assert steps == {"mnli": 4, "sst2": 2, "winogrande": 4}
    assert profile_key(prof, data_dir) != profile_key(get_profile("smoke", target_tasks=("rte",)), data_dir)
