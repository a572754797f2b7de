"""Reading released annotation files and resolving their media, with nothing downloaded.

Supported containers: .jsonl, .json (a list, or a dict holding the list under "data"/"annotations"),
.tsv/.csv (VLMEvalKit style, base64 images allowed), .parquet (only if pyarrow is installed), or a
directory of such files (rows get "_source" = the file's stem, e.g. MVBench's per-task JSONs).
"""

from __future__ import annotations

import base64
import csv
import io
import json
import sys
from dataclasses import dataclass
from pathlib import Path

TABLE_SUFFIXES = (".jsonl", ".json", ".tsv", ".csv", ".parquet")


def load_table(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such annotation file or directory")
    if path.is_dir():
        rows = []
        for f in sorted(p for p in path.iterdir() if p.suffix in TABLE_SUFFIXES):
            rows.extend(load_table(f))
        if not rows:
            raise FileNotFoundError(f"{path}: no {'/'.join(TABLE_SUFFIXES)} files inside")
        return rows
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    elif suffix == ".json":
        obj = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(obj, dict):
            obj = next((obj[k] for k in ("data", "annotations", "samples") if isinstance(obj.get(k), list)), None)
            if obj is None:
                raise ValueError(f"{path}: expected a list of records, or one under 'data'")
        rows = list(obj)
    elif suffix in (".tsv", ".csv"):
        csv.field_size_limit(sys.maxsize)   # base64 images are long fields
        with path.open(newline="", encoding="utf-8") as f:
            rows = [dict(r) for r in csv.DictReader(f, delimiter="\t" if suffix == ".tsv" else ",")]
    elif suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise ValueError(f"{path}: reading parquet needs pyarrow (pip install pyarrow), or convert it to "
                             "jsonl first") from None
        rows = pq.read_table(path).to_pylist()
    else:
        raise ValueError(f"{path}: unsupported annotation format {suffix!r} (use {', '.join(TABLE_SUFFIXES)})")
    for r in rows:
        r.setdefault("_dir", str(path.parent))
        r.setdefault("_source", path.stem)
    return rows


def read_jsonl(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.exists():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue   # a line cut short by an interrupted run: that sample is simply redone
    return out


@dataclass
class MediaContext:
    """Generation settings that shape the messages (per-image pixel budget, video fps, media root)."""
    max_pixels: int | None = None
    min_pixels: int | None = None
    fps: float | None = None
    media_dir: str | None = None


def resolve_media(value, rec: dict, ctx: MediaContext | None = None):
    """An image/video reference from a record -> something the pipeline accepts (path string or PIL image).

    Paths are tried as given, under --media-dir, then beside the annotation file. Dicts with "bytes"
    (HF parquet rows) and long base64 strings (VLMEvalKit TSVs) are decoded to PIL images."""
    if value is None:
        raise ValueError(f"record {rec.get('id')!r} has no media")
    if isinstance(value, dict):
        if value.get("bytes"):
            return _pil(value["bytes"])
        value = value.get("path")
    if not isinstance(value, str):
        return value   # already a PIL image or similar
    for base in ((ctx.media_dir if ctx else None), rec.get("_media_dir"), rec.get("_dir"), None):
        p = Path(base, value) if base else Path(value)
        if p.exists():
            return str(p)
    if len(value) > 256 and "/" not in value[:64]:
        try:
            return _pil(base64.b64decode(value))
        except Exception:
            pass
    return value   # let the pipeline report the missing file with its own message


def _pil(raw: bytes):
    from PIL import Image
    img = Image.open(io.BytesIO(raw))
    img.load()
    return img


def image_size(value, rec: dict, ctx: MediaContext | None = None) -> tuple[int, int] | None:
    """Original (w, h) of a record's image, opening the file only for its header."""
    try:
        media = resolve_media(value, rec, ctx)
        if isinstance(media, str):
            from PIL import Image
            with Image.open(media) as im:
                return im.size
        return tuple(media.size)
    except Exception:
        return None
