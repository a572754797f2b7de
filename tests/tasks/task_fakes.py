"""Helpers for the task tests: a scripted pipe answering with real ChatResult / MediaInfo objects."""

from __future__ import annotations

from qwenvl.pipeline import ChatResult
from qwenvl.processing import MediaInfo


def media_info(kind, original_size, input_size, *, fps=None, num_frames=1, grid_thw=(1, 2, 2)) -> MediaInfo:
    return MediaInfo(kind, tuple(original_size), tuple(input_size), grid_thw, fps, num_frames)


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
        return ChatResult(text, token_ids=[], prompt_tokens=0, finish_reason="stop", media=media)
