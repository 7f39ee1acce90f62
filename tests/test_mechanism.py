"""What concatenation does (nbs/15): attention shares on prefix slots, the subsets per k, the average prefix, the
single-best choice, and the smoke run of the notebook end to end (its subsets are Table 3's own units)."""
import hashlib
import itertools
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from prefixrep.core import Store, get_profile
from prefixrep.data import Encoded
from prefixrep.mechanism import (active_subsets, add_average_prefix, attention_mass, best_single, claims_rows, labelled,
                                 row_table, subset_method)
from prefixrep.prefix import PrefixEncoder, find_self_attentions, load_backbone
from prefixrep.removal import removal_sets, removed_label, run_removal

ROOT = Path(__file__).resolve().parents[1]


def _digest(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()} if folder.exists() else {}


@pytest.fixture(scope="module", params=["tiny-bert", "tiny-roberta"])
def tiny(request):
    model, tok = load_backbone(request.param)
    enc = PrefixEncoder(model, 5)
    g = torch.Generator().manual_seed(0)
    for n in ("a", "b", "c"): enc.add_prefix(n, generator=g, init_std=1.0)
    rows = [Encoded([tok(f"word {i} " * (2 + i % 5))["input_ids"]], None, 0) for i in range(10)]
    return enc, tok, rows


def test_attention_shares_are_probabilities_that_reproduce_the_output(tiny):
    enc, tok, rows = tiny
    with enc.activate("a", "b", "c"): three = attention_mass(enc, rows, tok.pad_token_id, 4)
    with enc.activate("b"): one = attention_mass(enc, rows, tok.pad_token_id, 4)
    none = attention_mass(enc, rows, tok.pad_token_id, 4)
    for r in (three, one):
        assert r["max_abs_diff"] < 1e-5, "the recomputed probabilities give the module's own attention output"
        share = np.array(r["prefix_share"])
        assert ((share > 0) & (share < 1)).all() and np.allclose(share + (1 - share), 1)
        assert np.allclose(np.sum(list(r["per_prefix_share"].values()), 0), share), "the prefixes' shares add up"
        assert all(0 < c < 1 for c in r["cls_share"])
    assert none["prefix_share"] == [0.0] * 2 and none["per_prefix_share"] == {} and none["max_abs_diff"] < 1e-5
    assert all(t > o for t, o in zip(three["prefix_share"], one["prefix_share"]))
    assert three["n_tokens"] == sum(len(e.input_ids[0]) for e in rows) and three["n_views"] == len(rows)
    assert all(not m._forward_hooks for m in find_self_attentions(enc.model)), "the hooks are removed"
    assert enc.active == ()


def test_attention_on_a_prefix_with_huge_keys_along_the_queries_is_almost_all():
    "A made-up prefix whose every key is the (shared) query bias direction times a big number takes ~100% of attention."
    model, tok = load_backbone("tiny-bert")
    enc = PrefixEncoder(model, 1)
    attns = find_self_attentions(model)
    with torch.no_grad():
        for m in attns:
            m.query.weight.zero_(); m.query.bias.fill_(1.0); m.key.weight.zero_(); m.key.bias.zero_()
    p = enc.add_prefix("big", 1)
    with torch.no_grad(): p.fill_(0.0); p[:, 0].fill_(50.0)  # keys of 50 along all-ones queries; values 0
    rows = [Encoded([tok("a short one")["input_ids"]], None, 0)]
    with enc.activate("big"): r = attention_mass(enc, rows, tok.pad_token_id)
    assert min(r["prefix_share"]) > 0.999 and r["max_abs_diff"] < 1e-5


def test_subsets_per_k_and_average_prefix(tiny):
    six = get_profile("small").source_tasks
    sub = active_subsets(six, 4)
    assert [len(sub[k]) for k in range(7)] == [1, 6, 4, 4, 4, 4, 1] and active_subsets(six, 4) == sub
    assert all(len(r) == 6 - k for k, rs in sub.items() for r in rs) and sorted(sub[1]) == sorted(itertools.combinations(six, 5))
    assert {subset_method(r) for k in (4, 5, 6) for r in sub[k]} == {"removal"} and subset_method(sub[3][0]) == "active_subset"
    assert set(sub[4]) | set(sub[5]) | set(sub[6]) <= set(removal_sets(six, 2)), "k >= n - 2 are Table 3's subsets"
    enc, _, _ = tiny
    before = {n: enc.prefixes[n].clone() for n in ("a", "b")}
    add_average_prefix(enc, ["a", "b"], "avg")
    assert torch.allclose(enc.prefixes["avg"], (before["a"] + before["b"]) / 2) and "avg" not in enc.active
    assert all(torch.equal(enc.prefixes[n], before[n]) for n in before)
    enc.remove_prefix("avg")


def _fake(sources=("a", "b", "c"), targets=("rte", "mr"), seeds=(0, 1), seed=0):
    rng = np.random.default_rng(seed)
    return pd.DataFrame([dict(method="removal", task=t, seed=s, removed=r, k=3 - len(r), label=removed_label(r),
                              dev=rng.uniform(50, 90), score=rng.uniform(50, 90))
                         for t in targets for s in seeds for k in range(4) for r in itertools.combinations(sources, 3 - k)])


def test_single_best_is_chosen_on_dev_only():
    recs = _fake()
    pick = lambda df: dict(zip(*best_single(df, ("a", "b", "c")).groupby("task").kept.first().reset_index().values.T))
    chosen = pick(recs)
    one = recs[recs.k == 1].assign(kept=lambda d: [next(s for s in "abc" if s not in r) for r in d.removed])
    assert chosen == one.groupby(["task", "kept"]).dev.mean().groupby("task").idxmax().map(lambda x: x[1]).to_dict()
    rng = np.random.default_rng(1)
    for _ in range(10):
        assert pick(recs.assign(score=rng.permutation(recs.score.values))) == chosen, "the choice looked at test"
    tab = row_table(labelled(recs, ("a", "b", "c")), None, ("rte", "mr")).set_index("row")
    assert tab.loc["k=1", "n_runs"] == 3 * 2 and tab.loc["best single (dev)", "n_runs"] == 2
    assert tab.loc["concatenation", "acc"] == pytest.approx(recs[recs.k == 3].score.mean())


def test_claims_follow_the_intervals():
    f = dict(se=0.5, n_rows=600, n_clusters=600, n_seeds_a=3, n_seeds_b=3, n_boot=100, level=0.95)
    diffs = pd.DataFrame([dict(comparison="best single (dev) − concatenation", estimate=1.5, ci_low=0.5, ci_high=2.5, **f),
                          dict(comparison="frozen − concatenation", estimate=-4.0, ci_low=-5.0, ci_high=-3.0, **f),
                          dict(comparison="k=6 − k=1", estimate=0.2, ci_low=-0.8, ci_high=1.2, **f)])
    c = pd.DataFrame(claims_rows(diffs))
    assert list(c.verdict) == ["contradicted", "reproduced", "inconclusive"] and (c.experiment == "mechanism").all()


def test_papermill_smoke_writes_the_report_and_shares_table3s_units(tmp_path, data_dir):
    import papermill as pm
    reports_before = _digest(ROOT / "reports")
    res, cache, rep = tmp_path / "res", tmp_path / "cache", tmp_path / "rep"
    pm.execute_notebook(str(ROOT / "nbs" / "15_mechanism.ipynb"), str(tmp_path / "out.ipynb"), cwd=str(ROOT / "nbs"),
                        progress_bar=False, parameters=dict(seeds="0", profile="smoke", data_dir=str(data_dir),
                                                            results_dir=str(res), cache_dir=str(cache), reports_dir=str(rep)))
    assert (rep / "mechanism.png").stat().st_size > 0
    long = pd.read_csv(rep / "mechanism.csv")
    acc = long[long.part == "accuracy"].set_index("name")
    assert {"k=0", "k=1", "k=2", "k=3", "concatenation", "frozen", "average prefix", "best single (dev)"} <= set(acc.index)
    assert acc.value.between(0, 100).all() and (acc.ci_low <= acc.value + 1e-9).all()
    att = long[long.part == "attention %"]
    assert att.value.between(0, 100).all() and set(att.layer) == {1, 2}
    assert "Attention" in (rep / "mechanism.md").read_text()
    led = Store(res, cache).ledger.frame()
    assert (led.method == "attention_mass").sum() == 8 * 4 and led[led.method == "attention_mass"].max_abs_diff.max() < 1e-4
    assert not list((cache / "features").glob("*.pt")), "keep_features=False: the subsets' representations are deleted"
    # Table 3 (at most 2 removed) finds every subset this notebook scored: it adds only its multi-task units
    n_removal = (led.method == "removal").sum()
    assert n_removal == 7 * 8
    run_removal(0, "smoke", str(data_dir), str(res), str(cache), str(rep), max_removed=2, progress=False)
    after = Store(res, cache).ledger.frame()
    assert (after.method == "removal").sum() == n_removal and set(after.method) - set(led.method) <= {"multitask", "multitask_model"}
    assert reports_before == _digest(ROOT / "reports"), "tests must not write to reports/"
