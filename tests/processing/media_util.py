"""Helpers for the processing tests: clips whose frames carry their index."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def index_frame(k: int, w: int = 64, h: int = 48) -> np.ndarray:
    a = np.zeros((h, w, 3), np.uint8)
    a[:, : w // 2] = (k % 10) * 25
    a[:, w // 2:] = (k // 10) * 25
    return a


def read_index(frame) -> int:
    """The index painted by index_frame, read from a [C, H, W] 0..255 frame of any size."""
    f = np.asarray(frame, dtype=np.float64).mean(axis=0)
    h, w = f.shape
    left = f[h // 4: 3 * h // 4, w // 16: 7 * w // 16].mean()
    right = f[h // 4: 3 * h // 4, 9 * w // 16: 15 * w // 16].mean()
    return round(left / 25) + 10 * round(right / 25)


def write_video(path: Path, n: int, fps: int = 30, w: int = 64, h: int = 48) -> Path:
    import av

    with av.open(str(path), "w") as out:
        s = out.add_stream("mpeg4", rate=fps)
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        s.options = {"qscale": "1"}
        for k in range(n):
            for p in s.encode(av.VideoFrame.from_ndarray(index_frame(k, w, h), format="rgb24")):
                out.mux(p)
        for p in s.encode():
            out.mux(p)
    return path
