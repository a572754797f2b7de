"""The shape of a training record, checked before it is read: every kind of malformed JSON value (a
string where a message belongs, a number where text belongs, null content, a path that is not a
string, a role that is a list...) becomes a BadRecord naming file:line and the offending item,
instead of an AttributeError or TypeError from deep inside the parser that would stop the run even
with --on-bad-record skip."""

from __future__ import annotations

import json

MEDIA_KEYS = ("image", "images", "video", "videos")
TURN_KEYS = ("conversations", "messages", "prompt")
ITEM_TYPES = ("text", "image", "video")
MAX_PATH = 4096


class BadRecord(ValueError):
    """A record that cannot be trained on; the message starts with file:line."""


def show(x, limit: int = 60) -> str:
    """A short description of a bad value for the report."""
    try:
        text = json.dumps(x, ensure_ascii=False)
    except (TypeError, ValueError, RecursionError):
        text = repr(x)
    kind = "null" if x is None else {bool: "boolean", int: "number", float: "number", str: "string",
                                     list: "list", dict: "object"}.get(type(x), type(x).__name__)
    return f"{kind} {text[:limit]}{'...' if len(text) > limit else ''}"


def _path(p, what: str, where: str) -> None:
    if not isinstance(p, str) or not p.strip():
        raise BadRecord(f"{where}: {what} must be a file path or URL (a non-empty string), got {show(p)}")
    if "\x00" in p or len(p) > MAX_PATH:
        raise BadRecord(f"{where}: {what} is not a usable path ({show(p)})")


def _item(it, what: str, where: str) -> None:
    if not isinstance(it, dict):
        raise BadRecord(f"{where}: {what} must be an object like {{\"type\": \"text\", \"text\": ...}}, got {show(it)}")
    kind = it.get("type")
    if kind is None:
        kind = "image" if "image" in it else "video" if "video" in it else "text"
    if kind not in ITEM_TYPES:
        raise BadRecord(f"{where}: {what} has type {show(kind)}; training records take text, image or video")
    if kind == "text":
        if not isinstance(it.get("text"), str):
            raise BadRecord(f"{where}: {what} text must be a string, got {show(it.get('text'))}")
        return
    src = it.get(kind)
    if src is None:
        src = it.get(f"{kind}_url")
    if isinstance(src, dict):
        src = src.get("url")
        if src is None:
            raise BadRecord(f"{where}: {what} {kind}_url has no url")
    if src is None:  # a bare {"type": "image"} takes the record's next file
        return
    if kind == "video" and isinstance(src, list):  # a video given as its frames
        if not src:
            raise BadRecord(f"{where}: {what} video frame list is empty")
        for i, f in enumerate(src):
            _path(f, f"{what} video frame {i}", where)
        return
    _path(src, f"{what} {kind}", where)


def _content(content, what: str, where: str) -> None:
    if isinstance(content, str):
        return
    if content is None:
        raise BadRecord(f"{where}: {what} content is null")
    if not isinstance(content, list):
        raise BadRecord(f"{where}: {what} content must be a string or a list of items, got {show(content)}")
    for j, it in enumerate(content):
        _item(it, f"{what} item {j}", where)


def _turns(turns, key: str, where: str) -> None:
    if isinstance(turns, str):
        return
    if not isinstance(turns, list):
        raise BadRecord(f"{where}: {key} must be a list of messages, got {show(turns)}")
    for i, m in enumerate(turns):
        what = f"{key}[{i}]"
        if not isinstance(m, dict):
            raise BadRecord(f"{where}: {what} must be a message object with a role, got {show(m)}")
        role_key, content_key = ("from", "value") if "from" in m else ("role", "content")
        role = m.get(role_key)
        if role is None:
            raise BadRecord(f"{where}: {what} has no {role_key}")
        if not isinstance(role, str):
            raise BadRecord(f"{where}: {what} {role_key} must be a string, got {show(role)}")
        if content_key in m:
            _content(m[content_key], what, where)


def check_record(obj, where: str) -> None:
    """Raise BadRecord unless `obj` has the shape parse_record reads (values are checked there)."""
    if not isinstance(obj, dict):
        raise BadRecord(f"{where}: not a JSON object (got {show(obj)})")
    for key in MEDIA_KEYS:
        v = obj.get(key)
        if v is None:
            continue
        for i, p in enumerate(v if isinstance(v, list) else [v]):
            _path(p, f"{key}[{i}]" if isinstance(v, list) else key, where)
    for key in TURN_KEYS:
        if obj.get(key) is not None:
            _turns(obj[key], key, where)
    for key in ("chosen", "rejected"):
        v = obj.get(key)
        if key in obj and not isinstance(v, (str, dict, list)):
            raise BadRecord(f"{where}: {key} must be a string or one assistant message, got {show(v)}")


def decode_line(raw: bytes, where: str, first: bool) -> str:
    """One JSONL line as text: UTF-8 (a byte-order mark on the first line is allowed)."""
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise BadRecord(f"{where}: not UTF-8 text (byte {e.start}: {raw[e.start:e.start + 1]!r})") from None
    return line.removeprefix("\ufeff") if first else line
