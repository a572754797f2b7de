"""The native CPU kernels (qwenvl/fast/cpu) compute what the aten path computes, are bound as their header
declares them, check their arguments, are used only where they apply (fast/native.py), and a machine that
cannot build them falls back with a warning."""

from __future__ import annotations

import ctypes
import platform

import pytest
import torch
import torch.nn.functional as F

from qwenvl.fast import cpu as kernels
from qwenvl.fast.int8 import Int8Linear, NativeInt8Linear, quantize_weight
from qwenvl.fast.layers import use_fast_layers
from qwenvl.fast.native import NativeLinear, use_native_kernels
from qwenvl.model.layers import Linear
from qwenvl.model.text import attend


def native(module):
    """`module` as qwenvl.load prepares it (the aten fast layers, then the native ones where they build)."""
    return use_native_kernels(use_fast_layers(module))

needs_kernels = pytest.mark.skipif(not kernels.available(), reason="native kernels not buildable here")


@needs_kernels
@pytest.mark.parametrize("m,n,k", [(1, 37, 2048), (3, 64, 100), (1, 5, 7), (15, 130, 96), (2, 8, 40)])
@pytest.mark.parametrize("bias", [None, torch.float32, torch.bfloat16])
def test_gemv_bf16_equals_float_product(m, n, k, bias):
    """Blocks of 4 rows with a tail block, columns in steps of 32 with a tail, optional bias of either dtype."""
    g = torch.Generator().manual_seed(m * n + k)
    x, w = torch.randn(m, k, generator=g), torch.randn(n, k, generator=g).bfloat16()
    b = None if bias is None else torch.randn(n, generator=g).to(bias)
    ref = x.double().mm(w.double().t()) + (0 if b is None else b.double())
    torch.testing.assert_close(kernels.gemv_bf16(x, w, b), ref.float(), rtol=1e-5, atol=1e-4)


@needs_kernels
@pytest.mark.parametrize("m,n,k", [(1, 37, 2048), (3, 64, 100), (1, 5, 7), (15, 130, 96), (1, 64, 2048),
                                   (3, 8, 48)])
@pytest.mark.parametrize("bias", [None, torch.bfloat16])
def test_gemv_int8_equals_dequantized_product(m, n, k, bias):
    """Row-major weights, and packed ones where the shape allows (n % 4 == 0, k % 16 == 0)."""
    g = torch.Generator().manual_seed(m * n + k)
    x = torch.randn(m, k, generator=g)
    q, s = quantize_weight(torch.randn(n, k, generator=g))
    b = None if bias is None else torch.randn(n, generator=g).to(bias)
    ref = (x.double().mm((q.double() * s.double()[:, None]).t()) + (0 if b is None else b.double())).float()
    torch.testing.assert_close(kernels.gemv_int8(x, q, s, b), ref, rtol=1e-5, atol=1e-4)
    assert kernels.packable(q) == (n % 4 == 0 and k % 16 == 0)
    if kernels.packable(q):
        packed = kernels.pack_int8(q)
        assert packed.shape == (n // 4, k // 16, 4, 16) and torch.equal(kernels.unpack_int8(packed), q)
        torch.testing.assert_close(kernels.gemv_int8(x, packed, s, b), ref, rtol=1e-5, atol=1e-4)


@needs_kernels
@pytest.mark.parametrize("shape", [(1, 1, 2 * 11008), (3, 2 * 13)])
def test_silu_mul_equals_aten(shape):
    gu = 6 * torch.randn(shape, generator=torch.Generator().manual_seed(3))
    gu.view(-1)[:4] = torch.tensor([-200.0, 200.0, 0.0, -90.0])  # far tails: no overflow, no NaN
    gate, up = gu.chunk(2, dim=-1)
    torch.testing.assert_close(kernels.silu_mul(gu), F.silu(gate) * up, rtol=1e-5, atol=1e-6)


@needs_kernels
@pytest.mark.parametrize("hq,hkv,d,s", [(16, 2, 128, 37), (28, 4, 128, 300), (40, 8, 128, 9), (20, 1, 64, 70),
                                        (4, 4, 16, 1)])
def test_attend_bf16_equals_attention_on_the_upcast_cache(hq, hkv, d, s):
    """Groups of 8, 7, 5, 20 (two groups, the second padded) and 1 query heads per key/value head; rows picked
    out of a larger cache; one row masked after its length, one fully masked (left padding: uniform average)."""
    g = torch.Generator().manual_seed(hq + s)
    k = torch.randn(4, hkv, s + 5, d, generator=g).bfloat16()
    v = torch.randn(4, hkv, s + 5, d, generator=g).bfloat16()
    rows = torch.tensor([3, 0, 1])
    q = 3 * torch.randn(3, hq, 1, d, generator=g)
    mask = torch.zeros(3, 1, 1, s)
    mask[1, ..., s // 2 + 1:] = torch.finfo(torch.float32).min
    mask[2] = torch.finfo(torch.float32).min
    ref = attend(q, k[rows, :, :s].float(), v[rows, :, :s].float(), mask)
    torch.testing.assert_close(kernels.attend_bf16(q, k, v, rows, mask), ref, rtol=1e-4, atol=1e-5)
    # rows None: the first B rows of the given block (the model passes a slice of consecutive rows this way)
    got = kernels.attend_bf16(q, k[rows].contiguous(), v[rows].contiguous(), None, mask)
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5)


@needs_kernels
@pytest.mark.parametrize("wdtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("shape", [(1, 1, 2048), (3, 7, 100)])
def test_rms_norm_equals_aten(wdtype, shape):
    from qwenvl.model.layers import RMSNorm
    norm = native(RMSNorm(shape[-1], eps=1e-5).to(wdtype))
    norm.weight.data.normal_(generator=torch.Generator().manual_seed(1))
    x = 5 * torch.randn(shape, generator=torch.Generator().manual_seed(2))
    ref = norm.weight.float() * F.rms_norm(x, shape[-1:], eps=1e-5)
    torch.testing.assert_close(kernels.rms_norm(x, norm.weight, 1e-5), ref, rtol=1e-5, atol=1e-5)
    with torch.inference_mode():
        torch.testing.assert_close(norm(x), ref, rtol=1e-5, atol=1e-5)
    xg = x.clone().requires_grad_()
    norm(xg).sum().backward()  # autograd: the aten path
    assert xg.grad is not None


@needs_kernels
def test_layers_use_the_kernels_for_decoding_only(monkeypatch):
    """One row without autograd: the native product. With autograd, or many rows: aten (and gradients flow)."""
    calls = []
    real = kernels.gemv_bf16
    monkeypatch.setattr(kernels, "gemv_bf16", lambda x, w, b=None: calls.append(x.shape) or real(x, w, b))
    lin = native(Linear(64, 24).to(torch.bfloat16))
    assert type(lin) is NativeLinear
    x = torch.randn(1, 1, 64)
    with torch.inference_mode():
        y = lin(x)
    assert calls == [(1, 1, 64)] and y.shape == (1, 1, 24) and y.dtype == torch.float32
    torch.testing.assert_close(y, F.linear(x, lin.weight.float(), lin.bias.float()), rtol=1e-5, atol=1e-5)
    xg = torch.randn(1, 64, requires_grad=True)
    lin(xg).sum().backward()
    assert xg.grad is not None and len(calls) == 1
    with torch.inference_mode():
        lin(torch.randn(40, 64))
    assert len(calls) == 1

    plain = Int8Linear.from_linear(lin)
    q = native(Int8Linear.from_linear(lin))
    assert type(q) is NativeInt8Linear and q.kernel_weight.shape == (6, 4, 4, 16)  # packed for the native product
    assert torch.equal(q.weight_int8(), quantize_weight(lin.weight)[0])
    ref = F.linear(x, q.dequantize(torch.float32), lin.bias.float())
    with torch.inference_mode():
        torch.testing.assert_close(q(x), ref, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(q(x.expand(40, 1, 64)), ref.expand(40, 1, 24), rtol=1e-5, atol=1e-5)  # prefill
    monkeypatch.setattr(kernels, "available", lambda: False)  # aten's int8 kernel on the unpacked weights
    with torch.inference_mode():
        torch.testing.assert_close(q(x), plain(x), rtol=0, atol=0)


@needs_kernels
def test_int8_state_dicts_do_not_depend_on_the_host():
    """The same names, shapes and values with the kernels' packed layout and without; and either loads into
    the other."""
    lin = Linear(64, 24).to(torch.bfloat16)
    plain, packed = Int8Linear.from_linear(lin), NativeInt8Linear.convert(Int8Linear.from_linear(lin))
    a, b = plain.state_dict(), packed.state_dict()
    assert a.keys() == b.keys() and all(a[k].shape == b[k].shape and torch.equal(a[k], b[k]) for k in a)
    assert b["qweight"].shape == (24, 64)
    other = NativeInt8Linear.convert(Int8Linear.from_linear(Linear(64, 24).to(torch.bfloat16)))
    other.load_state_dict(a)
    assert torch.equal(other.weight_int8(), plain.qweight) and other.kernel_weight.dim() == 4
    fresh = Int8Linear.from_linear(Linear(64, 24).to(torch.bfloat16))
    fresh.load_state_dict(b)
    assert torch.equal(fresh.qweight, plain.qweight)
    with pytest.raises(RuntimeError, match="qweight"):
        other.load_state_dict({**a, "qweight": torch.zeros(24, 32, dtype=torch.int8)})


def test_bindings_come_from_the_header():
    """Every function the header declares is bound with its argument count; the structs' fields are the
    header's, in its order."""
    structs, functions = kernels.header()
    assert {"qwenvl_gemv_bf16", "qwenvl_gemm", "qwenvl_decode_layers", "qwenvl_fma_flops"} <= functions.keys()
    restype, args = functions["qwenvl_gemv_bf16"]
    assert restype is None and len(args) == 8
    assert functions["qwenvl_gemm"][0] is ctypes.c_int and functions["qwenvl_fma_flops"][0] is ctypes.c_double
    assert [n for n, _ in structs["qwenvl_linear"]._fields_] == ["kind", "w", "scale", "bias", "bias_bf16", "N",
                                                                  "K", "zeros", "group"]
    assert structs["qwenvl_layer"]._fields_[4] == ("qkv", structs["qwenvl_linear"])
    if kernels.available():
        lib = kernels._library()
        for name, (restype, argtypes) in functions.items():
            assert getattr(lib, name).argtypes == argtypes, name


@needs_kernels
def test_bad_arguments_are_refused_by_name():
    w = torch.randn(8, 32).bfloat16()
    with pytest.raises(ValueError, match="x has 16 inputs"):
        kernels.gemv_bf16(torch.randn(1, 16), w)
    with pytest.raises(ValueError, match="w has dtype torch.float16"):
        kernels.gemv_bf16(torch.randn(1, 32), w.half())
    with pytest.raises(ValueError, match="w must be contiguous"):
        kernels.gemv_bf16(torch.randn(1, 8), w.t())
    with pytest.raises(ValueError, match="bias has shape"):
        kernels.gemv_bf16(torch.randn(1, 32), w, torch.randn(9))
    q, s = quantize_weight(torch.randn(8, 32))
    with pytest.raises(ValueError, match=r"q has shape \[8, 32\], expected \[4, \*\]"):  # 4 scales
        kernels.gemv_int8(torch.randn(1, 32), q, s[:4])
    k = torch.zeros(2, 1, 10, 16, dtype=torch.bfloat16)
    q1 = torch.randn(1, 2, 1, 16)
    with pytest.raises(ValueError, match="rows"):
        kernels.attend_bf16(q1, k, k.clone(), torch.tensor([5]), torch.zeros(1, 1, 1, 4))
    with pytest.raises(ValueError, match="mask covers 11"):
        kernels.attend_bf16(q1, k, k.clone(), None, torch.zeros(1, 1, 1, 11))
    with pytest.raises(ValueError, match="gate_up has dtype"):
        kernels.silu_mul(torch.randn(1, 8).double())


@needs_kernels
def test_cached_decoding_with_kernels_equals_aten(monkeypatch):
    """A bf16 decoder under float32 compute, prefilled then decoding 4 tokens with a KV cache (2 rows): the
    native products and attention give the logits the aten path gives (which rounds each product's input to
    bf16: hence the tolerance), and they are the ones that ran."""
    from qwenvl.fast import prepare
    from qwenvl.model import layers, text
    from qwenvl.model.weights import random_model
    from qwenvl.tiny import build_tokenizer, tiny_config, token_ids
    for mod in (layers, text):
        monkeypatch.setattr(mod, "compute_dtype", lambda dtype, device: torch.float32)
    tok = build_tokenizer()
    model = random_model(tiny_config(token_ids(tok), vocab_size=tok.get_vocab_size() + 6), torch.bfloat16, seed=5)
    prepare(model)  # as loaded for inference: q/k/v with biases in one product, gate/up in one, native layers
    lm = model.language_model
    ids = torch.randint(0, 400, (2, 12), generator=torch.Generator().manual_seed(0))
    pos = torch.arange(12).expand(3, 2, 12)
    used = []
    for name in ("gemv_bf16", "attend_bf16", "silu_mul"):
        monkeypatch.setattr(kernels, name, lambda *a, f=getattr(kernels, name), n=name: used.append(n) or f(*a))

    def decode():
        cache = model.new_cache(2, 16)
        with torch.inference_mode():
            x = lm.embed_tokens(ids)
            causal = torch.ones(8, 8, dtype=torch.bool).tril().expand(2, 1, 8, 8)
            out = [model.logits(lm(x[:, :8], pos[..., :8], causal, cache))[:, -1]]
            for t in range(8, 12):
                keys = torch.ones(2, 1, 1, t + 1, dtype=torch.bool)
                out.append(model.logits(lm(x[:, t:t + 1], pos[..., t:t + 1], keys, cache))[:, -1])
        return torch.stack(out)

    native = decode()
    assert {"gemv_bf16", "attend_bf16", "silu_mul"} <= set(used)
    monkeypatch.setattr(kernels, "available", lambda: False)
    used.clear()
    ref = decode()
    assert not used
    err = float((native - ref).norm() / ref.norm())
    assert err < 2e-2
    assert (native.argmax(-1) == ref.argmax(-1)).float().mean() >= 0.8


def test_a_failing_build_falls_back_with_a_warning(monkeypatch, tmp_path):
    cc = tmp_path / "cc"
    cc.write_text("#!/bin/sh\necho 'no compiler here' >&2\nexit 1\n")
    cc.chmod(0o755)
    monkeypatch.setenv("CC", str(cc))
    monkeypatch.setenv("QWENVL_CACHE", str(tmp_path / "cache"))
    kernels._library.cache_clear()
    try:
        if platform.machine() != "x86_64" or torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512"):
            pytest.skip("no AVX2: the kernels are never built here")
        with pytest.warns(UserWarning, match="no compiler here"):
            assert not kernels.available()
        lin = native(Linear(16, 8).to(torch.bfloat16))
        assert type(lin) is not NativeLinear
        with torch.inference_mode():
            torch.testing.assert_close(lin(torch.ones(1, 16)), F.linear(torch.ones(1, 16).bfloat16(), lin.weight,
                                                                        lin.bias).float())
        assert not list((tmp_path / "cache").rglob("*.so"))
    finally:
        kernels._library.cache_clear()


def test_the_switch_turns_them_off(monkeypatch):
    monkeypatch.setenv("QWENVL_NATIVE_KERNELS", "0")
    kernels._library.cache_clear()
    try:
        assert not kernels.available()
    finally:
        kernels._library.cache_clear()
