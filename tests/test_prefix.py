"Checks of the prefix attention module (nbs/02_prefix.ipynb): the mechanism of Huang et al. 2023 §3.2-3.3."
import os

os.environ["HF_HUB_OFFLINE"] = "1"

import copy
import json

import pytest
import torch
from torch import nn

from prefixrep.prefix import (MINILM, PrefixEncoder, backbone_fingerprint, backbone_id, load_backbone, load_prefix,
                              prefix_attention_forward, read_prefix_meta, resolve_backbone, save_prefix)

BACKBONES = ["tiny-bert", "tiny-roberta", MINILM]
PAIRS = [("a short one", "yes"), ("a rather longer premise with a few more words in it", "and a hypothesis"),
         ("mid length text here", "ok then")]


@pytest.fixture(scope="module", params=BACKBONES)
def loaded(request):
    "(name, model, tokenizer, stock copy that keeps sdpa attention), loaded once per backbone."
    model, tok = load_backbone(request.param)
    return request.param, model, tok, copy.deepcopy(model)


def make_encoder(model, lengths=(("A", 5), ("B", 3))) -> PrefixEncoder:
    "Wrap `model` (re-binding its layers to a fresh encoder) and add random prefixes."
    enc = PrefixEncoder(model)
    g = torch.Generator().manual_seed(0)
    for name, n in lengths: enc.add_prefix(name, length=n, generator=g)
    return enc


def batch(tok, pairs=PAIRS):
    b = tok([a for a, _ in pairs], [b for _, b in pairs], padding=True, return_tensors="pt")
    assert (b["attention_mask"] == 0).any() or len(pairs) == 1
    return b["input_ids"], b["attention_mask"], b["token_type_ids"]


def stock_forward(stock, ids, am, tt):
    return stock(input_ids=ids, attention_mask=am,
                 token_type_ids=tt if stock.config.type_vocab_size > 1 else None).last_hidden_state


def reference_forward(enc: PrefixEncoder, ids, am, tt=None):
    "Hand-written eager forward: stock layer weights, attention recomputed with torch ops, prefixes in front."
    m, H, D = enc.model, enc.num_heads, enc.head_dim
    if m.config.type_vocab_size < 2: tt = None
    h = m.embeddings(input_ids=ids, token_type_ids=tt)
    B, T, _ = h.shape
    bias = (1.0 - am[:, None, None, :].float()) * -1e9
    for i, layer in enumerate(m.encoder.layer):
        sa = layer.attention.self
        heads = lambda x: x.view(B, T, H, D).transpose(1, 2)
        q, k, v, b = heads(sa.query(h)), heads(sa.key(h)), heads(sa.value(h)), bias
        if enc.active:
            pk = torch.cat([enc.prefixes[n][i, 0] for n in enc.active], dim=1)
            pv = torch.cat([enc.prefixes[n][i, 1] for n in enc.active], dim=1)
            k = torch.cat([pk.expand(B, -1, -1, -1), k], dim=2)
            v = torch.cat([pv.expand(B, -1, -1, -1), v], dim=2)
            b = torch.cat([bias.new_zeros(B, 1, 1, pk.shape[1]), bias], dim=-1)
        att = ((q @ k.transpose(-1, -2)) / D ** 0.5 + b).softmax(-1)
        ctx = (att @ v).transpose(1, 2).reshape(B, T, H * D)
        a = layer.attention.output(ctx, h)
        h = layer.output(layer.intermediate(a), a)
    return h


# 1. no active prefix (or only length-0 prefixes) = the stock model, bit for bit
@torch.no_grad()
def test_no_prefix_is_stock(loaded):
    name, model, tok, stock = loaded
    enc = make_encoder(model, (("A", 5), ("empty", 0)))
    assert model.config._attn_implementation == "prefixrep" and stock.config._attn_implementation == "sdpa"
    for pairs in (PAIRS, PAIRS[:1]):                       # with padding (bool mask) and without (mask None)
        ids, am, tt = batch(tok, pairs)
        base = stock_forward(stock, ids, am, tt)
        assert (enc(ids, am, tt) - base).abs().max().item() == 0
        with enc.activate("empty"): assert torch.equal(enc(ids, am, tt), base)
        with enc.activate("A"): assert not torch.allclose(enc(ids, am, tt), base)


# 2. A+B equals the hand-written reference
@torch.no_grad()
def test_two_prefixes_match_reference(loaded):
    name, model, tok, _ = loaded
    enc = make_encoder(model)
    for pairs in (PAIRS, PAIRS[:1]):
        ids, am, tt = batch(tok, pairs)
        with enc.activate("A", "B"):
            out, ref = enc(ids, am, tt), reference_forward(enc, ids, am, tt)
        real = am.bool()
        assert (out - ref)[real].abs().max().item() < 1e-5, name
        with enc.activate("A"):
            assert (enc(ids, am, tt) - reference_forward(enc, ids, am, tt))[real].abs().max().item() < 1e-5


# 3. the order of the prefixes does not matter
@torch.no_grad()
def test_order_invariant(loaded):
    _, model, tok, _ = loaded
    enc = make_encoder(model)
    ids, am, tt = batch(tok)
    with enc.activate("A", "B"): ab = enc(ids, am, tt)
    with enc.activate("B", "A"): ba = enc(ids, am, tt)
    real = am.bool()
    assert torch.allclose(ab[real], ba[real], atol=1e-5, rtol=1e-5)  # fp32 sums in another order (seen: 2.5e-6 on MiniLM, Xeon)


# 4. pads are masked: what sits under the padding does not change the real tokens' states
@torch.no_grad()
def test_pads_masked(loaded):
    _, model, tok, _ = loaded
    enc = make_encoder(model)
    ids, am, tt = batch(tok)
    real = am.bool()
    noisy = ids.masked_fill(~real, 1037)
    with enc.activate("A", "B"):
        a, b = enc(ids, am, tt), enc(noisy, am, tt)
    assert torch.allclose(a[real], b[real], atol=1e-6, rtol=0)


# 5. gradients reach only the active prefixes
def test_gradients_only_active(loaded):
    _, model, tok, _ = loaded
    enc = make_encoder(model, (("A", 5), ("B", 3), ("C", 5)))
    ids, am, tt = batch(tok)
    with enc.activate("A", "B"):
        assert enc.prefix_parameters() == [enc.prefixes["A"], enc.prefixes["B"]]
        enc(ids, am, tt).pow(2).sum().backward()
    for n in "AB": assert enc.prefixes[n].grad is not None and enc.prefixes[n].grad.abs().sum() > 0
    assert enc.prefixes["C"].grad is None
    assert all(not p.requires_grad and p.grad is None for p in enc.model.parameters())


# 6. real tokens' position ids do not depend on how many prefixes are active
@torch.no_grad()
def test_positions_unchanged(loaded):
    _, model, tok, _ = loaded
    enc = make_encoder(model, [(f"t{i}", 5) for i in range(7)])
    ids, am, tt = batch(tok)
    def positions(k):
        seen = []
        hook = model.embeddings.position_embeddings.register_forward_pre_hook(lambda mod, args: seen.append(args[0]))
        try:
            with enc.activate(*[f"t{i}" for i in range(k)]): enc(ids, am, tt)
        finally: hook.remove()
        return seen[0].expand_as(ids)
    p0 = positions(0)
    assert torch.equal(p0, positions(1)) and torch.equal(p0, positions(7))
    assert p0[1, 0].item() in (0, model.config.pad_token_id + 1)   # BERT starts at 0, RoBERTa after the pad id


# 7. save -> load round-trips exactly, with metadata
@pytest.mark.parametrize("name", ["tiny-bert", "tiny-roberta"])
def test_save_load_roundtrip(tmp_path, name):
    enc = make_encoder(load_backbone(name)[0])
    f = save_prefix(enc, "A", tmp_path / "A.safetensors", meta={"lr": 5e-3, "steps": 4})
    meta = read_prefix_meta(f)
    assert meta["task"] == "A" and meta["length"] == 5 and meta["backbone"] == name and meta["meta"]["steps"] == 4
    assert meta["backbone_fingerprint"] == backbone_fingerprint(enc.model) and meta["shape"] == [2, 2, 4, 5, 8]
    fresh = PrefixEncoder(load_backbone(name)[0])
    assert load_prefix(fresh, f) == "A" and torch.equal(fresh.prefixes["A"], enc.prefixes["A"])
    assert load_prefix(fresh, f, name="A2") == "A2" and fresh.active == ()
    ids, am, tt = batch(load_backbone(name)[1])
    with torch.no_grad(), enc.activate("A"), fresh.activate("A2"):
        assert torch.equal(enc(ids, am, tt), fresh(ids, am, tt))
    assert not list(tmp_path.glob(".*.tmp")), "no temporary files left behind"


# 8. a prefix refuses to load on another backbone (other architecture, or same config with other weights)
def test_refuses_other_backbone(tmp_path):
    enc = make_encoder(load_backbone("tiny-bert")[0])
    f = save_prefix(enc, "A", tmp_path / "A.safetensors")
    with pytest.raises(ValueError, match="tiny-bert") as e:
        load_prefix(PrefixEncoder(load_backbone("tiny-roberta")[0]), f)
    assert "tiny-roberta" in str(e.value)
    other = load_backbone("tiny-bert", seed=1)[0]
    with pytest.raises(ValueError) as e: load_prefix(PrefixEncoder(other), f)
    assert backbone_fingerprint(other) in str(e.value) and backbone_fingerprint(enc.model) in str(e.value)


# 9. corrupted / truncated / incomplete files and unknown backbones give clear errors
def test_refuses_bad_files(tmp_path):
    enc = make_encoder(load_backbone("tiny-bert")[0])
    f = save_prefix(enc, "A", tmp_path / "A.safetensors")
    good, side = f.read_bytes(), f.with_suffix(".json")
    f.write_bytes(good[: len(good) // 2])
    with pytest.raises(ValueError, match="corrupted or truncated"): load_prefix(enc, f)
    info = json.loads(side.read_text()); del info["sha256"]; side.write_text(json.dumps(info))
    for bad in (good[: len(good) // 2], good[:5], b"\xff" * 64):  # without the checksum: safetensors must object
        f.write_bytes(bad)
        with pytest.raises(ValueError, match="corrupted or truncated"): load_prefix(enc, f)
    f.write_bytes(good)
    info["length"] = 4; side.write_text(json.dumps(info))
    with pytest.raises(ValueError, match="shape"): load_prefix(enc, f)
    side.unlink()
    with pytest.raises(FileNotFoundError, match="sidecar"): load_prefix(enc, f)
    with pytest.raises(FileNotFoundError): load_prefix(enc, tmp_path / "missing.safetensors")


def test_unknown_backbone():
    with pytest.raises(ValueError, match="no-such-org/no-such-encoder"): load_backbone("no-such-org/no-such-encoder")
    assert resolve_backbone("roberta-large") == "roberta-large" and resolve_backbone(MINILM).endswith("model")


def test_tiny_backbones_deterministic():
    a, b = load_backbone("tiny-bert")[0], load_backbone("tiny-bert")[0]
    assert backbone_fingerprint(a) == backbone_fingerprint(b) and backbone_id(a) == "tiny-bert"
    assert backbone_fingerprint(a) != backbone_fingerprint(load_backbone("tiny-bert", seed=1)[0])
    r = load_backbone("tiny-roberta")[0]
    assert r.config.pad_token_id == 0 and not r.training


def test_active_set_api():
    enc = make_encoder(load_backbone("tiny-bert")[0])
    with pytest.raises(KeyError, match="'Z'.*known prefixes.*'A'"): enc.set_active(["A", "Z"])
    with pytest.raises(ValueError): enc.add_prefix("A")
    with pytest.raises(ValueError): enc.set_active(["A", "A"])
    enc.set_active(["B"])
    with enc.activate("A", "B"): assert enc.active == ("A", "B")
    assert enc.active == ("B",)
    enc.remove_prefix("B")
    assert enc.active == () and list(enc.prefixes) == ["A"]
    assert (enc.hidden_size, enc.num_layers, enc.num_heads, enc.head_dim) == (32, 2, 4, 8)


@torch.no_grad()
def test_mask_kinds_agree():
    "The attention function gives the same result for None, boolean and additive float masks."
    class Attn(nn.Module):
        is_causal = False
    m = Attn()
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 4, 8, generator=g) for _ in range(3))
    pk, pv = torch.randn(3, 2, 8, generator=g), torch.randn(3, 2, 8, generator=g)
    object.__setattr__(m, "_prefix_kv", lambda: (pk, pv))
    keep = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]], dtype=torch.bool)[:, None, None, :].expand(2, 1, 4, 4)
    out_b, _ = prefix_attention_forward(m, q, k, v, keep)
    out_f, _ = prefix_attention_forward(m, q, k, v, torch.zeros(keep.shape).masked_fill(~keep, torch.finfo(torch.float32).min))
    torch.testing.assert_close(out_b, out_f)
    out_n, _ = prefix_attention_forward(m, q, k, v, None)
    torch.testing.assert_close(out_n[1], out_b[1])         # row 1 has no padding
    # reference for row 0: plain softmax attention over [prefix; the 3 real keys]
    kk = torch.cat([pk, k[0, :, :3]], dim=1); vv = torch.cat([pv, v[0, :, :3]], dim=1)
    ref = ((q[0] @ kk.transpose(-1, -2)) / 8 ** 0.5).softmax(-1) @ vv
    torch.testing.assert_close(out_b[0], ref.transpose(0, 1))


@torch.no_grad()
def test_zero_prefix_is_not_a_noop_and_deepcopy_is_independent():
    model, tok = load_backbone("tiny-bert")
    enc = make_encoder(model)
    enc.prefixes["A"].zero_()
    ids, am, tt = batch(tok)
    base = enc(ids, am, tt)
    with enc.activate("A"): assert not torch.allclose(enc(ids, am, tt), base)
    twin = copy.deepcopy(enc)
    twin.set_active(["B"])
    assert enc.active == () and torch.equal(enc(ids, am, tt), base)
    with enc.activate("B"): assert torch.equal(enc(ids, am, tt), twin(ids, am, tt))
    twin.prefixes["B"].mul_(2)
    with enc.activate("B"): assert not torch.allclose(enc(ids, am, tt), twin(ids, am, tt))
