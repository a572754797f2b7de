"""Synthetic examples as files: media + train.jsonl (messages, as `qwenvl train` reads) + eval.jsonl (rows
of the synth_* eval tasks, one per question)."""

from __future__ import annotations

import itertools
import json
import random
import shutil
from fractions import Fraction
from pathlib import Path


def write_mp4(frames, fps: float, path: Path) -> None:
    """Frames (PIL, even sides) as an H.264 MP4 at `fps` (PyAV). Near-lossless (crf 12) so colours
    survive; every frame is kept, so sampling the file at its own fps gives the frames back."""
    try:
        import av
        import numpy as np
    except ImportError:
        raise ValueError("writing synthetic videos needs PyAV: pip install 'qwenvl[video]'") from None
    w, h = frames[0].size
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=Fraction(fps).limit_denominator(1000))
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        s.options = {"crf": "12", "preset": "veryfast"}
        for f in frames:
            for p in s.encode(av.VideoFrame.from_ndarray(np.asarray(f.convert("RGB")), format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


def write(task: str, n: int, out, seed: int = 0, **sample_kw) -> tuple[Path, Path]:
    from . import TASKS, sample

    if task not in TASKS:
        raise ValueError(f"unknown synth task {task!r}; known: {', '.join(TASKS)}")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    out = Path(out)
    rng = random.Random(seed)
    first = sample(task, rng, **sample_kw)      # bad options fail here, before anything is written
    # everything is written to a staging folder and moved in at the end, so a failure half-way leaves a set
    # written before in `out` whole (its rows and the media they name)
    stage = out / ".synth-part"
    shutil.rmtree(stage, ignore_errors=True)
    (stage / ("videos" if task == "video_ground" else "images")).mkdir(parents=True)
    rest = (sample(task, rng, **sample_kw) for _ in range(n - 1))
    try:
        _write_rows(task, itertools.chain([first], rest), stage)
        for f in sorted(stage.rglob("*"), key=lambda f: (f.suffix == ".jsonl", f)):     # the rows last
            if f.is_file():
                dest = out / f.relative_to(stage)
                dest.parent.mkdir(parents=True, exist_ok=True)
                f.replace(dest)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return out / "train.jsonl", out / "eval.jsonl"


def _write_rows(task: str, examples, out: Path) -> None:
    video = task == "video_ground"
    with (out / "train.jsonl").open("w", encoding="utf-8") as ft, \
            (out / "eval.jsonl").open("w", encoding="utf-8") as fe:
        for i, ex in enumerate(examples):
            user = ex.messages[0]["content"]
            k = next(j for j, it in enumerate(user) if it["type"] in ("image", "video"))
            item = dict(user[k])
            if video:
                name = f"videos/{i:06d}.mp4"
                write_mp4(item["video"], ex.fps, out / name)
                item["video"] = name
            else:
                name = f"images/{i:06d}.png"
                item["image"].save(out / name, compress_level=1)
                item["image"] = name
            messages = [dict(m) for m in ex.messages]
            messages[0] = {"role": "user", "content": user[:k] + [item] + user[k + 1:]}
            ft.write(json.dumps({"messages": messages, "task": task}, ensure_ascii=False) + "\n")
            for t, target in enumerate(ex.targets):
                q = ex.messages[2 * t]["content"]
                question = next(it["text"] for it in q if it["type"] == "text")
                row = {"id": f"{i}-{t}" if len(ex.targets) > 1 else str(i), "task": task, "question": question,
                       "answer": ex.messages[2 * t + 1]["content"], "target": target,
                       "media_size": list(ex.media_size), "input_size": list(ex.input_size),
                       "min_pixels": item["min_pixels"], "max_pixels": item["max_pixels"],
                       "text_first": k > 0}
                row.update({"video": name, "fps": ex.fps} if video else {"image": name})
                fe.write(json.dumps(row, ensure_ascii=False) + "\n")
