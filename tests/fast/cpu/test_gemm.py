"""The native GEMM (fast/cpu/gemm.c) computes what a float64 product computes for every weight format, shape and
thread count, reads strided rows in place, and the layers use it only where it is preferred."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from qwenvl.fast import cpu as kernels
from qwenvl.fast.int8 import Int8Linear, quantize_weight
from qwenvl.fast.layers import use_fast_layers
from qwenvl.fast.native import use_native_kernels
from qwenvl.model.layers import Linear

needs_kernels = pytest.mark.skipif(not kernels.available(), reason="native kernels not buildable here")


def weights(kind: str, n: int, k: int, g: torch.Generator):
    """(callable running the product for this format, the float64 weights it stands for)"""
    w = torch.randn(n, k, generator=g)
    if kind in ("float32", "bfloat16"):
        w = w.to(getattr(torch, kind))
        return (lambda x, b: kernels.gemm(x, w, b)), w.double()
    q, s = quantize_weight(w)
    ref = q.double() * s.double()[:, None]
    if kind == "int8-packed":
        q = kernels.pack_int8(q)
    return (lambda x, b: kernels.gemm_int8(x, q, s, b)), ref


@needs_kernels
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("m,n,k", [
    (16, 16, 8),       # one tile
    (7, 33, 300),      # a tile and one row, a partial column panel, two slices of K
    (300, 40, 1280),   # several row blocks shared by the threads, five slices of K
    (23, 800, 4000),   # few rows (threads split the column panels), three column blocks of W
    (151, 100, 528),   # row blocks with a partial last tile
])
def test_gemm_equals_float64_product(m, n, k, threads):
    g = torch.Generator().manual_seed(m + n + k)
    x = torch.randn(m, k, generator=g)
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for kind in ("bfloat16", "float32", "int8") + (("int8-packed",) if n % 4 == 0 and k % 16 == 0 else ()):
            for bias in (None, torch.float32, torch.bfloat16):
                run, w = weights(kind, n, k, g)
                b = None if bias is None else torch.randn(n, generator=g).to(bias)
                ref = x.double() @ w.t() + (0 if b is None else b.double())
                got = run(x, b)
                assert got.shape == (m, n) and got.dtype == torch.float32
                torch.testing.assert_close(got, ref.float(), rtol=1e-5, atol=1e-4 * k ** 0.5, msg=f"{kind} {bias}")
    finally:
        torch.set_num_threads(old)


@needs_kernels
def test_gemm_reads_strided_rows_in_place():
    """The SwiGLU passes the first half of [rows, 2H] (row stride 2H); batched inputs keep their shape."""
    g = torch.Generator().manual_seed(0)
    wide = torch.randn(2, 50, 2 * 96, generator=g)
    half = wide[..., :96]
    w = torch.randn(24, 96, generator=g).bfloat16()
    torch.testing.assert_close(kernels.gemm(half, w), kernels.gemm(half.contiguous(), w), rtol=0, atol=0)
    torch.testing.assert_close(kernels.gemm(half, w), half @ w.float().t(), rtol=1e-5, atol=1e-4)
    transposed = torch.randn(96, 40, generator=g).t()  # columns strided: copied first
    torch.testing.assert_close(kernels.gemm(transposed, w), transposed @ w.float().t(), rtol=1e-5, atol=1e-4)


@needs_kernels
@pytest.mark.parametrize("preferred", [True, False])
def test_layers_use_the_gemm_for_many_rows_where_preferred(monkeypatch, preferred):
    """Linear and Int8Linear with 16+ rows and no autograd: the native GEMM where preferred, aten otherwise; the
    same results either way. Decoding rows keep the matrix-vector kernels; autograd keeps aten."""
    monkeypatch.setattr(kernels, "gemm_preferred", lambda: preferred)
    calls = []
    for name in ("gemm", "gemm_int8"):
        monkeypatch.setattr(kernels, name, lambda *a, f=getattr(kernels, name), n=name: calls.append(n) or f(*a))
    lin = use_native_kernels(use_fast_layers(Linear(64, 24).to(torch.bfloat16)))
    q = use_native_kernels(Int8Linear.from_linear(lin))
    x = torch.randn(3, 40, 64)
    with torch.inference_mode():
        y, yq = lin(x), q(x)
        lin(x[:, :1]), q(x[:1, :1])  # decoding rows
    assert calls == (["gemm", "gemm_int8"] if preferred else [])
    torch.testing.assert_close(y, F.linear(x, lin.weight.float(), lin.bias.float()), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(yq, F.linear(x, q.dequantize(torch.float32), lin.bias.float()), rtol=1e-5, atol=1e-5)
    xg = x.clone().requires_grad_()
    lin(xg).sum().backward()
    assert xg.grad is not None and len(calls) == (2 if preferred else 0)


def test_the_gemm_switch(monkeypatch):
    try:
        monkeypatch.setenv("QWENVL_NATIVE_GEMM", "0")
        kernels._gemm_wanted.cache_clear()
        assert not kernels.gemm_preferred()
        monkeypatch.setenv("QWENVL_NATIVE_GEMM", "1")
        kernels._gemm_wanted.cache_clear()
        assert kernels.gemm_preferred() == kernels.available()
    finally:
        kernels._gemm_wanted.cache_clear()
