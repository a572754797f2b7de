"""Safetensors files memory-mapped, so that weights kept in their stored dtype cost no copy."""

from __future__ import annotations

import json
import mmap
import struct
import weakref
from pathlib import Path

import torch

SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
                      "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
                      "BOOL": torch.bool}

# Live mappings by base address, for release_pages: (length, the mmap)
_MAPS: dict[int, tuple[int, weakref.ref]] = {}


class MappedSafetensors:
    """A safetensors file memory-mapped (copy-on-write): `get_tensor` returns views of the mapping, so a
    tensor kept in its stored dtype costs no copy and loading peaks at the weights' bytes, not
    weights + one shard (safetensors' own reader copies each tensor out of its mapping)."""

    def __init__(self, path: Path):
        with open(path, "rb") as f:
            n = struct.unpack("<Q", f.read(8))[0]
            self.header = json.loads(f.read(n))
            self.header.pop("__metadata__", None)
            self.map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
        self.base = 8 + n
        address = torch.frombuffer(self.map, dtype=torch.uint8, count=1).data_ptr()
        _MAPS[address] = (len(self.map), weakref.ref(self.map))
        weakref.finalize(self.map, _MAPS.pop, address, None)

    def keys(self):
        return self.header.keys()

    def get_tensor(self, name: str) -> torch.Tensor:
        info = self.header[name]
        dtype = SAFETENSORS_DTYPES[info["dtype"]]
        start, end = info["data_offsets"]
        count = (end - start) // torch.empty((), dtype=dtype).element_size()
        if count == 0:
            return torch.empty(info["shape"], dtype=dtype)
        return torch.frombuffer(self.map, dtype=dtype, count=count, offset=self.base + start).view(info["shape"])

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False  # the mapping lives as long as the tensors viewing it


def release_pages(t: torch.Tensor) -> None:
    """Tell the kernel the memory-mapped pages that only `t` occupies are no longer needed, for a tensor
    about to be dropped (e.g. replaced by a fused copy) while the rest of its file stays mapped: otherwise
    its pages stay resident as long as the mapping. Pages shared with neighbouring tensors are kept.
    Tensors that are not views of a mapping are left alone."""
    start = t.data_ptr()
    end = start + t.numel() * t.element_size()
    for base, (length, ref) in list(_MAPS.items()):
        m = ref()
        if m is None or not (base <= start and end <= base + length):
            continue
        page = mmap.PAGESIZE
        lo = -(-(start - base) // page) * page
        hi = (end - base) // page * page
        if hi > lo:
            # the tensor is read-only here (never written), so the private mapping's pages are clean:
            # dropping them loses nothing, a later read would fault them in from the file again
            m.madvise(mmap.MADV_DONTNEED, lo, hi - lo)
        return
