"""lmms-eval model adapter: `generate_until` for both request layouts lmms-eval builds.

simple tasks: req.args = (context, gen_kwargs, doc_to_visual, doc_id, task, split); the document comes
              from self.task_dict[task][split][doc_id], and doc_to_visual(doc) gives PIL images and/or
              video paths (placed before the text, as lmms-eval's own Qwen2.5-VL adapter does).
chat tasks:   req.args = (context, doc_to_messages, gen_kwargs, doc_id, task, split); doc_to_messages(doc)
              gives OpenAI-style messages with {"type": "image"|"video", "url": ...} items; a video's
              start_time/end_time (seconds) become our video_start/video_end.

Registration, lmms-eval 0.7: models are found through MODEL_REGISTRY_V2, filled from ModelManifests
that name module-level classes by import path. `manifests()` is the payload of the `lmms_eval.models`
entry point this package declares (pyproject.toml), so an installed qwenvl is found by
`lmms-eval --model qwenvl --model_args pretrained=/path,max_pixels=1605632` with no code. The classes
live in lmms_eval_models.py, which imports lmms-eval (this module does not). `register()` does the
same in-process (and fills the old MODEL_REGISTRY of lmms-eval < 0.7).
"""

from __future__ import annotations

from ._messages import PipeHolder, cut_at_stops


class QwenVLForLmmsEval:
    is_simple = True

    def __init__(self, pretrained=None, pipe=None, dtype="bfloat16", device="cuda", max_pixels=None,
                 min_pixels=None, fps=None, max_new_tokens=128, **unused):
        try:
            super().__init__()      # lmms.__init__ (task_dict, rank, cache hook) when registered
        except TypeError:
            pass
        if not hasattr(self, "task_dict"):
            self.task_dict = {}
        self.gen = PipeHolder(pretrained, pipe=pipe, dtype=dtype, device=device, max_pixels=max_pixels,
                              min_pixels=min_pixels, fps=fps, max_new_tokens=max_new_tokens)

    # lmms-eval's `--model_args k=v,k=v` path
    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None):
        kwargs = dict(kv.split("=", 1) for kv in arg_string.split(",") if "=" in kv)
        kwargs.update({k: v for k, v in (additional_config or {}).items() if v is not None})
        return cls(**kwargs)

    def _visual_item(self, v) -> dict:
        is_video = isinstance(v, str) and v.lower().endswith((".mp4", ".avi", ".mov", ".mkv", ".webm"))
        return self.gen.item("video" if is_video else "image", v)

    def _simple_messages(self, context, doc_to_visual, doc_id, task, split) -> list[dict]:
        visuals = []
        if doc_to_visual is not None:
            visuals = doc_to_visual(self.task_dict[task][split][doc_id]) or []
        content = [self._visual_item(v) for v in visuals]
        content.append({"type": "text", "text": context.replace("<image>", "").strip()})
        return [{"role": "user", "content": content}]

    def _chat_messages(self, doc_to_messages, doc_id, task, split) -> list[dict]:
        raw = doc_to_messages(self.task_dict[task][split][doc_id])
        raw = raw.messages if hasattr(raw, "messages") else raw   # a ChatMessages wrapper
        out = []
        for m in raw:
            m = m.model_dump() if hasattr(m, "model_dump") else dict(m)
            content = m.get("content")
            if isinstance(content, str):
                out.append({"role": m["role"], "content": content})
                continue
            items = []
            for c in content:
                c = c.model_dump() if hasattr(c, "model_dump") else dict(c)
                kind = c.get("type")
                if kind in ("image", "video"):
                    item = self.gen.item(kind, c.get("url", c.get(kind)))
                    if kind == "video":   # lmms-eval's clip window, in seconds
                        for theirs, ours in (("start_time", "video_start"), ("end_time", "video_end")):
                            if c.get(theirs) is not None:
                                item[ours] = float(c[theirs])
                    items.append(item)
                elif kind == "text":
                    items.append({"type": "text", "text": c["text"]})
            out.append({"role": m["role"], "content": items})
        return out

    def generate_until(self, requests) -> list[str]:
        answers = []
        for req in requests:
            args = req.args if hasattr(req, "args") else req.arguments
            if isinstance(args[1], dict):       # simple layout
                context, gen_kwargs, doc_to_visual, doc_id, task, split = args
                messages = self._simple_messages(context, doc_to_visual, doc_id, task, split)
            else:                                # chat layout
                context, doc_to_messages, gen_kwargs, doc_id, task, split = args
                messages = self._chat_messages(doc_to_messages, doc_id, task, split)
            gen_kwargs = dict(gen_kwargs or {})
            text = self.gen.generate(messages, gen_kwargs.get("max_new_tokens"), gen_kwargs.get("temperature", 0))
            answers.append(cut_at_stops(text, gen_kwargs.get("until")))
        return answers

    def loglikelihood(self, requests):
        raise NotImplementedError("qwenvl adapter: loglikelihood is not supported (generation tasks only)")

    def generate_until_multi_round(self, requests):
        raise NotImplementedError("qwenvl adapter: multi-round generation is not supported")


MODEL_ID = "qwenvl"
SIMPLE_CLASS = "qwenvl.eval.adapters.lmms_eval_models.QwenVLSimple"
CHAT_CLASS = "qwenvl.eval.adapters.lmms_eval_models.QwenVLChat"


def manifests(name: str = MODEL_ID) -> list:
    """lmms-eval 0.7 ModelManifests: one id with a chat class (what 0.7 resolves by default, so tasks
    with doc_to_messages keep their video windows) and a simple class (for --force_simple)."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return [ModelManifest(model_id=name, simple_class_path=SIMPLE_CLASS, chat_class_path=CHAT_CLASS)]


def register(name: str = MODEL_ID):
    """Register the adapter under `name` in this process; returns the class lmms-eval will resolve
    (the chat one on 0.7, the simple one on older releases)."""
    try:
        from lmms_eval.models import MODEL_REGISTRY_V2
    except ImportError:    # lmms-eval < 0.7: the decorator registry only
        MODEL_REGISTRY_V2 = None
    from lmms_eval.api.registry import register_model

    from . import lmms_eval_models

    if MODEL_REGISTRY_V2 is None:
        return register_model(name)(lmms_eval_models.QwenVLSimple)
    for manifest in manifests(name):
        MODEL_REGISTRY_V2.register_manifest(manifest, overwrite=True)
    register_model(name)(lmms_eval_models.QwenVLSimple)   # the old registry, for code that still reads it
    return MODEL_REGISTRY_V2.get_model_class(name)
