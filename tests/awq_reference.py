"""AutoAWQ's GEMM checkpoint layout written from the format's definition, independently of qwenvl.fast.awq:
packing, naive per-element unpacking and dequantization, and tiny AWQ checkpoints made from a float one.

Definition (AutoAWQ WQLinear_GEMM, 4 bits): for a Linear [N out, K in] and group size g, with integer
values q[k, n] in 0..15, zero points z[k // g, n] in 0..15 and float16 scales s[k // g, n]:
- W[n, k] = (q[k, n] - z[k // g, n]) * s[k // g, n];
- qweight int32 [K, N / 8]: bits 4i..4i+3 of word [k, j] hold q[k, 8j + ORDER[i]], ORDER = 0,2,4,6,1,3,5,7;
- qzeros int32 [K / g, N / 8], packed the same way; scales float16 [K / g, N].
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import torch

ORDER = [0, 2, 4, 6, 1, 3, 5, 7]


def awq_pack(values: torch.Tensor) -> torch.Tensor:
    """[R, C] integers in 0..15 -> int32 [R, C / 8] (column 8j + ORDER[i] into nibble i of word j)."""
    v = values.to(torch.int64)
    R, C = v.shape
    words = torch.zeros(R, C // 8, dtype=torch.int64)
    for j in range(C // 8):
        for i in range(8):
            words[:, j] |= v[:, 8 * j + ORDER[i]] << (4 * i)
    # two's complement into int32 (a set top bit is a negative int32, as AutoAWQ's tensors hold it)
    return torch.from_numpy(words.numpy().astype(np.uint32).view(np.int32))


def naive_unpack(words: torch.Tensor) -> torch.Tensor:
    """int32 [R, C / 8] -> int64 [R, C], one value at a time, with plain Python integers."""
    R, C8 = words.shape
    w = words.numpy().astype(np.int64) & 0xFFFFFFFF
    out = torch.zeros(R, C8 * 8, dtype=torch.int64)
    for r in range(R):
        for j in range(C8):
            word = int(w[r, j])
            for i in range(8):
                out[r, 8 * j + ORDER[i]] = (word >> (4 * i)) & 0xF
    return out


def naive_dequantize(qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor, g: int) -> torch.Tensor:
    """The nn.Linear weight [N, K] float32, element by element from the definition."""
    q, z, s = naive_unpack(qweight), naive_unpack(qzeros), scales.float()
    K, N = q.shape
    w = torch.empty(N, K)
    for k in range(K):
        w[:, k] = (q[k] - z[k // g]).float() * s[k // g]
    return w


def awq_quantize(weight: torch.Tensor, g: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A float Linear weight [N, K] -> (qweight, qzeros, scales) with asymmetric min/max groups, as AutoAWQ
    rounds after its search (the search itself, which only rescales, does not change the format)."""
    w = weight.detach().float().t()                       # [K, N]
    K, N = w.shape
    grouped = w.reshape(K // g, g, N)
    lo, hi = grouped.amin(1), grouped.amax(1)             # [K/g, N]
    scales = ((hi - lo).clamp_min(1e-5) / 15).half()
    zeros = torch.round(-lo / scales.float()).clamp(0, 15)
    q = torch.round(grouped / scales.float()[:, None] + zeros[:, None]).clamp(0, 15).reshape(K, N)
    return awq_pack(q), awq_pack(zeros), scales


def make_awq_checkpoint(src: Path, dst: Path, group_size: int, *, prefixes=("model.layers.",),
                        modules_to_not_convert=("visual",), dtype=torch.float32) -> dict[str, torch.Tensor]:
    """Copy a float checkpoint, replacing every Linear weight under `prefixes` (the decoder by default) by its
    AWQ tensors. Returns the dequantized weights by their original tensor names (the float model they define)."""
    from safetensors.torch import load_file, save_file
    shutil.copytree(src, dst)
    index_file = dst / "model.safetensors.index.json"
    index = json.loads(index_file.read_text())
    new_map, dequantized = {}, {}
    for shard in sorted(set(index["weight_map"].values())):
        tensors = load_file(dst / shard)
        out = {}
        for name, t in tensors.items():
            linear = name.endswith("proj.weight") and t.ndim == 2
            if linear and name.startswith(tuple(prefixes)):
                base = name[: -len(".weight")]
                qweight, qzeros, scales = awq_quantize(t, group_size)
                out.update({f"{base}.qweight": qweight, f"{base}.qzeros": qzeros, f"{base}.scales": scales})
                dequantized[name] = naive_dequantize(qweight, qzeros, scales, group_size)
            else:
                out[name] = t.to(dtype) if t.is_floating_point() else t
        save_file(out, dst / shard, metadata={"format": "pt"})
        new_map.update({k: shard for k in out})
    index["weight_map"] = new_map
    index_file.write_text(json.dumps(index))
    cfg = json.loads((dst / "config.json").read_text())
    cfg["quantization_config"] = {"quant_method": "awq", "bits": 4, "group_size": group_size, "zero_point": True,
                                  "version": "gemm", "modules_to_not_convert": list(modules_to_not_convert)}
    cfg["torch_dtype"] = str(dtype).removeprefix("torch.")
    (dst / "config.json").write_text(json.dumps(cfg, indent=2))
    return dequantized
