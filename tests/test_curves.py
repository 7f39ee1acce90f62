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


def test_the_rule_needs_less_than_half_a_point_over_every_later_doubling():
    assert plateau_step([[250, .5], [500, .504], [1000, .507]]) == (500, True)
    assert plateau_step([[250, .5], [500, .506], [1000, .508]]) == (1000, True)
    assert plateau_step([[250, .5], [500, .504], [1000, .52]]) == (1000, False)  # an early flat stretch, then a rise
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


@pytest.mark.parametrize("reparam", [0, 16])
def test_a_longer_curve_continues_a_shorter_one(tmp_path, data_dir, reparam):
    """A curve unit with a higher cap starts from the shorter unit's last state and ends where a fresh long run ends
    (with the MLP reparameterisation its MLP is part of that state)."""
    import torch
    from prefixrep.core import Store
    from prefixrep.data import encode, load_task
    from prefixrep.prefix import PrefixEncoder, load_backbone
    from prefixrep.training import train_source_prefix
    model, tok = load_backbone("tiny-bert")
    enc = PrefixEncoder(model, 5)
    data = {k: encode(v, tok, 48) for k, v in load_task("mnli", data_dir, train_rows=48, eval_rows=24).items()}
    short, long = (get_profile("smoke", prefix_steps=s, prefix_eval_every=2, prefix_reparam=reparam) for s in (4, 8))
    st, fresh = Store(tmp_path / "r", tmp_path / "c"), Store(tmp_path / "r2", tmp_path / "c2")
    train_source_prefix(enc, "mnli", data, short, 0, st, tok.pad_token_id, progress=False)
    continued = train_source_prefix(enc, "mnli", data, long, 0, st, tok.pad_token_id, progress=False)
    a = enc.prefixes["mnli"].clone()
    alone = train_source_prefix(enc, "mnli", data, long, 0, fresh, tok.pad_token_id, progress=False)
    assert continued["resumed_from"] == 4 and alone["resumed_from"] == 0
    assert torch.equal(a, enc.prefixes["mnli"]) and continued["curve"] == alone["curve"]
    assert continued.get("reparam") == (reparam or None)  # in the unit's key only where set: older keys stay valid



@pytest.mark.parametrize("reparam", [0, 16])
def test_a_shorter_budget_is_read_off_a_longer_curve(tmp_path, data_dir, reparam):
    """A budget a longer finished run passed (a multiple of its eval spacing) is its best snapshot up to that step:
    the same prefix, dev predictions and curve as a run of that many steps, without training; other budgets train."""
    import torch
    from prefixrep.core import Store
    from prefixrep.data import encode, load_task
    from prefixrep.prefix import PrefixEncoder, load_backbone
    from prefixrep.training import train_source_prefix
    model, tok = load_backbone("tiny-bert")
    enc = PrefixEncoder(model, 5)
    data = {k: encode(v, tok, 48) for k, v in load_task("mnli", data_dir, train_rows=48, eval_rows=24).items()}
    prof = get_profile("smoke", prefix_steps=8, prefix_eval_every=2, prefix_reparam=reparam)
    st, fresh = Store(tmp_path / "r", tmp_path / "c"), Store(tmp_path / "r2", tmp_path / "c2")
    train_source_prefix(enc, "mnli", data, prof, 0, st, tok.pad_token_id, progress=False)
    read = train_source_prefix(enc, "mnli", data, prof, 0, st, tok.pad_token_id, steps=4, progress=False)
    a = enc.prefixes["mnli"].clone()
    trained = train_source_prefix(enc, "mnli", data, prof, 0, fresh, tok.pad_token_id, steps=4, progress=False)
    assert read["snapshot_of"] and "snapshot_of" not in trained
    assert torch.equal(a, enc.prefixes["mnli"])
    assert (read["dev"], read["pred_dev"], read["curve"], read["best_step"]) == \
           (trained["dev"], trained["pred_dev"], trained["curve"], trained["best_step"])
    odd = train_source_prefix(enc, "mnli", data, prof, 0, st, tok.pad_token_id, steps=3, progress=False)
    assert "snapshot_of" not in odd and odd["resumed_from"] == 0  # 3 is no evaluated step: trained


def test_the_snapshot_read_is_the_best_dev_up_to_the_budget(tmp_path):
    "The best evaluated step up to the budget (the first of equal maxima), never one past it; a gap in the curve or a missing snapshot reads nothing."
    from prefixrep.core import Store, config_hash, torch_save
    from prefixrep.training import shorter_from_curve
    st = Store(tmp_path / "r", tmp_path / "c")
    cfg = {"method": "source_prefix", "task": "mnli", "steps": 8, "eval_every": 2}
    st.ledger.run(cfg, lambda: {"steps": 8, "train_seconds": 80.0, "curve": [[2, .3], [4, .5], [6, .5], [8, .9]]})
    for s in (2, 4, 6, 8): torch_save(st.cache_path("curves", f"{config_hash(cfg)}-{s}", ".pt"), {"prefix": s, "dev": None})
    rec, snap = shorter_from_curve(st, {**cfg, "steps": 6}, (8,))
    assert snap["step"] == snap["prefix"] == 4 and snap["curve"] == [[2, .3], [4, .5], [6, .5]] and rec["train_seconds"] == 80
    assert shorter_from_curve(st, {**cfg, "steps": 2}, (8,))[1]["step"] == 2
    assert shorter_from_curve(st, {**cfg, "steps": 5}, (8,)) is None      # not an evaluated step
    assert shorter_from_curve(st, {**cfg, "steps": 6}, (4,)) is None      # no longer run named
    st.cache_path("curves", f"{config_hash(cfg)}-4", ".pt").unlink()
    assert shorter_from_curve(st, {**cfg, "steps": 6}, (8,)) is None      # its best snapshot is gone: train instead

def test_reparameterised_prefix_learns_through_its_mlp():
    "Li & Liang's MLP: the loss reaches E and the MLP, not the stored prefix; `write` makes the stored prefix its output."
    import torch
    from prefixrep.prefix import PrefixEncoder, load_backbone
    from prefixrep.training import PrefixMLP, _WithPrefix
    model, _ = load_backbone("tiny-bert")
    enc = PrefixEncoder(model, 5)
    enc.add_prefix("x")
    mlp = PrefixMLP(enc, 5, 16, torch.Generator().manual_seed(0))
    assert mlp().shape == enc.prefixes["x"].shape
    ids = torch.tensor([[101, 2000, 2001, 102]])
    with enc.activate("x"):
        out = _WithPrefix(enc, "x", mlp)(input_ids=ids, attention_mask=torch.ones_like(ids))
        out[..., 0].sum().backward()
        assert mlp.embedding.grad.abs().sum() > 0 and mlp.mlp[2].weight.grad.abs().sum() > 0
        assert enc.prefixes["x"].grad is None
        before = enc(input_ids=ids, attention_mask=torch.ones_like(ids))
        mlp.write(enc, "x")
        after = enc(input_ids=ids, attention_mask=torch.ones_like(ids))
    assert not torch.allclose(before, out) and torch.allclose(after, out, atol=1e-6)
    same = PrefixMLP(enc, 5, 16, torch.Generator().manual_seed(0))
    assert torch.equal(same(), PrefixMLP(enc, 5, 16, torch.Generator().manual_seed(0))())  # seeded

def test_table2_compute_counts_only_its_own_source_prefixes():
    "Probes at another lr or parameterisation share task, seed and steps with Table 2's prefixes; their hours are not Table 2's."
    from prefixrep.transfer import table2_compute
    from prefixrep.experiment import profile_key
    prof = get_profile("small-reparam")
    key = profile_key(prof, "data")["profile_hash"]
    assert prof.prefix_reparam  # prefixes trained through the MLP; a direct prefix at the same lr is a probe
    rec = lambda **kw: {"method": "source_prefix", "task": "mnli", "seed": 0, "steps": prof.source_steps("mnli"),
                        "lr": prof.prefix_lr, "reparam": prof.prefix_reparam, "seconds": 3600.0, "profile_hash": None,
                        "tasks": None, **kw}
    ledger = pd.DataFrame([{"method": "frozen", "task": "rte", "seed": 0, "steps": None, "lr": None, "seconds": 0.0,
                            "profile_hash": key, "tasks": None, "reparam": None},
                           rec(), rec(lr=prof.prefix_lr * 50), rec(reparam=None), rec(reparam=2 * prof.prefix_reparam)])
    hours, seeds = table2_compute(ledger, prof, "data")
    assert seeds == [0] and hours.sum() == 1.0 and hours["prefix"] == 1.0
