"""Images: the qwen-vl-utils rules (smart_resize, fetch_image; 0.0.11 by default, 0.0.14 on request)
and the Qwen2VLImageProcessor patch layout, written directly.

An image goes: source -> PIL RGB (RGBA composited on white, other modes plainly converted) -> resized so both sides are multiples
of 28 (= patch 14 x merge 2) within a pixel budget -> rescaled/normalised -> cut into 14x14 patches
(each repeated over the temporal patch of 2) ordered so that every 2x2 merge group is contiguous.
"""

from __future__ import annotations

import base64
import binascii
import io
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

# qwen-vl-utils constants (0.0.10, 0.0.11 and 0.0.14 agree for factor 28; 0.0.14 states them as
# token counts times factor**2).
IMAGE_FACTOR = 28
MIN_PIXELS = 4 * 28 * 28
MAX_PIXELS = 16384 * 28 * 28
MAX_RATIO = 200

# Qwen2VLImageProcessor defaults (OpenAI CLIP statistics).
IMAGE_MEAN = (0.48145466, 0.4578275, 0.40821073)
IMAGE_STD = (0.26862954, 0.26130258, 0.27577711)


# The qwen-vl-utils releases whose rules we follow. 0.0.11 is the Qwen2.5-VL-era release (April 2025,
# the one transformers 4.51.3 was used with); 0.0.14 is the Qwen3-VL-era release. They differ in:
# smart_resize rejecting max_pixels < min_pixels (0.0.14), and lists of frames (0.0.14 resizes each
# frame to multiples of 56, then applies the video pixel budget, and takes the rate from `sample_fps`).
RULES = ("0.0.11", "0.0.14")
DEFAULT_RULES = "0.0.11"


def check_rules(rules: str) -> str:
    if rules not in RULES:
        raise ValueError(f"unknown qwen-vl-utils rules {rules!r}: choose one of {', '.join(RULES)}")
    return rules


@dataclass
class MediaSettings:
    """Defaults for loading media; per-item keys (min_pixels, fps, ...) override them."""
    factor: int = IMAGE_FACTOR                 # patch_size * merge_size
    min_pixels: int = MIN_PIXELS               # images
    max_pixels: int = MAX_PIXELS
    video_min_pixels: int = 128 * 28 * 28
    video_max_pixels: int = 768 * 28 * 28
    video_total_pixels: int = int(128000 * 28 * 28 * 0.9)
    fps: float = 2.0
    http_timeout: float = 10.0                 # seconds, for http(s) sources
    max_bytes: int = 50 * 2**20                # cap on a downloaded image
    rules: str = DEFAULT_RULES                 # which qwen-vl-utils release to match (RULES)

    def __post_init__(self):
        check_rules(self.rules)


DEFAULT_SETTINGS = MediaSettings()


def smart_resize(height: int, width: int, factor: int = IMAGE_FACTOR, min_pixels: int = MIN_PIXELS,
                 max_pixels: int = MAX_PIXELS, rules: str = DEFAULT_RULES) -> tuple[int, int]:
    """(h, w) with both multiples of `factor`, close to the input aspect ratio, and
    min_pixels <= h*w <= max_pixels, by the published qwen-vl-utils rules of release `rules`.
    Where upstream fails (an assert, or a side floored to 0 that PIL then refuses) this raises a
    ValueError naming the numbers instead."""
    check_rules(rules)
    if rules == "0.0.14" and max_pixels < min_pixels:
        raise ValueError(f"max_pixels ({max_pixels}) is below min_pixels ({min_pixels}); qwen-vl-utils "
                         f"{rules} requires max_pixels >= min_pixels")
    if min(height, width) <= 0:
        raise ValueError(f"cannot resize a {width}x{height} (WxH) image: a side is empty")
    if max(height, width) / min(height, width) > MAX_RATIO:
        raise ValueError(f"absolute aspect ratio must be smaller than {MAX_RATIO}, got "
                         f"{max(height, width) / min(height, width):.1f} for a {width}x{height} (WxH) image")
    h = max(factor, round(height / factor) * factor)   # Python round: banker's rounding, as the reference
    w = max(factor, round(width / factor) * factor)
    if h * w > max_pixels:
        # no max(factor, .) floor here upstream (in either release): a thin image under a small
        # budget gets a side of 0
        beta = math.sqrt(height * width / max_pixels)
        h = math.floor(height / beta / factor) * factor
        w = math.floor(width / beta / factor) * factor
    elif h * w < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h = math.ceil(height * beta / factor) * factor
        w = math.ceil(width * beta / factor) * factor
    if h == 0 or w == 0:
        raise ValueError(f"a {width}x{height} (WxH) image fits max_pixels={max_pixels} only with a side of 0 "
                         f"(factor {factor}, qwen-vl-utils {rules}); raise max_pixels or pad the image")
    return h, w


# ---------------------------------------------------------------------------------------- loading

def _describe(src) -> str:
    if isinstance(src, str):
        return repr(src if len(src) <= 80 else src[:60] + "...")
    return type(src).__name__


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB exactly as qwen-vl-utils (0.0.11 and 0.0.14) converts: only an RGBA image is composited
    onto white; every other mode goes through PIL's plain convert("RGB"), which drops alpha without
    compositing (an LA pixel keeps its grey, a transparent palette entry keeps its palette colour).
    Flattening those onto white too would differ from what the model was run on by up to 255."""
    if image.mode == "RGBA":
        white = Image.new("RGB", image.size, (255, 255, 255))
        white.paste(image, mask=image.split()[3])
        return white
    return image.convert("RGB")


def _open_bytes(data: bytes, what: str) -> Image.Image:
    try:
        image = Image.open(io.BytesIO(data))
        image.load()   # decode now so that a broken file fails here, with its name
    except Exception as e:
        raise ValueError(f"could not decode image {what}: {type(e).__name__}: {e}") from None
    return image


def _download(url: str, timeout: float, max_bytes: int) -> bytes:
    import requests

    try:
        with requests.get(url, stream=True, timeout=timeout) as r:
            r.raise_for_status()
            chunks, size = [], 0
            for chunk in r.iter_content(1 << 16):
                size += len(chunk)
                if size > max_bytes:
                    raise ValueError(f"{url}: over the size limit of {max_bytes} bytes")
                chunks.append(chunk)
    except requests.RequestException as e:
        raise ValueError(f"could not download {url}: {type(e).__name__}: {e}") from None
    return b"".join(chunks)


def load_image(src, settings: MediaSettings = DEFAULT_SETTINGS) -> Image.Image:
    """PIL image, HWC uint8 array, local path, file:// URI, data:image/...;base64 URI or http(s) URL
    -> RGB PIL image at its original size."""
    if isinstance(src, Image.Image):
        image = src
    elif isinstance(src, np.ndarray):
        if src.dtype != np.uint8 or src.ndim not in (2, 3):
            raise ValueError(f"an image array must be HxW or HxWxC uint8, got {src.dtype} {src.shape}")
        image = Image.fromarray(src)
    elif isinstance(src, (str, Path)):
        s = str(src)
        if s.startswith(("http://", "https://")):
            image = _open_bytes(_download(s, settings.http_timeout, settings.max_bytes), repr(s))
        elif s.startswith("data:"):
            if "base64," not in s:
                raise ValueError(f"data URI {_describe(s)} is not base64-encoded")
            try:
                data = base64.b64decode(s.split("base64,", 1)[1], validate=False)
            except (binascii.Error, ValueError) as e:
                raise ValueError(f"bad base64 in data URI {_describe(s)}: {e}") from None
            image = _open_bytes(data, f"data URI {_describe(s)}")
        else:
            path = Path(s[7:] if s.startswith("file://") else s)
            if not path.is_file():
                raise ValueError(f"image file not found: {s!r}")
            image = _open_bytes(path.read_bytes(), repr(s))
    else:
        raise ValueError(f"unrecognized image input {_describe(src)}: use a local path, file:// or http(s) URL, "
                         "a data:image/...;base64 URI, a PIL image or a uint8 array")
    return to_rgb(image)


def target_size(height: int, width: int, item: dict, settings: MediaSettings = DEFAULT_SETTINGS) -> tuple[int, int]:
    """The (h, w) fetch_image resizes to, honouring the item's resized_* / min_pixels / max_pixels."""
    if "resized_height" in item and "resized_width" in item:
        # the reference rounds the requested size with the default bounds, not the item's
        return smart_resize(item["resized_height"], item["resized_width"], settings.factor,
                            settings.min_pixels, settings.max_pixels, settings.rules)
    return smart_resize(height, width, settings.factor, item.get("min_pixels", settings.min_pixels),
                        item.get("max_pixels", settings.max_pixels), settings.rules)


def fetch_image(item: dict, settings: MediaSettings = DEFAULT_SETTINGS) -> Image.Image:
    """qwen-vl-utils fetch_image: the item's source loaded and resized (PIL bicubic) to its target."""
    return fetch_image_sized(item, settings)[0]


def fetch_image_sized(item: dict, settings: MediaSettings = DEFAULT_SETTINGS) -> tuple[Image.Image, tuple[int, int]]:
    """fetch_image, plus the original (w, h) of the source."""
    src = item["image"] if "image" in item else item.get("image_url")
    if isinstance(src, dict):      # OpenAI form {"url": ...}
        src = src.get("url")
    if src is None:
        raise ValueError(f"image item has no source: {item!r}")
    image = load_image(src, settings)
    h, w = target_size(image.height, image.width, item, settings)
    return image.resize((w, h), Image.BICUBIC), image.size


# ---------------------------------------------------------------------------------------- patches

@dataclass(frozen=True)
class PatchSpec:
    """The image processor's numbers (preprocessor_config.json)."""
    patch_size: int = 14
    merge_size: int = 2
    temporal_patch_size: int = 2
    min_pixels: int = 56 * 56
    max_pixels: int = 28 * 28 * 1280
    image_mean: tuple[float, ...] = IMAGE_MEAN
    image_std: tuple[float, ...] = IMAGE_STD
    rescale_factor: float = 1 / 255

    @property
    def factor(self) -> int:
        return self.patch_size * self.merge_size


def processor_resize(frames: list[Image.Image], spec: PatchSpec) -> list[Image.Image]:
    """The HF image processor resizes again with its own bounds. After fetch_image that is a no-op
    unless the checkpoint's min/max pixels are tighter than qwen-vl-utils'; then match it."""
    w, h = frames[0].size
    th, tw = smart_resize(h, w, spec.factor, spec.min_pixels, spec.max_pixels)
    if (th, tw) == (h, w):
        return frames
    return [f.resize((tw, th), Image.BICUBIC) for f in frames]


def patchify(frames: torch.Tensor, spec: PatchSpec) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """Frames [T, C, H, W] with values 0..255 -> (patches [t*h*w, C*tp*P*P], (t, h, w)) in the
    Qwen2VLImageProcessor layout: rows ordered (t, h/m, w/m, m, m) so each merge group of m*m
    patches is contiguous; each row is (C, tp, P, P)."""
    x = frames.to(torch.float32) * spec.rescale_factor
    mean = torch.tensor(spec.image_mean, dtype=torch.float32).view(1, -1, 1, 1)
    std = torch.tensor(spec.image_std, dtype=torch.float32).view(1, -1, 1, 1)
    x = (x - mean) / std
    tp, p, m = spec.temporal_patch_size, spec.patch_size, spec.merge_size
    if x.shape[0] % tp:   # a single image: repeat the last frame to fill the temporal patch
        x = torch.cat([x, x[-1:].expand(tp - x.shape[0] % tp, -1, -1, -1)])
    T, C, H, W = x.shape
    gt, gh, gw = T // tp, H // p, W // p
    x = x.reshape(gt, tp, C, gh // m, m, p, gw // m, m, p)
    x = x.permute(0, 3, 6, 4, 7, 2, 1, 5, 8)
    return x.reshape(gt * gh * gw, C * tp * p * p).contiguous(), (gt, gh, gw)


def pil_to_tensor(frames: list[Image.Image]) -> torch.Tensor:
    """PIL RGB images of one size -> uint8 [T, 3, H, W]."""
    arr = np.stack([np.asarray(f, dtype=np.uint8) for f in frames])
    return torch.from_numpy(arr).permute(0, 3, 1, 2)


def image_patches(image: Image.Image, spec: PatchSpec) -> tuple[torch.Tensor, tuple[int, int, int], tuple[int, int]]:
    """A fetched image -> (pixel_values, grid_thw, (w, h) the model sees)."""
    (image,) = processor_resize([image], spec)
    values, grid = patchify(pil_to_tensor([image]), spec)
    return values, grid, image.size
