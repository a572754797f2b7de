"""Rendered text: words and short lines to read, and small document pages (headings, paragraphs, lists,
tables) to parse into QwenVL HTML. One question per image (a sample's extra turns are not used here).

Text sizes are chosen in pixels of the RESIZED input (what the model sees), so a line stays legible
whatever the original size and pixel budget."""

from __future__ import annotations

import html
import random

from PIL import ImageDraw

from ..tasks.document import DOC_PROMPT
from .common import (WORDS, background, bold_font, contrasting, font, font_files, text_box, text_length,
                     to_input, words)
from .shapes import _Sketch

READ_PROMPTS = ("Read the text in the image.", "Read all the text in the image.",
                "Please output only the text content from the image without any additional descriptions or "
                "formatting.")
MIN_TEXT_PX = 13       # smallest text height (cap height + descenders) in input pixels


def _union(boxes):
    return (min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes), max(b[3] for b in boxes))


# --------------------------------------------------------------------------------------------- reading

def generate_read(rng: random.Random, opts):
    lo, hi = opts.size_range
    text = " ".join(words(rng, rng.randint(1, 4)))
    path = rng.choice(font_files())
    size_px = rng.randint(16, 64)
    mx, my = rng.uniform(0.05, 0.5), rng.uniform(0.3, 1.5)
    for _ in range(8):
        f = font(path, size_px)
        x1, y1, x2, y2 = f.getbbox(text)
        tw, th = x2 - x1, y2 - y1
        w = max(lo, min(hi, int(tw * (1 + 2 * mx)) + 8))
        h = max(lo, min(hi, int(th * (1 + 2 * my)) + 8))
        if tw + 4 > w:                     # too wide for the largest image: smaller letters
            size_px = max(8, int(size_px * (w - 4) / (tw + 1)))
            continue
        scale = opts.insize((w, h))[1] / h
        if th * scale < MIN_TEXT_PX and size_px < 200 and tw * MIN_TEXT_PX / (th * scale) < hi:
            size_px = int(size_px * MIN_TEXT_PX / (th * scale)) + 1   # too small once resized: larger letters
            continue
        break
    w, h = max(w, tw + 8), max(h, th + 8)    # a line at the smallest size still fits (past a tiny size_range)
    x = rng.randint(2, max(2, w - tw - 2)) - x1
    y = rng.randint(2, max(2, h - th - 2)) - y1
    img = None
    if opts.draw:
        base = (rng.randint(0, 255), rng.randint(0, 255), rng.randint(0, 255))
        img = background(rng, (w, h), base, strength=14)
        ImageDraw.Draw(img).text((x, y), text, font=f, fill=contrasting(rng, base))
    box = text_box(f, (x, y), text)
    return img, (w, h), [(rng.choice(READ_PROMPTS), text, {"text": text, "bbox": list(box)})]


# ------------------------------------------------------------------------------------------- documents

def _wrap(f, ws: list[str], width: float) -> list[str]:
    """Greedy line breaking; word widths are measured once each (a line's own kerning is ignored)."""
    space = text_length(f, " ")
    lines, cur, cur_w = [], [], 0.0
    for w in ws:
        lw = text_length(f, w)
        if cur and cur_w + space + lw > width:
            lines.append(" ".join(cur))
            cur, cur_w = [], 0.0
        cur_w += (space if cur else 0.0) + lw
        cur.append(w)
    if cur:
        lines.append(" ".join(cur))
    return lines


class _Recorder:
    """Records drawing calls, to replay them once a laid-out block is known to fit the page."""

    def __init__(self):
        self.ops = []

    def __getattr__(self, name):
        return lambda *a, **k: self.ops.append((name, a, k))


def generate_document(rng: random.Random, opts):
    lo, hi = opts.size_range
    # Pages are at least 224 px wide and 200 px tall whatever size_range says: smaller holds no block.
    w = rng.randint(max(lo, 224), max(hi, 224))
    h = max(lo, min(int(max(hi, 224) * 1.6), int(w * rng.uniform(0.9, 1.45))))
    insize = opts.insize((w, h))
    scale = insize[0] / w
    body = max(8, round(rng.uniform(MIN_TEXT_PX, 18) / scale))       # body font size, original pixels
    path = rng.choice(font_files())
    margin = int(w * rng.uniform(0.05, 0.1))
    right = w - margin
    bg = (rng.randint(225, 255), rng.randint(225, 255), rng.randint(225, 255))
    ink = contrasting(rng, bg, 140) if rng.random() < 0.3 else (rng.randint(0, 50),) * 3
    img = background(rng, (w, h), bg, kind=rng.choice(("plain", "plain", "noise", "gradient")), strength=8) \
        if opts.draw else None
    d = ImageDraw.Draw(img) if opts.draw else _Sketch()
    y = margin
    blocks, lines_html = [], []
    kinds = ["paragraph", "paragraph", "list", "table", "title"]
    tries = 0
    while len(blocks) < 7:
        tries += 1
        if tries > 100:
            raise RuntimeError(f"no document block fits a {w}x{h} page (body text {body} px)")
        kind = "title" if not blocks and rng.random() < 0.8 else rng.choice(kinds)
        rec = _Recorder()
        drawn = _block(kind, rng, rec, path, body, margin, right, y, ink, first=not blocks)
        if drawn is None or drawn["bbox"][3] > h - margin // 2 or drawn["bbox"][2] > w - 2:
            if blocks:
                break
            continue                         # the first block must fit: try another kind
        for name, a, k in rec.ops:           # it fits: draw it
            getattr(d, name)(*a, **k)
        box = to_input(drawn["bbox"], insize, (w, h))
        attr = f'data-bbox="{box[0]} {box[1]} {box[2]} {box[3]}"'
        if kind == "title":
            tag = drawn["tag"]
            lines_html.append(f"<{tag} {attr}>{html.escape(drawn['text'])}</{tag}>")
            text = drawn["text"]
        elif kind == "paragraph":
            lines_html.append(f"<p {attr}>{html.escape(drawn['text'])}</p>")
            text = drawn["text"]
        elif kind == "list":
            tag = drawn["tag"]
            items = "".join(f'<li data-bbox="{" ".join(map(str, to_input(b, insize, (w, h))))}">{html.escape(t)}</li>'
                            for t, b in drawn["items"])
            lines_html.append(f"<{tag} {attr}>{items}</{tag}>")
            text = " ".join(t for t, _ in drawn["items"])
        else:
            rows = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in drawn["rows"])
            lines_html.append(f"<table {attr}>{rows}</table>")
            text = " ".join(" | ".join(r) for r in drawn["rows"])
        blocks.append({"kind": kind, "text": text, "bbox": list(drawn["bbox"])})
        y = drawn["bbox"][3] + int(body * rng.uniform(0.8, 1.6))
    answer = "```html\n<html><body>\n" + "\n".join(lines_html) + "\n</body></html>\n```"
    return img, (w, h), [(DOC_PROMPT, answer, {"blocks": blocks})]


def _block(kind, rng, draw, path, body, left, right, top, ink, first):
    """Lay out one block at `top`, drawing on `draw` (a recorder); returns its facts, or None when it
    cannot be laid out."""
    width = right - left
    if kind == "title":
        size = int(body * rng.uniform(1.35, 2.0))
        f = font(bold_font(path), size)
        ws = [rng.choice(WORDS).capitalize() for _ in range(rng.randint(1, 4))]
        lines = _wrap(f, ws, width)[:1]
        text = lines[0]
        draw.text((left, top), text, font=f, fill=ink)
        return {"bbox": text_box(f, (left, top), text), "text": text,
                "tag": "h1" if first else rng.choice(("h1", "h2", "h3"))}
    f = font(path, body)
    step = int(body * 1.35)
    if kind == "paragraph":
        lines = _wrap(f, words(rng, rng.randint(4, 24)), width)[:4]
        boxes = []
        for i, line in enumerate(lines):
            draw.text((left, top + i * step), line, font=f, fill=ink)
            boxes.append(text_box(f, (left, top + i * step), line))
        return {"bbox": _union(boxes), "text": " ".join(lines)}
    if kind == "list":
        ordered = rng.random() < 0.4
        indent = int(body * 1.6)
        items = []
        for i in range(rng.randint(2, 4)):
            t = _wrap(f, words(rng, rng.randint(1, 5)), width - indent)[0]
            marker = f"{i + 1}." if ordered else "•"
            yy = top + i * step
            draw.text((left, yy), marker, font=f, fill=ink)
            draw.text((left + indent, yy), t, font=f, fill=ink)
            items.append((t, _union([text_box(f, (left, yy), marker), text_box(f, (left + indent, yy), t)])))
        return {"bbox": _union([b for _, b in items]), "items": items, "tag": "ol" if ordered else "ul"}
    if kind == "table":
        n_rows, n_cols = rng.randint(2, 4), rng.randint(2, 3)
        rows = [[(x.capitalize() if r == 0 else x) for x in words(rng, n_cols)] for r in range(n_rows)]
        pad = max(3, body // 3)
        col_w = [max(text_length(f, rows[r][c]) for r in range(n_rows)) + 2 * pad for c in range(n_cols)]
        if sum(col_w) > width:
            return None
        row_h = int(body * 1.3) + 2 * pad
        x0, y0 = left, top
        x1, y1 = int(left + sum(col_w)), top + n_rows * row_h
        draw.rectangle((x0, y0, x1, y1), outline=ink, width=1)
        xs = [x0]
        for cw in col_w:
            xs.append(xs[-1] + cw)
        for c in range(1, n_cols):
            draw.line((int(xs[c]), y0, int(xs[c]), y1), fill=ink, width=1)
        for r in range(1, n_rows):
            draw.line((x0, y0 + r * row_h, x1, y0 + r * row_h), fill=ink, width=1)
        for r in range(n_rows):
            for c in range(n_cols):
                draw.text((xs[c] + pad, y0 + r * row_h + pad), rows[r][c], font=f, fill=ink)
        return {"bbox": (x0, y0, x1 + 1, y1 + 1), "rows": rows}
    raise ValueError(f"unknown block kind {kind!r}")
