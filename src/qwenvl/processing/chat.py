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
import re
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
    tools = kwargs.pop("tools", None) or None
    messages = [_arguments_as_objects(m) for m in messages]
    if (tools or any(m["role"] == "tool" or m.get("tool_calls") for m in messages)) \
            and not template_handles_tools(template):
        messages, tools = inline_tools(messages, tools), None
    variables = {**(special_tokens or {}), "tools": tools, "documents": None, **kwargs}
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


def render_with_spans(template: str, messages: list[dict], **kwargs) -> tuple[str, list[tuple[int, int]]]:
    """Normalised messages -> (the conversation's text without a generation prompt, the [start, end)
    character span of every assistant reply in it). A reply's span runs from the end of its header (where
    generation would start) to the end of its turn as the template writes it (for Qwen: the text,
    `<|im_end|>` and the newline after it): what a model is trained to produce.

    Found by rendering prefixes of the conversation, so it holds for any template that renders turn by
    turn: the text up to turn i with a generation prompt ends where reply i starts, the text through
    turn i ends where it ends. `kwargs` as for `render` (not add_generation_prompt)."""
    full = render(template, messages, add_generation_prompt=False, **kwargs)
    spans = []
    for i, msg in enumerate(messages):
        if msg["role"] != "assistant":
            continue
        head = render(template, messages[:i], add_generation_prompt=True, **kwargs)
        through = render(template, messages[:i + 1], add_generation_prompt=False, **kwargs)
        if not (full.startswith(through) and through.startswith(head)):
            why = ("it opens the conversation, and the template opens differently without it (a default "
                   "system prompt?)" if i == 0 else
                   "the chat template renders the earlier turns differently when later ones follow, so the "
                   "reply's place in the text is not defined")
            raise ValueError(f"messages[{i}]: cannot locate this assistant reply: {why}")
        spans.append((len(head), len(through)))
    return full, spans


# ----------------------------------------------------------------------------------- tools
# Qwen2.5's chat template (tokenizer_config.json of Qwen2.5-*-Instruct) renders function calling in the
# hermes style: the tool signatures in the system prompt, calls as <tool_call> JSON blocks in assistant
# turns, results as <tool_response> blocks in a user turn. Qwen2.5-VL's own template has no tools branch,
# so for such templates the same text is produced here by rewriting the messages before rendering.

DEFAULT_SYSTEM = "You are a helpful assistant."   # Qwen2.5-VL's template default (Qwen2.5's names "Qwen")


def template_handles_tools(template: str) -> bool:
    """Whether a chat template renders `tools` itself (Qwen2.5's and most tool-aware templates do)."""
    return re.search(r"\btools\b", template) is not None


def tool_system_block(tools: list) -> str:
    """The text Qwen2.5's template appends to the system prompt when tools are given."""
    lines = "".join("\n" + _tojson(t) for t in tools)
    return ("\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
            "You are provided with function signatures within <tools></tools> XML tags:\n<tools>" + lines +
            "\n</tools>\n\nFor each function call, return a json object with function name and arguments within "
            "<tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": "
            "<args-json-object>}\n</tool_call>")


def format_tool_call(call: dict) -> str:
    """One call (OpenAI {"function": {"name", "arguments"}} or {"name", "arguments"}) as Qwen writes it."""
    fn = call.get("function", call)
    return ('<tool_call>\n{"name": "' + str(fn["name"]) + '", "arguments": ' + _tojson(fn.get("arguments", {})) +
            "}\n</tool_call>")


def _arguments_as_objects(msg: dict) -> dict:
    """OpenAI sends call arguments as a JSON string; templates write them with tojson, so they must be
    objects (transformers' convention; vLLM converts them the same way)."""
    calls = msg.get("tool_calls")
    if not calls:
        return msg
    out = []
    for call in calls:
        fn = call.get("function", call)
        args = fn.get("arguments", {})
        if isinstance(args, str):
            try:
                args = json.loads(args) if args.strip() else {}
            except json.JSONDecodeError:
                pass   # kept as the string the client sent
        fn = {**fn, "arguments": args}
        out.append({**call, "function": fn} if "function" in call else fn)
    return {**msg, "tool_calls": out}


def _text_of(content) -> str:
    if isinstance(content, str):
        return content
    return "".join(c.get("text", "") for c in content if c.get("type") == "text")


def inline_tools(messages: list[dict], tools: list | None) -> list[dict]:
    """Messages rewritten so that a template without a tools branch renders what Qwen2.5's template does:
    the tools block appended to the system prompt, assistant calls and tool results as text."""
    out = []
    if tools:
        if messages and messages[0]["role"] == "system":
            system, messages = _text_of(messages[0]["content"]), messages[1:]
        else:
            system = DEFAULT_SYSTEM
        out.append({"role": "system", "content": system + tool_system_block(tools)})
    for msg in messages:
        role = msg["role"]
        if role == "assistant" and msg.get("tool_calls"):
            text = _text_of(msg["content"])
            calls = "\n".join(format_tool_call(c) for c in msg["tool_calls"])
            out.append({"role": "assistant", "content": (text + "\n" if text else "") + calls})
        elif role == "tool":
            # consecutive results share one user turn, each in its own <tool_response> block
            content = msg["content"]
            parts = [{"type": "text", "text": "<tool_response>\n"}]
            parts += [{"type": "text", "text": content}] if isinstance(content, str) else list(content)
            parts.append({"type": "text", "text": "\n</tool_response>"})
            if out and out[-1].get("_tool_turn"):
                out[-1]["content"] += [{"type": "text", "text": "\n"}] + parts
            else:
                out.append({"role": "user", "content": parts, "_tool_turn": True})
        else:
            out.append(msg)
    for msg in out:
        msg.pop("_tool_turn", None)
    return out
