"""Safetensors files memory-mapped, so that weights kept in their stored dtype cost no copy."""

from __future__ import annotations

import json
import math
import mmap
import struct
import weakref
from pathlib import Path

import torch

from ..errors import CheckpointError

SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
                      "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
                      "BOOL": torch.bool}

MAX_HEADER_BYTES = 100 * 1024 * 1024  # safetensors' own limit: a larger length is a damaged file, not a header

# Live mappings by base address, for release_pages: (length, the mmap)
_MAPS: dict[int, tuple[int, weakref.ref]] = {}


class MappedSafetensors:
    """A safetensors file memory-mapped (copy-on-write): `get_tensor` returns views of the mapping, so a
    tensor kept in its stored dtype costs no copy and loading peaks at the weights' bytes, not
    weights + one shard (safetensors' own reader copies each tensor out of its mapping)."""

    def __init__(self, path: Path):
        self.header, self.base = read_header(path)
        with open(path, "rb") as f:
            self.map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
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


def read_header(path: Path) -> tuple[dict, int]:
    """A safetensors file's tensor table and where its data starts, checked against the file's size so
    that a truncated, empty or foreign file is a CheckpointError naming it, never a crash or a silent
    short read: every tensor's dtype is known, its offsets lie inside the data and match its shape."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: not a file")
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(f"{path}: empty file (0 bytes), not a safetensors file: the write did not finish")
    if size < 8:
        raise CheckpointError(f"{path}: {size} bytes, too short for a safetensors header: truncated")
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        if n > size - 8:
            raise CheckpointError(f"{path}: header length {n} runs past the end of the file ({size} bytes): "
                                  "truncated, or not a safetensors file")
        if n > MAX_HEADER_BYTES:
            raise CheckpointError(f"{path}: header length {n} is over {MAX_HEADER_BYTES} bytes: not a safetensors file")
        raw = f.read(n)
    try:
        header = json.loads(raw)
    except (ValueError, RecursionError) as e:
        raise CheckpointError(f"{path}: the header is not valid JSON ({e}): damaged or not a safetensors file") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: the header is not a JSON object: not a safetensors file")
    header.pop("__metadata__", None)
    data = size - 8 - n
    for name, info in header.items():
        where = f"{path}: tensor {name!r}"
        if not isinstance(info, dict):
            raise CheckpointError(f"{where}: its header entry is not an object")
        dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
        if dtype not in SAFETENSORS_DTYPES:
            raise CheckpointError(f"{where}: unsupported dtype {dtype!r}")
        if not (isinstance(shape, list) and all(isinstance(x, int) and not isinstance(x, bool) and x >= 0
                                                for x in shape)):
            raise CheckpointError(f"{where}: shape {shape!r} is not a list of sizes")
        if not (isinstance(offsets, list) and len(offsets) == 2
                and all(isinstance(x, int) and not isinstance(x, bool) for x in offsets)
                and 0 <= offsets[0] <= offsets[1]):
            raise CheckpointError(f"{where}: data_offsets {offsets!r} are not [start, end]")
        if offsets[1] > data:
            raise CheckpointError(f"{where}: its data ends at byte {offsets[1]} of {data}: the file is truncated")
        want = math.prod(shape) * torch.empty((), dtype=SAFETENSORS_DTYPES[dtype]).element_size()
        if offsets[1] - offsets[0] != want:
            raise CheckpointError(f"{where}: {offsets[1] - offsets[0]} bytes of data for shape {shape} {dtype} "
                                  f"({want} expected)")
    return header, 8 + n


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
