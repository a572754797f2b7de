"""Helpers for the training tests: tiny images and JSONL records in both accepted formats."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

ANSWERS = ["a red square", "two birds", "the lazy dog", "blue", "three people", "a cat", "left", "top"]


def write_images(folder: Path, n: int, seed: int = 0) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    names = []
    for i in range(n):
        w, h = [(56, 56), (84, 56), (56, 112), (112, 84)][i % 4]
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(folder / f"img{i}.png")
        names.append(f"images/img{i}.png")
    return names


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def sft_records(images: list[str], n: int) -> list[dict]:
    """Alternate qwen-vl-finetune records (with images) and messages records (some text-only)."""
    out = []
    for i in range(n):
        answer = ANSWERS[i % len(ANSWERS)]
        if i % 3 == 2:
            out.append({"messages": [{"role": "user", "content": f"Say {i}."},
                                     {"role": "assistant", "content": answer}]})
        elif i % 3 == 1:
            out.append({"messages": [{"role": "user", "content": [{"type": "image", "image": images[i % len(images)]},
                                                                  {"type": "text", "text": "What is it?"}]},
                                     {"role": "assistant", "content": answer}]})
        else:
            out.append({"image": images[i % len(images)],
                        "conversations": [{"from": "human", "value": "<image>\nWhat is in the image?"},
                                          {"from": "gpt", "value": answer}]})
    return out
