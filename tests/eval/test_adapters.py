"""lmms-eval and VLMEvalKit adapters with a fake pipeline, in both harnesses' message formats. The real
packages are not installed here; their base classes are stood in by minimal modules in sys.modules."""

import abc
import sys
import types
from dataclasses import dataclass

import pytest

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


def stand_in_lmms_eval(monkeypatch):
    """Minimal lmms-eval 0.7 modules: the `lmms` base, the old decorator registry, and a V2 registry
    keeping 0.7's contract (manifests name classes by import path; get_model_class imports the path,
    requires an `lmms` subclass and the is_simple flag of the resolved type)."""
    import importlib

    class lmms(abc.ABC):
        is_simple = True

        def __init__(self):
            self.task_dict, self._rank = {}, 0

        @abc.abstractmethod
        def generate_until(self, requests): ...

        @abc.abstractmethod
        def loglikelihood(self, requests): ...

        @abc.abstractmethod
        def generate_until_multi_round(self, requests): ...

    @dataclass(frozen=True)
    class ModelManifest:
        model_id: str
        simple_class_path: str = None
        chat_class_path: str = None
        aliases: tuple = ()

    class RegistryV2:
        def __init__(self):
            self.manifests = {}

        def register_manifest(self, manifest, *, overwrite=False):
            self.manifests[manifest.model_id] = manifest

        def get_model_class(self, name, force_simple=False):
            m = self.manifests[name]
            chat = m.chat_class_path is not None and not (force_simple and m.simple_class_path)
            module, cls_name = (m.chat_class_path if chat else m.simple_class_path).rsplit(".", 1)
            cls = getattr(importlib.import_module(module), cls_name)
            assert isinstance(cls, type) and issubclass(cls, lmms)
            assert cls.is_simple is (not chat)
            return cls

    old = {}

    def register_model(*names):
        def deco(cls):
            old.update({n: cls for n in names})
            return cls
        return deco

    v2 = RegistryV2()
    for name, attrs in {"lmms_eval": {}, "lmms_eval.api": {}, "lmms_eval.api.model": {"lmms": lmms},
                        "lmms_eval.api.registry": {"register_model": register_model, "MODEL_REGISTRY": old},
                        "lmms_eval.models": {"MODEL_REGISTRY_V2": v2},
                        "lmms_eval.models.registry_v2": {"ModelManifest": ModelManifest}}.items():
        monkeypatch.setitem(sys.modules, name, types.SimpleNamespace(**attrs))
    monkeypatch.delitem(sys.modules, "qwenvl.eval.adapters.lmms_eval_models", raising=False)
    return lmms, v2, old


def test_lmms_eval_07_registry(monkeypatch):
    lmms, v2, old = stand_in_lmms_eval(monkeypatch)
    # the classes module is imported below against the stand-ins: drop it afterwards
    monkeypatch.setitem(sys.modules, "qwenvl.eval.adapters.lmms_eval_models", None)
    monkeypatch.delitem(sys.modules, "qwenvl.eval.adapters.lmms_eval_models")
    from qwenvl.eval.adapters.lmms_eval import manifests, register
    cls = register()
    assert v2.get_model_class("qwenvl") is cls and cls.is_simple is False        # chat by default, as 0.7
    simple = v2.get_model_class("qwenvl", force_simple=True)
    assert simple.is_simple is True and old["qwenvl"] is simple
    for c in (cls, simple):   # module-level classes: their path names them
        assert c.__module__ == "qwenvl.eval.adapters.lmms_eval_models" and issubclass(c, lmms)
    (m,) = manifests()
    assert m.chat_class_path == f"{cls.__module__}.{cls.__qualname__}"
    model = cls.create_from_arg_string("pretrained=/x,max_pixels=100", {"pipe": FakePipe("A"), "device": None})
    assert model._rank == 0 and model.gen.max_pixels == 100 and model.gen.pretrained == "/x"


def test_lmms_eval_entry_point_is_declared():
    import tomllib
    from pathlib import Path
    pyproject = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())
    target = pyproject["project"]["entry-points"]["lmms_eval.models"]["qwenvl"]
    module, attr = target.split(":")
    import importlib
    assert callable(getattr(importlib.import_module(module), attr))


def test_lmms_eval_video_window_reaches_the_item():
    pipe = FakePipe()
    model = QwenVLForLmmsEval(pipe=pipe)
    model.task_dict = {"t": {"test": [{}]}}
    msgs = lambda doc: [{"role": "user", "content": [
        {"type": "video", "url": "v.mp4", "start_time": 1.5, "end_time": 4},
        {"type": "video", "url": "w.mp4", "start_time": None, "end_time": None},
        {"type": "text", "text": "What?"}]}]
    model.generate_until([Req(("ctx", msgs, {"max_new_tokens": 4}, 0, "t", "test"))])
    first, second, _ = pipe.calls[0][0][0]["content"]
    assert first == {"type": "video", "video": "v.mp4", "video_start": 1.5, "video_end": 4.0}
    assert second == {"type": "video", "video": "w.mp4"}


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


def test_vlmevalkit_chat_inner_keeps_roles():
    pipe = FakePipe("ok")
    model = QwenVLForVLMEvalKit(pipe=pipe)
    turns = [{"role": "user", "content": [{"type": "image", "value": "/a.png"}, {"type": "text", "value": "q1"}]},
             {"role": "assistant", "content": [{"type": "text", "value": "a1"}]},
             {"role": "user", "content": [{"type": "text", "value": "q2"}]}]
    assert model.chat_inner(turns, dataset="MMDU") == "ok"
    messages = pipe.calls[0][0]
    assert [m["role"] for m in messages] == ["user", "assistant", "user"]
    assert messages[0]["content"][0] == {"type": "image", "image": "/a.png"}
    with pytest.raises(ValueError, match="'audio'"):
        model.generate_inner([{"type": "audio", "value": "/a.wav"}])


def test_vlmevalkit_register_and_launcher(monkeypatch):
    """register() puts a partial of the module-level class into supported_VLM (stand-in vlmeval modules);
    the launcher hands every argument but its own to run.py, with qwenvl registered before run.main()."""
    class BaseModel:
        def __init__(self):
            self.dump_image_func = None

        def generate(self, message, dataset=None):
            return "base:" + self.generate_inner(message, dataset)

    supported, seen = {}, {}

    def run_main():
        seen["argv"], seen["model"] = list(sys.argv), supported["qwenvl"](pipe=FakePipe("B"))

    for name, attrs in {"vlmeval": {}, "vlmeval.vlm": {}, "vlmeval.vlm.base": {"BaseModel": BaseModel},
                        "vlmeval.config": {"supported_VLM": supported},
                        "vlmeval.smp": {"load_env": lambda: None},
                        "vlmeval.run": {"main": run_main}}.items():
        monkeypatch.setitem(sys.modules, name, types.SimpleNamespace(**attrs))
    sys.modules["vlmeval"].run = sys.modules["vlmeval.run"]
    monkeypatch.delitem(sys.modules, "qwenvl.eval.adapters.vlmevalkit_model", raising=False)
    monkeypatch.setattr(sys, "argv", ["x"])
    from qwenvl.eval.adapters import vlmevalkit

    vlmevalkit.main(["--model-args", "model_path=/ckpt,max_pixels=1000,device=cpu", "--model", "qwenvl",
                     "--data", "MMBench_DEV_EN", "--judge", "exact_matching"])
    assert seen["argv"][1:] == ["--model", "qwenvl", "--data", "MMBench_DEV_EN", "--judge", "exact_matching"]
    model = seen["model"]
    cls = type(model)
    assert cls.__module__ == "qwenvl.eval.adapters.vlmevalkit_model" and issubclass(cls, BaseModel)
    assert model.dump_image_func is None                        # BaseModel.__init__ ran
    assert model.gen.pretrained == "/ckpt" and model.gen.max_pixels == 1000 and model.gen.device == "cpu"
    assert model.generate([{"type": "text", "value": "q"}]) == "base:B"   # BaseModel.generate is the entry
    monkeypatch.delitem(sys.modules, "qwenvl.eval.adapters.vlmevalkit_model")
    with pytest.raises(ValueError, match="'oops' is not key=value"):
        vlmevalkit.parse_model_args("model_path=/x,oops")
