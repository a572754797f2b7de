from .qwen25vl import Output, QwenVL
from .rope import mrope_positions
from .text import KVCache

__all__ = ["QwenVL", "Output", "KVCache", "mrope_positions"]
