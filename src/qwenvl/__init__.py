"""qwenvl: a from-scratch PyTorch implementation of the Qwen2.5-VL system.

The public names are imported on first use (PEP 562 module __getattr__), so that `import qwenvl` and
`qwenvl --help` do not pay for importing torch."""

from pathlib import Path as _Path

# The small model trained by scripts/build_default_model.py and shipped in the package (synthetic shapes:
# counting, colours, grounding), so that every command runs offline. None when not installed.
_default = _Path(__file__).parent / "assets" / "default"
DEFAULT_MODEL: str | None = str(_default) if (_default / "config.json").exists() else None

_LAZY = {"load": "pipeline", "Pipeline": "pipeline", "ChatResult": "pipeline", "SamplingParams": "engine.sampling",
         "QwenVLConfig": "config", "PRESETS": "config"}

__all__ = ["DEFAULT_MODEL", "load", "Pipeline", "ChatResult", "SamplingParams", "QwenVLConfig", "PRESETS"]
__version__ = "0.1.0"


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value        # later lookups skip this function (and monkeypatching works as usual)
        return value
    raise AttributeError(f"module 'qwenvl' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
