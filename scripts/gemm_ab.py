"""A/B of the float32 GEMMs this CPU can run, on the 3B preset's tower and prefill shapes, in one process.

Contenders, each computing x [M, K] float32 @ W.T with W [N, K]:
- native: qwenvl's gemm.c (fast/cpu), W float32, and W bfloat16 (as the engine stores it: converted while packing);
- mkl:    torch's F.linear (torch's BLAS, MKL in the x86 wheels), W float32;
- onednn: torch's oneDNN linear (torch._C._nn.mkldnn_linear on to_mkldnn() tensors, the input converted per call);
- openblas: numpy's matmul (its bundled OpenBLAS), W float32, under threadpoolctl at torch's thread count;
and, for W stored in bfloat16 as the engine stores it (float32 activations on a CPU without bf16 matrix
instructions), what each side pays for that: `native_bf16w` (converted while packing), `mkl_bf16w` (the aten
fast path, fast/layers.py's blocked upcast) and `onednn_bf16w` (W cast up and reordered for oneDNN per call).

The machine may be shared and loaded: calls alternate between the contenders (one round = one call of each, in
a rotated order), so load hits every side alike, and each figure is the median over the rounds. A short pause
after each call lets the previous library's worker threads stop spinning before the next one runs.

    PYTHONPATH=src python scripts/gemm_ab.py --rows 384 --rounds 5 [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F

from qwenvl.bench.inference import preset_config
from qwenvl.fast import cpu
from qwenvl.fast.layers import blocked_upcast_linear

try:
    from threadpoolctl import threadpool_limits
except ImportError:  # the A/B needs it: OpenBLAS would otherwise run its own thread count
    threadpool_limits = None


def shapes(preset: str = "3b") -> dict[str, tuple[int, int]]:
    """name -> (K, N) of the products the tower (per patch) and prefill (per token) run."""
    cfg = preset_config(preset)
    v, t = cfg.vision, cfg.text
    E, I = v.hidden_size, v.intermediate_size
    H, TI = t.hidden_size, t.intermediate_size
    qkv = (t.num_attention_heads + 2 * t.num_key_value_heads) * t.head_dim
    return {
        "tower qkv": (E, 3 * E), "tower gate_up": (E, 2 * I), "tower down": (I, E),
        "prefill qkv": (H, qkv), "prefill gate_up": (H, 2 * TI), "prefill down": (TI, H),
    }


def contenders(x: torch.Tensor, w: torch.Tensor) -> dict:
    threads = torch.get_num_threads()
    w_bf16 = w.bfloat16()
    wm = w.to_mkldnn()
    xn, wtn = x.numpy(), np.ascontiguousarray(w.numpy().T)

    def openblas():
        with threadpool_limits(limits=threads, user_api="blas"):
            return xn @ wtn

    out = {"mkl": lambda: F.linear(x, w), "onednn": lambda: torch._C._nn.mkldnn_linear(x.to_mkldnn(), wm, None)
           .to_dense(), "openblas": openblas,
           "mkl_bf16w": lambda: blocked_upcast_linear(x, w_bf16, None),
           "onednn_bf16w": lambda: torch._C._nn.mkldnn_linear(x.to_mkldnn(), w_bf16.float().to_mkldnn(), None)
           .to_dense(),
           "onednn_reorder": lambda: torch._C._nn.mkldnn_linear(x.to_mkldnn(), w.to_mkldnn(), None).to_dense()}
    if cpu.available():
        out["native"] = lambda: cpu.gemm(x, w)
        out["native_bf16w"] = lambda: cpu.gemm(x, w_bf16)
    return out


def run(rows: int, rounds: int, pause: float, only: list[str] | None = None) -> dict:
    if threadpool_limits is None:
        raise SystemExit("pip install threadpoolctl (the A/B limits OpenBLAS's threads with it)")
    g = torch.Generator().manual_seed(0)
    result = {"rows": rows, "rounds": rounds, "threads": torch.get_num_threads(), "shapes": {}}
    for name, (K, N) in shapes().items():
        x, w = torch.randn(rows, K, generator=g), torch.randn(N, K, generator=g) * 0.02
        fns = {k: f for k, f in contenders(x, w).items() if not only or k in only}
        ref = x.double() @ w.double().t()
        for f in fns.values():  # warm-up, and every contender computes the product
            y = torch.as_tensor(f()).double()
            assert float((y - ref).norm() / ref.norm()) < 1e-2
        times = {k: [] for k in fns}
        keys = list(fns)
        for r in range(rounds):
            for k in keys[r % len(keys):] + keys[:r % len(keys)]:  # rotated: no contender always runs first
                t0 = time.perf_counter()
                fns[k]()
                times[k].append(time.perf_counter() - t0)
                time.sleep(pause)
        flop = 2 * rows * K * N
        result["shapes"][name] = {"K": K, "N": N, **{k: round(flop / statistics.median(t) / 1e9, 1)
                                                     for k, t in times.items()}}
        print(name, result["shapes"][name], flush=True)
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=384, help="rows of x (patches or prompt tokens) per product")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--pause", type=float, default=0.1, help="seconds after each call (spinning threads settle)")
    p.add_argument("--json", help="write the figures (GFLOP/s, medians) here")
    p.add_argument("--only", help="comma-separated contenders to run (default all)")
    args = p.parse_args()
    result = run(args.rows, args.rounds, args.pause, args.only.split(",") if args.only else None)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
