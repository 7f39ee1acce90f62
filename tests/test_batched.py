"""Many target heads at once (nbs/04): batched heads agree with separate ones, streaming equals stacking, extraction
resumes from its shards, and batched units are recorded as such."""
import pytest
import torch

import prefixrep.target as T
from prefixrep.core import Profile, Store, get_profile
from prefixrep.data import encode, load_task
from prefixrep.prefix import PrefixEncoder, load_backbone
from prefixrep.target import (FeatureStack, Features, extract_features, fit_target_head, fit_target_heads,
                              run_target_jobs, target_job, train_target_head, train_target_heads)
from prefixrep.training import decode_predictions


def made_up(n: int, views: int, seed: int, hidden: int = 16) -> Features:
    "Made-up fixed representations: `views` views per example, the first token of the first view carries the label."
    g = torch.Generator().manual_seed(seed)
    lens = torch.randint(3, 12, (views * n,), generator=g)
    labels = torch.randint(0, 2, (n,), generator=g)
    tok = torch.randn(int(lens.sum()), hidden, generator=g)
    tok[torch.cat([torch.zeros(1, dtype=torch.long), lens.cumsum(0)])[:-1:views], 0] += 1.5 * labels
    return Features(tok.half(), lens, torch.full((n,), views), labels, [()] * n)


def noisy(f: Features, seed: int) -> Features:
    "Another representation of the same rows: same views, lengths and labels, other states."
    g = torch.Generator().manual_seed(seed)
    return Features((f.tokens.float() + 0.5 * torch.randn(f.tokens.shape, generator=g)).half(), f.lengths, f.n_views,
                    f.labels, f.gold)


def feature_sets(k: int, views: int) -> list[dict]:
    base = {s: made_up(48, views, i) for i, s in enumerate(("train", "dev", "test"))}
    return [{s: noisy(f, 10 * j + i) for i, (s, f) in enumerate(base.items())} for j in range(k)]


PROF = Profile("demo", "none", head_epochs=10, head_batch=8)


@pytest.mark.parametrize("task,views,seeds", [("cosmosqa", 2, [0, 0, 0]), ("cosmosqa", 2, [0, 1, 2]), ("mr", 1, [3, 4, 5])])
def test_batched_heads_equal_separate_heads(task, views, seeds):
    fs = feature_sets(len(seeds), views)
    separate = [train_target_head(f, task, PROF, s) for f, s in zip(fs, seeds)]
    batched = train_target_heads(fs, task, PROF, seeds)
    for a, b in zip(separate, batched):
        assert (a["dev"], a["best_epoch"], a["score"], a["pred_test"]) == (b["dev"], b["best_epoch"], b["score"], b["pred_test"])
        assert b["head_version"] == T.HEAD_VERSION == 3 and b["heads_batched"] == len(seeds)
    one = train_target_heads(fs[:1], task, PROF, seeds[:1])[0]  # a run of one head is the plain loop, exactly
    assert one == {**separate[0], "head_version": 1, "heads_batched": 1}
    heads = [fit_target_head(f, task, PROF, s)[0] for f, s in zip(fs, seeds)]
    _, params, _ = fit_target_heads(fs, task, PROF, seeds)
    for k, h in enumerate(heads):  # rounding only: a batched product may sum in another order
        assert max((p - params[n][k]).abs().max().item() for n, p in h.state_dict().items()) < 1e-3  # float rounding drift only (nbs/04)


def test_a_batched_head_is_not_its_neighbours():
    "Changing one head's features changes only that head's result (no leak between stacked heads)."
    fs = feature_sets(3, 2)
    a = train_target_heads(fs, "cosmosqa", PROF, [0, 1, 2])
    fs[1] = {s: noisy(f, 99) for s, f in fs[1].items()}
    b = train_target_heads(fs, "cosmosqa", PROF, [0, 1, 2])
    assert a[0] == b[0] and a[2] == b[2] and a[1]["pred_dev"] != b[1]["pred_dev"]


def test_streaming_equals_stacking_and_rows_must_match():
    fs = feature_sets(3, 2)
    assert train_target_heads(fs, "cosmosqa", PROF, [0, 1, 2], budget=0) == train_target_heads(fs, "cosmosqa", PROF, [0, 1, 2])
    assert FeatureStack([f["train"] for f in fs], budget=0).streaming and not FeatureStack([f["train"] for f in fs]).streaming
    other = made_up(48, 2, 7)
    with pytest.raises(ValueError, match="same rows"):
        FeatureStack([fs[0]["train"], other])



def test_head_noise_drawn_in_threads_is_the_same():
    "The GPU path draws the heads' dropout masks in threads: each head's own generator, so the very same masks."
    from concurrent.futures import ThreadPoolExecutor
    head, shapes = T.TargetHead(16, 2), [(5, 7), (3, 9), (5, 4)]
    def gens(): return [torch.Generator().manual_seed(s) for s in (1, 2, 3)]
    with ThreadPoolExecutor(3) as pool:
        a, b = T.head_noise(head, shapes, 5, 9, gens()), T.head_noise(head, shapes, 5, 9, gens(), pool)
    assert all(torch.equal(x, y) for x, y in zip(a, b)) and a[0][1, 3:].abs().sum() == 0 and a[0][0].abs().sum() > 0

def test_heads_per_run_stacks_all_heads_on_a_gpu():
    f = made_up(48, 2, 0, hidden=384)
    prof = get_profile("small")
    assert T.heads_per_run(f, prof, "cuda") > T.heads_per_run(f, prof) >= 1
    assert T.heads_per_run(f, prof, "cuda:0") == T.STEP_BYTES_GPU // (prof.head_batch * 2 * int(f.lengths.max()) * 384 * 4)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA device here (the device check runs on a lent GPU machine)"))])
def test_heads_on_a_device_match_the_cpu(device):
    """Heads trained on `device` match the CPU default: batched heads draw init, batches and dropout on the CPU, so on
    a GPU only float rounding differs (the same best epochs, dev accuracies within one row, predictions almost all
    equal); a single head draws dropout from the device's generator, so on a GPU it is another run, scored alike."""
    fs = feature_sets(3, 2)
    cpu = train_target_heads(fs, "cosmosqa", PROF, [0, 1, 2])
    dev = train_target_heads(fs, "cosmosqa", PROF, [0, 1, 2], device=device)
    one = train_target_head(fs[0], "cosmosqa", PROF, 0, device=device)
    assert len(one["pred_test"]) == len(cpu[0]["pred_test"]) and 0 <= one["score"] <= 1
    if device == "cpu":
        assert dev == cpu and one == train_target_head(fs[0], "cosmosqa", PROF, 0)
        return
    for a, b in zip(cpu, dev):
        assert a["best_epoch"] == b["best_epoch"] and abs(a["dev"] - b["dev"]) <= 1 / 48 + 1e-9
        same = sum(x == y for x, y in zip(decode_predictions(a["pred_test"]), decode_predictions(b["pred_test"])))
        assert same >= 46

@pytest.fixture(scope="module")
def tiny(data_dir):
    prof = get_profile("smoke", head_epochs=2)
    model, tok = load_backbone(prof.backbone)
    raw = load_task("cosmosqa", data_dir, train_rows=prof.target_train_rows, eval_rows=prof.eval_rows)
    return prof, PrefixEncoder(model, prof.prefix_length), tok, {k: encode(v, tok, prof.max_length) for k, v in raw.items()}


def test_extraction_resumes_from_its_shards(tiny, tmp_path, monkeypatch):
    prof, enc, tok, data = tiny
    whole = extract_features(enc, data["test"], tok.pad_token_id, batch_size=4)
    calls, real = [], T.encoder_states
    def dies_after_three(*a, **k):
        calls.append(1)
        if len(calls) > 3: raise KeyboardInterrupt("killed")
        return real(*a, **k)
    monkeypatch.setattr(T, "encoder_states", dies_after_three)
    with pytest.raises(KeyboardInterrupt):
        extract_features(enc, data["test"], tok.pad_token_id, batch_size=4, shard_dir=tmp_path, shard_rows=8)
    assert len(list(tmp_path.glob("*.pt"))) == 1           # the first shard (two batches of 4) was written
    calls.clear(); monkeypatch.setattr(T, "encoder_states", lambda *a, **k: (calls.append(1), real(*a, **k))[1])
    resumed = extract_features(enc, data["test"], tok.pad_token_id, batch_size=4, shard_dir=tmp_path, shard_rows=8)
    n_batches = -(-len(data["test"]) // 4)
    assert len(calls) == n_batches - 2                      # the finished shard was read, not recomputed
    assert torch.equal(resumed.tokens, whole.tokens) and torch.equal(resumed.lengths, whole.lengths)


def test_jobs_are_batched_per_target_and_recorded(tiny, tmp_path):
    prof, enc, tok, data = tiny
    st = Store(tmp_path / "results", tmp_path / "cache")
    jobs = [target_job(enc, "frozen", "cosmosqa", data, prof, s, st, tok.pad_token_id, {}) for s in (0, 1)]
    assert all(j.paths is not None for j in jobs)
    recs = run_target_jobs(jobs, st, prof)
    assert [r["heads_batched"] for r in recs] == [2, 2] and [r["seed"] for r in recs] == [0, 1]
    rows = decode_predictions(st.ledger.get(jobs[0].key)["pred_test"])
    assert len(rows) == len(data["test"])
    again = target_job(enc, "frozen", "cosmosqa", data, prof, 0, st, tok.pad_token_id, {})
    assert again.paths is None and run_target_jobs([again], st, prof) == recs[:1]  # read back, not retrained
