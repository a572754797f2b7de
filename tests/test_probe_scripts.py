"""The diagnostics in scripts/ (cell_probe.py, naming_probe.py): their data and how they score answers."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
from PIL import Image

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def _module(name):
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


class Scripted:
    """A pipeline stand-in: answers each conversation with answer(conversation)."""

    def __init__(self, answer, processor=None):
        self.answer, self.processor = answer, processor

    def chat(self, convs, **_):
        return [SimpleNamespace(text=self.answer(c)) for c in convs]


def test_cell_probe_draws_the_named_square_where_the_answer_says(tmp_path):
    cp = _module("cell_probe")
    path = cp.write(tmp_path, 6, seed=3, background="light", name="eval", squares=2, text_first=True)
    rows = [json.loads(x) for x in path.read_text().splitlines()]
    sides = [json.loads(x) for x in (tmp_path / "eval_cells.jsonl").read_text().splitlines()]
    for row, side in zip(rows, sides):
        question, image = row["messages"][0]["content"]           # text first
        colour = re.fullmatch(r"Where is the (\w+) square\?", question["text"])[1]
        r, c = side["cells"][side["asked"]]
        assert row["messages"][1]["content"] == f"row {r} column {c}"
        img = Image.open(tmp_path / image["image"]).convert("RGB")
        assert img.getpixel((c * cp.CELL + 14, r * cp.CELL + 14)) == cp.COLORS[colour]
        (r2, c2), = [cell for j, cell in enumerate(side["cells"]) if j != side["asked"]]
        assert img.getpixel((c2 * cp.CELL + 14, r2 * cp.CELL + 14)) != cp.COLORS[colour]


def test_cell_probe_check_tells_the_named_square_from_the_other(tmp_path, monkeypatch):
    cp = _module("cell_probe")
    cp.write(tmp_path, 9, seed=4, background="light", name="eval", squares=2)
    sides = [json.loads(x) for x in (tmp_path / "eval_cells.jsonl").read_text().splitlines()]
    # answers in turn: the named square, the other square, a cell with no square
    answers = []
    for i, side in enumerate(sides):
        cells = [tuple(c) for c in side["cells"]]
        named, other = cells[side["asked"]], cells[1 - side["asked"]]
        empty = next((r, c) for r in range(4) for c in range(4) if (r, c) not in cells)
        answers.append([named, other, empty][i % 3])
    texts = iter(f"row {r} column {c}" for r, c in answers)
    import qwenvl.pipeline
    monkeypatch.setattr(qwenvl.pipeline, "load", lambda path: Scripted(lambda conv: next(texts)))
    got = cp.check(tmp_path, "unused")
    assert got["exact"] == got["other square"] == got["no square"] == pytest.approx(1 / 3)
    assert got["row"] >= 1 / 3 and got["column"] >= 1 / 3


def test_naming_probe_scores_the_named_shape_and_any_shape(monkeypatch):
    npb = _module("naming_probe")

    def answer(conv):
        """The box of the first shape named in the question's scene, whatever is asked: right only when
        the named shape is that one."""
        return json.dumps([{"bbox_2d": list(answer.boxes.pop(0)), "label": "x"}])

    # the probe's own draws, replayed to know each scene's first shape; boxes in the resized input's pixels
    import random

    from qwenvl.synth.common import input_size, to_input
    from qwenvl.synth.shapes import scene
    processor = SimpleNamespace(min_pixels=4 * 28 * 28, max_pixels=64 * 28 * 28)
    answer.boxes = []
    named_first = 0
    for order in ("text_first", "media_first"):
        rng = random.Random(f"7/{order}")
        for _ in range(20):
            _, size, objs = scene(rng, (112, 224), objects=(2, 3))
            named = rng.choice(objs)
            answer.boxes.append(to_input(objs[0].box, input_size(size, processor.min_pixels, processor.max_pixels),
                                         size))
            named_first += named is objs[0]
    monkeypatch.setattr(npb, "load", lambda path: Scripted(answer, processor))
    got = npb.probe("unused", 20, (2, 3), (112, 224), seed=7)
    for order in ("text_first", "media_first"):
        assert got[order]["any@0.5"] == 1.0
        assert 2 <= got[order]["shapes_a_scene"] <= 3
    assert got["text_first"]["named@0.5"] + got["media_first"]["named@0.5"] == pytest.approx(named_first / 20)
