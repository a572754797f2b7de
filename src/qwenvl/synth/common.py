"""Drawing primitives shared by the generators: the palette, backgrounds, shapes, fonts, and the
coordinate rules of the answers.

Every random choice comes from the `random.Random` passed in (numpy noise is seeded from it), so a
scene is a pure function of the generator's state: the same seed draws the same pixels and texts.
"""

from __future__ import annotations

import functools
import json
import math
import random
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..processing.image import smart_resize
from . import BACKGROUNDS

COLORS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (240, 210, 30),
          "purple": (140, 60, 180), "orange": (245, 140, 30), "black": (20, 20, 20), "white": (250, 250, 250)}
SHAPES = ("circle", "square", "triangle", "star", "cross")
FACTOR = 28


def input_size(size: tuple[int, int], min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """(w, h) the model sees for an original (w, h): smart_resize with factor 28 and the budget."""
    h, w = smart_resize(size[1], size[0], FACTOR, min_pixels, max_pixels)
    return w, h


def to_input(values, insize: tuple[int, int], size: tuple[int, int]) -> list[int]:
    """Original-pixel x, y, (x, y ...) -> whole pixels of the resized input, clamped to it (as
    qwen-vl-finetune's process_bbox rounds and clamps)."""
    out = []
    for i, v in enumerate(values):
        limit, scale = (insize[0], insize[0] / size[0]) if i % 2 == 0 else (insize[1], insize[1] / size[1])
        out.append(min(max(round(v * scale), 0), limit))
    return out


def json_answer(items: list[dict]) -> str:
    """The cookbook's output layout: a ```json fence, a list, one tab-indented object per line."""
    body = ",\n".join("\t" + json.dumps(d, ensure_ascii=False) for d in items)
    return f"```json\n[\n{body}\n]\n```"


# --------------------------------------------------------------------------------------------- colours

# Other renderers' "green" is not ours: each name also has the CSS / PIL named colour and matplotlib's
# tab: colour, and a shape's fill is drawn between two of them (plus jitter), so the model learns the
# colour names rather than three RGB values.
SHADES = {"red": ((255, 0, 0), (214, 39, 40)), "green": ((0, 128, 0), (44, 160, 44)),
          "blue": ((0, 0, 255), (31, 119, 180)), "yellow": ((255, 255, 0), (230, 200, 20)),
          "purple": ((128, 0, 128), (148, 103, 189)), "orange": ((255, 165, 0), (255, 127, 14)),
          "black": ((0, 0, 0), (40, 40, 40)), "white": ((255, 255, 255), (235, 235, 235))}


def shade(rng: random.Random, name: str) -> tuple[int, int, int]:
    """A fill colour for colour `name`: on the segment between two of its reference colours, jittered."""
    refs = (COLORS[name],) + SHADES[name]
    a, b = rng.sample(refs, 2)
    t = rng.random()
    return jitter(rng, tuple(round(x + t * (y - x)) for x, y in zip(a, b)), 12)


def jitter(rng: random.Random, rgb, amount: int = 16) -> tuple[int, int, int]:
    """A colour near `rgb`: other renderers' "red" is not exactly ours."""
    return tuple(min(255, max(0, c + rng.randint(-amount, amount))) for c in rgb)


def _dist(a, b) -> float:
    return math.sqrt(sum((x - y) ** 2 for x, y in zip(a, b)))


def far_colour(rng: random.Random, avoid, min_dist: float = 120.0) -> tuple[int, int, int]:
    """A random colour at least `min_dist` (RGB distance) from every colour in `avoid`, so that a
    background never looks like a shape's colour; the bar drops if the palette leaves no room."""
    avoid = list(avoid)
    while True:
        for _ in range(40):
            c = (rng.randint(0, 255), rng.randint(0, 255), rng.randint(0, 255))
            if all(_dist(c, a) >= min_dist for a in avoid):
                return c
        min_dist *= 0.8


def luminance(rgb) -> float:
    return 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]


def contrasting(rng: random.Random, bg, min_diff: float = 110.0) -> tuple[int, int, int]:
    """A random colour whose luminance differs from `bg`'s by at least `min_diff` (legible text)."""
    lb = luminance(bg)
    for _ in range(200):
        c = (rng.randint(0, 255), rng.randint(0, 255), rng.randint(0, 255))
        if abs(luminance(c) - lb) >= min_diff:
            return c
    return (0, 0, 0) if lb > 127 else (255, 255, 255)


# ----------------------------------------------------------------------------------------- backgrounds

def background(rng: random.Random, size: tuple[int, int], base, kind: str | None = None,
               strength: int = 28, kinds: tuple[str, ...] = BACKGROUNDS, avoid=()) -> Image.Image:
    """A plain, noisy or gradient background around colour `base` (`kind`, or one of `kinds` at random), or a
    plain light grey ("light"; plain `base` where a colour in `avoid`, the shapes', is light too).
    Noise is drawn at 1/6 of the resolution and upscaled, which keeps a 300 px scene at ~1 ms and gives
    texture the model must look through (rather than pixel noise the resize averages away)."""
    w, h = size
    kind = kind or rng.choice(kinds)
    if kind == "light":
        if all(luminance(c) < 170 for c in avoid):
            g = rng.randint(220, 250)
            return Image.new("RGB", size, (g, g, g))
        kind = "plain"
    if kind == "plain":
        return Image.new("RGB", size, tuple(base))
    if kind == "noise":
        nrng = np.random.default_rng(rng.getrandbits(64))
        cell = rng.choice((3, 6, 12))
        small = np.asarray(base, np.float32) + nrng.normal(0.0, strength, (h // cell + 2, w // cell + 2, 3))
        img = Image.fromarray(small.clip(0, 255).astype(np.uint8), "RGB")
        return img.resize((w + 2 * cell, h + 2 * cell), Image.BILINEAR).crop((cell, cell, cell + w, cell + h))
    if kind == "gradient":
        # Two ends a little lighter / darker than the base: the whole ramp stays far from the shapes.
        d = [rng.randint(-2 * strength, 2 * strength) for _ in range(3)]
        a = tuple(min(255, max(0, c + x)) for c, x in zip(base, d))
        b = tuple(min(255, max(0, c - x)) for c, x in zip(base, d))
        small = Image.new("RGB", (2, 2))
        if rng.random() < 0.5:          # horizontal or vertical ramp
            small.putdata([a, b, a, b])
        else:
            small.putdata([a, a, b, b])
        return small.resize(size, Image.BILINEAR)
    raise ValueError(f"unknown background kind {kind!r}: use plain, noise, gradient or light")


# ----------------------------------------------------------------------------------------------- shapes

def shape_polygon(kind: str, box, rng: random.Random) -> list[tuple[float, float]] | None:
    """Outline of a shape inside the square `box` (x1, y1, x2, y2); None for circle and square,
    which are drawn with their own primitives. Triangles point up or down; stars turn."""
    x1, y1, x2, y2 = box
    s = x2 - x1
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    if kind == "triangle":
        if rng.random() < 0.75:
            return [(cx, y1), (x2, y2), (x1, y2)]
        return [(x1, y1), (x2, y1), (cx, y2)]
    if kind == "star":
        turn = rng.uniform(0, 2 * math.pi / 5)
        pts = []
        for i in range(10):
            r = s / 2 if i % 2 == 0 else s * rng.uniform(0.2, 0.26)
            a = turn + i * math.pi / 5 - math.pi / 2
            pts.append((cx + r * math.cos(a), cy + r * math.sin(a)))
        return pts
    if kind == "cross":
        t = s * rng.uniform(0.28, 0.4) / 2      # half the bar thickness
        return [(cx - t, y1), (cx + t, y1), (cx + t, cy - t), (x2, cy - t), (x2, cy + t), (cx + t, cy + t),
                (cx + t, y2), (cx - t, y2), (cx - t, cy + t), (x1, cy + t), (x1, cy - t), (cx - t, cy - t)]
    return None


def draw_shape(d: ImageDraw.ImageDraw, kind: str, box, fill, rng: random.Random):
    """Draw one shape; returns (tight box in pixel-edge coordinates, a point inside it)."""
    x1, y1, x2, y2 = box
    if kind == "circle":
        d.ellipse((x1, y1, x2 - 1, y2 - 1), fill=fill)
        return (x1, y1, x2, y2), ((x1 + x2) / 2, (y1 + y2) / 2)
    if kind == "square":
        d.rectangle((x1, y1, x2 - 1, y2 - 1), fill=fill)
        return (x1, y1, x2, y2), ((x1 + x2) / 2, (y1 + y2) / 2)
    pts = shape_polygon(kind, box, rng)
    if pts is None:
        raise ValueError(f"unknown shape {kind!r}: use one of {', '.join(SHAPES)}")
    d.polygon(pts, fill=fill)
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    tight = (math.floor(min(xs)), math.floor(min(ys)), math.ceil(max(xs)), math.ceil(max(ys)))
    if kind == "triangle":      # the centroid is inside; the box centre may sit on an edge
        inside = (sum(xs[:3]) / 3, sum(ys[:3]) / 3)
    else:
        inside = ((x1 + x2) / 2, (y1 + y2) / 2)
    return tight, inside


def place_boxes(rng: random.Random, size: tuple[int, int], n: int, lo: int, hi: int,
                gap: int = 3, taken=()) -> list[tuple[int, int, int, int]]:
    """Up to n non-overlapping squares of side lo..hi inside the image (rejection sampling; the side
    shrinks when a crowded scene has no room left)."""
    w, h = size
    boxes: list[tuple[int, int, int, int]] = []
    taken = list(taken)
    for _ in range(n):
        side_hi = hi
        for attempt in range(30):
            s = rng.randint(lo, max(lo, side_hi))
            if s + 2 * gap > min(w, h):
                s = max(4, min(w, h) - 2 * gap - 1)
            x, y = rng.randint(gap, w - s - gap), rng.randint(gap, h - s - gap)
            b = (x, y, x + s, y + s)
            if all(b[2] + gap <= o[0] or o[2] + gap <= b[0] or b[3] + gap <= o[1] or o[3] + gap <= b[1]
                   for o in boxes + taken):
                boxes.append(b)
                break
            if attempt % 10 == 9:
                side_hi = max(lo, (side_hi + lo) // 2)
    return boxes


# ------------------------------------------------------------------------------------------------ fonts

FONT_DIRS = ("/usr/share/fonts/truetype/dejavu", "/usr/share/fonts/dejavu", "/usr/share/fonts/TTF")
FONT_NAMES = ("DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSerif.ttf", "DejaVuSerif-Bold.ttf",
              "DejaVuSansMono.ttf", "DejaVuSansCondensed.ttf", "DejaVuSans-Oblique.ttf", "DejaVuSerif-Italic.ttf")


@functools.lru_cache(maxsize=1)
def font_files() -> tuple[str, ...]:
    """The TrueType fonts found on this machine ("" stands for Pillow's bundled default font)."""
    found = []
    for name in FONT_NAMES:
        for d in FONT_DIRS:
            p = Path(d, name)
            if p.is_file():
                found.append(str(p))
                break
    return tuple(found) + ("",)


@functools.lru_cache(maxsize=512)
def font(path: str, size: int) -> ImageFont.FreeTypeFont:
    size = max(6, int(size))
    return ImageFont.truetype(path, size) if path else ImageFont.load_default(size=size)


def text_length(f: ImageFont.FreeTypeFont, text: str) -> float:
    """f.getlength, memoised on the font object (layouts measure the same words over and over)."""
    cache = f.__dict__.setdefault("_synth_lengths", {})
    v = cache.get(text)
    if v is None:
        v = cache[text] = f.getlength(text)
    return v


def bold_font(path: str) -> str:
    """The bold face of a font file when there is one (titles, buttons)."""
    if path and "Bold" not in path:
        for cand in (path.replace(".ttf", "-Bold.ttf"), path.replace("-Oblique", "-Bold").replace("-Italic", "-Bold")):
            if Path(cand).is_file():
                return cand
    return path


def text_box(f: ImageFont.FreeTypeFont, xy, text: str) -> tuple[int, int, int, int]:
    """Ink box of `text` drawn at `xy` (anchor top-left of the line box)."""
    x1, y1, x2, y2 = f.getbbox(text)
    return (xy[0] + x1, xy[1] + y1, xy[0] + x2, xy[1] + y2)


WORDS = (
    "apple river stone cloud green light paper window garden music water winter summer orange yellow "
    "silver market street house table chair bread coffee letter number simple quick brown lazy happy "
    "north south east west city train ticket station morning evening night dinner lunch office phone "
    "money price total order report today tomorrow open close start finish save print share search "
    "menu help about home news sport world forest ocean island mountain valley bridge tower castle "
    "school class lesson student teacher book story paint color shape circle square little large "
    "small early late fast slow warm cold bright dark clear fresh sweet salt sugar tea milk honey "
    "pizza pasta salad soup fruit lemon cherry grape melon peach plum delta alpha gamma omega "
    "signal system data model input output value index level point line block frame image video"
).split()


def words(rng: random.Random, n: int) -> list[str]:
    """n random words, some capitalised, some numbers (digits are read one by one by the tokenizer,
    so numbers are a good reading exercise)."""
    out = []
    for _ in range(n):
        r = rng.random()
        if r < 0.15:
            whole = rng.random() < 0.7
            out.append(str(rng.randint(0, 9999)) if whole else f"{rng.randint(0, 99)}.{rng.randint(0, 99):02d}")
        else:
            w = rng.choice(WORDS)
            out.append(w.capitalize() if r < 0.4 else w.upper() if r < 0.45 else w)
    return out
