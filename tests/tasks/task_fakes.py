"""Helpers for the task tests: a reference smart_resize (qwen-vl-utils semantics), a fake pipe."""

from __future__ import annotations

import math
from dataclasses import dataclass, field


def ref_smart_resize(height, width, factor=28, min_pixels=4 * 28 * 28, max_pixels=16384 * 28 * 28):
    """qwen-vl-utils 0.0.11 smart_resize, written out from its documented steps; returns (h, w)."""
    h = max(factor, round(height / factor) * factor)
    w = max(factor, round(width / factor) * factor)
    if h * w > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h = max(factor, math.floor(height / beta / factor) * factor)
        w = max(factor, math.floor(width / beta / factor) * factor)
    elif h * w < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h = math.ceil(height * beta / factor) * factor
        w = math.ceil(width * beta / factor) * factor
    return h, w


@dataclass
class FakeMedia:
    kind: str
    original_size: tuple
    input_size: tuple
    grid_thw: tuple = (1, 2, 2)
    fps: float | None = None
    num_frames: int | None = None


@dataclass
class FakeResult:
    text: str
    media: list = field(default_factory=list)
    token_ids: list = field(default_factory=list)


class FakeProcessor:
    min_pixels = 4 * 28 * 28
    max_pixels = 1280 * 28 * 28


class FakePipe:
    """Answers chat() with scripted texts (the last one repeats) and records the messages it got."""

    def __init__(self, texts, media=None):
        self.texts = list(texts)
        self.media = media or []
        self.calls = []
        self.processor = FakeProcessor()

    def chat(self, messages, **sampling):
        self.calls.append((messages, sampling))
        text = self.texts.pop(0) if len(self.texts) > 1 else self.texts[0]
        media = self.media(messages) if callable(self.media) else list(self.media)
        return FakeResult(text, media)
