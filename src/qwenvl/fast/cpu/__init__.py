"""Native CPU kernels (AVX2 + FMA): matrix-vector products for decoding in bf16, int8 and int4 (gemv.c, int4.c),
attention over a bf16 KV cache, RMSNorm and the SwiGLU activation (gemv.c), a float32 GEMM (gemm.c), a whole
decoding step (decode.c) and peak-throughput probes (peak.c).

Why: on an x86 CPU without bf16 matrix instructions aten's bf16 and weight-only int8 products are compute-bound
well below the memory bandwidth, and decoding is bound by reading the weights (docs/benchmarks.md has the
figures). These loops run near the bandwidth.

Built on first use with the system C compiler into one shared library, `qwenvl_cpu-<hash>.so` under
$QWENVL_CACHE (default ~/.cache/qwenvl)/kernels, named by a hash of the sources and flags (a changed source
builds anew; concurrent processes never load a half-written file). Its ctypes bindings are generated from
qwenvl_cpu.h, the header every source includes, so a signature is written once and checked by the compiler.
It uses the OpenMP runtime torch loaded, so it follows torch.set_num_threads.

Optional: on a CPU without AVX2, without a C compiler, or with QWENVL_NATIVE_KERNELS=0, `available()` is False
and the transforms in qwenvl.fast keep aten's kernels. The wrappers below check each tensor's device, dtype,
shape and contiguity and raise ValueError naming the bad argument: the C code trusts its arguments.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import re
import shutil
import subprocess
import tempfile
import warnings
from functools import lru_cache
from pathlib import Path

import torch

HERE = Path(__file__).parent
HEADER = HERE / "qwenvl_cpu.h"
SOURCES = [HERE / name for name in ("gemv.c", "decode.c", "gemm.c", "int4.c", "peak.c")]
FLAGS = ["-O3", "-mavx2", "-mfma", "-fopenmp", "-shared", "-fPIC"]
LIBRARY = "qwenvl_cpu"


# ---------------------------------------------------------------------------------------------- the header

_SCALARS = {"long": ctypes.c_long, "int": ctypes.c_int, "float": ctypes.c_float, "double": ctypes.c_double}


def _strip_comments(text: str) -> str:
    return re.sub(r"/\*.*?\*/", " ", text, flags=re.S)


def _ctype(decl: str, structs: dict):
    """A C type as the header writes it ("const float*", "long", "qwenvl_linear") -> its ctypes type."""
    if "*" in decl:
        return ctypes.c_void_p
    name = decl.replace("const", "").strip()
    if name == "void":
        return None
    if name in _SCALARS:
        return _SCALARS[name]
    if name in structs:
        return structs[name]
    raise ValueError(f"{HEADER.name}: type {decl!r} has no ctypes binding")


def _split_decl(decl: str) -> tuple[str, str]:
    """"const float* x" -> ("const float*", "x")."""
    m = re.fullmatch(r"(.*?)(\w+)", decl.strip(), flags=re.S)
    return m.group(1).strip(), m.group(2)


@lru_cache(maxsize=None)
def header() -> tuple[dict, dict]:
    """(structs, functions) declared in qwenvl_cpu.h: struct name -> ctypes.Structure class, function name ->
    (restype, argtypes)."""
    text = _strip_comments(HEADER.read_text())
    structs: dict[str, type] = {}
    for body, name in re.findall(r"typedef struct\s*\{(.*?)\}\s*(\w+)\s*;", text, flags=re.S):
        fields = [_split_decl(d) for d in body.split(";") if d.strip()]
        structs[name] = type(name, (ctypes.Structure,), {"_fields_": [(n, _ctype(t, structs)) for t, n in fields]})
    functions = {}
    for ret, name, args in re.findall(r"^\s*([\w ]+?\**)\s*\b(qwenvl_\w+)\s*\(([^)]*)\)\s*;", text, flags=re.M):
        argtypes = [_ctype(_split_decl(a)[0], structs) for a in args.split(",") if a.strip() not in ("", "void")]
        functions[name] = (_ctype(ret, structs), argtypes)
    return structs, functions


# ---------------------------------------------------------------------------------------------- building

def _cache_dir() -> Path:
    root = os.environ.get("QWENVL_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "qwenvl")
    return Path(root) / "kernels"


def _compiler() -> str | None:
    for name in (os.environ.get("CC"), "cc", "gcc"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def _build(cc: str) -> Path:
    src = b"".join(path.read_bytes() for path in [HEADER, *SOURCES])
    tag = hashlib.sha256(src + " ".join(FLAGS).encode()).hexdigest()[:16]
    out = _cache_dir() / f"{LIBRARY}-{tag}.so"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    # built under a unique name and renamed: concurrent processes (torchrun) never load a half-written file
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=out.parent)
    os.close(fd)
    try:
        subprocess.run([cc, *FLAGS, f"-I{HERE}", *map(str, SOURCES), "-o", tmp], check=True, capture_output=True,
                       text=True)
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out


def supported_cpu() -> bool:
    return platform.machine().lower() in ("x86_64", "amd64") and torch.backends.cpu.get_cpu_capability() in (
        "AVX2", "AVX512")


@lru_cache(maxsize=None)
def _library() -> ctypes.CDLL | None:
    if os.environ.get("QWENVL_NATIVE_KERNELS", "1") == "0" or not supported_cpu():
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
    for name, (restype, argtypes) in header()[1].items():
        f = getattr(lib, name)
        f.restype, f.argtypes = restype, argtypes
    return lib


def available() -> bool:
    return _library() is not None


def applies(x: torch.Tensor, w: torch.Tensor) -> bool:
    """Whether a native product can compute x @ w.T here (float32 activations, CPU, no autograd, not traced)."""
    # called a few hundred times per decoded token: the cheapest tests first
    return (x.is_cpu and w.is_cpu and x.dtype is torch.float32 and w.is_contiguous() and available()
            and not torch.compiler.is_compiling()
            and not (torch.is_grad_enabled() and (x.requires_grad or w.requires_grad)))


def gemm_preferred() -> bool:
    """Whether `gemm` is used for many-row float32 products here instead of aten's (see docs/benchmarks.md for the
    A/B that decides it): on AVX2 CPUs other than Intel's; AVX-512 CPUs and Intel's keep torch's BLAS, which is
    tuned for them. QWENVL_NATIVE_GEMM=0/1 overrides."""
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


# ---------------------------------------------------------------------------------------------- checks

def _check(name: str, t: torch.Tensor | None, dtypes: tuple, shape: tuple | None = None, contiguous: bool = True,
           optional: bool = False) -> None:
    """ValueError naming `name` unless t is a CPU tensor of one of `dtypes` (and `shape`, None entries free)."""
    if t is None:
        if optional:
            return
        raise ValueError(f"qwenvl.fast.cpu: {name} is required")
    if not isinstance(t, torch.Tensor) or not t.is_cpu:
        raise ValueError(f"qwenvl.fast.cpu: {name} must be a CPU tensor")
    if t.dtype not in dtypes:
        raise ValueError(f"qwenvl.fast.cpu: {name} has dtype {t.dtype}, expected one of {', '.join(map(str, dtypes))}")
    if shape is not None and (t.dim() != len(shape) or any(s is not None and s != n for s, n in zip(shape, t.shape))):
        want = "[" + ", ".join("*" if s is None else str(s) for s in shape) + "]"
        raise ValueError(f"qwenvl.fast.cpu: {name} has shape {list(t.shape)}, expected {want}")
    if contiguous and not t.is_contiguous():
        raise ValueError(f"qwenvl.fast.cpu: {name} must be contiguous")


F32, BF16, HALF_OR_F32 = (torch.float32,), (torch.bfloat16,), (torch.float32, torch.bfloat16)


def _bias(b: torch.Tensor | None, N: int) -> tuple[torch.Tensor | None, int | None, int]:
    """The bias as the kernels read it (float32 or bfloat16, contiguous) and its (address, is_bf16) arguments."""
    if b is None:
        return None, None, 0
    if b.dtype not in HALF_OR_F32 or not b.is_contiguous():
        b = b.float().contiguous()
    _check("bias", b, HALF_OR_F32, (N,))
    return b, b.data_ptr(), int(b.dtype == torch.bfloat16)


def _rows(x: torch.Tensor, K: int) -> torch.Tensor:
    _check("x", x, F32, contiguous=False)
    if x.shape[-1] != K:
        raise ValueError(f"qwenvl.fast.cpu: x has {x.shape[-1]} inputs per row, the weights {K}")
    return x if x.is_contiguous() else x.contiguous()


# ---------------------------------------------------------------------------------------------- products

def gemv_bf16(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
    """x [..., K] float32 @ w.T + b with w [N, K] bfloat16 and b [N] float32 or bfloat16 -> [..., N] float32."""
    _check("w", w, BF16, (None, None))
    N, K = w.shape
    x = _rows(x, K)
    b, bp, bb = _bias(b, N)
    y = torch.empty(*x.shape[:-1], N)
    _library().qwenvl_gemv_bf16(x.data_ptr(), w.data_ptr(), bp, bb, y.data_ptr(), x.numel() // K, N, K)
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
    if N % PACK_ROWS or K % PACK_COLS:
        raise ValueError(f"qwenvl.fast.cpu: int8 weights {N}x{K} cannot be packed (rows % 4, columns % 16)")
    return q.view(N // PACK_ROWS, PACK_ROWS, K // PACK_COLS, PACK_COLS).transpose(1, 2).contiguous()


def unpack_int8(p: torch.Tensor) -> torch.Tensor:
    """The inverse of `pack_int8`: [N / 4, K / 16, 4, 16] -> int8 [N, K]."""
    nb, kb = p.shape[:2]
    return p.transpose(1, 2).reshape(nb * PACK_ROWS, kb * PACK_COLS)


def _int8_shape(q: torch.Tensor, scale: torch.Tensor) -> tuple[int, int]:
    _check("scale", scale, F32, (None,))
    N = scale.shape[0]
    if q.dim() == 4:
        _check("q", q, (torch.int8,), (N // PACK_ROWS, None, PACK_ROWS, PACK_COLS))
        return N, q.shape[1] * PACK_COLS
    _check("q", q, (torch.int8,), (N, None))
    return N, q.shape[1]


def gemv_int8(x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
    """x [..., K] float32 @ (q * scale[:, None]).T + b with q int8, either [N, K] or packed by `pack_int8`, scale
    [N] float32 and b [N] float32 or bfloat16 -> [..., N] float32."""
    N, K = _int8_shape(q, scale)
    x = _rows(x, K)
    b, bp, bb = _bias(b, N)
    y = torch.empty(*x.shape[:-1], N)
    f = _library().qwenvl_gemv_int8_packed if q.dim() == 4 else _library().qwenvl_gemv_int8
    f(x.data_ptr(), q.data_ptr(), scale.data_ptr(), bp, bb, y.data_ptr(), x.numel() // K, N, K)
    return y


def gemv_int4(x: torch.Tensor, q: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor,
              b: torch.Tensor | None = None) -> torch.Tensor:
    """x [..., K] float32 @ W.T + b for 4-bit W in fast/int4.py's format: q uint8 [N, K / 2], scales float32
    and zeros uint8 [N, G], b float32 [N] or None -> [..., N] float32 (int4.c: activations rounded to int16 per
    group, exact integer sums per group). K % 64 == 0 and K / G % 32 == 0."""
    _check("scales", scales, F32, (None, None))
    (N, G) = scales.shape
    _check("q", q, (torch.uint8,), (N, None))
    _check("zeros", zeros, (torch.uint8,), (N, G))
    K = q.shape[1] * 2
    if K % 64 or K % G or (K // G) % 32:
        raise ValueError(f"qwenvl.fast.cpu: int4 weights {N}x{K} in {G} groups are not in the native layout")
    x = _rows(x, K)
    if b is not None:
        b = b.float().contiguous()
        _check("bias", b, F32, (N,))
    M = x.numel() // K
    y = torch.empty(*x.shape[:-1], N)
    xq, xs, xsum = torch.empty(M, K, dtype=torch.int16), torch.empty(M, G), torch.empty(M, G, 8, dtype=torch.int32)
    _library().qwenvl_gemv_int4(x.data_ptr(), q.data_ptr(), scales.data_ptr(), zeros.data_ptr(),
                                None if b is None else b.data_ptr(), y.data_ptr(), M, N, K, K // G,
                                xq.data_ptr(), xs.data_ptr(), xsum.data_ptr())
    return y


GEMM_F32, GEMM_BF16, GEMM_INT8, GEMM_INT8_PACKED = 0, 1, 2, 3


def gemm(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
    """x [..., K] float32 @ w.T + b with w [N, K] bfloat16 or float32 and b [N] float32 or bfloat16 -> [..., N]
    float32, for many rows. The rows of x may be strided (a view of part of a wider tensor is read in place)."""
    _check("w", w, HALF_OR_F32, (None, None))
    return _gemm(x, w, GEMM_BF16 if w.dtype == torch.bfloat16 else GEMM_F32, None, b, *w.shape)


def gemm_int8(x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
    """`gemm` with int8 weights q, [N, K] or packed by `pack_int8`, times scale [N] float32 per row."""
    N, K = _int8_shape(q, scale)
    return _gemm(x, q, GEMM_INT8_PACKED if q.dim() == 4 else GEMM_INT8, scale, b, N, K)


def _gemm(x, w, kind, scale, b, N, K):
    _check("x", x, F32, contiguous=False)
    if x.shape[-1] != K:
        raise ValueError(f"qwenvl.fast.cpu: x has {x.shape[-1]} inputs per row, the weights {K}")
    x2 = x.reshape(-1, K)
    if x2.stride(1) != 1 or x2.stride(0) < K:
        x2 = x2.contiguous()
    b, bp, bb = _bias(b, N)
    y = torch.empty(x2.shape[0], N)
    if _library().qwenvl_gemm(x2.data_ptr(), x2.stride(0), w.data_ptr(), kind, None if scale is None else
                              scale.data_ptr(), bp, bb, y.data_ptr(), N, x2.shape[0], N, K):
        raise MemoryError(f"qwenvl.fast.cpu.gemm: no memory for the packed weights of a {N}x{K} product")
    return y.view(*x.shape[:-1], N)


# ---------------------------------------------------------------------------------------------- the rest

def silu_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up for gate_up [..., 2H] = [gate | up] float32 -> [..., H] float32 in one pass."""
    _check("gate_up", gate_up, F32)
    if gate_up.shape[-1] % 2:
        raise ValueError(f"qwenvl.fast.cpu: gate_up has an odd width {gate_up.shape[-1]}")
    H = gate_up.shape[-1] // 2
    out = torch.empty(*gate_up.shape[:-1], H)
    _library().qwenvl_silu_mul(gate_up.data_ptr(), out.data_ptr(), gate_up.numel() // (2 * H), H)
    return out


def attend_bf16(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rows: torch.Tensor | None, mask: torch.Tensor
                ) -> torch.Tensor:
    """Decoding attention on a bfloat16 cache: q [B, Hq, 1, D] float32; k, v one layer of the cache
    [B_max, Hkv, S_max, D] bfloat16; rows [B] integers, the cache rows of q's B rows (None: rows 0..B-1); mask
    [B, 1, 1, S] additive float32 over the first S cached positions -> [B, Hq, 1, D] float32."""
    _check("q", q, F32, (None, None, 1, None), contiguous=False)
    B, Hq, _, D = q.shape
    _check("k", k, BF16, (None, None, None, D))
    B_max, Hkv, S_max, _ = k.shape
    _check("v", v, BF16, tuple(k.shape))
    if D % 8 or Hq % Hkv:
        raise ValueError(f"qwenvl.fast.cpu: attention with head dim {D} and {Hq}/{Hkv} heads is not supported")
    _check("mask", mask, F32, (B, 1, 1, None), contiguous=False)
    S = mask.shape[-1]
    if S > S_max:
        raise ValueError(f"qwenvl.fast.cpu: mask covers {S} positions of a cache of {S_max}")
    if rows is None:
        if B > B_max:
            raise ValueError(f"qwenvl.fast.cpu: {B} queries for a cache of {B_max} rows")
    else:
        rows = rows.to(torch.long).contiguous()
        _check("rows", rows, (torch.long,), (B,))
        if B and (int(rows.min()) < 0 or int(rows.max()) >= B_max):
            raise ValueError(f"qwenvl.fast.cpu: rows {rows.tolist()} outside the cache's {B_max}")
    q, mask = q.contiguous(), mask.reshape(B, S).contiguous()
    out = torch.empty(B, Hq, 1, D, dtype=torch.float32)
    scratch = torch.empty(B * Hkv * -(-Hq // Hkv // 8) * (S + D) * 8, dtype=torch.float32)
    _library().qwenvl_attend_bf16(q.data_ptr(), k.data_ptr(), v.data_ptr(), None if rows is None else rows.data_ptr(),
                                  mask.data_ptr(), out.data_ptr(), scratch.data_ptr(), B, Hq, Hkv, S, S_max, D,
                                  D ** -0.5)
    return out


def rms_norm(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    """w * x / sqrt(mean(x^2, -1) + eps) for x [..., D] float32 and w [D] float32 or bfloat16 -> float32."""
    _check("x", x, F32, contiguous=False)
    D = x.shape[-1]
    _check("w", w, HALF_OR_F32, (D,))
    x = x if x.is_contiguous() else x.contiguous()
    out = torch.empty_like(x)
    _library().qwenvl_rms_norm(x.data_ptr(), w.data_ptr(), int(w.dtype == torch.bfloat16), out.data_ptr(),
                               x.numel() // D, D, eps)
    return out


# the probes of peak.c (its enum): the vector instruction each one repeats, and the format of the products
# that instruction computes (a bf16 product can also run as float32 FMAs on converted operands)
PEAK_KINDS = {"avx2_fma": 0, "avx512_fma": 1, "avx512_bf16_dot": 2}
PEAK_FORMATS = {"avx2_fma": ("fp32", "bf16"), "avx512_fma": ("fp32", "bf16"), "avx512_bf16_dot": ("bf16",)}


def peak_kinds() -> list[str]:
    """The probes this CPU can run."""
    bits = _library().qwenvl_peak_kinds()
    return [name for name, k in PEAK_KINDS.items() if bits & (1 << k)]


def fma_flops(iters: int, kind: str = "avx2_fma") -> float:
    """Floating-point operations done by `iters` rounds of 12 independent vector multiply-adds of `kind` on every
    thread (peak.c): 2 per lane for an FMA, 4 per lane for the bf16 dot product (two products summed)."""
    return _peak(_library().qwenvl_fma_flops, iters, kind)


def fma_rate(iters: int, kind: str = "avx2_fma") -> float:
    """FLOP/s of the same loop: per thread, its operations over the CPU time it got, summed over the threads."""
    return _peak(_library().qwenvl_fma_rate, iters, kind)


def _peak(fn, iters: int, kind: str) -> float:
    if kind not in PEAK_KINDS:
        raise ValueError(f"peak probe kind {kind!r}: expected one of {sorted(PEAK_KINDS)}")
    out = fn(int(iters), PEAK_KINDS[kind])
    if out < 0:
        raise ValueError(f"peak probe kind {kind!r}: this CPU lacks its instructions (it has {peak_kinds()})")
    return out


def read_sum(x: torch.Tensor) -> float:
    """The sum of a contiguous float32 CPU tensor, read by peak.c's streaming-read probe on every thread."""
    _check("x", x, (torch.float32,))
    return _library().qwenvl_read_sum(x.data_ptr(), x.numel())
