"""Group-wise int4 for our own checkpoints (`quantize_int4`, qwenvl.load(quantize="int4"), --quantize int4):
the packed layout, the quantizer's error bounds, the model's logits within quantization error, and the flags."""

from __future__ import annotations

import json

import pytest
import torch

import qwenvl
from qwenvl.cli.main import main
from qwenvl.fast.int4 import (Int4Linear, group_size_for, pack_int4, quantize_int4, quantize_weight_int4,
                                quantized_copy_int4, unpack_int4)
from qwenvl.model.weights import load_model


def test_packed_layout_by_hand():
    """Word j of a run of 64 holds inputs j, 16 + j, 32 + j, 48 + j in its nibbles, low to high."""
    q = torch.zeros(1, 64, dtype=torch.uint8)
    q[0, 0], q[0, 16], q[0, 32], q[0, 48], q[0, 63] = 1, 2, 3, 4, 15
    p = pack_int4(q)
    assert p.shape == (1, 32) and p.dtype == torch.uint8
    assert p[0, :2].tolist() == [0x21, 0x43]           # word 0: 1 | 2 << 4, 3 | 4 << 4
    assert p[0, 31] == 0xF0                            # input 63 = 48 + 15: high nibble of word 15's high byte
    r = torch.randint(0, 16, (7, 192), dtype=torch.uint8)
    assert torch.equal(unpack_int4(pack_int4(r)), r)
    odd = torch.randint(0, 16, (2, 96), dtype=torch.uint8)  # a partial last run: padded with zeros
    assert pack_int4(odd).shape == (2, 64) and torch.equal(unpack_int4(pack_int4(odd), 96), odd)


@pytest.mark.parametrize("k,group", [(96, 32), (128, 16), (64, 64)])
def test_shapes_outside_the_native_layout_use_the_fallback(k, group):
    w = torch.randn(24, k)
    layer = Int4Linear(*quantize_weight_int4(w, group), torch.randn(24))
    assert layer.native == (k % 64 == 0 and group % 32 == 0)
    x = torch.randn(2, k)
    with torch.no_grad():
        ref = x.double() @ layer.dequantize().double().T + layer.bias.double()
        assert float((layer(x).double() - ref).norm() / ref.norm()) < 1e-4


@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("group", [32, 64, 128])
def test_quantizer_error_is_half_a_step(symmetric, group):
    w = torch.randn(40, 256) * torch.linspace(0.1, 3, 256)  # groups of different ranges
    q, s, z = quantize_weight_int4(w, group, symmetric)
    assert q.max() <= 15 and s.shape == z.shape == (40, 256 // group)
    deq = (q.view(40, -1, group).float() - z[..., None].float()) * s[..., None]
    err = (deq.view(40, 256) - w).abs().view(40, -1, group)
    assert bool((err <= s[..., None] / 2 + 1e-6).all())
    if symmetric:
        assert bool((z == 8).all())
    layer = Int4Linear(q, s, z, None)
    assert torch.allclose(layer.dequantize(), deq.view(40, 256))


def test_clip_search_lowers_the_error_and_chunks_agree(monkeypatch):
    from qwenvl.fast import int4
    w = torch.randn(300, 256)
    plain = quantize_weight_int4(w, 128)
    searched = quantize_weight_int4(w, 128, clip_search=True)

    def mse(q, s, z):
        return float(((q.view(300, 2, 128).float() - z[..., None].float()) * s[..., None] - w.view(300, 2, 128))
                     .square().mean())
    assert mse(*searched) < 0.95 * mse(*plain)  # ~0.90 on normal weights
    monkeypatch.setattr(int4, "CHUNK_WEIGHTS", 256 * 7)  # 7 rows per chunk: 43 chunks, a partial last one
    assert all(torch.equal(a, b) for a, b in zip(quantize_weight_int4(w, 128, clip_search=True), searched))


def test_group_size_choice():
    assert group_size_for(2048) == 128 and group_size_for(11008) == 128 and group_size_for(3584) == 128
    assert group_size_for(64) == 64 and group_size_for(192) == 64 and group_size_for(128, 64) == 64
    with pytest.raises(ValueError, match="multiple of 64"):
        group_size_for(1176)


def test_model_within_quantization_error(tiny_ckpt):
    model = load_model(tiny_ckpt)
    q = quantized_copy_int4(model)
    layers = {n for n, m in q.named_modules() if isinstance(m, Int4Linear)}
    assert "lm_head" in layers and len(layers) == 1 + 2 * 7 and not any(n.startswith("visual") for n in layers)
    assert model.lm_head.weight.dtype == torch.float32  # the original is untouched
    ids = torch.randint(0, 300, (1, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref, got = model(ids).logits, q(ids).logits
    from qwenvl.fast.int8 import quantized_copy
    with torch.no_grad():
        int8 = quantized_copy(model)(ids).logits
    err, err8 = (float((x - ref).norm() / ref.norm()) for x in (got, int8))
    # 16 levels per group of random normal weights: ~9% per layer; int8's 255 levels per channel: far less
    assert 8 * err8 < err < 0.25


def test_state_dict_round_trip(tiny_ckpt):
    model = quantize_int4(load_model(tiny_ckpt))
    state = model.state_dict()
    fresh = quantize_int4(load_model(tiny_ckpt))
    for m in fresh.modules():
        if isinstance(m, Int4Linear):
            m.scales.zero_()
    fresh.load_state_dict(state)
    assert all(torch.equal(a, b) for a, b in zip(state.values(), fresh.state_dict().values()))


def test_pipeline_and_cli_flag(tiny_ckpt, capsys):
    pipe = qwenvl.load(tiny_ckpt, dtype="float32", quantize="int4")
    assert isinstance(pipe.model.lm_head, Int4Linear)
    # after fusing: q/k/v and gate/up are one Int4Linear each
    attn = pipe.model.language_model.layers[0].self_attn
    assert isinstance(attn.qkv_proj, Int4Linear) and attn.qkv_proj.out_features == 64 + 2 * 32
    msgs = [{"role": "user", "content": "Hello"}]
    ref = pipe.chat(msgs, max_new_tokens=5, temperature=0)
    rc = main(["chat", "--model", str(tiny_ckpt), "--dtype", "float32", "--quantize", "int4", "--json",
               "--temperature", "0", "--max-new-tokens", "5", "Hello"])
    assert rc == 0
    assert json.loads(capsys.readouterr().out)["token_ids"] == ref.token_ids
