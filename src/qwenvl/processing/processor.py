"""Messages (with images and videos) -> model tensors, as qwen-vl-utils + transformers'
Qwen2_5_VLProcessor produce them:

1. normalise the messages and fetch the media in prompt order (qwen-vl-utils fetch_image/fetch_video);
2. render the chat template: one `<|image_pad|>` / `<|video_pad|>` per item;
3. cut the media into patches (Qwen2VLImageProcessor layout) and expand each pad token to
   t*h*w / merge^2 copies, the number of embeddings the vision tower returns for it;
4. tokenize and pad (left by default, the layout batched generation wants).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
from PIL import Image

from ..errors import ContextLengthError, MediaError
from . import chat
from .image import (MediaSettings, PatchSpec, fetch_image_sized, image_patches, patchify, pil_to_tensor,
                    processor_resize, smart_resize)
from .tokenizer import StreamDecoder, Tokenizer
from .video import fetch_video_sized


@dataclass
class MediaInfo:
    kind: str                          # "image" | "video"
    original_size: tuple[int, int]     # (w, h) of the source
    input_size: tuple[int, int]        # (w, h) the model saw (boxes in answers refer to this)
    grid_thw: tuple[int, int, int]     # in patches of 14 px (t in temporal patches of 2 frames)
    fps: float | None                  # sample fps of a video (frames per second of the video's time)
    num_frames: int                    # 1 for an image

    @property
    def num_tokens(self) -> int:
        t, h, w = self.grid_thw
        return t * h * w // 4   # one LLM token per 2x2 merge group


class ModelInputs(dict):
    """A dict with the transformers key names, plus `.media`: MediaInfo per conversation, in order."""

    def __init__(self, data: dict, media: list[list[MediaInfo]]):
        super().__init__(data)
        self.media = media

    def to(self, device=None, dtype: torch.dtype | None = None) -> "ModelInputs":
        """Move every tensor; `dtype` applies to the floating ones (pixel values) only."""
        out = {}
        for k, v in self.items():
            if isinstance(v, torch.Tensor):
                v = v.to(device=device, dtype=dtype if (dtype is not None and v.is_floating_point()
                                                          and k.startswith("pixel_values")) else None)
            out[k] = v
        return ModelInputs(out, self.media)


class Prepared(NamedTuple):
    """One conversation, before tokenizing: template text (one pad per item), the media as the
    model will see them (PIL images; float [T, C, H, W] 0..255 frames), and their MediaInfo."""
    text: str
    images: list
    videos: list
    media: list


class Processor:
    image_token = "<|image_pad|>"
    video_token = "<|video_pad|>"

    def __init__(self, tokenizer: Tokenizer, chat_template: str, spec: PatchSpec = PatchSpec(),
                 settings: MediaSettings | None = None, max_length: int | None = None):
        self.tokenizer = tokenizer
        self.chat_template = chat_template
        self.spec = spec
        self.settings = settings or MediaSettings(factor=spec.factor)
        self.max_length = max_length
        self.image_token_id = tokenizer.token_to_id(self.image_token)
        self.video_token_id = tokenizer.token_to_id(self.video_token)
        if self.image_token_id is None or self.video_token_id is None:
            raise ValueError("the tokenizer lacks <|image_pad|> / <|video_pad|>: not a Qwen2.5-VL tokenizer")

    @property
    def min_pixels(self) -> int:
        """The checkpoint's image pixel bounds (preprocessor_config.json), as the model's resize uses them."""
        return self.spec.min_pixels

    @property
    def max_pixels(self) -> int:
        return self.spec.max_pixels

    @classmethod
    def from_pretrained(cls, path: str | Path, max_length: int | None = None,
                        settings: MediaSettings | None = None) -> "Processor":
        path = Path(path)
        f = path / "preprocessor_config.json"
        cfg = json.loads(f.read_text()) if f.exists() else {}
        size = cfg.get("size") or {}
        d = PatchSpec()
        spec = PatchSpec(
            patch_size=cfg.get("patch_size", d.patch_size),
            merge_size=cfg.get("merge_size", d.merge_size),
            temporal_patch_size=cfg.get("temporal_patch_size", d.temporal_patch_size),
            min_pixels=cfg.get("min_pixels") or size.get("shortest_edge") or d.min_pixels,
            max_pixels=cfg.get("max_pixels") or size.get("longest_edge") or d.max_pixels,
            image_mean=tuple(cfg.get("image_mean") or d.image_mean),
            image_std=tuple(cfg.get("image_std") or d.image_std),
            rescale_factor=cfg.get("rescale_factor", d.rescale_factor),
        )
        if settings is None:
            # Our own extension for small checkpoints (the default model): a video frame budget of the
            # checkpoint's own. Released checkpoints carry no such key and keep qwen-vl-utils' defaults.
            video = {k: int(cfg[k]) for k in ("video_min_pixels", "video_max_pixels") if cfg.get(k)}
            settings = MediaSettings(factor=spec.factor, **video)
        return cls(Tokenizer.from_pretrained(path), chat.load_chat_template(path), spec, settings, max_length)

    # ------------------------------------------------------------------------- text

    def encode_text(self, text: str) -> list[int]:
        return self.tokenizer.encode(text)

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)

    def stream_decoder(self, skip_special_tokens: bool = True) -> StreamDecoder:
        return StreamDecoder(self.tokenizer, skip_special_tokens)

    def apply_chat_template(self, messages, add_generation_prompt: bool = True, add_vision_id: bool = False,
                            tokenize: bool = False, **kwargs):
        """Prompt text (one pad token per media item, as HF's apply_chat_template), or its ids."""
        if _is_batch(messages):
            return [self.apply_chat_template(m, add_generation_prompt, add_vision_id, tokenize, **kwargs)
                    for m in messages]
        text = chat.render(self.chat_template, chat.normalize_messages(messages),
                           add_generation_prompt=add_generation_prompt, add_vision_id=add_vision_id,
                           special_tokens=self.tokenizer.special_tokens_map(), **kwargs)
        return self.encode_text(text) if tokenize else text

    # ------------------------------------------------------------------------ media

    def prepare(self, conversation, *, add_generation_prompt: bool = True, add_vision_id: bool = False,
                **template_kwargs) -> Prepared:
        messages = chat.normalize_messages(conversation)
        text = chat.render(self.chat_template, messages, add_generation_prompt=add_generation_prompt,
                           add_vision_id=add_vision_id, special_tokens=self.tokenizer.special_tokens_map(),
                           **template_kwargs)
        images, videos, media = [], [], []
        for i, item in enumerate(chat.media_items(messages)):
            try:
                if item["type"] == "image":
                    image, orig = fetch_image_sized(item, self.settings)
                    (image,) = processor_resize([image], self.spec)
                    images.append(image)
                    media.append(MediaInfo("image", orig, image.size, (1, image.height // self.spec.patch_size,
                                                                       image.width // self.spec.patch_size), None, 1))
                else:
                    frames, fps, orig = fetch_video_sized(item, self.settings)
                    frames = self._processor_resize_video(frames)
                    T, _, H, W = frames.shape
                    p = self.spec.patch_size
                    media.append(MediaInfo("video", orig, (W, H), (T // self.spec.temporal_patch_size, H // p, W // p),
                                           fps, T))
                    videos.append(frames)
            except ValueError as e:
                raise MediaError(item["type"], i + 1, f"{item['type']} {i + 1} ({_source(item)}): {e}") from None
        return Prepared(text, images, videos, media)

    def _processor_resize_video(self, frames: torch.Tensor) -> torch.Tensor:
        """HF's image processor resizes video frames with its own bounds too (normally a no-op)."""
        H, W = frames.shape[-2:]
        h, w = smart_resize(H, W, self.spec.factor, self.spec.min_pixels, self.spec.max_pixels)
        if (h, w) == (H, W):
            return frames
        pil = [Image.fromarray(f.permute(1, 2, 0).to(torch.uint8).numpy()).resize((w, h), Image.BICUBIC)
               for f in frames]
        return pil_to_tensor(pil).float()

    # ------------------------------------------------------------------------- call

    def __call__(self, messages_or_batch, *, add_generation_prompt: bool = True, add_vision_id: bool = False,
                 padding_side: str = "left", return_tensors: str = "pt", **template_kwargs) -> ModelInputs:
        if return_tensors != "pt":
            raise ValueError(f"only return_tensors='pt' is supported, got {return_tensors!r}")
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
        conversations = messages_or_batch if _is_batch(messages_or_batch) else [messages_or_batch]
        if not conversations:
            raise ValueError("no conversation given")
        prepared = [self.prepare(c, add_generation_prompt=add_generation_prompt, add_vision_id=add_vision_id,
                                 **template_kwargs) for c in conversations]

        out: dict = {}
        image_values, image_grids, video_values, video_grids, seconds = [], [], [], [], []
        texts = []
        for p in prepared:
            for image in p.images:
                values, grid, _ = image_patches(image, self.spec)
                image_values.append(values)
                image_grids.append(grid)
            for frames, info in zip(p.videos, [m for m in p.media if m.kind == "video"]):
                values, grid = patchify(frames, self.spec)
                video_values.append(values)
                video_grids.append(grid)
                seconds.append(self.spec.temporal_patch_size / info.fps)
            texts.append(self._expand(p))
        ids = self.tokenizer.encode_batch(texts)
        self._check_length(ids)

        L = max(len(x) for x in ids)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.full((len(ids), L), pad, dtype=torch.long)
        mask = torch.zeros((len(ids), L), dtype=torch.long)
        for b, x in enumerate(ids):
            s = slice(L - len(x), L) if padding_side == "left" else slice(0, len(x))
            input_ids[b, s] = torch.tensor(x, dtype=torch.long)
            mask[b, s] = 1
        out["input_ids"], out["attention_mask"] = input_ids, mask
        if image_values:
            out["pixel_values"] = torch.cat(image_values)
            out["image_grid_thw"] = torch.tensor(image_grids, dtype=torch.long)
        if video_values:
            out["pixel_values_videos"] = torch.cat(video_values)
            out["video_grid_thw"] = torch.tensor(video_grids, dtype=torch.long)
            out["second_per_grid_ts"] = torch.tensor(seconds, dtype=torch.float32)
        return ModelInputs(out, [p.media for p in prepared])

    def _expand(self, p: Prepared) -> str:
        """Each pad token -> as many copies as the item has merged patches."""
        merge = self.spec.merge_size ** 2
        text = p.text
        for kind, token in (("image", self.image_token), ("video", self.video_token)):
            infos = [m for m in p.media if m.kind == kind]
            parts = text.split(token)
            if len(parts) - 1 != len(infos):
                raise ValueError(f"the prompt has {len(parts) - 1} {token} tokens for {len(infos)} {kind}s "
                                 f"(is {token} written in the text?)")
            pieces = [parts[0]]
            for info, rest in zip(infos, parts[1:]):
                t, h, w = info.grid_thw
                pieces += [token * (t * h * w // merge), rest]
            text = "".join(pieces)
        return text

    def _check_length(self, ids: list[list[int]]) -> None:
        if self.max_length is None:
            return
        for x in ids:
            if len(x) > self.max_length:
                visual = sum(1 for i in x if i in (self.image_token_id, self.video_token_id))
                raise ContextLengthError(f"prompt has {len(x)} tokens ({visual} visual), over the model's context of "
                                 f"{self.max_length}")


def _is_batch(x) -> bool:
    return isinstance(x, (list, tuple)) and len(x) > 0 and isinstance(x[0], (list, tuple))


def _source(item: dict) -> str:
    src = item.get(item["type"])
    if isinstance(src, (list, tuple)):
        return f"{len(src)} frames"
    if isinstance(src, str):
        return repr(src if len(src) <= 80 else src[:60] + "...")
    return type(src).__name__
