"""Shape scenes: 1 to 6 shapes (unique by colour + shape) on a plain, noisy or gradient background of
another colour, and the grounding, pointing and counting questions about them (cookbook prompts,
Qwen2.5-VL answer formats, coordinates in pixels of the resized input), plus the converse of grounding:
the shape in a given box, named; and both directions again in words, on the grid of merged image tokens
(`cell`: the shape in row R, column C named, or a named shape's row and column given)."""

from __future__ import annotations

import random
from dataclasses import dataclass

from PIL import ImageDraw, ImageFilter

from ..tasks.grounding import DETECT_PROMPT
from .common import (BACKGROUNDS, COLORS, SHAPES, background, draw_shape, far_colour, json_answer, place_boxes,
                     shade, to_input)

LOCATE = "Locate the {name}, output its bbox coordinates using JSON format."
POINT = "Point to the {name}, output its coordinates in JSON format."
COUNT = "How many {kind}s are there?"
IDENTIFY = "What is the shape at {box}? Answer with its colour and kind."
CELL_NAME = "What is the shape in row {row}, column {col}?"
CELL_PLACE = "In which row and column is the {name}?"
CELL_ANSWER = "row {row}, column {col}"
CELL = 28   # a merged image token's side in input pixels (patch 14 x merge 2): one cell of the grid `cell` asks about


@dataclass
class Obj:
    color: str
    kind: str
    box: tuple[int, int, int, int]        # tight box, original pixels
    point: tuple[float, float]            # a point inside the shape, original pixels

    @property
    def name(self) -> str:
        return f"{self.color} {self.kind}"


class _Sketch:
    """An ImageDraw stand-in when only the layout (texts, boxes) is wanted, not the pixels."""

    def ellipse(self, *a, **k):
        pass

    rectangle = polygon = text = line = rounded_rectangle = ellipse


def scene(rng: random.Random, size_range: tuple[int, int], draw: bool = True, objects: tuple[int, int] = (1, 6),
          backgrounds: tuple[str, ...] = BACKGROUNDS, shapes: tuple[str, ...] = SHAPES,
          colors: tuple[str, ...] = tuple(COLORS), insize=None, crisp: bool = False):
    """(image or None, (w, h), objects); `shapes` / `colors` may narrow the palette. `insize`: a function of
    (w, h) giving the resized input's size, to align each shape with one cell of merged tokens (aligned_boxes).
    `crisp`: every fill its colour's reference value and no soft edges (the default shades and softens)."""
    w, h = rng.randint(*size_range), rng.randint(*size_range)
    n = rng.randint(*objects)
    pairs = rng.sample([(c, k) for c in colors for k in shapes], n)
    if insize is not None:
        boxes = aligned_boxes(rng, (w, h), insize((w, h)), n)
    else:
        m = min(w, h)
        lo = max(10, m // 10)
        hi = max(lo, m // (3 if n <= 3 else 4))
        boxes = place_boxes(rng, (w, h), n, lo, hi)
    fills = [COLORS[c] if crisp else shade(rng, c) for c, _ in pairs[:len(boxes)]]
    base = far_colour(rng, fills)
    img = background(rng, (w, h), base, kinds=backgrounds, avoid=fills) if draw else None
    d = ImageDraw.Draw(img) if draw else _Sketch()
    objs = []
    for (c, k), box, fill in zip(pairs, boxes, fills):
        tight, inside = draw_shape(d, k, box, fill, rng)
        objs.append(Obj(c, k, tight, inside))
    if draw and not crisp and rng.random() < 0.3:     # soft edges, as an antialiasing renderer or a photo would give
        soften(img, [o.box for o in objs], rng.uniform(0.4, 1.0))
    return img, (w, h), objs


def aligned_boxes(rng: random.Random, size, insize, n: int) -> list[tuple[int, int, int, int]]:
    """n boxes in original pixels, each covering one distinct CELL x CELL cell of the resized input (up to as
    many as the grid holds)."""
    cols, rows = insize[0] // CELL, insize[1] // CELL
    sx, sy = size[0] / insize[0], size[1] / insize[1]
    cells = rng.sample([(r, c) for r in range(rows) for c in range(cols)], min(n, rows * cols))
    return [(round(c * CELL * sx), round(r * CELL * sy), round((c + 1) * CELL * sx), round((r + 1) * CELL * sy))
            for r, c in cells]


def soften(img, boxes, radius: float) -> None:
    """Blur the edges of the shapes in place: only around each box (a whole-image blur costs 10x)."""
    for x1, y1, x2, y2 in boxes:
        r = (max(0, x1 - 3), max(0, y1 - 3), min(img.width, x2 + 3), min(img.height, y2 + 3))
        img.paste(img.crop(r).filter(ImageFilter.GaussianBlur(radius)), r[:2])


def _pick(rng: random.Random, pool: list, used: list):
    """A choice not asked yet in this conversation (repeats only when the pool is exhausted)."""
    fresh = [p for p in pool if p not in used]
    choice = rng.choice(fresh or pool)
    used.append(choice)
    return choice


def questions(task: str, rng: random.Random, objs: list[Obj], size, insize, turns: int,
              shapes: tuple[str, ...] = SHAPES) -> list[tuple[str, str, dict]]:
    """(question, answer, target) per turn, up to `turns`; targets in original pixels. A shape is asked for
    once per conversation (ground, point, identify, cell: a scene of n shapes gives at most n turns), since a repeated
    question is answered by copying the earlier reply, which teaches nothing."""
    out, used = [], []
    for _ in range(turns):
        if task in ("ground", "point", "identify"):
            if len(used) == len(objs):
                break
            o = _pick(rng, objs, used)
            if task == "identify":
                # The converse of grounding (a place given, the name asked): the answer reads the colour and
                # kind from the image tokens at that place (docs/training.md, the naming diagnostic).
                box = to_input(o.box, insize, size)
                out.append((IDENTIFY.format(box=f"[{', '.join(map(str, box))}]"), o.name,
                            {"label": o.name, "bbox": list(o.box)}))
            elif task == "ground":
                ans = json_answer([{"bbox_2d": to_input(o.box, insize, size), "label": o.name}])
                out.append((LOCATE.format(name=o.name), ans, {"bbox": list(o.box), "label": o.name}))
            else:
                ans = json_answer([{"point_2d": to_input(o.point, insize, size), "label": o.name}])
                out.append((POINT.format(name=o.name), ans,
                            {"bbox": list(o.box), "point": [round(v, 2) for v in o.point], "label": o.name}))
        elif task == "cell":
            if len(used) == len(objs):
                break
            o = _pick(rng, objs, used)
            row, col = cell_of(o, insize, size)
            # the name asked only for a cell that holds no other shape's centre (else two answers are right)
            alone = all(cell_of(p, insize, size) != (row, col) for p in objs if p is not o)
            target = {"label": o.name, "cell": [row, col], "bbox": list(o.box)}
            if alone and rng.random() < 0.5:
                out.append((CELL_NAME.format(row=row, col=col), o.name, {**target, "ask": "name"}))
            else:
                out.append((CELL_PLACE.format(name=o.name), CELL_ANSWER.format(row=row, col=col),
                            {**target, "ask": "cell"}))
        elif task == "ground_all":
            kinds = sorted({o.kind for o in objs})
            kind = _pick(rng, kinds + ["shape"] * max(1, len(kinds) // 2), used)
            sel = sorted((o for o in objs if kind == "shape" or o.kind == kind), key=lambda o: (o.box[1], o.box[0]))
            ans = json_answer([{"bbox_2d": to_input(o.box, insize, size), "label": o.name} for o in sel])
            out.append((DETECT_PROMPT.format(category=kind), ans,
                        {"boxes": [list(o.box) for o in sel], "labels": [o.name for o in sel]}))
        elif task == "count":
            # Every shape kind may be asked, present or not (0 is an answer too), and "shapes" overall.
            kind = _pick(rng, list(shapes) + ["shape"] * 2, used)
            n = len(objs) if kind == "shape" else sum(o.kind == kind for o in objs)
            out.append((COUNT.format(kind=kind), str(n), {"count": n}))
        else:
            raise ValueError(f"not a shape task: {task!r}")
    return out


def cell_of(o: Obj, insize, size) -> tuple[int, int]:
    """(row, column), from 1, of the merged image token holding the centre of `o`'s box in the resized input: the
    cells MRoPE numbers the image tokens by (docs/training.md, the naming diagnostic)."""
    x1, y1, x2, y2 = o.box
    cx, cy = (x1 + x2) / 2 * insize[0] / size[0], (y1 + y2) / 2 * insize[1] / size[1]
    return min(int(cy // CELL), insize[1] // CELL - 1) + 1, min(int(cx // CELL), insize[0] // CELL - 1) + 1


def generate(task: str, rng: random.Random, opts):
    # a share of 0 or 1 draws nothing, so those streams stay as they were before shares existed
    aligned, crisp = (share >= 1 or (share > 0 and rng.random() < share) for share in (opts.aligned, opts.crisp))
    img, size, objs = scene(rng, opts.size_range, opts.draw, opts.objects, opts.backgrounds, opts.shapes, opts.colors,
                            opts.insize if aligned else None, crisp)
    insize = opts.insize(size)
    return img, size, questions(task, rng, objs, size, insize, opts.turns, opts.shapes)
