"""VLMEvalKit model adapter: `generate_inner(message, dataset)`, where message is an interleaved list of
{"type": "image"|"video"|"text", "value": path or text, optional "role"}. As VLMEvalKit's own Qwen2-VL
adapter does, every item goes into one user turn (system/assistant-role text included) and the dataset's
own prompts are used (use_custom_prompt -> False).

    from qwenvl.eval.adapters.vlmevalkit import register
    register(model_path="/path", max_pixels=16384 * 28 * 28)   # adds "qwenvl" to vlmeval.config.supported_VLM
"""

from __future__ import annotations

import functools

from ._messages import PipeHolder


class QwenVLForVLMEvalKit:
    INTERLEAVE = True
    VIDEO_LLM = True
    allowed_types = ["text", "image", "video"]

    def __init__(self, model_path=None, pipe=None, dtype="bfloat16", device="cuda", max_pixels=None,
                 min_pixels=None, fps=2.0, max_new_tokens=2048, **unused):
        try:
            super().__init__()
        except TypeError:
            pass
        self.gen = PipeHolder(model_path, pipe=pipe, dtype=dtype, device=device, max_pixels=max_pixels,
                              min_pixels=min_pixels, fps=fps, max_new_tokens=max_new_tokens)

    def use_custom_prompt(self, dataset) -> bool:
        return False

    def to_messages(self, message) -> list[dict]:
        if isinstance(message, str):
            message = [{"type": "text", "value": message}]
        content = []
        for m in message:
            if isinstance(m, str):   # VLMEvalKit also accepts bare strings: paths or text
                m = {"type": "text", "value": m}
            if m["type"] in ("image", "video"):
                content.append(self.gen.item(m["type"], m["value"]))
            else:
                content.append({"type": "text", "text": m["value"]})
        return [{"role": "user", "content": content}]

    def generate_inner(self, message, dataset=None) -> str:
        return self.gen.generate(self.to_messages(message))

    def generate(self, message, dataset=None) -> str:
        """BaseModel.generate's entry point, for use without VLMEvalKit installed."""
        return self.generate_inner(message, dataset)


def register(name: str = "qwenvl", **kwargs):
    """Subclass vlmeval's BaseModel and add a partial to vlmeval.config.supported_VLM; returns the class."""
    from vlmeval.config import supported_VLM
    from vlmeval.vlm.base import BaseModel

    # BaseModel.generate (message normalisation, then generate_inner) replaces the stand-alone one.
    cls = type("QwenVLVLMEvalKit", (QwenVLForVLMEvalKit, BaseModel), {"generate": BaseModel.generate})
    supported_VLM[name] = functools.partial(cls, **kwargs)
    return cls
