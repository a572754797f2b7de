"""The chat format, in one place: messages are normalised, then rendered by the checkpoint's own Jinja
template the way transformers renders it (sandboxed, trim_blocks + lstrip_blocks, `raise_exception`,
a non-escaping `tojson`, the tokenizer's special tokens as variables).

Normalised messages: {"role": str, "content": str | list of items}, where every item is one of
  {"type": "text", "text": str}
  {"type": "image", "image": SRC, **options}       (min_pixels, max_pixels, resized_height, ...)
  {"type": "video", "video": SRC | [frames], **options}
so the template and process_vision_info-style extraction see only these three forms.
"""

from __future__ import annotations

import json
from datetime import datetime
from functools import lru_cache
from pathlib import Path

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment

ROLES = ("system", "user", "assistant", "tool")


# ----------------------------------------------------------------------------------- loading

def load_chat_template(path: str | Path) -> str:
    """chat_template.json, else chat_template.jinja, else tokenizer_config.json's chat_template."""
    path = Path(path)
    f = path / "chat_template.json"
    if f.exists():
        t = json.loads(f.read_text()).get("chat_template")
        if t:
            return t
    f = path / "chat_template.jinja"
    if f.exists():
        return f.read_text()
    f = path / "tokenizer_config.json"
    if f.exists():
        t = json.loads(f.read_text()).get("chat_template")
        if isinstance(t, list):   # [{"name": "default", "template": ...}, ...]
            t = {x["name"]: x["template"] for x in t}.get("default")
        if t:
            return t
    raise FileNotFoundError(f"{path}: no chat template (looked for chat_template.json, chat_template.jinja and "
                            "tokenizer_config.json's chat_template)")


def _raise_exception(message):
    raise jinja2.exceptions.TemplateError(message)


def _tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    # jinja's own tojson escapes HTML characters; templates expect plain JSON
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


@lru_cache(maxsize=16)
def compile_template(source: str) -> jinja2.Template:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env.from_string(source)


# ------------------------------------------------------------------------------ normalising

def _url(value):
    return value.get("url") if isinstance(value, dict) else value


def normalize_item(item, where: str) -> dict:
    """One content item -> {"type": "text"|"image"|"video", ...}."""
    if isinstance(item, str):
        return {"type": "text", "text": item}
    if not isinstance(item, dict):
        raise ValueError(f"{where}: a content item must be a dict or a string, got {type(item).__name__}")
    kind = item.get("type")
    rest = {k: v for k, v in item.items() if k not in ("type", "image", "image_url", "video", "video_url")}
    if kind in ("image", "image_url") or (kind is None and ("image" in item or "image_url" in item)):
        src = item["image"] if item.get("image") is not None else _url(item.get("image_url"))
        if src is None:
            raise ValueError(f"{where}: image item has no source (`image` or `image_url`): {_short(item)}")
        return {"type": "image", "image": src, **rest}
    if kind in ("video", "video_url") or (kind is None and ("video" in item or "video_url" in item)):
        src = item["video"] if item.get("video") is not None else _url(item.get("video_url"))
        if src is None:
            raise ValueError(f"{where}: video item has no source (`video` or `video_url`): {_short(item)}")
        return {"type": "video", "video": src, **rest}
    if kind == "text" or (kind is None and "text" in item):
        text = item.get("text")
        if not isinstance(text, str):
            raise ValueError(f"{where}: text item has no string `text`: {_short(item)}")
        return {"type": "text", "text": text}
    raise ValueError(f"{where}: unknown content item (expected type text, image, image_url, video or video_url): "
                     f"{_short(item)}")


def _short(item) -> str:
    s = repr(item)
    return s if len(s) <= 200 else s[:200] + "...}"


def normalize_messages(messages) -> list[dict]:
    if not isinstance(messages, (list, tuple)):
        raise ValueError(f"messages must be a list of dicts, got {type(messages).__name__}")
    out = []
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict):
            raise ValueError(f"messages[{i}] must be a dict with role and content, got {type(msg).__name__}")
        role = msg.get("role")
        if role not in ROLES:
            raise ValueError(f"messages[{i}]: unknown role {role!r} (expected one of {', '.join(ROLES)})")
        content = msg.get("content")
        if content is None:
            content = ""
        if isinstance(content, str):
            norm = content
        elif isinstance(content, dict):
            norm = [normalize_item(content, f"messages[{i}].content")]
        elif isinstance(content, (list, tuple)):
            norm = [normalize_item(c, f"messages[{i}].content[{j}]") for j, c in enumerate(content)]
        else:
            raise ValueError(f"messages[{i}].content must be a string or a list of items, got {type(content).__name__}")
        extra = {k: v for k, v in msg.items() if k not in ("role", "content")}   # tool_calls, name, ...
        out.append({"role": role, "content": norm, **extra})
    return out


def media_items(messages: list[dict]) -> list[dict]:
    """The image/video items of normalised messages, in prompt order (process_vision_info)."""
    return [c for m in messages if isinstance(m["content"], list) for c in m["content"]
            if c["type"] in ("image", "video")]


# ------------------------------------------------------------------------------- rendering

def render(template: str, messages: list[dict], *, add_generation_prompt: bool = True, add_vision_id: bool = False,
           continue_final_message: bool = False, special_tokens: dict | None = None, **kwargs) -> str:
    """Normalised messages -> prompt text (one `<|image_pad|>` / `<|video_pad|>` per media item)."""
    if continue_final_message and add_generation_prompt:
        raise ValueError("continue_final_message and add_generation_prompt cannot both be set")
    variables = {**(special_tokens or {}), "tools": None, "documents": None, **kwargs}
    text = compile_template(template).render(messages=messages, add_generation_prompt=add_generation_prompt,
                                             add_vision_id=add_vision_id, **variables)
    if continue_final_message:
        # cut after the final message's text so the model continues it (as HF does)
        last = messages[-1]["content"]
        if isinstance(last, list):
            last = next((c["text"] for c in reversed(last) if c["type"] == "text"), "")
        if last.strip() and last.strip() in text:
            text = text[: text.rindex(last.strip()) + len(last.strip())]
    return text
