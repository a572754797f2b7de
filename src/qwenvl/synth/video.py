"""Clips for temporal grounding: 2-12 s sampled at 0.5-4 fps, static shapes, and per question one shape
that appears, moves or changes colour between two times.

Time rules (processing/video.py, model/rope.py): frame k is at k / fps seconds; the vision tower
patches frame pairs, and MRoPE puts pair t at 2t / fps seconds (second_per_grid_ts = 2 / fps). So clips
have an even number of frames, and an event covers frames [a, b) with a and b even: it starts at
a / fps (the start of pair a/2) and ends at b / fps (the end of pair b/2 - 1). A moving shape is still
at frame a and at rest again at frame b - 1, so every pair it changes in lies inside the span.
"""

from __future__ import annotations

import math
import random

from PIL import ImageDraw

from ..tasks.video import temporal_grounding_prompt
from .common import COLORS, SHAPES, background, draw_shape, far_colour, place_boxes, shade
from .shapes import _Sketch

EVENTS = ("appear", "move", "colour")
QUESTIONS = {"appear": ("When does the {c} {k} appear?", "the {c} {k} appears"),
             "move": ("When does the {c} {k} move?", "the {c} {k} moves"),
             "colour": ("When does the {k} turn {c2}?", "the {k} turns {c2}")}
ANSWER = "The given query happens in {s:.1f} - {e:.1f} seconds."
MIN_S, MAX_S = 2.0, 12.0


def timing(rng: random.Random, fps_range=(0.5, 4.0), seconds_range=(MIN_S, MAX_S)) -> tuple[float, int]:
    """(fps, frame count): fps in fps_range (0.1 steps), an even count of at least 4 frames lasting
    seconds_range (at least 4 frames: below 2/3 fps that is longer than 2 s)."""
    fps = max(0.1, round(rng.uniform(*fps_range), 1))
    n = 2 * math.ceil(rng.uniform(*seconds_range) * fps / 2)
    n = min(max(4, n), max(4, 2 * math.floor(seconds_range[1] * fps / 2)))
    return fps, n


def generate(rng: random.Random, opts):
    lo, hi = opts.size_range
    # No point drawing frames much larger than the per-frame budget the model sees.
    cap = int(math.sqrt(4 * opts.max_pixels))
    w, h = rng.randint(lo, max(lo, min(hi, cap))), rng.randint(lo, max(lo, min(hi, cap)))
    w, h = w - w % 2, h - h % 2
    fps, n = timing(rng, opts.fps_range, opts.seconds_range)
    pairs = n // 2
    n_events = min(opts.turns, 3)
    n_static = rng.randint(0, 3)
    names = rng.sample([(c, k) for c in COLORS for k in SHAPES], n_static + n_events)
    events = []
    for i in range(n_events):
        kind = rng.choice(EVENTS)
        pa = rng.randrange(pairs)
        pb = rng.randint(pa + 1, pairs)
        if (pa, pb) == (0, pairs):           # the whole clip is not an event
            pa, pb = (1, pairs) if rng.random() < 0.5 else (0, pairs - 1)
        events.append({"kind": kind, "a": 2 * pa, "b": 2 * pb})
    objs = [{"name": nm} for nm in names]       # the event shapes first: placed first, never dropped
    # A shape that changes colour is named by its shape alone, so that shape must be its only one.
    for i, ev in enumerate(events):
        o = objs[i]
        if ev["kind"] == "colour":
            c, k = o["name"]
            others = [x["name"] for j, x in enumerate(objs) if j != i]
            if any(k2 == k for _, k2 in others):
                free = [s for s in SHAPES if all(k2 != s for _, k2 in others)]
                if not free:
                    ev["kind"] = "appear"
                else:
                    k = rng.choice(free)
                    o["name"] = (c, k)
            if ev["kind"] == "colour":
                o["c2"] = rng.choice([x for x in COLORS if x != c])
        o["event"] = ev
    m = min(w, h)
    lo_s, hi_s = max(10, m // 9), max(10, m // 4)
    boxes = place_boxes(rng, (w, h), len(objs), lo_s, hi_s)
    objs = objs[:len(boxes)]
    for o, b in zip(objs, boxes):
        o["box"] = b
        if o.get("event", {}).get("kind") == "move":
            s = b[2] - b[0]
            others = [x["box"] for x in objs if x is not o and "box" in x]
            end = place_boxes(rng, (w, h), 1, s, s, taken=others)
            if end and math.dist(end[0][:2], b[:2]) >= s:
                o["end"] = end[0]
            else:
                o["event"]["kind"] = "appear"    # no room to move far enough: the shape appears instead
        o["fill"] = shade(rng, o["name"][0])
        if "c2" in o:
            o["fill2"] = shade(rng, o["c2"])
        o["shape_seed"] = rng.getrandbits(32)
    used_colours = [o["fill"] for o in objs] + [o["fill2"] for o in objs if "fill2" in o]
    base = far_colour(rng, used_colours)
    frames = None
    if opts.draw:
        bg = background(rng, (w, h), base, kinds=opts.backgrounds, avoid=used_colours)
        frames = []
        for k in range(n):
            img = bg.copy()
            d = ImageDraw.Draw(img)
            for o in objs:
                _draw_at(d, o, k)
            frames.append(img)
    qa = []
    for o in objs:
        ev = o.get("event")
        if ev is None:
            continue
        (c, kind), a, b = o["name"], ev["a"], ev["b"]
        direct, query = QUESTIONS[ev["kind"]]
        fmt = {"c": c, "k": kind, "c2": o.get("c2", "")}
        q = direct.format(**fmt) if rng.random() < 0.5 else temporal_grounding_prompt(query.format(**fmt))
        s, e = round(a / fps, 1), round(b / fps, 1)
        qa.append((q, ANSWER.format(s=s, e=e), {"span": [s, e], "event": ev["kind"], "frames": [a, b],
                                                 "duration": round(n / fps, 3)}))
    if not qa:                  # every event shape failed to fit (tiny frames): ask about nothing else
        raise RuntimeError("video scene without an event (frames too small for the shapes?)")
    return frames, (w, h), qa, fps


def _draw_at(d: ImageDraw.ImageDraw | _Sketch, o: dict, k: int) -> None:
    ev = o.get("event")
    box, fill = o["box"], o["fill"]
    if ev is not None:
        a, b = ev["a"], ev["b"]
        if ev["kind"] == "appear" and not a <= k < b:
            return
        if ev["kind"] == "colour" and a <= k < b:
            fill = o["fill2"]
        if ev["kind"] == "move":
            t = min(max((k - a) / (b - 1 - a), 0.0), 1.0)
            x = round(box[0] + t * (o["end"][0] - box[0]))
            y = round(box[1] + t * (o["end"][1] - box[1]))
            box = (x, y, x + box[2] - box[0], y + box[3] - box[1])
    draw_shape(d, o["name"][1], box, fill, random.Random(o["shape_seed"]))
