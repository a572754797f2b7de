"""qwenvl: a from-scratch PyTorch implementation of the Qwen2.5-VL system."""

from .config import PRESETS, QwenVLConfig
from .engine.sampling import SamplingParams
from .pipeline import ChatResult, Pipeline, load

__all__ = ["load", "Pipeline", "ChatResult", "SamplingParams", "QwenVLConfig", "PRESETS"]
__version__ = "0.1.0"
