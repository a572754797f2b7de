"""Native CPU kernels for decoding (gemv.c, decode.c, int4.c) and many-row products (gemm.c), built on first
use with the system C compiler.

Decoding reads every weight once per token, so its speed is the speed of the matrix-vector products. On
an x86 CPU without bf16 matrix instructions, aten's bf16 and weight-only int8 products are compute-bound
(measured on 2 AVX2 EPYC cores: 10-15 GB/s for bf16, 8-10 G int8 weights/s), while the memory delivers
21-26 GB/s. gemv.c's AVX2 loops reach a median 18-19 GB/s (bf16) and 19-20 G weights/s (int8, on weights
packed for it by `pack_int8`) over the 3B decoder's shapes. It also holds the other per-token costs that
aten spreads over many small ops: attention over the bf16 KV cache (aten's path first copies the cache to
float32), RMSNorm and the SwiGLU activation. decode.c runs every decoder layer of a decoding step on them in
one call (`decode_layers`; engine/native_decode.py builds its table of weights). gemm.c is a float32 GEMM for
the tower and prefill where torch's MKL lags (`gemm`, `gemm_preferred`).

Used only where they apply: x86-64 with AVX2, a C compiler (`$CC` or cc/gcc), contiguous CPU tensors,
no autograd, not inside torch.compile. Anywhere else `available()` is False and callers use aten.
QWENVL_NATIVE_KERNELS=0 turns them off. The shared library is cached under $QWENVL_CACHE (default
~/.cache/qwenvl) and named by a hash of the source and flags; it uses the process's OpenMP runtime
(the one torch loaded), so it follows torch.set_num_threads.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from functools import lru_cache
from pathlib import Path

import torch

SOURCES = [Path(__file__).with_name(name) for name in ("gemv.c", "decode.c", "gemm.c", "int4.c")]
FLAGS = ["-O3", "-mavx2", "-mfma", "-fopenmp", "-shared", "-fPIC"]


def _cache_dir() -> Path:
    root = os.environ.get("QWENVL_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "qwenvl")
    return Path(root) / "kernels"


def _compiler() -> str | None:
    for name in (os.environ.get("CC"), "cc", "gcc"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def _build(cc: str) -> Path:
    src = b"".join(path.read_bytes() for path in SOURCES)
    tag = hashlib.sha256(src + " ".join(FLAGS).encode()).hexdigest()[:16]
    out = _cache_dir() / f"gemv-{tag}.so"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    # build under a unique name and rename: concurrent processes (torchrun) never load a half-written file
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=out.parent)
    os.close(fd)
    try:
        subprocess.run([cc, *FLAGS, *map(str, SOURCES), "-o", tmp], check=True, capture_output=True, text=True)
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out


@lru_cache(maxsize=None)
def _library() -> ctypes.CDLL | None:
    if os.environ.get("QWENVL_NATIVE_KERNELS", "1") == "0":
        return None
    if platform.machine().lower() not in ("x86_64", "amd64") or torch.backends.cpu.get_cpu_capability() not in (
            "AVX2", "AVX512"):
        return None
    cc = _compiler()
    if cc is None:
        return None
    try:
        lib = ctypes.CDLL(str(_build(cc)))
    except (OSError, subprocess.CalledProcessError) as e:
        detail = getattr(e, "stderr", "") or str(e)
        warnings.warn(f"qwenvl: native CPU kernels not built, using aten's ({detail.strip()[:300]})")
        return None
    p, n, i = ctypes.c_void_p, ctypes.c_long, ctypes.c_int
    lib.qwenvl_gemv_bf16.argtypes = [p, p, p, i, p, n, n, n]
    lib.qwenvl_gemv_int8.argtypes = [p, p, p, p, i, p, n, n, n]
    lib.qwenvl_gemv_int8_packed.argtypes = [p, p, p, p, i, p, n, n, n]
    lib.qwenvl_silu_mul.argtypes = [p, p, n, n]
    lib.qwenvl_attend_bf16.argtypes = [p, p, p, p, p, p, p, n, n, n, n, n, n, ctypes.c_float]
    lib.qwenvl_rms_norm.argtypes = [p, p, i, p, n, n, ctypes.c_float]
    f32 = ctypes.c_float
    lib.qwenvl_decode_layers.argtypes = [p, n, p, n, n, n, n, n, n, n, n, f32, f32, p, p, p, p, p, p]
    lib.qwenvl_gemm.argtypes = [p, n, p, i, p, p, i, p, n, n, n, n]
    lib.qwenvl_gemv_int4.argtypes = [p, p, p, p, p, p, n, n, n, n, p, p, p]
    lib.qwenvl_gemv_int4.restype = None
    lib.qwenvl_decode_work.argtypes = [n] * 7
    lib.qwenvl_decode_work.restype = n
    lib.qwenvl_gemm.restype = i
    for f in (lib.qwenvl_gemv_bf16, lib.qwenvl_gemv_int8, lib.qwenvl_gemv_int8_packed, lib.qwenvl_silu_mul,
              lib.qwenvl_attend_bf16, lib.qwenvl_rms_norm, lib.qwenvl_decode_layers):
        f.restype = None
    return lib


def available() -> bool:
    return _library() is not None


def applies(x: torch.Tensor, w: torch.Tensor) -> bool:
    """Whether the native product can compute x @ w.T here (float32 activations, CPU, no autograd)."""
    # called a few hundred times per decoded token: the cheapest tests first (~0.7 us in all)
    return (x.is_cpu and w.is_cpu and x.dtype is torch.float32 and w.is_contiguous() and available()
            and not torch.compiler.is_compiling()
            and not (torch.is_grad_enabled() and (x.requires_grad or w.requires_grad)))


def gemm_preferred() -> bool:
    """Whether `gemm` beats aten's float32 GEMM here: on AVX2 CPUs other than Intel's. On 2 EPYC cores torch's
    MKL ran at 84-112 GFLOP/s and `gemm` at 128-161 in `qwenvl bench`'s ceilings (docs/benchmarks.md).
    AVX-512 CPUs and Intel's keep MKL, which is tuned for them. QWENVL_NATIVE_GEMM=0/1 overrides."""
    return _gemm_wanted() and available()


@lru_cache(maxsize=None)
def _gemm_wanted() -> bool:
    choice = os.environ.get("QWENVL_NATIVE_GEMM")
    if choice is not None:
        return choice != "0"
    return torch.backends.cpu.get_cpu_capability() == "AVX2" and _cpu_vendor() != "GenuineIntel"


def _cpu_vendor() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("vendor_id"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def gemm(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
    """x [..., K] float32 @ w.T + b with w [N, K] bfloat16 or float32 (contiguous) and b [N] float32 or bfloat16
    -> [..., N] float32, for many rows (decoding rows: `gemv_bf16`). The rows of x may be strided (a view of
    the first half of a wider tensor is read in place). Check `applies` first."""
    return _gemm(x, w, int(w.dtype == torch.bfloat16), None, b, w.shape[0])


def gemm_int8(x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
    """`gemm` with int8 weights q, [N, K] or packed by `pack_int8`, times scale [N] float32 per row."""
    return _gemm(x, q, 3 if q.dim() == 4 else 2, scale, b, scale.shape[0])


def _gemm(x, w, kind, scale, b, N):
    K = x.shape[-1]
    x2 = x.reshape(-1, K)
    if x2.stride(1) != 1 or x2.stride(0) < K:
        x2 = x2.contiguous()
    b = _bias(b)
    y = torch.empty(x2.shape[0], N)
    if _library().qwenvl_gemm(x2.data_ptr(), x2.stride(0), w.data_ptr(), kind, None if scale is None else
                              scale.data_ptr(), *_bias_args(b), y.data_ptr(), N, x2.shape[0], N, K):
        raise MemoryError(f"qwenvl.kernels.gemm: no memory for the packed weights of a {N}x{K} product")
    return y.view(*x.shape[:-1], N)


def _bias(b: torch.Tensor | None) -> torch.Tensor | None:
    if b is None or (b.dtype in (torch.float32, torch.bfloat16) and b.is_contiguous()):
        return b
    return b.float().contiguous()


def _bias_args(b: torch.Tensor | None) -> tuple[int | None, int]:
    return (None, 0) if b is None else (b.data_ptr(), int(b.dtype == torch.bfloat16))


def gemv_bf16(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
    """x [..., K] float32 @ w.T + b with w [N, K] bfloat16 and b [N] float32 or bfloat16 (contiguous) -> [..., N]
    float32. Check `applies` first."""
    x, b = x if x.is_contiguous() else x.contiguous(), _bias(b)
    (N, K), y = w.shape, torch.empty(*x.shape[:-1], w.shape[0])
    _library().qwenvl_gemv_bf16(x.data_ptr(), w.data_ptr(), *_bias_args(b), y.data_ptr(), x.numel() // K, N, K)
    return y


# int8 weights are packed in blocks of PACK_ROWS rows, interleaved in chunks of PACK_COLS columns (16 bytes)
PACK_ROWS, PACK_COLS = 4, 16


def packable(q: torch.Tensor) -> bool:
    """Whether int8 weights q [N, K] can be packed for `gemv_int8` (and the packed kernel is here to use them)."""
    N, K = q.shape
    return q.device.type == "cpu" and N % PACK_ROWS == 0 and K % PACK_COLS == 0 and available()


def pack_int8(q: torch.Tensor) -> torch.Tensor:
    """int8 [N, K] -> [N / 4, K / 16, 4, 16]: each block of 4 rows as one sequential stream (see gemv.c)."""
    N, K = q.shape
    return q.view(N // PACK_ROWS, PACK_ROWS, K // PACK_COLS, PACK_COLS).transpose(1, 2).contiguous()


def unpack_int8(p: torch.Tensor) -> torch.Tensor:
    """The inverse of `pack_int8`: [N / 4, K / 16, 4, 16] -> int8 [N, K]."""
    nb, kb = p.shape[:2]
    return p.transpose(1, 2).reshape(nb * PACK_ROWS, kb * PACK_COLS)


def gemv_int8(x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
    """x [..., K] float32 @ (q * scale[:, None]).T + b with q int8, either [N, K] or packed by `pack_int8`, scale
    [N] float32 and b [N] float32 or bfloat16 (contiguous) -> [..., N] float32. Check `applies` first."""
    x, b = x if x.is_contiguous() else x.contiguous(), _bias(b)
    N, K = scale.shape[0], x.shape[-1]
    y = torch.empty(*x.shape[:-1], N)
    f = _library().qwenvl_gemv_int8_packed if q.dim() == 4 else _library().qwenvl_gemv_int8
    f(x.data_ptr(), q.data_ptr(), scale.data_ptr(), *_bias_args(b), y.data_ptr(), x.numel() // K, N, K)
    return y


def gemv_int4(x: torch.Tensor, q: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor,
              b: torch.Tensor | None = None) -> torch.Tensor:
    """x [..., K] float32 @ W.T + b for 4-bit W in engine/int4.py's format: q uint8 [N, K / 2], scales float32
    and zeros uint8 [N, G], b float32 [N] or None (all contiguous) -> [..., N] float32 (int4.c: activations
    rounded to int16 per group, exact integer sums per group). Check `applies` first."""
    x = x if x.is_contiguous() else x.contiguous()
    (N, G), K = scales.shape, x.shape[-1]
    M = x.numel() // K
    b = None if b is None else b.float().contiguous()
    y = torch.empty(*x.shape[:-1], N)
    xq, xs, xsum = torch.empty(M, K, dtype=torch.int16), torch.empty(M, G), torch.empty(M, G, 8, dtype=torch.int32)
    _library().qwenvl_gemv_int4(x.data_ptr(), q.data_ptr(), scales.data_ptr(), zeros.data_ptr(),
                                None if b is None else b.data_ptr(), y.data_ptr(), M, N, K, K // G,
                                xq.data_ptr(), xs.data_ptr(), xsum.data_ptr())
    return y


def silu_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up for gate_up [..., 2H] = [gate | up] float32 (contiguous) -> [..., H] float32 in one pass
    (a decoding row: a few microseconds, on the calling thread; 64 rows or more: on all threads)."""
    H = gate_up.shape[-1] // 2
    out = torch.empty(*gate_up.shape[:-1], H)
    _library().qwenvl_silu_mul(gate_up.data_ptr(), out.data_ptr(), gate_up.numel() // (2 * H), H)
    return out


def attend_bf16(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rows: torch.Tensor | None, mask: torch.Tensor
                ) -> torch.Tensor:
    """Decoding attention on a bfloat16 cache: q [B, Hq, 1, D] float32; k, v one layer of the cache
    [B_max, Hkv, S_max, D] bfloat16 (contiguous); rows [B] int64, the cache rows of q's B rows (None: rows
    0..B-1); mask [B, 1, 1, S] additive float32 over the first S cached positions -> [B, Hq, 1, D] float32."""
    B, Hq, _, D = q.shape
    Hkv, S_max = k.shape[1], k.shape[2]
    S = mask.shape[-1]
    q, mask = q.contiguous(), mask.reshape(B, S).contiguous()
    rows = None if rows is None else rows.to(torch.long).contiguous()
    out = torch.empty(B, Hq, 1, D, dtype=torch.float32)
    scratch = torch.empty(B * Hkv * -(-Hq // Hkv // 8) * (S + D) * 8, dtype=torch.float32)
    _library().qwenvl_attend_bf16(q.data_ptr(), k.data_ptr(), v.data_ptr(), None if rows is None else rows.data_ptr(),
                                  mask.data_ptr(), out.data_ptr(), scratch.data_ptr(), B, Hq, Hkv, S, S_max, D,
                                  D ** -0.5)
    return out


def rms_norm(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    """w * x / sqrt(mean(x^2, -1) + eps) for x [..., D] float32 and w [D] float32 or bfloat16 (contiguous) ->
    float32. One call instead of aten's ~8 small ops (60 vs ~10 us per call for a 2048-wide decoding row)."""
    x = x if x.is_contiguous() else x.contiguous()
    out, D = torch.empty_like(x), x.shape[-1]
    _library().qwenvl_rms_norm(x.data_ptr(), w.data_ptr(), int(w.dtype == torch.bfloat16), out.data_ptr(),
                               x.numel() // D, D, eps)
    return out


# ------------------------------------------------------------------------------ a whole decoding step (decode.c)

class LinearSpec(ctypes.Structure):
    """One projection as decode.c reads it (qwenvl_linear): kind 0 bfloat16, 1 int8 [N, K], 2 int8 packed,
    3 int4 (engine/int4.py's format: zeros and group too)."""
    _fields_ = [("kind", ctypes.c_long), ("w", ctypes.c_void_p), ("scale", ctypes.c_void_p),
                ("bias", ctypes.c_void_p), ("bias_bf16", ctypes.c_long), ("N", ctypes.c_long), ("K", ctypes.c_long),
                ("zeros", ctypes.c_void_p), ("group", ctypes.c_long)]


class LayerSpec(ctypes.Structure):
    """One decoder layer as decode.c reads it (qwenvl_layer): norms, projections and its slice of the KV cache."""
    _fields_ = [("attn_norm", ctypes.c_void_p), ("attn_norm_bf16", ctypes.c_long),
                ("mlp_norm", ctypes.c_void_p), ("mlp_norm_bf16", ctypes.c_long),
                ("qkv", LinearSpec), ("o", LinearSpec), ("gate_up", LinearSpec), ("down", LinearSpec),
                ("k", ctypes.c_void_p), ("v", ctypes.c_void_p)]


def readable(t: torch.Tensor | None, dtypes=(torch.float32, torch.bfloat16)) -> bool:
    """Whether decode.c can read `t` (None: an absent bias) as it is: a contiguous CPU tensor of `dtypes`."""
    return t is None or (t.is_cpu and t.dtype in dtypes and t.is_contiguous())


def linear_spec(w: torch.Tensor, scale: torch.Tensor | None = None, bias: torch.Tensor | None = None
                ) -> LinearSpec | None:
    """A projection for `decode_layers`: w bfloat16 [N, K], or int8 [N, K] or packed (`pack_int8`) with float32
    scales [N]; bias float32 or bfloat16 [N] or None. None where decode.c does not read that format. The spec
    holds addresses only: the caller keeps the tensors alive."""
    if not (w.is_cpu and w.is_contiguous() and readable(bias)):
        return None
    if w.dtype == torch.bfloat16 and scale is None:
        kind, (N, K) = 0, w.shape
    elif w.dtype == torch.int8 and scale is not None and readable(scale, (torch.float32,)) and w.dim() in (2, 4):
        kind, N = (1 if w.dim() == 2 else 2), scale.shape[0]
        K = w.shape[1] if w.dim() == 2 else w.shape[1] * PACK_COLS
    else:
        return None
    return LinearSpec(kind, w.data_ptr(), None if scale is None else scale.data_ptr(), *_bias_args(bias), N, K)


def linear_spec_int4(qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, bias: torch.Tensor | None
                     ) -> LinearSpec | None:
    """An Int4Linear (engine/int4.py) for `decode_layers`: qweight uint8 [N, K / 2], scales float32 and zeros
    uint8 [N, G], bias float32 [N] or None; None where decode.c does not read it."""
    tensors = (qweight, scales, zeros) + (() if bias is None else (bias,))
    if not all(t.is_cpu and t.is_contiguous() for t in tensors) or scales.dtype != torch.float32 or (
            bias is not None and bias.dtype != torch.float32):
        return None
    (N, G), K = scales.shape, qweight.shape[1] * 2
    return LinearSpec(3, qweight.data_ptr(), scales.data_ptr(), None if bias is None else bias.data_ptr(), 0, N, K,
                      zeros.data_ptr(), K // G)


def layer_spec(attn_norm: torch.Tensor, mlp_norm: torch.Tensor, qkv: LinearSpec, o: LinearSpec,
               gate_up: LinearSpec, down: LinearSpec, k: torch.Tensor, v: torch.Tensor) -> LayerSpec:
    """A decoder layer for `decode_layers`; k, v its cache [B_max, Hkv, S_max, D] bfloat16 (contiguous)."""
    return LayerSpec(attn_norm.data_ptr(), int(attn_norm.dtype == torch.bfloat16), mlp_norm.data_ptr(),
                     int(mlp_norm.dtype == torch.bfloat16), qkv, o, gate_up, down, k.data_ptr(), v.data_ptr())


def decode_layers(layers, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, rows: torch.Tensor,
                  pos: torch.Tensor, mask: torch.Tensor, heads: int, kv_heads: int, head_dim: int,
                  intermediate: int, max_len: int, eps: float) -> None:
    """Every decoder layer for one decoding step, in one call (decode.c). `layers`: a ctypes array of
    LayerSpec; x [M, E] float32, the residual stream, updated in place; cos, sin [M, D] float32; rows, pos [M]
    int64: each row's cache row and the position its new key/value goes to; mask [M, S] additive float32 over
    the first S cached positions. All contiguous; check `applies` first."""
    M, E = x.shape
    S = mask.shape[-1]
    lib = _library()
    work = torch.empty(lib.qwenvl_decode_work(M, E, heads, kv_heads, head_dim, intermediate, S))
    lib.qwenvl_decode_layers(ctypes.addressof(layers), len(layers), x.data_ptr(), M, E, heads, kv_heads, head_dim,
                             intermediate, S, max_len, eps, head_dim ** -0.5, cos.data_ptr(), sin.data_ptr(),
                             rows.data_ptr(), pos.data_ptr(), mask.data_ptr(), work.data_ptr())
