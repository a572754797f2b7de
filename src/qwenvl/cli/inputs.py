"""Checks run BEFORE the model loads (seconds to minutes): the files exist and decode, the device exists,
numeric flags are in range. Each failure is a CLIError naming the flag or file and what to do."""

from __future__ import annotations

import argparse
import struct
from pathlib import Path

from .errors import CLIError, one_line

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
VIDEO_EXTS = {".mp4", ".mkv", ".webm", ".mov", ".avi", ".m4v", ".flv", ".mpg", ".mpeg", ".ts", ".gifv"}


# ------------------------------------------------------------------------------------------ flag types

def _number(kind, test, wording):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, got {text!r}")
        if not test(value):
            raise argparse.ArgumentTypeError(f"must be {wording}, got {text}")
        return value
    parse.__name__ = f"{kind.__name__} {wording}"
    return parse


positive_int = _number(int, lambda v: v >= 1, ">= 1")
nonneg_int = _number(int, lambda v: v >= 0, ">= 0")
positive_float = _number(float, lambda v: v > 0, "> 0")
nonneg_float = _number(float, lambda v: v >= 0, ">= 0")
unit_float = _number(float, lambda v: 0 < v <= 1, "in (0, 1]")


# ------------------------------------------------------------------------------------------ files

def is_url(s) -> bool:
    return isinstance(s, str) and s.startswith(("http://", "https://", "data:"))


def _local(path: str) -> Path:
    return Path(path[7:] if path.startswith("file://") else path).expanduser()


def check_file(path, what: str) -> Path:
    p = _local(str(path))
    if not p.exists():
        raise CLIError(f"{what} {path}: no such file")
    if p.is_dir():
        raise CLIError(f"{what} {path}: is a directory, expected a file")
    try:
        with p.open("rb") as f:
            f.read(1)
    except OSError as e:
        raise CLIError(f"{what} {path}: cannot read it ({e.strerror or e})") from None
    return p


def check_image(path, what: str = "image") -> None:
    """The image exists and decodes completely (a truncated JPEG fails here, with its name)."""
    if is_url(path):
        return
    p = check_file(path, what)
    from PIL import Image

    try:
        with Image.open(p) as im:
            im.load()
    except (OSError, SyntaxError, ValueError, EOFError, struct.error, Image.DecompressionBombError) as e:
        raise CLIError(f"{what} {path}: not a readable image ({one_line(e, 120)}); check the file, or re-export "
                       "it as PNG or JPEG") from None


def check_video(path, what: str = "video") -> None:
    """The video exists, PyAV is installed, and the file opens with a video stream."""
    if is_url(path):
        return
    p = check_file(path, what)
    try:
        import av
    except ImportError:
        raise CLIError(f"{what} {path}: reading videos needs PyAV: pip install 'qwenvl[video]'") from None
    try:
        with av.open(str(p)) as container:
            if not container.streams.video:
                raise CLIError(f"{what} {path}: the file has no video stream")
            next(container.decode(video=0))
    except (av.FFmpegError, StopIteration, OSError) as e:
        reason = "no frame could be decoded" if isinstance(e, StopIteration) else one_line(e, 120)
        raise CLIError(f"{what} {path}: not a readable video ({reason}); check the file") from None


def check_prompt(prompt: str | None) -> None:
    """A prompt that is an existing image or video file was meant to be attached."""
    if not prompt or len(prompt) > 4096 or "\n" in prompt:
        return
    p = Path(prompt).expanduser()
    ext = p.suffix.lower()
    if ext in IMAGE_EXTS | VIDEO_EXTS:
        try:
            exists = p.is_file()
        except OSError:
            return
        if exists:
            flag = "--image" if ext in IMAGE_EXTS else "--video"
            raise CLIError(f"the prompt {prompt!r} is a file: attach it with {flag} {prompt} and give the question "
                           "as the prompt")


def check_model(model: str | None) -> str:
    """The checkpoint: a folder with config.json and complete .safetensors files, or a hub id."""
    if not model:
        raise CLIError("no --model given and no default model is installed: pass --model DIR (a Qwen2.5-VL "
                       "checkpoint folder in the Hugging Face layout)")
    p = Path(model).expanduser()
    if not p.exists():
        looks_like_hub_id = model.count("/") == 1 and not model.startswith((".", "/", "~"))
        if looks_like_hub_id:
            return model   # resolved (downloaded) by qwenvl.load, which explains its own failure
        raise CLIError(f"--model {model}: no such checkpoint directory")
    if not p.is_dir():
        raise CLIError(f"--model {model}: not a directory (pass the checkpoint folder, not a file in it)")
    if not (p / "config.json").is_file():
        raise CLIError(f"--model {model}: no config.json there; expected a checkpoint folder in the Hugging Face "
                       "layout (config.json, *.safetensors, tokenizer files)")
    files = sorted(p.glob("*.safetensors"))
    if not files:
        raise CLIError(f"--model {model}: no .safetensors weights in the folder")
    from safetensors import SafetensorError, safe_open

    for f in files:
        try:
            # Reads the header only; it fails when the file is shorter than the tensors it lists.
            with safe_open(str(f), framework="numpy"):
                pass
        except (SafetensorError, OSError) as e:
            raise CLIError(f"--model {model}: {f.name} is unreadable ({one_line(e, 120)}); the download or export "
                           "was probably cut short: fetch the file again") from None
    return model


def check_device(device: str | None, flag: str = "--device") -> None:
    if device in (None, "", "auto", "cpu"):
        return
    import torch

    try:
        d = torch.device(device)
    except (RuntimeError, ValueError):
        raise CLIError(f"{flag} {device}: not a device (use cpu, cuda, cuda:N or mps)") from None
    if d.type == "cuda":
        if not torch.cuda.is_available():
            why = "this torch build has no CUDA support" if torch.version.cuda is None else "no GPU is visible"
            raise CLIError(f"{flag} {device}: CUDA is not available ({why}); use --device cpu")
        if d.index is not None and d.index >= torch.cuda.device_count():
            raise CLIError(f"{flag} {device}: there are only {torch.cuda.device_count()} CUDA device(s)")
    elif d.type == "mps" and not torch.backends.mps.is_available():
        raise CLIError(f"{flag} {device}: MPS is not available on this machine; use --device cpu")
    elif d.type not in ("cuda", "mps", "cpu"):
        raise CLIError(f"{flag} {device}: unsupported device type {d.type!r} (use cpu, cuda or mps)")
