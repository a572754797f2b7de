"""Inputs: messages with images and videos -> the tensors the model takes (qwen-vl-utils + the
transformers Qwen2.5-VL processor, reimplemented)."""

from .image import MediaSettings, fetch_image, load_image, smart_resize
from .processor import ModelInputs, MediaInfo, Prepared, Processor
from .tokenizer import StreamDecoder, Tokenizer
from .video import fetch_video

__all__ = ["Processor", "ModelInputs", "MediaInfo", "Prepared", "smart_resize", "load_image", "fetch_image",
           "fetch_video", "MediaSettings", "Tokenizer", "StreamDecoder"]
