"""VLMEvalKit model adapter: `generate_inner(message, dataset)`, where message is an interleaved list of
{"type": "image"|"video"|"text", "value": path or text, optional "role"}. As VLMEvalKit's own Qwen2-VL
adapter does, every item goes into one user turn (system/assistant-role text included) and the dataset's
own prompts are used (use_custom_prompt -> False).

    from qwenvl.eval.adapters.vlmevalkit import register
    register(model_path="/path", max_pixels=16384 * 28 * 28)   # adds "qwenvl" to vlmeval.config.supported_VLM

or from the command line, VLMEvalKit's runner with qwenvl registered: `python -m qwenvl.eval.adapters.vlmevalkit
--model-args model_path=/path --model qwenvl --data <dataset> ...` (see main()).
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

    def content(self, message) -> list[dict]:
        if isinstance(message, str):
            message = [{"type": "text", "value": message}]
        content = []
        for m in message:
            if isinstance(m, str):   # VLMEvalKit also accepts bare strings: paths or text
                m = {"type": "text", "value": m}
            if m["type"] in ("image", "video"):
                content.append(self.gen.item(m["type"], m["value"]))
            elif m["type"] == "text":
                content.append({"type": "text", "text": m["value"]})
            else:
                raise ValueError(f"qwenvl VLMEvalKit adapter: unsupported message item type {m['type']!r}")
        return content

    def to_messages(self, message) -> list[dict]:
        return [{"role": "user", "content": self.content(message)}]

    def chat_inner(self, messages, dataset=None) -> str:
        """Multi-turn datasets (TYPE "MT"): [{"role", "content": [items]}], each turn keeps its role."""
        return self.gen.generate([{"role": m["role"], "content": self.content(m["content"])} for m in messages])

    def generate_inner(self, message, dataset=None) -> str:
        return self.gen.generate(self.to_messages(message))

    def generate(self, message, dataset=None) -> str:
        """BaseModel.generate's entry point, for use without VLMEvalKit installed."""
        return self.generate_inner(message, dataset)


def register(name: str = "qwenvl", **kwargs):
    """Add `name` to vlmeval.config.supported_VLM as a partial of the module-level class (kwargs are
    the model's: model_path, dtype, device, max_pixels, ...); returns the class. VLMEvalKit's runner
    builds `supported_VLM[name]()` for `--model name`, or `supported_VLM[name](**cfg)` for a `--config`
    entry without a "class" key."""
    from vlmeval.config import supported_VLM

    from .vlmevalkit_model import QwenVLVLMEvalKit

    supported_VLM[name] = functools.partial(QwenVLVLMEvalKit, **kwargs)
    return QwenVLVLMEvalKit


def parse_model_args(text: str) -> dict:
    """`k=v,k=v` (lmms-eval's --model_args form) into keyword arguments."""
    out = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        if "=" not in part:
            raise ValueError(f"--model-args: {part!r} is not key=value")
        key, value = part.split("=", 1)
        out[key.strip()] = value.strip()
    return out


def main(argv=None):
    """VLMEvalKit's own runner (vlmeval/run.py) with qwenvl registered first, since run.py only knows
    the models in supported_VLM:

        python -m qwenvl.eval.adapters.vlmevalkit --model-args model_path=/ckpt,max_pixels=12845056 \
            --model qwenvl --data MMBench_DEV_EN --work-dir outputs
        python -m qwenvl.eval.adapters.vlmevalkit --config eval.json     # {"model": {"qwenvl": {...}}, ...}

    Everything but --model-args / --name goes to run.py unchanged."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)   # `--model` is run.py's
    parser.add_argument("--model-args", default="", help="k=v,... for the qwenvl model (model_path=...)")
    parser.add_argument("--name", default="qwenvl", help="the name to register in supported_VLM")
    ours, rest = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    register(ours.name, **parse_model_args(ours.model_args))

    from vlmeval import run
    from vlmeval.smp import load_env

    load_env()
    sys.argv = ["vlmeval-run", *rest]
    run.main()


if __name__ == "__main__":
    main()
