"""Helpers shared by task modules: reading fields, building Qwen-style messages, media sizes."""

from __future__ import annotations

import ast

from ..data import MediaContext, image_size, resolve_media


def text_of(pred: dict | None) -> str:
    return "" if pred is None or pred.get("prediction") is None else str(pred["prediction"])


def first(rec: dict, *keys, default=None):
    return next((rec[k] for k in keys if rec.get(k) not in (None, "")), default)


def as_list(value) -> list:
    """Answer lists arrive as lists, or as their string repr in TSVs ("['a', 'b']")."""
    if value is None:
        return []
    if isinstance(value, str):
        s = value.strip()
        if s.startswith("[") and s.endswith("]"):
            try:
                v = ast.literal_eval(s)
                if isinstance(v, (list, tuple)):
                    return list(v)
            except (ValueError, SyntaxError):
                pass
        return [value]
    return list(value)


def image_item(value, rec: dict, ctx: MediaContext) -> dict:
    item = {"type": "image", "image": resolve_media(value, rec, ctx)}
    if ctx.max_pixels:
        item["max_pixels"] = ctx.max_pixels
    if ctx.min_pixels:
        item["min_pixels"] = ctx.min_pixels
    return item


def video_item(value, rec: dict, ctx: MediaContext) -> dict:
    item = {"type": "video", "video": resolve_media(value, rec, ctx)}
    if ctx.fps:
        item["fps"] = ctx.fps
    if ctx.max_pixels:
        item["max_pixels"] = ctx.max_pixels
    return item


def user(*content, system: str | None = None) -> list[dict]:
    msgs = [{"role": "system", "content": system}] if system else []
    return msgs + [{"role": "user", "content": list(content)}]


def text(t: str) -> dict:
    return {"type": "text", "text": t}


def original_size(rec: dict, pred: dict | None, image_key: str = "image") -> tuple[int, int] | None:
    """(w, h) of the original image: from the annotation (width/height, img_size, image_width/height),
    else as recorded by `eval run` (image_size), else read from the image file's header."""
    w, h = first(rec, "width", "image_width", "img_width"), first(rec, "height", "image_height", "img_height")
    if w and h:
        return (float(w), float(h))
    size = first(rec, "img_size", "image_size")
    if size:
        size = as_list(size)
        return (float(size[0]), float(size[1]))
    if pred and pred.get("image_size"):
        return tuple(float(v) for v in pred["image_size"])
    size = image_size(rec.get(image_key), rec)
    return tuple(float(v) for v in size) if size else None


def input_size(pred: dict | None, fallback):
    """The resized size the model saw; without it the coordinates are taken as original pixels."""
    if pred and pred.get("input_size"):
        return tuple(float(v) for v in pred["input_size"]), True
    return fallback, False


def options_from(rec: dict, letters: str = "ABCDEFGHIJ") -> dict[str, str]:
    """Options as {letter: text}: columns A, B, ... (MMBench/VLMEvalKit) or a list (options/candidates)."""
    opts = {k: str(rec[k]) for k in letters if rec.get(k) not in (None, "") and str(rec[k]) != "nan"}
    if opts:
        return opts
    lst = as_list(first(rec, "options", "candidates", "choices", default=[]))
    out = {}
    for i, o in enumerate(lst):
        o = str(o)
        # "A. text" style options keep only the text
        if len(o) > 2 and o[0] == letters[i] and o[1] in ".)":
            o = o[2:].strip()
        out[letters[i]] = o
    return out
