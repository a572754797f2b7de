"""Shared conversion into Qwen-form messages and the generation call."""

from __future__ import annotations


def media_item(kind: str, value, *, max_pixels=None, min_pixels=None, fps=None) -> dict:
    item = {"type": kind, kind: value}
    if max_pixels:
        item["max_pixels"] = max_pixels
    if min_pixels:
        item["min_pixels"] = min_pixels
    if kind == "video" and fps:
        item["fps"] = fps
    return item


def cut_at_stops(text: str, until) -> str:
    """lmms-eval's `until`: the answer ends before the first stop string."""
    for stop in [until] if isinstance(until, str) else list(until or []):
        if stop and stop in text:
            text = text.split(stop)[0]
    return text


class PipeHolder:
    """Loads the pipeline lazily (tests pass one in) and generates greedily."""

    def __init__(self, pretrained=None, *, pipe=None, dtype="bfloat16", device="cuda", max_pixels=None,
                 min_pixels=None, fps=None, max_new_tokens=1024):
        self._pipe, self.pretrained, self.dtype, self.device = pipe, pretrained, dtype, device
        self.max_pixels = int(max_pixels) if max_pixels else None
        self.min_pixels = int(min_pixels) if min_pixels else None
        self.fps = float(fps) if fps else None
        self.max_new_tokens = int(max_new_tokens)

    @property
    def pipe(self):
        if self._pipe is None:
            import qwenvl
            self._pipe = qwenvl.load(self.pretrained, dtype=self.dtype, device=self.device)
        return self._pipe

    def item(self, kind, value) -> dict:
        return media_item(kind, value, max_pixels=self.max_pixels, min_pixels=self.min_pixels, fps=self.fps)

    def generate(self, messages, max_new_tokens=None, temperature=0.0) -> str:
        result = self.pipe.chat(messages, max_new_tokens=int(max_new_tokens or self.max_new_tokens),
                                temperature=float(temperature or 0.0))
        return result.text
