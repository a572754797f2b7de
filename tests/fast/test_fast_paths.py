"""Each fast path (qwenvl/fast) computes what the plain reference path (qwenvl/model) computes.

- mixed precision (bf16 weights, float32 activations): the fast Linear == the reference's upcast weights,
  the blocked upcast == the whole one;
- weight-only int8 == dequantized weights in a float Linear, and the whole model within a stated tolerance;
  int8 and int4 models greedy-decode through the engine as the float model does, within quantization;
- single-query (decode) attention == SDPA; decoding rows that are not consecutive cache slots == one by one;
- fused q/k/v and gate/up projections (decoder, and the tower's gate/up) == the separate ones (and save
  back to the original names).
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from qwenvl import fast
from qwenvl.fast import layers as fast_layers
from qwenvl.fast.int8 import Int8Linear, quantize_int8, quantized_copy, quantize_weight
from qwenvl.fast.layers import FastLinear
from qwenvl.model.layers import Linear
from qwenvl.tiny import build_tokenizer, tiny_config, token_ids


@pytest.fixture(scope="module")
def cfg():
    tok = build_tokenizer()
    return tiny_config(token_ids(tok), vocab_size=tok.get_vocab_size() + 6)


def test_mixed_precision_linear_equals_upcast_weights():
    lin = Linear(32, 24).to(torch.bfloat16)
    ref = torch.nn.Linear(32, 24)
    ref.load_state_dict({k: v.float() for k, v in lin.state_dict().items()})
    fast_lin = fast_layers.swap_classes(copy.deepcopy(lin), {Linear: FastLinear})
    assert type(fast_lin) is FastLinear and type(lin) is Linear
    for rows in (1, 40, 3000):  # decoding rows, the blocked upcast, the plain upcast
        x = torch.randn(rows, 32)
        with torch.no_grad():
            plain, got = lin(x), fast_lin(x)
        assert got.dtype == plain.dtype == torch.float32
        torch.testing.assert_close(plain, ref(x), rtol=1e-6, atol=1e-6)  # the reference casts the weights up
        if rows >= fast_layers.UPCAST_MIN_ROWS:
            torch.testing.assert_close(got, ref(x), rtol=1e-5, atol=1e-5)
        else:  # the input is rounded to bf16 for the matrix-vector product
            assert torch.allclose(got, ref(x.bfloat16().float()), atol=2e-2)
            assert not torch.equal(got, plain)


def test_int8_linear_equals_dequantized_weights():
    torch.manual_seed(0)
    lin = torch.nn.Linear(64, 48).to(torch.bfloat16)
    q, s = quantize_weight(lin.weight)
    assert q.dtype == torch.int8 and int(q.abs().max()) <= 127
    deq = q.float() * s[:, None]
    assert float((deq - lin.weight.detach().float()).abs().max()) <= float(s.max()) / 2 + 1e-6  # half a step per channel
    layer = Int8Linear.from_linear(lin)
    for rows, dtype in ((1, torch.bfloat16), (3, torch.float32), (40, torch.float32), (40, torch.bfloat16)):
        x = torch.randn(rows, 64).to(dtype)
        ref = F.linear(x.float(), deq, lin.bias.detach().float())
        got = layer(x)
        assert got.dtype == dtype and got.shape == (rows, 48)
        assert float((got.float() - ref).norm() / ref.norm()) < 2e-2  # bf16 rounding of input/output


def test_quantized_model_within_tolerance(cfg):
    """The tolerance `qwenvl bench --quantize int8` reports on: logits of the int8 decoder vs float."""
    from qwenvl.model.weights import random_model
    model = random_model(cfg, torch.float32, seed=5)
    ids = torch.randint(0, 500, (1, 24))
    with torch.no_grad():
        ref = model(ids).logits
        quantize_int8(model, include=("language_model", "lm_head", "visual"))
        got = model(ids).logits
    n_int8 = sum(isinstance(m, Int8Linear) for m in model.modules())
    assert n_int8 == cfg.text.num_hidden_layers * 7 + 1 + cfg.vision.depth * 5 + 3
    assert not any(type(m) in (torch.nn.Linear, Linear) for m in model.modules())
    assert float((got - ref).norm() / ref.norm()) < 0.02
    assert float((got.argmax(-1) == ref.argmax(-1)).float().mean()) >= 0.9


def test_quantized_copy_shares_the_rest_and_leaves_the_original(cfg):
    from qwenvl.model.weights import random_model
    model = random_model(cfg, torch.float32, seed=6)
    ids = torch.randint(0, 500, (1, 12))
    with torch.no_grad():
        ref = model(ids).logits
        q = quantized_copy(model)
        assert torch.equal(model(ids).logits, ref)  # the original is untouched
        in_place = quantize_int8(copy.deepcopy(model))
        assert torch.equal(q(ids).logits, in_place(ids).logits)
    assert not any(isinstance(m, Int8Linear) for m in model.modules())
    assert q.language_model.embed_tokens.weight is model.language_model.embed_tokens.weight
    assert q.visual.blocks[0].mlp.down_proj.weight is model.visual.blocks[0].mlp.down_proj.weight
    assert q.language_model.norm.weight is model.language_model.norm.weight


@pytest.mark.parametrize("quantize,top1", [("int8", 0.9), ("int4", 0.6)])  # int4's larger error on tiny margins
def test_engine_runs_quantized(cfg, quantize, top1):
    """Greedy decoding of a prepared int8 / int4 model, through the engine (native decode step where it
    builds), agrees with the float model's on most tokens and with the quantized model's own forward on all."""
    from qwenvl.engine.engine import Engine, Sequence
    from qwenvl.engine.sampling import SamplingParams
    from qwenvl.model.weights import random_model
    float_model = random_model(cfg, torch.bfloat16, seed=2)
    model = fast.prepare(copy.deepcopy(float_model), quantize)
    prompt, n = list(range(10, 30)), 8

    def greedy(m, use_engine):
        if use_engine:
            engine = Engine(m, max_batch=2, max_len=64)
            seq = Sequence(prompt_ids=prompt, params=SamplingParams(max_new_tokens=n, temperature=0, ignore_eos=True))
            engine.add(seq)
            while not seq.finished:
                engine.step()
            return seq.output_ids
        ids = list(prompt)
        with torch.no_grad():
            for _ in range(n):
                ids.append(int(m(torch.tensor([ids])).logits[0, -1].argmax()))
        return ids[len(prompt):]

    got, own, ref = greedy(model, True), greedy(model, False), greedy(float_model, False)
    assert len(got) == n
    assert got[:4] == own[:4]  # the engine's cached steps == the quantized model's own forward
    assert got[:2] == ref[:2]  # quantization error is small against the float model's margins
    with torch.no_grad():  # top-1 over the prompt's positions: quantization moves few argmaxes
        a = float_model(torch.tensor([prompt])).logits[0].argmax(-1)
        b = model(torch.tensor([prompt])).logits[0].argmax(-1)
    assert float((a == b).float().mean()) >= top1


@pytest.mark.parametrize("hq,hkv", [(4, 4), (8, 2)])
def test_single_query_attention_equals_sdpa(hq, hkv):
    from qwenvl.fast.layers import attend_one_query
    g = torch.Generator().manual_seed(0)
    B, S, D = 3, 37, 16
    q = torch.randn(B, hq, 1, D, generator=g)
    k, v = torch.randn(B, hkv, S, D, generator=g), torch.randn(B, hkv, S, D, generator=g)
    lengths = torch.tensor([37, 5, 20])
    mask = torch.zeros(B, 1, 1, S).masked_fill_(torch.arange(S) >= lengths.view(-1, 1, 1, 1), torch.finfo(q.dtype).min)
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=hq != hkv)
    got = attend_one_query(q, k, v, mask)
    assert got.shape == ref.shape
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("prepared", [False, True])  # the reference model; as qwenvl.load prepares it
@pytest.mark.parametrize("third", [range(50, 70), range(50, 62)])  # rows 0 and 2 at other / equal lengths
def test_decoding_scattered_cache_rows_equals_one_by_one(cfg, third, prepared):
    """Rows 0 and 2 of a 3-slot cache (not a slice: index path) decode what each decodes alone."""
    from qwenvl.engine.engine import Engine, Sequence
    from qwenvl.engine.sampling import SamplingParams
    from qwenvl.model.weights import random_model
    model = random_model(cfg, torch.bfloat16, seed=3)
    if prepared:
        fast.prepare(model)
    prompts = [list(range(5, 17)), list(range(30, 37)), list(third)]
    params = SamplingParams(max_new_tokens=6, temperature=0, ignore_eos=True)

    def alone(p):
        engine = Engine(model, max_batch=1, max_len=64)
        seq = Sequence(prompt_ids=p, params=params)
        engine.add(seq)
        while not seq.finished:
            engine.step()
        return seq.output_ids

    engine = Engine(model, max_batch=3, max_len=64)
    seqs = [Sequence(prompt_ids=p, params=params) for p in prompts]
    for s in seqs:
        engine.add(s)
    engine.release(seqs[1])  # free the middle slot: rows 0 and 2 decode together
    while not (seqs[0].finished and seqs[2].finished):
        engine.step()
    assert [seqs[0].output_ids, seqs[2].output_ids] == [alone(prompts[0]), alone(prompts[2])]


def test_fused_projections_equal_separate(cfg, tmp_path):
    from qwenvl.fast.fuse import fuse_projections
    from qwenvl.fast.layers import FusedAttention, FusedSwiGLU
    from qwenvl.model.weights import load_model, random_model, save_model
    ref = random_model(cfg, torch.float32, seed=4)
    save_model(ref, tmp_path / "ref")
    fused = fuse_projections(load_model(tmp_path / "ref"))
    attn, mlp = fused.language_model.layers[0].self_attn, fused.language_model.layers[0].mlp
    assert isinstance(attn, FusedAttention) and isinstance(mlp, FusedSwiGLU)
    assert not hasattr(attn, "q_proj") and not hasattr(mlp, "up_proj")
    assert all(isinstance(b.mlp, FusedSwiGLU) and not hasattr(b.mlp, "gate_proj") for b in fused.visual.blocks)
    # the state dict keeps the checkpoint's names, and loads back
    assert fused.state_dict().keys() == ref.state_dict().keys()
    fused.load_state_dict(ref.state_dict())
    ids = torch.randint(0, 500, (2, 19))
    grid = torch.tensor([[2, 4, 6]])
    px = torch.randn(48, cfg.vision.patch_dim)
    with torch.no_grad():
        torch.testing.assert_close(fused(ids).logits, ref(ids).logits, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(fused.visual(px, grid), ref.visual(px, grid), rtol=1e-5, atol=1e-5)
    # int8 on top of fusion: one Int8Linear per fused group
    quantize_int8(fused)
    assert isinstance(fused.language_model.layers[0].self_attn.qkv_proj, Int8Linear)
    # a fused model saves under the checkpoint's own names
    save_model(fuse_projections(load_model(tmp_path / "ref")), tmp_path / "again")
    again = load_model(tmp_path / "again")
    for (k, a), (k2, b) in zip(sorted(ref.state_dict().items()), sorted(again.state_dict().items())):
        assert k == k2 and torch.equal(a, b), k


def test_quantized_tower_within_tolerance(cfg):
    from qwenvl.model.weights import random_model
    model = random_model(cfg, torch.bfloat16, seed=6)
    x, grid = torch.randn(2 * 64, cfg.vision.patch_dim), torch.tensor([[2, 8, 8]])
    with torch.no_grad():
        ref = model.visual(x, grid).float()
        quantize_int8(model, include=("visual",))
        got = model.visual(x, grid).float()
    assert isinstance(model.visual.patch_embed.proj, Int8Linear)
    assert float((got - ref).norm() / ref.norm()) < 0.03


@pytest.mark.parametrize("bias", [True, False])
def test_blocked_upcast_equals_plain_upcast(bias, monkeypatch):
    """Inference with 16..2047 rows casts the bf16 weights block by block: same result as casting it whole."""
    monkeypatch.setattr(fast_layers, "BLOCK_BYTES", 7 * 48 * 4)  # 7 output rows per block: 5 blocks, a short last one
    calls = []
    real = fast_layers.blocked_upcast_linear
    monkeypatch.setattr(fast_layers, "blocked_upcast_linear", lambda *a: calls.append(1) or real(*a))
    lin = fast_layers.swap_classes(Linear(48, 33, bias=bias).to(torch.bfloat16), {Linear: FastLinear})
    x = torch.randn(2, 20, 48)
    plain = F.linear(x, lin.weight.float(), None if lin.bias is None else lin.bias.float())
    with torch.no_grad():
        got = lin(x)
    assert calls and got.shape == (2, 20, 33)
    torch.testing.assert_close(got, plain, rtol=1e-6, atol=1e-6)


def test_prepared_model_equals_reference(cfg):
    """All the inference transforms together (fusion, fast layers, native kernels where they build) compute what
    the plain model computes, for the tower and for cached decoding."""
    from qwenvl.engine.engine import Engine, Sequence
    from qwenvl.engine.sampling import SamplingParams
    from qwenvl.model.weights import random_model
    ref = random_model(cfg, torch.float32, seed=8)
    prepared = fast.prepare(copy.deepcopy(ref))
    assert type(ref.language_model.layers[0].self_attn.q_proj) is Linear  # the reference stays plain
    grid, px = torch.tensor([[1, 8, 12]]), torch.randn(96, cfg.vision.patch_dim)
    with torch.no_grad():
        torch.testing.assert_close(prepared.visual(px, grid), ref.visual(px, grid), rtol=1e-4, atol=1e-5)
    outs = []
    for m in (ref, prepared):
        engine = Engine(m, max_batch=1, max_len=64)
        seq = Sequence(prompt_ids=list(range(3, 19)), params=SamplingParams(max_new_tokens=6, temperature=0,
                                                                           ignore_eos=True))
        engine.add(seq)
        while not seq.finished:
            engine.step()
        outs.append(seq.output_ids)
    assert outs[0] == outs[1]
    assert prepared.state_dict().keys() == ref.state_dict().keys()


@pytest.mark.parametrize("quantize", [None, "int8", "int4"])
def test_state_dicts_are_the_same_with_kernels_on_and_off(cfg, quantize):
    from qwenvl.model.weights import random_model
    base = random_model(cfg, torch.bfloat16, seed=9)
    on, off = (fast.prepare(copy.deepcopy(base), quantize, native=n) for n in (True, False))
    a, b = on.state_dict(), off.state_dict()
    assert a.keys() == b.keys()
    assert all(a[k].shape == b[k].shape and a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in a)
    if quantize is None:
        assert a.keys() == base.state_dict().keys()
