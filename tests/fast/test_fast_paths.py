"""Each fast path computes what the plain reference path (qwenvl/model) computes.

- window attention batched by window length == one attention call per window (a Python loop);
- mixed precision (bf16 weights, float32 activations) == the same bf16 weights upcast to a float32 model,
  for the reference layers and for the fast ones (fast/layers.py);
- weight-only int8 == dequantized weights in a float Linear, and the whole model within a stated tolerance;
- memory-mapped loading == safetensors' reader;
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
from qwenvl.fast import cpu
from qwenvl.fast import layers as fast_layers
from qwenvl.fast.int8 import Int8Linear, quantize_int8, quantized_copy, quantize_weight
from qwenvl.fast.layers import FastLinear
from qwenvl.model import layers, vision
from qwenvl.model.layers import Linear
from qwenvl.model.vision import Segments, segment_attention, vision_layout
from qwenvl.tiny import build_tokenizer, tiny_config, token_ids


@pytest.fixture(scope="module")
def cfg():
    tok = build_tokenizer()
    return tiny_config(token_ids(tok), vocab_size=tok.get_vocab_size() + 6)


def per_window_attention(q, k, v, lengths):
    out, start = [], 0
    for n in lengths:
        s = slice(start, start + n)
        o = F.scaled_dot_product_attention(q[s].transpose(0, 1), k[s].transpose(0, 1), v[s].transpose(0, 1))
        out.append(o.transpose(0, 1))
        start += n
    return torch.cat(out)


@pytest.mark.parametrize("max_runs", [64, 0])  # in place per run of equal windows; gathered per length
@pytest.mark.parametrize("grid", [(1, 10, 14), (2, 16, 22), (1, 36, 8)])
def test_batched_windows_equal_per_window_loop(grid, max_runs, monkeypatch):
    monkeypatch.setattr(vision, "MAX_RUNS", max_runs)
    layout = vision_layout((grid,), 2, 4)
    lengths = []
    for g in layout.windows.groups:  # reconstruct the window lengths in sequence order
        lengths += [(int(row[0]), g.shape[1]) for row in g]
    lengths = [n for _, n in sorted(lengths)]
    N = grid[0] * grid[1] * grid[2]
    assert sum(lengths) == N and len(set(lengths)) > 1  # edge windows of other sizes are covered
    q, k, v = (torch.randn(N, 4, 16) for _ in range(3))
    ref = per_window_attention(q, k, v, lengths)
    assert torch.allclose(segment_attention(q, k, v, layout.windows), ref, atol=1e-5)
    frames = per_window_attention(q, k, v, [grid[1] * grid[2]] * grid[0])
    assert torch.allclose(segment_attention(q, k, v, layout.frames), frames, atol=1e-5)


def test_segments_from_lengths():
    s = Segments.from_lengths([3, 2, 3])
    assert [g.tolist() for g in s.groups] == [[[0, 1, 2], [5, 6, 7]], [[3, 4]]]
    assert s.runs == ((0, 1, 3), (3, 1, 2), (5, 1, 3))
    assert Segments.from_lengths([4, 4, 4, 2, 4, 4]).runs == ((0, 3, 4), (12, 1, 2), (14, 2, 4))


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


def test_mixed_precision_model_equals_float32_copy(cfg, monkeypatch):
    """Force the CPU-without-bf16 policy: a bf16 model computing in float32 == its float32 copy (tower exactly,
    decoder up to the bf16 KV cache and the bf16 rounding of the tower's output)."""
    from qwenvl.model.weights import random_model
    import qwenvl.model.text as text
    import qwenvl.model.vision as vision
    monkeypatch.setattr(text, "compute_dtype", lambda dtype, device: torch.float32)
    monkeypatch.setattr(vision, "compute_dtype", lambda dtype, device: torch.float32)
    m16 = random_model(cfg, torch.bfloat16, seed=3)
    m32 = copy.deepcopy(m16).float()
    grid = torch.tensor([[1, 8, 12]])
    px = torch.randn(96, 1176)
    with torch.no_grad():
        a, b = m16.visual(px, grid).float(), m32.visual(px, grid)
        assert float((a - b).norm() / b.norm()) < 1e-2  # the output is returned in bf16
        ids = torch.randint(0, 500, (1, 20))
        la, lb = m16(ids).logits, m32(ids).logits
    assert la.dtype == torch.float32
    assert float((la - lb).norm() / lb.norm()) < 1e-5


@pytest.mark.parametrize("native", [True, False])
def test_compute_dtype_policy(native, monkeypatch):
    """Half-precision weights compute in float32 exactly on a CPU without half-precision matrix instructions,
    and the decoder's activations follow: a bf16 model's hidden states come out in that dtype."""
    from qwenvl.model.weights import random_model
    monkeypatch.setattr(layers, "_cpu_has_native", lambda dtype: native)
    half = torch.bfloat16 if native else torch.float32
    assert layers.compute_dtype(torch.bfloat16, "cpu") == half
    assert layers.compute_dtype(torch.float16, torch.device("cpu")) == (torch.float16 if native else torch.float32)
    assert layers.compute_dtype(torch.float32, "cpu") == torch.float32
    assert layers.compute_dtype(torch.bfloat16, "meta") == torch.bfloat16  # other devices: storage = compute
    tok_cfg = tiny_config(token_ids(build_tokenizer()), vocab_size=600)
    model = random_model(tok_cfg, torch.bfloat16, seed=0)
    with torch.no_grad():
        hidden = model.language_model(model.language_model.embed_tokens(torch.tensor([[1, 2, 3]])),
                                      torch.arange(3).view(1, 1, 3).expand(3, 1, 3))
    assert hidden.dtype == half


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


def test_mapped_loading_equals_safetensors(cfg, tmp_path):
    from safetensors.torch import load_file
    from qwenvl.model.mapped import MappedSafetensors
    from qwenvl.model.weights import random_model, save_model
    save_model(random_model(cfg, torch.bfloat16), tmp_path, max_shard_bytes=50_000)
    files = sorted(tmp_path.glob("*.safetensors"))
    assert len(files) > 1
    for f in files:
        ref = load_file(f)
        mapped = MappedSafetensors(f)
        assert set(mapped.keys()) == set(ref)
        for k, t in ref.items():
            assert torch.equal(mapped.get_tensor(k), t), k


@pytest.mark.parametrize("hq,hkv", [(4, 4), (8, 2)])
def test_single_query_attention_equals_sdpa(hq, hkv):
    from qwenvl.model.text import attend
    g = torch.Generator().manual_seed(0)
    B, S, D = 3, 37, 16
    q = torch.randn(B, hq, 1, D, generator=g)
    k, v = torch.randn(B, hkv, S, D, generator=g), torch.randn(B, hkv, S, D, generator=g)
    lengths = torch.tensor([37, 5, 20])
    mask = torch.zeros(B, 1, 1, S).masked_fill_(torch.arange(S) >= lengths.view(-1, 1, 1, 1), torch.finfo(q.dtype).min)
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=hq != hkv)
    got = attend(q, k, v, mask)
    assert got.shape == ref.shape
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("third", [range(50, 70), range(50, 62)])  # rows 0 and 2 at other / equal lengths
def test_decoding_scattered_cache_rows_equals_one_by_one(cfg, third):
    """Rows 0 and 2 of a 3-slot cache (not a slice: index path) decode what each decodes alone."""
    from qwenvl.engine.engine import Engine, Sequence
    from qwenvl.engine.sampling import SamplingParams
    from qwenvl.model.weights import random_model
    model = random_model(cfg, torch.float32, seed=3)
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


def rss_file_kb() -> int:
    for line in open("/proc/self/status"):
        if line.startswith("RssFile:"):
            return int(line.split()[1])
    raise RuntimeError("no RssFile in /proc/self/status")


def test_release_pages_of_a_mapped_tensor(tmp_path):
    """A released tensor's pages leave memory; its neighbours in the same file keep their values."""
    from safetensors.torch import save_file
    from qwenvl.model.mapped import MappedSafetensors, release_pages
    g = torch.Generator().manual_seed(0)
    tensors = {"a": torch.randn(3, 1000, generator=g), "big": torch.randn(2048, 1024, generator=g),
               "b": torch.randn(7, 333, generator=g)}
    save_file(tensors, str(tmp_path / "w.safetensors"))
    mapped = MappedSafetensors(tmp_path / "w.safetensors")
    views = {k: mapped.get_tensor(k) for k in tensors}
    assert all(torch.equal(views[k], t) for k, t in tensors.items())  # touches every page
    before = rss_file_kb()
    release_pages(views["big"])
    freed = before - rss_file_kb()
    assert freed * 1024 > 0.9 * tensors["big"].numel() * 4
    assert torch.equal(views["a"], tensors["a"]) and torch.equal(views["b"], tensors["b"])
    release_pages(torch.randn(100))  # not mapped: left alone


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
