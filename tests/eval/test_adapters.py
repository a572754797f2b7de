"""lmms-eval and VLMEvalKit adapters with a fake pipeline, in both harnesses' message formats. The real
packages are not installed here; their base classes are stood in by minimal modules in sys.modules."""

import abc
import sys
import types
from dataclasses import dataclass

from qwenvl.eval.adapters.lmms_eval import QwenVLForLmmsEval
from qwenvl.eval.adapters.vlmevalkit import QwenVLForVLMEvalKit


@dataclass
class Result:
    text: str


class FakePipe:
    def __init__(self, text="B. cat\n\nmore"):
        self.text, self.calls = text, []

    def chat(self, messages, max_new_tokens=None, temperature=None):
        self.calls.append((messages, max_new_tokens, temperature))
        return Result(self.text)


@dataclass
class Req:
    args: tuple


def test_lmms_eval_simple_and_chat_layouts():
    pipe = FakePipe()
    model = QwenVLForLmmsEval(pipe=pipe, max_pixels="1605632")
    img = object()   # stands for a PIL image
    model.task_dict = {"ai2d": {"test": [{"image": img}]}}
    simple = Req(("<image>\nWhich?", {"max_new_tokens": 16, "until": ["\n\n"], "temperature": 0},
                  lambda doc: [doc["image"]], 0, "ai2d", "test"))
    chat = Req(("ctx", lambda doc: [{"role": "user", "content": [{"type": "video", "url": "v.mp4"},
                                                                 {"type": "text", "text": "What?"}]}],
                {"max_new_tokens": 8}, 0, "ai2d", "test"))
    assert model.generate_until([simple, chat]) == ["B. cat", "B. cat\n\nmore"]
    (m1, n1, t1), (m2, n2, _) = pipe.calls
    assert m1[0]["content"][0] == {"type": "image", "image": img, "max_pixels": 1605632}
    assert m1[0]["content"][1] == {"type": "text", "text": "Which?"} and n1 == 16 and t1 == 0.0
    assert m2[0]["content"][0]["type"] == "video" and m2[0]["content"][0]["video"] == "v.mp4" and n2 == 8


def test_lmms_eval_register_with_stand_in_base(monkeypatch):
    registry = {}

    class lmms(abc.ABC):
        def __init__(self):
            self.task_dict, self._rank = {}, 0

        @abc.abstractmethod
        def generate_until(self, requests): ...

        @abc.abstractmethod
        def loglikelihood(self, requests): ...

        @abc.abstractmethod
        def generate_until_multi_round(self, requests): ...

    def register_model(*names):
        def deco(cls):
            assert issubclass(cls, lmms)
            registry.update({n: cls for n in names})
            return cls
        return deco

    for name, attrs in {"lmms_eval": {}, "lmms_eval.api": {}, "lmms_eval.api.model": {"lmms": lmms},
                        "lmms_eval.api.registry": {"register_model": register_model}}.items():
        monkeypatch.setitem(sys.modules, name, types.SimpleNamespace(**attrs))
    from qwenvl.eval.adapters.lmms_eval import register
    cls = register()
    assert registry["qwenvl"] is cls
    model = cls.create_from_arg_string("pretrained=/x,max_pixels=100", {"pipe": FakePipe("A")})
    assert model._rank == 0 and model.gen.max_pixels == 100 and model.gen.pretrained == "/x"


def test_vlmevalkit_generate_inner():
    pipe = FakePipe("C")
    model = QwenVLForVLMEvalKit(pipe=pipe, fps=2.0, max_pixels=1000)
    msg = [{"type": "text", "value": "You are a GUI agent.", "role": "system"},
           {"type": "image", "value": "/data/a.jpg"}, {"type": "video", "value": "/data/v.mp4"},
           {"type": "text", "value": "Question: q\nOptions:\nA. x\nB. y\nC. z"}]
    assert model.generate_inner(msg, dataset="MMBench_DEV_EN") == "C"
    messages, max_new, temp = pipe.calls[0]
    assert len(messages) == 1 and messages[0]["role"] == "user"      # roles folded into one user turn
    kinds = [c["type"] for c in messages[0]["content"]]
    assert kinds == ["text", "image", "video", "text"]
    assert messages[0]["content"][2] == {"type": "video", "video": "/data/v.mp4", "max_pixels": 1000, "fps": 2.0}
    assert temp == 0.0 and max_new == 2048 and not model.use_custom_prompt("MMBench_DEV_EN")
    assert model.generate("just text") == "C"
