"""The machine's own ceilings, measured with torch: dense matmul GFLOP/s (bf16, fp32) and matrix-vector
GB/s (the bound on decoding: every weight is read once per token)."""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def best_time(fn, device: torch.device, repeats: int = 3, min_time: float = 0.0) -> float:
    """Best wall time of `repeats` calls after one warm-up call (more calls while under `min_time` total)."""
    fn()
    sync(device)
    best, total, n = float("inf"), 0.0, 0
    while n < repeats or total < min_time:
        t0 = time.perf_counter()
        fn()
        sync(device)
        dt = time.perf_counter() - t0
        best, total, n = min(best, dt), total + dt, n + 1
        if n >= 50 * repeats:
            break
    return best


def matmul_gflops(dtype: torch.dtype, device: torch.device, m: int = 2048, k: int = 1280, n: int = 3420) -> float:
    """A GEMM of the vision tower's MLP shape (rows x 1280 -> 3420)."""
    if device.type == "cuda":
        m, k, n = 8192, 4096, 4096
    g = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn(m, k, generator=g).to(device, dtype)
    w = torch.randn(n, k, generator=g).to(device, dtype)
    t = best_time(lambda: F.linear(a, w), device)
    return 2 * m * k * n / t / 1e9


class MatvecProbe:
    """One token through decoder-sized weights (gate+up of the 3B model): weight bytes / time.

    It reads `count` distinct matrices in turn, as decoding reads each layer's weights once per token:
    together they are far larger than the CPU's last-level cache (4 x 90 MB in bf16), so no call finds
    its matrix still cached from the previous one, which a single re-read matrix can (3-5% faster on a
    32 MB-L3 EPYC). Kept allocated so that it can be re-measured between decode steps (a shared
    machine's bandwidth drifts)."""

    def __init__(self, dtype: torch.dtype, device: torch.device, n: int = 22016, k: int = 2048, count: int = 4):
        if device.type == "cuda":
            n, k = 4 * 18944, 3584
        self.device = device
        g = torch.Generator(device="cpu").manual_seed(0)
        self.ws = [torch.randn(n, k, generator=g).to(device, dtype) for _ in range(count)]
        self.x = torch.randn(1, k, generator=g).to(device, dtype)

    @property
    def nbytes(self) -> int:
        return sum(w.numel() * w.element_size() for w in self.ws)

    def sweep(self) -> None:
        for w in self.ws:
            F.linear(self.x, w)

    def __call__(self, repeats: int = 10, min_time: float = 0.2) -> float:
        """The best sweep's bandwidth, GB/s."""
        return self.nbytes / best_time(self.sweep, self.device, repeats=repeats, min_time=min_time) / 1e9


def matvec_gbs(dtype: torch.dtype, device: torch.device) -> float:
    return MatvecProbe(dtype, device)()


def int8_matvec_gbs(device: torch.device, n: int = 22016, k: int = 2048) -> float | None:
    """The int8 weight-only kernel engine/quantize.py uses for one token (int8 bytes / time)."""
    from ..engine.quantize import Int8Linear, quantize_weight
    if device.type == "cuda":
        n, k = 4 * 18944, 3584
    w = torch.randn(n, k, device=device) * 0.02
    q, s = quantize_weight(w)
    layer = Int8Linear(q, s, None, torch.bfloat16)
    x = torch.randn(1, k, device=device, dtype=torch.bfloat16)
    t = best_time(lambda: layer(x), device, repeats=10, min_time=0.2)
    return q.numel() / t / 1e9


def measure(device: torch.device, progress=None) -> dict:
    out = {}
    for name, fn in (("bf16_matmul_gflops", lambda: matmul_gflops(torch.bfloat16, device)),
                     ("fp32_matmul_gflops", lambda: matmul_gflops(torch.float32, device)),
                     ("bf16_matvec_gbs", lambda: matvec_gbs(torch.bfloat16, device)),
                     ("fp32_matvec_gbs", lambda: matvec_gbs(torch.float32, device)),
                     ("int8_matvec_gbs", lambda: int8_matvec_gbs(device))):
        if progress:
            progress(f"ceiling: {name}")
        out[name] = round(fn(), 2)
    return out
