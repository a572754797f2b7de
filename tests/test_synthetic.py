"""The synthetic shapes data: answers agree with the drawn scenes, boxes are in resized pixels."""

from __future__ import annotations

import json

from PIL import Image

from qwenvl.processing import smart_resize
from qwenvl.synthetic import write_dataset
from qwenvl.tasks import parse_boxes


def test_dataset_is_consistent(tmp_path):
    train, evalf = write_dataset(tmp_path, 12, seed=3)
    rows = [json.loads(l) for l in evalf.read_text().splitlines()]
    convs = [json.loads(l) for l in train.read_text().splitlines()]
    assert len(rows) == len(convs) and {r["kind"] for r in rows} >= {"count", "color", "ground"}
    for row, conv in zip(rows, convs):
        img = Image.open(tmp_path / row["image"])
        assert (img.width, img.height) == (row["width"], row["height"])
        answer = conv["messages"][1]["content"]
        if row["kind"] == "ground":
            h, w = smart_resize(img.height, img.width)
            (det,) = parse_boxes(answer, input_size=(w, h), image_size=img.size)
            assert max(abs(a - b) for a, b in zip(det.bbox, row["bbox"])) <= 1.0
            # the box covers the shape: its centre pixel is not background
            cx, cy = (row["bbox"][0] + row["bbox"][2]) // 2, (row["bbox"][1] + row["bbox"][3]) // 2
            assert img.getpixel((cx, cy)) != img.getpixel((0, 0))
        else:
            assert answer == row["answer"]
