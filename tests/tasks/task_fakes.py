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

    def stream(self, messages, on_token=None, **sampling):
        """As Pipeline.stream: the answer word by word (one 'token' each), then the ChatResult."""
        result = self.chat(messages, **sampling)
        words = result.text.split(" ")
        for i, w in enumerate(words):
            if on_token:
                on_token(i + 1)
            yield w if i == 0 else " " + w
        return result


def write_video(path, n: int = 8, fps: int = 4, w: int = 64, h: int = 48):
    """A small real video (the CLI opens videos before loading a model)."""
    import av
    import numpy as np

    with av.open(str(path), "w") as out:
        s = out.add_stream("mpeg4", rate=fps)
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        for k in range(n):
            frame = np.full((h, w, 3), 20 * k % 256, np.uint8)
            for p in s.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                out.mux(p)
        for p in s.encode():
            out.mux(p)
    return path
