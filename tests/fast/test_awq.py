"""AWQ checkpoints (AutoAWQ GEMM layout): unpacking and dequantization against the format's definition, a tiny
AWQ checkpoint loading 4-bit and matching the float model its tensors define, and clear errors."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

import qwenvl
from awq_reference import awq_pack, make_awq_checkpoint, naive_dequantize, naive_unpack
from qwenvl.errors import CheckpointError
from qwenvl.fast import load_checkpoint
from qwenvl.fast.awq import AWQ_ORDER, int4_from_awq, unpack_awq
from qwenvl.fast.int4 import Int4Linear
from qwenvl.fast.native import use_native_kernels
from qwenvl.model.weights import load_model


def rel_err(a, b) -> float:
    return float((a - b).norm() / b.norm())


def test_pack_order_by_hand():
    """Columns 0..7 = 1..8: nibble i holds column ORDER[i] -> nibbles 1,3,5,7,2,4,6,8 from the low end."""
    word = awq_pack(torch.arange(1, 9).view(1, 8))
    assert int(word[0, 0]) & 0xFFFFFFFF == 0x86427531
    assert int(awq_pack(torch.full((1, 8), 15))[0, 0]) == -1  # all bits set: a negative int32
    assert AWQ_ORDER == (0, 2, 4, 6, 1, 3, 5, 7)


def test_unpack_matches_naive_reference():
    torch.manual_seed(0)
    values = torch.randint(0, 16, (24, 64))
    words = awq_pack(values)
    assert words.dtype == torch.int32 and words.shape == (24, 8)
    assert torch.equal(naive_unpack(words), values)
    assert torch.equal(unpack_awq(words).long(), values)


@pytest.mark.parametrize("g", [32, 64, 128])
def test_dequantization_exact(g):
    torch.manual_seed(g)
    K, N = 256, 48
    q, z = torch.randint(0, 16, (K, N)), torch.randint(0, 16, (K // g, N))
    scales = (torch.rand(K // g, N) * 0.02 + 1e-3).half()
    qweight, qzeros = awq_pack(q), awq_pack(z)
    bias = torch.randn(N).half()
    layer = int4_from_awq("m", qweight, qzeros, scales, bias, g, K, N, torch.float16)
    assert isinstance(layer, Int4Linear) and layer.group_size == g
    assert layer.qweight.dtype == torch.uint8 and layer.qweight.numel() == K * N // 2  # kept 4-bit
    assert torch.equal(layer.dequantize(), naive_dequantize(qweight, qzeros, scales, g))
    x = torch.randn(20, K)  # many rows: the dequantized float product
    with torch.no_grad():
        ref = x.double() @ naive_dequantize(qweight, qzeros, scales, g).double().T + bias.double()
        assert rel_err(layer(x).double(), ref) < 1e-6
        assert rel_err(layer(x[:3]).double(), ref[:3]) < 1e-4  # decoding rows: int4.c (int16 activations)


def test_widths_outside_the_native_layout():
    """AWQ allows in_features 96 with groups of 32: loads, exact, through the dequantizing product."""
    torch.manual_seed(1)
    q, z = torch.randint(0, 16, (96, 16)), torch.randint(0, 16, (3, 16))
    scales = (torch.rand(3, 16) * 0.05 + 1e-3).half()
    layer = int4_from_awq("m", awq_pack(q), awq_pack(z), scales, None, 32, 96, 16, torch.float32)
    ref = naive_dequantize(awq_pack(q), awq_pack(z), scales, 32)
    assert not layer.native and torch.equal(layer.dequantize(), ref)
    x = torch.randn(2, 96)
    with torch.no_grad():
        assert rel_err(layer(x).double(), x.double() @ ref.double().T) < 1e-6


def test_shape_and_dtype_errors():
    q = awq_pack(torch.zeros(128, 16, dtype=torch.long))
    z = awq_pack(torch.zeros(1, 16, dtype=torch.long))
    s = torch.ones(1, 16).half()
    with pytest.raises(ValueError, match=r"layer\.qweight: shape \(128, 2\).*expected \(64, 2\)"):
        int4_from_awq("layer", q, z, s, None, 128, 64, 16, torch.float32)
    with pytest.raises(ValueError, match="must be int32"):
        int4_from_awq("layer", q.long(), z, s, None, 128, 128, 16, torch.float32)


# ------------------------------------------------------------------------------------------ checkpoints

@pytest.fixture(scope="module")
def awq_ckpt(tiny_ckpt, tmp_path_factory):
    dst = tmp_path_factory.mktemp("awq") / "ckpt"
    dequantized = make_awq_checkpoint(tiny_ckpt, dst, group_size=64)
    return dst, dequantized


@pytest.fixture(scope="module")
def dequantized_model(tiny_ckpt, awq_ckpt):
    """The float model the AWQ tensors define: the original checkpoint with the dequantized weights."""
    from qwenvl.model.weights import their_key
    model = load_model(tiny_ckpt)
    params = {their_key(k): p for k, p in model.named_parameters()}
    with torch.no_grad():
        for name, w in awq_ckpt[1].items():
            params[name].copy_(w)
    return model


def prompt(model, n=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, model.config.text.vocab_size - 30, (1, n), generator=g)


def test_loads_4bit_and_matches_the_dequantized_model(awq_ckpt, dequantized_model, tiny_ckpt):
    path, dequantized = awq_ckpt
    model = load_checkpoint(path)
    int4 = {n for n, m in model.named_modules() if isinstance(m, Int4Linear)}
    assert int4 == {k[: -len(".weight")].replace("model.", "language_model.", 1) for k in dequantized}
    assert len(int4) == 2 * 7 and not any(n.startswith(("visual", "lm_head")) for n in int4)
    assert type(model.visual.blocks[0].attn.qkv) is not Int4Linear
    ids = prompt(model)
    with torch.no_grad():
        out = model(ids).logits
        ref = dequantized_model(ids).logits
        original = load_model(tiny_ckpt)(ids).logits
    assert rel_err(out, ref) < 1e-5
    # the quantization error itself: real, and bounded
    assert 1e-4 < rel_err(ref, original) < 0.2


def test_image_prompt_and_generation_match(awq_ckpt, dequantized_model):
    """Through qwenvl.load: prefill with an image, then decoding steps (int4.c) give the dequantized float
    model's greedy tokens."""
    import numpy as np
    from PIL import Image
    path, _ = awq_ckpt
    pipe = qwenvl.load(path)
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (100, 150, 3), dtype=np.uint8))
    messages = [{"role": "user", "content": [{"type": "image", "image": img}, {"type": "text", "text": "What?"}]}]
    batch = pipe.processor(messages)
    with torch.no_grad():
        assert rel_err(pipe.model(**batch).logits, dequantized_model(**batch).logits) < 1e-5
    result = pipe.chat(messages, max_new_tokens=8, temperature=0, ignore_eos=True)
    ref = qwenvl.Pipeline(dequantized_model, pipe.processor, {}, path).chat(messages, max_new_tokens=8,
                                                                              temperature=0, ignore_eos=True)
    assert result.token_ids == ref.token_ids


def test_float16_checkpoint_and_bf16_load(tiny_ckpt, tmp_path):
    """The published files are float16; loading them in bfloat16 keeps the int4 layers (float32 scales)."""
    make_awq_checkpoint(tiny_ckpt, tmp_path / "fp16", group_size=32, dtype=torch.float16)
    model = load_checkpoint(tmp_path / "fp16", dtype=torch.bfloat16)
    layer = model.language_model.layers[0].mlp.down_proj
    assert isinstance(layer, Int4Linear) and layer.group_size == 32 and layer.scales.dtype == torch.float32
    assert model.language_model.embed_tokens.weight.dtype == torch.bfloat16
    with torch.no_grad():
        assert torch.isfinite(model(prompt(model)).logits).all()


def edit(path, fn):
    index = json.loads((path / "model.safetensors.index.json").read_text())
    from safetensors.torch import load_file, save_file
    for shard in sorted(set(index["weight_map"].values())):
        tensors = load_file(path / shard)
        if fn(tensors):
            index["weight_map"] = {k: v for k, v in index["weight_map"].items() if k in tensors or v != shard}
            save_file(tensors, path / shard, metadata={"format": "pt"})
            (path / "model.safetensors.index.json").write_text(json.dumps(index))
            return


def test_errors_name_the_problem(awq_ckpt, tmp_path):
    path, _ = awq_ckpt
    d = tmp_path / "c"
    shutil.copytree(path, d)
    cfg = json.loads((d / "config.json").read_text())
    for field, value, match in (("quant_method", "gptq", "only 'awq'"), ("version", "gemv", "only AWQ's 'gemm'"),
                                ("bits", 8, "only 4-bit"), ("group_size", -1, "positive integer")):
        bad = {**cfg, "quantization_config": {**cfg["quantization_config"], field: value}}
        (d / "config.json").write_text(json.dumps(bad))
        with pytest.raises(ValueError, match=match):
            load_checkpoint(d)
    (d / "config.json").write_text(json.dumps(cfg))

    def drop_zeros(t):
        key = next((k for k in t if k.endswith(".qzeros")), None)
        if key:
            del t[key]
            return True
    edit(d, drop_zeros)
    with pytest.raises(ValueError, match=r"AWQ module language_model\.layers\.\d+\..*lacks .*\.qzeros"):
        load_checkpoint(d)

    d2 = tmp_path / "c2"
    shutil.copytree(path, d2)
    (d2 / "config.json").write_text(json.dumps({**cfg, "quantization_config": {**cfg["quantization_config"],
                                                                               "group_size": 32}}))
    with pytest.raises(ValueError, match=r"qzeros: shape \(\d+, \d+\).*group size 32"):
        load_checkpoint(d2)


def test_pipeline_fuses_the_4bit_projections(awq_ckpt):
    path, _ = awq_ckpt
    pipe = qwenvl.load(path)
    layer = pipe.model.language_model.layers[1]
    assert isinstance(layer.self_attn.qkv_proj, Int4Linear) and isinstance(layer.mlp.gate_up_proj, Int4Linear)
    assert not hasattr(layer.self_attn, "q_proj") and layer.self_attn.qkv_proj.out_features == 64 + 2 * 32
    plain = use_native_kernels(load_checkpoint(path))  # the same product for the parts as for the fused layer
    x = torch.randn(3, 64)
    with torch.no_grad():
        ref = torch.cat([m(x) for m in (plain.language_model.layers[1].self_attn.q_proj,
                                        plain.language_model.layers[1].self_attn.k_proj,
                                        plain.language_model.layers[1].self_attn.v_proj)], -1)
        assert torch.equal(layer.self_attn.qkv_proj(x), ref)


def test_the_reference_loader_points_to_the_quantized_one(awq_ckpt):
    with pytest.raises(CheckpointError, match="quantized checkpoint.*load_checkpoint"):
        load_model(awq_ckpt[0])
