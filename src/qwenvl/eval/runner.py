"""`eval run`: generate answers for a task's records, resumably, then score them.

Each answer is appended to predictions.jsonl as soon as it exists, with what scoring needs later:
the resized input size of spatial tasks (coordinates live in it) and the sampling fps of video tasks.
A rerun skips ids already in the file, so an interrupted run continues where it stopped."""

from __future__ import annotations

import json
from pathlib import Path

from . import data
from .registry import Task
from .scoring import score


def media_record(result, task: Task) -> dict:
    """Per-sample facts about the media, from ChatResult.media (first item: benchmarks ask about one)."""
    media = list(getattr(result, "media", None) or [])
    if not media:
        return {}
    m = media[0]
    out = {}
    if task.spatial and getattr(m, "input_size", None) is not None:
        out["input_size"] = [int(v) for v in m.input_size]
        if getattr(m, "original_size", None) is not None:
            out["image_size"] = [int(v) for v in m.original_size]
    if task.video:
        if getattr(m, "fps", None) is not None:
            out["fps"] = float(m.fps)
        if getattr(m, "num_frames", None) is not None:
            out["num_frames"] = int(m.num_frames)
    return out


def run(task: Task, data_path: str, pipe, out_dir: str | Path, *, limit: int | None = None,
        max_new_tokens: int | None = None, ctx: data.MediaContext | None = None, progress: bool = True) -> dict:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    pred_path = out_dir / "predictions.jsonl"
    ctx = ctx or data.MediaContext()
    records = task.load(data_path, ctx.media_dir)
    if limit is not None:
        records = records[:limit]
    done = {str(p["id"]) for p in data.read_jsonl(pred_path) if "id" in p}
    todo = [r for r in records if str(r["id"]) not in done]
    max_new_tokens = max_new_tokens or task.max_new_tokens

    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=len(records), initial=len(records) - len(todo), desc=task.name, unit="sample")
    # A run killed mid-write leaves a partial last line: end it, so new lines stay whole (read_jsonl
    # skips the broken one and its sample is redone).
    if pred_path.exists() and pred_path.stat().st_size and not pred_path.read_bytes().endswith(b"\n"):
        with pred_path.open("a", encoding="utf-8") as f:
            f.write("\n")
    with pred_path.open("a", encoding="utf-8") as f:
        for rec in todo:
            result = pipe.chat(task.messages(rec, ctx), max_new_tokens=max_new_tokens, temperature=0)
            line = {"id": rec["id"], "prediction": result.text, **media_record(result, task)}
            f.write(json.dumps(line, ensure_ascii=False) + "\n")
            f.flush()   # a crash loses at most the sample in flight
            if bar:
                bar.update(1)
    if bar:
        bar.close()

    report = score(task, records, data.read_jsonl(pred_path))
    (out_dir / "scores.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    return report
