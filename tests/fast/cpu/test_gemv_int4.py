"""The native 4-bit product (fast/cpu/int4.c) against the aten path (dequantize, float64 product), over rows,
group sizes, biases, thread counts and extreme activations; and where Int4Linear uses it."""

from __future__ import annotations

import pytest
import torch

from qwenvl.fast import cpu as kernels
from qwenvl.fast.int4 import Int4Linear, NativeInt4Linear, quantize_weight_int4

needs_kernels = pytest.mark.skipif(not kernels.available(), reason="native kernels not buildable here")


def layer(n, k, group, bias, seed):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g)
    b = torch.randn(n, generator=g) if bias else None
    return Int4Linear(*quantize_weight_int4(w, group), b)


def aten(m: Int4Linear, x: torch.Tensor) -> torch.Tensor:
    y = x.double() @ m.dequantize().double().T
    return y if m.bias is None else y + m.bias.double()


@needs_kernels
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("rows", [1, 2, 3, 4, 5, 9, 15])
@pytest.mark.parametrize("n,k,group,bias", [(8, 64, 32, True), (37, 128, 128, False), (300, 2048, 128, True),
                                            (64, 1024, 64, False), (20, 192, 96, True)])
def test_gemv_int4_equals_aten(rows, n, k, group, bias, threads):
    m = layer(n, k, group, bias, rows + n + k)
    x = torch.randn(rows, k, generator=torch.Generator().manual_seed(rows))
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        y = kernels.gemv_int4(x, m.qweight, m.scales, m.zeros, m.bias)
    finally:
        torch.set_num_threads(old)
    ref = aten(m, x)
    # int16 activations: each within 2^-16 of its group's largest |x|
    assert float((y.double() - ref).norm() / ref.norm()) < 1e-4
    assert float((y.double() - ref).abs().max()) < 1e-3 * float(ref.abs().max())


@needs_kernels
def test_extreme_and_zero_activations():
    m = layer(16, 256, 64, False, 0)
    x = torch.zeros(3, 256)
    x[1, 5] = 1e30                          # one huge value: its group's step is huge, others exact
    x[1, 64:] = torch.linspace(-1, 1, 192)
    x[2] = 1e-30                            # tiny but non-zero
    y = kernels.gemv_int4(x, m.qweight, m.scales, m.zeros, None)
    ref = aten(m, x)
    assert torch.equal(y[0], torch.zeros(16))
    assert torch.allclose(y[1].double(), ref[1], rtol=1e-4, atol=1e-3)  # the other groups keep their precision
    assert torch.allclose(y[2].double(), ref[2], rtol=1e-3)


@needs_kernels
def test_layer_uses_native_for_decoding_and_dequantizes_for_prefill(monkeypatch):
    from qwenvl.fast.native import use_native_kernels
    m = use_native_kernels(layer(48, 128, 64, True, 1))
    assert type(m) is NativeInt4Linear
    calls = []
    real = kernels.gemv_int4
    monkeypatch.setattr(kernels, "gemv_int4", lambda *a: calls.append(a[0].shape) or real(*a))
    with torch.no_grad():
        x = torch.randn(2, 3, 128)
        y = m(x)                                            # 6 rows: decoding
        assert calls == [(2, 3, 128)] and y.shape == (2, 3, 48)
        big = torch.randn(40, 128)
        assert float((m(big).double() - aten(m, big)).norm() / aten(m, big).norm()) < 1e-6  # float GEMM
        assert len(calls) == 1
        assert m(x.bfloat16()).dtype == torch.bfloat16      # output in the input's dtype


def test_autograd_uses_the_dequantized_product():
    m = layer(8, 64, 32, False, 2)
    x = torch.randn(1, 64, requires_grad=True)
    m(x).sum().backward()
    assert torch.allclose(x.grad, m.dequantize().sum(0), atol=1e-6)
