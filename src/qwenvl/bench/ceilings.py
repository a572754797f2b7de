"""The machine's ceilings, and the engine's best kernels beside them.

Physical ceilings, measured here: `memory_read_gbs`, a plain streaming read (a sum over vectors far larger
than the last-level cache: what the memory delivers), the bound on decoding, which reads every weight once
per token; and `fma_peak_gflops` / `bf16_peak_gflops`, the cores' peak throughput for float32 and bf16 products
(fast/cpu/peak.c: independent chains of the widest vector multiply-add the CPU has for the format, on every
thread, nothing read from memory), the bound on the tower and prefill.

Kernels, each measured as aten runs it and as the engine's layers run it: dense matmul GFLOP/s (bf16, fp32)
and matrix-vector GB/s (bf16, fp32, int8). `<fmt>_matmul_gflops` and `<fmt>_matvec_gbs` are the faster of
the two: the best this software does, not a limit of the machine."""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from ..fast.layers import use_fast_layers
from ..fast.native import use_native_kernels
from ..model.layers import Linear, compute_dtype


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_times(fn, device: torch.device, repeats: int = 3, min_time: float = 0.0) -> list[float]:
    """Wall times of `repeats` calls after one warm-up call (more calls while under `min_time` in total, at most
    50 x repeats)."""
    fn()
    sync(device)
    times: list[float] = []
    while len(times) < repeats or sum(times) < min_time:
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
        if len(times) >= 50 * repeats:
            break
    return times


def best_time(fn, device: torch.device, repeats: int = 3, min_time: float = 0.0) -> float:
    return min(run_times(fn, device, repeats, min_time))


def matmul_gflops(dtype: torch.dtype, device: torch.device, m: int = 2048, k: int = 1280, n: int = 3420
                  ) -> dict[str, float]:
    """A GEMM of the vision tower's MLP shape (rows x 1280 -> 3420), by two products: aten's (F.linear in
    `dtype`) and the one the engine's layers run (`Linear` with `dtype` weights on activations in the compute
    dtype: float32 on a CPU without bf16 matrix instructions, through the native GEMM where preferred)."""
    if device.type == "cuda":
        m, k, n = 8192, 4096, 4096
    g = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn(m, k, generator=g).to(device, dtype)
    layer = Linear(k, n, bias=False, device="meta")
    layer.weight = torch.nn.Parameter(torch.randn(n, k, generator=g).to(device, dtype), requires_grad=False)
    layer = engine_layers(layer)
    a_compute = a.to(compute_dtype(dtype, device))
    with torch.inference_mode():
        times = {"aten": best_time(lambda: F.linear(a, layer.weight), device),
                 "engine": best_time(lambda: layer(a_compute), device)}
    return {name: 2 * m * k * n / t / 1e9 for name, t in times.items()}


class MatvecProbe:
    """One token through decoder-sized weights (gate+up of the 3B model): weight bytes / time.

    It reads `count` distinct matrices in turn, as decoding reads each layer's weights once per token:
    together they are far larger than the CPU's last-level cache (4 x 90 MB in bf16), so no call finds
    its matrix still cached from the previous one, which a single re-read matrix can
    (docs/benchmarks.md). Kept allocated so that it can be re-measured between decode steps (a shared
    machine's bandwidth drifts).

    Two products over the same matrices: aten's (F.linear in the weights' dtype, or its int8 weight-only
    kernel) and the one the engine's layers run (the layers `qwenvl.load` prepares, on activations in the
    compute dtype, which may be the native product). `dtype` torch.int8 means per-channel int8 weights;
    their bytes are the int8 bytes."""

    def __init__(self, dtype: torch.dtype, device: torch.device, n: int = 22016, k: int = 2048, count: int = 4):
        from ..fast.int8 import _HAS_INT8PACK, Int8Linear, quantize_weight
        if device.type == "cuda":
            n, k = 4 * 18944, 3584
        self.device = device
        g = torch.Generator(device="cpu").manual_seed(0)
        float_dtype = torch.bfloat16 if dtype == torch.int8 else dtype
        x = torch.randn(1, k, generator=g).to(device, float_dtype)
        x_compute = x.to(compute_dtype(float_dtype, device))
        self.layers, self.products = [], {}
        for _ in range(count):
            w = torch.randn(n, k, generator=g) * 0.02
            if dtype == torch.int8:
                self.layers.append(Int8Linear(*quantize_weight(w), None, torch.bfloat16).to(device))
            else:
                layer = Linear(k, n, bias=False, device="meta")
                layer.weight = torch.nn.Parameter(w.to(device, dtype), requires_grad=False)
                self.layers.append(layer)
        self.layers = list(engine_layers(torch.nn.ModuleList(self.layers)))
        self.products["engine"] = lambda i: self.layers[i](x_compute)
        if dtype != torch.int8:
            self.products["aten"] = lambda i: F.linear(x, self.layers[i].weight)
        elif _HAS_INT8PACK and device.type == "cpu":
            # aten's kernel takes the weights as [out, in]; the engine's may hold them packed for its own
            q = [m.weight_int8() for m in self.layers]
            self.products["aten"] = lambda i: torch.ops.aten._weight_int8pack_mm(x, q[i], self.layers[i].scale_bf16)

    @property
    def nbytes(self) -> int:
        return sum(m.out_features * m.in_features if hasattr(m, "weight_int8") else m.weight.numel() *
                   m.weight.element_size() for m in self.layers)

    def sweep_times(self, repeats: int = 10, min_time: float = 0.2) -> dict[str, list[float]]:
        """Seconds of each sweep over the matrices, per product."""
        out = {}
        for name, product in self.products.items():
            def sweep(product=product):
                for i in range(len(self.layers)):
                    product(i)
            out[name] = run_times(sweep, self.device, repeats=repeats, min_time=min_time)
        return out

    def rates(self, repeats: int = 10, min_time: float = 0.2) -> dict[str, float]:
        """GB/s of each product's best sweep."""
        return {name: self.nbytes / min(t) / 1e9 for name, t in self.sweep_times(repeats, min_time).items()}

    def __call__(self, repeats: int = 10, min_time: float = 0.2) -> float:
        """The faster product's GB/s."""
        return max(self.rates(repeats, min_time).values())


def engine_layers(module: torch.nn.Module) -> torch.nn.Module:
    """`module` with the layers the engine runs (qwenvl.fast's transforms, as qwenvl.load applies them)."""
    return use_native_kernels(use_fast_layers(module))


def fma_peak_gflops(device: torch.device, fmt: str = "fp32", seconds: float = 0.2, repeats: int = 3) -> float | None:
    """Peak GFLOP/s of the cores at torch's thread count for products in `fmt` ("fp32" or "bf16"): the fastest of
    fast/cpu/peak.c's probes this CPU has that computes that format (AVX2 or AVX-512 FMA; for bf16 also
    AVX-512 BF16's dot product, which aten's bf16 GEMM uses where it exists). Each probe: the best of `repeats`
    runs of ~`seconds`, each rated two ways, per thread over the CPU time it got (another tenant's share of
    the cores then lowers the kernels' wall-clock rates, not this limit) and over the wall time (which a
    VM's steal time cannot inflate). Both are lower bounds of what the cores do; this is the larger. None
    where the native kernels (which hold the probes) are not built, off the CPU, and for bf16 on a CPU with
    AMX tiles (no vector loop bounds those)."""
    probe = peak_probe(device, fmt)
    if probe is None:
        return None
    from ..fast import cpu
    iters = 1 << 16
    while True:  # size the run to ~`seconds` of CPU time per thread
        rate = cpu.fma_rate(iters, probe) / max(1, torch.get_num_threads())
        flops_per_iter = cpu.fma_flops(1, probe) / max(1, torch.get_num_threads())
        if iters * flops_per_iter / rate >= seconds / 4 or iters > 1 << 32:
            break
        iters *= 4
    iters = max(1, int(seconds * rate / flops_per_iter))
    best = 0.0
    for _ in range(repeats):
        by_cpu_time = cpu.fma_rate(iters, probe)
        t0 = time.perf_counter()
        by_wall_time = cpu.fma_flops(iters, probe) / (time.perf_counter() - t0)
        best = max(best, by_cpu_time, by_wall_time)
    return best / 1e9


def peak_probe(device: torch.device, fmt: str) -> str | None:
    """The peak.c probe `fma_peak_gflops` runs for `fmt`: the widest vector instruction this CPU has for it."""
    from ..fast import cpu
    if fmt not in ("fp32", "bf16"):
        raise ValueError(f"peak format {fmt!r}: expected 'fp32' or 'bf16'")
    if device.type != "cpu" or not cpu.available() or (fmt == "bf16" and "amx_bf16" in cpu_flags()):
        return None
    # the later probes in peak.c's order are the wider ones
    return [k for k in cpu.peak_kinds() if fmt in cpu.PEAK_FORMATS[k]][-1]


def cpu_flags() -> set[str]:
    """The CPU's feature flags as Linux reports them (empty elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def memory_read_gbs(device: torch.device, nbytes: int = 4 * 90 << 20, count: int = 4) -> float:
    """Reading float32 vectors far larger than the last-level cache (a sum): what the memory delivers.

    On the CPU with the native kernels built, the sum is also peak.c's read probe, eight streams a thread: aten's
    `.sum()` reads one stream a thread, which the misses a core can have in flight bound below the memory's
    rate (aten's own fp32 matrix-vector product read faster than it, docs/benchmarks.md). The faster is taken."""
    from ..fast import cpu
    xs = [torch.ones(nbytes // count // 4, device=device) for _ in range(count)]
    sums = [lambda x: x.sum()]
    if device.type == "cpu" and cpu.available():
        sums.append(cpu.read_sum)

    def sweep(total):
        for x in xs:
            total(x)
    return max(nbytes / best_time(lambda: sweep(total), device, repeats=10, min_time=0.2) / 1e9 for total in sums)


def measure(device: torch.device, progress=None) -> dict:
    """Flat figures: the physical ceilings (`memory_read_gbs`, `fma_peak_gflops` and `bf16_peak_gflops` with the
    probe each came from, `..._probe`), then `<fmt>_matmul_gflops` and
    `<fmt>_matvec_gbs`, the faster product's, and `..._<product>` each one's."""
    out = {}
    if progress:
        progress("ceiling: memory_read_gbs, fma_peak_gflops, bf16_peak_gflops")
    out["memory_read_gbs"] = round(memory_read_gbs(device), 2)
    for fmt, key in (("fp32", "fma_peak_gflops"), ("bf16", "bf16_peak_gflops")):
        peak = fma_peak_gflops(device, fmt)
        if peak is not None:
            out[key] = round(peak, 2)
            out[f"{key.removesuffix('_gflops')}_probe"] = peak_probe(device, fmt)
    for fmt, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
        if progress:
            progress(f"kernel: {fmt}_matmul_gflops")
        rates = matmul_gflops(dtype, device)
        out[f"{fmt}_matmul_gflops"] = round(max(rates.values()), 2)
        out.update({f"{fmt}_matmul_gflops_{k}": round(v, 2) for k, v in rates.items()})
    for fmt, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32), ("int8", torch.int8)):
        if progress:
            progress(f"kernel: {fmt}_matvec_gbs")
        rates = MatvecProbe(dtype, device).rates()
        out[f"{fmt}_matvec_gbs"] = round(max(rates.values()), 2)
        out.update({f"{fmt}_matvec_gbs_{k}": round(v, 2) for k, v in rates.items()})
    return out
