"""Synthetic shapes: generated pictures of coloured shapes with questions about them (how many, which
colour, which shape, where). The data our small default model is trained and evaluated on, so that
everything runs offline; the `synthetic_shapes` eval task scores it.

Answers follow the real model's conventions: boxes as `{"bbox_2d": [x1, y1, x2, y2], "label": ...}` in
absolute pixels of the RESIZED input (smart_resize), like Qwen2.5-VL's grounding output.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw

from .processing.image import smart_resize

COLORS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (235, 200, 30),
          "purple": (140, 60, 180), "orange": (245, 140, 30), "black": (20, 20, 20)}
SHAPES = ("circle", "square", "triangle")
NUMBER = {1: "one", 2: "two", 3: "three", 4: "four", 5: "five", 6: "six"}


@dataclass
class Shape:
    kind: str
    color: str
    box: tuple[int, int, int, int]  # x1, y1, x2, y2 in image pixels

    @property
    def name(self) -> str:
        return f"{self.color} {self.kind}"


def draw_scene(rng: random.Random, min_side: int = 112, max_side: int = 336, max_shapes: int = 5):
    w, h = rng.randint(min_side, max_side), rng.randint(min_side, max_side)
    bg = tuple(rng.randint(215, 255) for _ in range(3))
    img = Image.new("RGB", (w, h), bg)
    d = ImageDraw.Draw(img)
    shapes: list[Shape] = []
    for _ in range(rng.randint(1, max_shapes) * 10):  # rejection sampling for non-overlapping places
        if len(shapes) >= max_shapes or (shapes and rng.random() < 0.12):
            break
        s = rng.randint(max(16, min(w, h) // 8), max(24, min(w, h) // 3))
        x, y = rng.randint(2, w - s - 2), rng.randint(2, h - s - 2)
        box = (x, y, x + s, y + s)
        if any(not (box[2] + 4 < o.box[0] or o.box[2] + 4 < box[0] or box[3] + 4 < o.box[1] or o.box[3] + 4 < box[1])
               for o in shapes):
            continue
        kind, color = rng.choice(SHAPES), rng.choice(list(COLORS))
        if kind == "circle":
            d.ellipse(box, fill=COLORS[color])
        elif kind == "square":
            d.rectangle(box, fill=COLORS[color])
        else:
            d.polygon([(x + s / 2, y), (x + s, y + s), (x, y + s)], fill=COLORS[color])
        shapes.append(Shape(kind, color, box))
    return img, shapes


def questions(rng: random.Random, shapes: list[Shape], size: tuple[int, int], min_pixels: int, max_pixels: int):
    """Question records for one scene: kind, question, and answer (text) or bbox (original pixels)."""
    w, h = size
    rh, rw = smart_resize(h, w, 28, min_pixels, max_pixels)
    out = []
    kind = rng.choice(SHAPES)
    n = sum(s.kind == kind for s in shapes)
    out.append({"kind": "count", "question": f"How many {kind}s are there? Answer with a number.", "answer": str(n)})
    out.append({"kind": "count", "question": "How many shapes are in the picture? Answer with a number.",
                "answer": str(len(shapes))})
    unique = [s for s in shapes if sum(o.kind == s.kind for o in shapes) == 1]
    if unique:
        s = rng.choice(unique)
        out.append({"kind": "color", "question": f"What color is the {s.kind}? Answer with one word.",
                    "answer": s.color})
    by_name = [s for s in shapes if sum(o.name == s.name for o in shapes) == 1]
    if by_name:
        s = rng.choice(by_name)
        x1, y1, x2, y2 = s.box
        resized = [round(x1 * rw / w), round(y1 * rh / h), round(x2 * rw / w), round(y2 * rh / h)]
        answer = json.dumps([{"bbox_2d": resized, "label": s.name}])
        out.append({"kind": "ground", "question": f"Locate the {s.name}, output its bbox coordinates in JSON format.",
                    "answer": f"```json\n{answer}\n```", "bbox": list(s.box)})
    return out


def write_dataset(out: str | Path, n_images: int, seed: int = 0, min_pixels: int = 4 * 28 * 28,
                  max_pixels: int = 16384 * 28 * 28) -> tuple[Path, Path]:
    """Images plus two jsonl files: `train.jsonl` (conversations in the messages format, one per
    question) and `eval.jsonl` (the synthetic_shapes eval task's rows). Returns their paths."""
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    train, evalf = out / "train.jsonl", out / "eval.jsonl"
    with train.open("w") as ft, evalf.open("w") as fe:
        for i in range(n_images):
            img, shapes = draw_scene(rng)
            name = f"images/{i:06d}.png"
            img.save(out / name)
            for j, q in enumerate(questions(rng, shapes, img.size, min_pixels, max_pixels)):
                msgs = [{"role": "user", "content": [{"type": "image", "image": name},
                                                     {"type": "text", "text": q["question"]}]},
                        {"role": "assistant", "content": q["answer"]}]
                ft.write(json.dumps({"messages": msgs}) + "\n")
                row = {"id": f"{i}-{j}", "image": name, "question": q["question"], "kind": q["kind"],
                       "width": img.width, "height": img.height}
                row.update({"bbox": q["bbox"]} if "bbox" in q else {"answer": q["answer"]})
                fe.write(json.dumps(row) + "\n")
    return train, evalf
