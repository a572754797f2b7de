"""Tolerant extraction of JSON-like values from model output.

Models wrap JSON in code fences, add prose around it, leave trailing commas, use single quotes or
Chinese full-width punctuation, and get cut off by max_new_tokens in the middle of a list. A strict
`json.loads` fails on all of these, so this module has its own small, lenient recursive-descent
parser: it accepts those deviations and, on truncated input, keeps every element completed so far.
"""

from __future__ import annotations

import re

# Full-width punctuation a model may use in place of JSON syntax (outside strings only; inside
# strings they are content and kept).
_PUNCT = {"，": ",", "：": ":", "［": "[", "］": "]", "｛": "{", "｝": "}", "、": ","}
# Opening quote -> closing quote. Curly quotes open and close differently.
_QUOTES = {'"': '"', "'": "'", "“": "”", "‘": "’", "「": "」"}
_FENCE = re.compile(r"```[ \t]*([\w+-]*)[ \t]*\n?(.*?)(?:```|\Z)", re.S)
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "b": "\b", "f": "\f", "/": "/", "\\": "\\", '"': '"', "'": "'"}
_WORDS = {"true": True, "false": False, "null": None, "none": None, "True": True, "False": False, "None": None}


class _Truncated(Exception):
    """The text ended inside a value."""


class _Syntax(Exception):
    """Something that is not JSON, even leniently."""


def strip_fences(text: str) -> str:
    """The content of the code fences in `text` (joined), or `text` itself when it has none.
    An opening fence without a closing one (a truncated answer) keeps everything after it."""
    blocks = [m.group(2) for m in _FENCE.finditer(text) if m.group(2).strip()]
    if blocks:
        return "\n".join(blocks)
    # Only stray fence markers (e.g. the closing half of a fence split by a <tool_call> tag): drop them.
    return re.sub(r"```[\w+-]*", "", text)


MAX_DEPTH = 64          # model output nests 3-4 levels; deeper is garbage (and would hit the recursion limit)
MAX_FAILED_STARTS = 200  # bound the work on long garbage: each failed start may scan to the end


class _Parser:
    def __init__(self, text: str, pos: int):
        self.s, self.i = text, pos
        self.truncated = False
        self.depth = 0

    def peek(self) -> str:
        while self.i < len(self.s) and self.s[self.i] in " \t\r\n\u3000":
            self.i += 1
        if self.i >= len(self.s):
            raise _Truncated
        c = self.s[self.i]
        return _PUNCT.get(c, c)

    def value(self):
        c = self.peek()
        if c in "{[":
            if self.depth >= MAX_DEPTH:
                raise _Syntax("nested too deeply")
            self.depth += 1
            try:
                return self.obj() if c == "{" else self.arr()
            finally:
                self.depth -= 1
        if c in _QUOTES:
            return self.string()
        return self.bare()

    def obj(self) -> dict:
        self.i += 1
        out: dict = {}
        while True:
            try:
                c = self.peek()
            except _Truncated:
                if out:        # cut right after a complete member: keep the object
                    self.truncated = True
                    return out
                raise
            if c == "}":
                self.i += 1
                return out
            if c == ",":
                self.i += 1
                continue
            key = self.string() if c in _QUOTES else self.bare(key=True)
            if self.peek() != ":":
                raise _Syntax(f"expected ':' at {self.i}")
            self.i += 1
            out[str(key)] = self.value()

    def arr(self) -> list:
        self.i += 1
        out: list = []
        while True:
            c = None
            try:
                c = self.peek()
                if c == "]":
                    self.i += 1
                    return out
                if c == ",":
                    self.i += 1
                    continue
                out.append(self.value())
            except _Truncated:
                # A list of objects cut inside (or right after) an element: drop the unfinished element,
                # keep the finished ones. A list of numbers cut short (a box missing its last corner) is
                # not salvageable, so the truncation propagates to whatever contains it.
                if c in ("{", "[") or (c is None and all(isinstance(x, (dict, list)) for x in out)):
                    self.truncated = True
                    return out
                raise

    def string(self) -> str:
        close = _QUOTES[self.s[self.i]]
        self.i += 1
        buf = []
        while self.i < len(self.s):
            c = self.s[self.i]
            if c == "\\" and self.i + 1 < len(self.s):
                nxt = self.s[self.i + 1]
                if nxt == "u" and re.fullmatch(r"[0-9a-fA-F]{4}", self.s[self.i + 2:self.i + 6]):
                    buf.append(chr(int(self.s[self.i + 2:self.i + 6], 16)))
                    self.i += 6
                    continue
                buf.append(_ESCAPES.get(nxt, "\\" + nxt))
                self.i += 2
                continue
            if c == close and not (close == "'" and self._apostrophe()):
                self.i += 1
                return "".join(buf)
            buf.append(c)
            self.i += 1
        raise _Truncated

    def _apostrophe(self) -> bool:
        """In a single-quoted string, is this quote an apostrophe (person's) rather than the end?"""
        before, after = self.s[self.i - 1:self.i], self.s[self.i + 1:self.i + 2]
        return before.isalpha() and after.isalpha()

    def bare(self, key: bool = False):
        """A number, true/false/null, or an unquoted word (keys like {label: cat})."""
        stop = ":,]}\n" if key else ",]}\n"
        start = self.i
        while self.i < len(self.s) and _PUNCT.get(self.s[self.i], self.s[self.i]) not in stop:
            self.i += 1
        word = self.s[start:self.i].strip()
        if not word:
            raise _Syntax(f"unexpected {self.s[start:start + 1]!r} at {start}")
        if self.i >= len(self.s) and not key:
            raise _Truncated     # a number cut in the middle (e.g. "12" of "125") is not trustworthy
        if key:
            return word
        if word in _WORDS:
            return _WORDS[word]
        try:
            return int(word)
        except ValueError:
            pass
        try:
            return float(word)
        except ValueError:
            pass
        if len(word) > 80 or any(ch in word for ch in "{[<>"):
            raise _Syntax(f"not a JSON value: {word[:20]!r}")
        return word


def parse_lenient(text: str):
    """Parse one JSON-like value from the start of `text` (after whitespace). Returns
    (value, end_position, truncated). Raises ValueError when there is no value."""
    p = _Parser(text, 0)
    try:
        v = p.value()
    except (_Truncated, _Syntax, RecursionError) as e:
        raise ValueError(str(e) or type(e).__name__) from None
    return v, p.i, p.truncated


def find_json_values(text: str) -> tuple[list, list[str]]:
    """All top-level JSON objects/arrays found in `text` (fences removed, prose skipped), in order,
    plus warnings (e.g. that the output was truncated). Never raises."""
    body = strip_fences(text)
    values, warnings = [], []
    i = failed = 0
    starts = re.compile(r"[\[{［｛]")
    while failed < MAX_FAILED_STARTS:
        m = starts.search(body, i)
        if not m:
            break
        p = _Parser(body, m.start())
        try:
            v = p.value()
        except (_Truncated, _Syntax, RecursionError):
            i = m.start() + 1       # not JSON here (e.g. "[note]" in prose): look further on
            failed += 1
            continue
        if isinstance(v, (dict, list)):
            values.append(v)
        if p.truncated:
            warnings.append("output was truncated; kept the complete items")
        i = max(p.i, m.start() + 1)
    return values, warnings


def to_number(v) -> float | None:
    """A float from a number or a numeric string; None otherwise."""
    if isinstance(v, bool):
        return None
    if isinstance(v, (int, float)):
        return float(v)
    if isinstance(v, str):
        try:
            return float(v.strip().rstrip("px"))
        except ValueError:
            return None
    return None


def flat_numbers(v) -> list[float] | None:
    """[x1, y1, x2, y2], [[x1, y1], [x2, y2]], "x1 y1 x2 y2" or "x1,y1,x2,y2" -> a flat float list."""
    if isinstance(v, str):
        parts = re.findall(r"-?\d+(?:\.\d+)?", v)
        return [float(p) for p in parts] if parts else None
    if isinstance(v, dict):
        keys = [k for k in ("x1", "y1", "x2", "y2", "x", "y") if k in v]
        v = [v[k] for k in keys]
    if not isinstance(v, (list, tuple)):
        return None
    out = []
    for item in v:
        if isinstance(item, (list, tuple)):
            sub = flat_numbers(item)
            if sub is None:
                return None
            out.extend(sub)
        else:
            n = to_number(item)
            if n is None:
                return None
            out.append(n)
    return out
