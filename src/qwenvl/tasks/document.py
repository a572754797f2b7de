"""Document parsing: "QwenVL HTML" -> typed blocks in original page pixels, Markdown and JSON.

The model answers the prompt "QwenVL HTML" with one element per layout block, in reading order, each
carrying data-bbox="x1 y1 x2 y2" in pixels of the resized page. Output is often fenced, sometimes
cut off before </html>, and nests images/formulas in divs, so the parser is a forgiving stack machine
over the stdlib HTMLParser: each top-level element with a box (or a table/list) starts one block.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from html.parser import HTMLParser

from ._json import strip_fences
from .grounding import Scaler

DOC_PROMPT = "QwenVL HTML"
DOC_SYSTEM = ("You are an AI specialized in recognizing and extracting text from images. Your mission is to analyze "
              "the image document and generate the result in QwenVL Document Parser HTML format using specified tags "
              "while maintaining user privacy and data integrity.")

BLOCK_TAGS = {"p", "div", "table", "ol", "ul", "img", "h1", "h2", "h3", "h4", "h5", "h6", "pre", "blockquote",
              "figure", "header", "footer", "section", "address"}
VOID = {"img", "br", "hr", "meta", "input", "link", "area", "base", "col", "source", "wbr"}
SKIP = {"style", "script", "head", "title"}
TAG_KINDS = {"p": "paragraph", "table": "table", "ol": "list", "ul": "list", "img": "image", "header": "header",
             "footer": "footer", "pre": "code", "code": "code", "blockquote": "quote", "address": "paragraph",
             "span": "paragraph", "a": "paragraph", "section": "paragraph", "figure": "image",
             "figcaption": "caption", "caption": "caption", "math": "formula"}
# Class words -> kind, first match wins ("image caption" is an image with its caption text).
CLASS_KINDS = (("chart", "chart"), ("chemical", "chemical"), ("music", "music"), ("formula", "formula"),
               ("table", "table"), ("image", "image"), ("figure", "image"), ("caption", "caption"),
               ("header", "header"), ("footer", "footer"), ("footnote", "footnote"), ("title", "title"),
               ("list", "list"), ("code", "code"))


@dataclass
class Block:
    kind: str
    text: str = ""
    bbox: tuple[float, float, float, float] | None = None
    level: int | None = None                 # heading level for titles
    cells: list[list[str]] | None = None     # tables (and charts rendered as tables): rows of cell texts
    items: list["Block"] | None = None       # lists: one block per <li>, each with its own box
    attrs: dict = field(default_factory=dict)  # tag, class, format, ...

    def to_dict(self) -> dict:
        d = {"kind": self.kind, "text": self.text, "bbox": [round(v, 2) for v in self.bbox] if self.bbox else None}
        if self.level is not None:
            d["level"] = self.level
        if self.cells is not None:
            d["cells"] = self.cells
        if self.items is not None:
            d["items"] = [i.to_dict() for i in self.items]
        if self.attrs:
            d["attrs"] = self.attrs
        return d


@dataclass
class Document:
    blocks: list[Block]
    raw: str = ""
    warnings: list[str] = field(default_factory=list)
    input_size: tuple | None = None
    image_size: tuple | None = None

    @property
    def html(self) -> str:
        """The model's HTML without code fences."""
        return strip_fences(self.raw).strip()

    def to_dict(self) -> dict:
        return {"blocks": [b.to_dict() for b in self.blocks], "input_size": self.input_size,
                "image_size": self.image_size, "warnings": self.warnings}

    def to_json(self, **dumps_kwargs) -> str:
        """to_dict() as a JSON string (the text itself unescaped, for readable Chinese)."""
        return json.dumps(self.to_dict(), ensure_ascii=False, **dumps_kwargs)

    def to_markdown(self) -> str:
        return "\n\n".join(md for md in (_markdown(b) for b in self.blocks) if md)


def parse_document(html: str, *, input_size=None, image_size=None) -> Document:
    """QwenVL HTML (fenced or not, possibly truncated) -> Document with boxes in original pixels."""
    raw = html if isinstance(html, str) else str(html or "")
    parser = _DocParser(Scaler(input_size, image_size))
    warnings = []
    try:
        parser.feed(strip_fences(raw))
        parser.close()
    except Exception as e:     # HTMLParser is forgiving, but never let a parse error escape
        warnings.append(f"HTML parse error: {e}")
    parser.finish()
    if not parser.saw_end and parser.blocks:
        warnings.append("output ended before </html> (truncated?)")
    if not parser.blocks and raw.strip():
        warnings.append("no document blocks found in the model output")
    return Document(parser.blocks, raw=raw, warnings=warnings,
                    input_size=tuple(input_size) if input_size else None,
                    image_size=tuple(image_size) if image_size else None)


class _Node:
    """An open element inside the current block."""

    def __init__(self, tag: str, attrs: dict):
        self.tag, self.attrs = tag, attrs
        self.text: list[str] = []


class _DocParser(HTMLParser):
    def __init__(self, scale: Scaler):
        super().__init__(convert_charrefs=True)
        self.scale = scale
        self.blocks: list[Block] = []
        self.stack: list[_Node] = []     # open elements of the current block (stack[0] is its root)
        self.skip = 0                    # depth inside <style>/<script>
        self.saw_end = False
        self.loose: list[str] = []       # text outside any block
        # Per-block accumulators.
        self.text: list[str] = []
        self.rows: list[list[str]] = []
        self.cell: list[str] | None = None
        self.items: list[Block] = []
        self.item: list[str] | None = None
        self.item_box = None
        self.inner_text: list[str] = []  # text of nested <p>/<div> in image/formula divs
        self.block_tag: str | None = None
        self.block_attrs: dict = {}

    # ------------------------------------------------------------------------------ HTMLParser hooks

    def handle_starttag(self, tag, attrs):
        attrs = {k.lower(): (v or "") for k, v in attrs}
        if tag in SKIP:
            self.skip += 1
            return
        if tag in ("html", "body") and not self.stack:
            return
        if self.stack and "data-bbox" in attrs and tag in BLOCK_TAGS and tag != "img":
            # Blocks are not nested in QwenVL HTML (only <img>/<li> inside carry boxes), so a new boxed
            # block closes one left unterminated (models forget </p>, or were cut inside a table).
            while self.stack:
                self._close(self.stack.pop())
            self._close_block()
        if not self.stack:
            if "data-bbox" in attrs or tag in BLOCK_TAGS and (tag != "div" or attrs.get("class")):
                self._open_block(tag, attrs)
            return          # a bare <div>/<span> wrapper outside blocks is transparent
        if tag in ("li", "tr", "td", "th") and any(n.tag == tag for n in self.stack[1:]):
            self.handle_endtag(tag)       # an unclosed <li>/<tr>/<td> ends where the next one starts
        if tag in ("tr",):
            self.rows.append([])
        elif tag in ("td", "th"):
            self.cell = []
        elif tag == "li":
            self.item, self.item_box = [], self._box(attrs)
        elif tag == "br":
            self._text("\n")
        if tag not in VOID:
            self.stack.append(_Node(tag, attrs))

    def handle_startendtag(self, tag, attrs):
        if tag in SKIP:
            return
        self.handle_starttag(tag, attrs)
        if tag not in VOID and self.stack and self.stack[-1].tag == tag:
            self.handle_endtag(tag)

    def handle_endtag(self, tag):
        if tag in SKIP:
            self.skip = max(0, self.skip - 1)
            return
        if tag in ("html", "body"):
            self.saw_end = self.saw_end or tag == "html"
            self.finish()
            return
        # Pop up to the matching open element; an end tag with no opener is ignored.
        if not any(n.tag == tag for n in self.stack):
            return
        while self.stack:
            node = self.stack.pop()
            self._close(node)
            if node.tag == tag:
                break
        if not self.stack:
            self._close_block()

    def handle_data(self, data):
        if self.skip:
            return
        if not self.stack:
            self.loose.append(data)
            return
        self._text(data)

    # ---------------------------------------------------------------------------------- internals

    def _text(self, data: str):
        self.text.append(data)
        if self.cell is not None:
            self.cell.append(data)
        if self.item is not None:
            self.item.append(data)
        if len(self.stack) > 1:
            self.inner_text.append(data)

    def _close(self, node: _Node):
        if node.tag in ("td", "th") and self.cell is not None:
            if not self.rows:
                self.rows.append([])
            self.rows[-1].append(_clean(self.cell))
            self.cell = None
        elif node.tag == "li" and self.item is not None:
            self.items.append(Block("list_item", _clean(self.item), self.item_box))
            self.item = None
            self._text("\n")
        elif node.tag in ("p", "div", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "li"):
            self._text("\n")

    def _box(self, attrs: dict):
        nums = re.findall(r"-?\d+(?:\.\d+)?", attrs.get("data-bbox", ""))
        if len(nums) < 4:
            return None
        return self.scale.box(*(float(n) for n in nums[:4]))

    def _loose_flush(self):
        """Text outside any element with a box becomes its own paragraph (without a box)."""
        text = _clean(self.loose)
        if text:
            self.blocks.append(Block("paragraph", text))
        self.loose = []

    def _open_block(self, tag: str, attrs: dict):
        self._loose_flush()
        self.text, self.rows, self.cell, self.items, self.item, self.inner_text = [], [], None, [], None, []
        self.block_tag, self.block_attrs = tag, attrs
        if tag not in VOID:
            self.stack.append(_Node(tag, attrs))
        else:
            self._close_block()

    def _close_block(self):
        tag, attrs = self.block_tag, self.block_attrs
        kind, level = _kind(tag, attrs.get("class", ""))
        block = Block(kind, _clean(self.text), self._box(attrs), level=level)
        keep = {k: v for k, v in attrs.items() if k not in ("data-bbox", "data-polygon", "style")}
        block.attrs = {"tag": tag, **keep}
        if self.rows and any(self.rows):
            block.cells = [r for r in self.rows if r]
            if kind in ("table", "chart"):
                block.text = "\n".join(" | ".join(r) for r in block.cells)
            if kind in ("paragraph",):
                block.kind = "table"
        if self.items:
            block.items = self.items
            if block.bbox is None:
                boxes = [i.bbox for i in self.items if i.bbox]
                if boxes:
                    block.bbox = (min(b[0] for b in boxes), min(b[1] for b in boxes),
                                  max(b[2] for b in boxes), max(b[3] for b in boxes))
        if kind in ("image", "formula", "music", "chemical") and self.inner_text:
            block.text = _clean(self.inner_text)
        if block.text or block.bbox or block.cells or block.items or kind == "image":
            self.blocks.append(block)
        self.stack = []
        self.text, self.rows, self.items, self.inner_text = [], [], [], []
        self.block_tag = None

    def finish(self):
        """Close whatever is still open (truncated output) and keep trailing loose text."""
        while self.stack:
            self._close(self.stack.pop())
        if self.block_tag is not None:
            self._close_block()
        self._loose_flush()


def _kind(tag: str, cls: str) -> tuple[str, int | None]:
    if re.fullmatch(r"h[1-6]", tag):
        return "title", int(tag[1])
    words = cls.lower().replace(".", " ").replace("_", " ")
    for word, kind in CLASS_KINDS:
        if word in words:
            return kind, None
    return TAG_KINDS.get(tag, "paragraph"), None


def _clean(parts) -> str:
    text = "".join(parts).replace("\xa0", " ")
    lines = [re.sub(r"[ \t\r\f\v]+", " ", line).strip() for line in text.split("\n")]
    return "\n".join(line for line in lines if line)


# ------------------------------------------------------------------------------------------ markdown

def _markdown(b: Block) -> str:
    if b.kind == "title":
        return "#" * (b.level or 1) + " " + b.text.replace("\n", " ")
    if b.kind == "list" and b.items:
        ordered = b.attrs.get("tag") == "ol"
        return "\n".join(f"{i + 1}. {it.text}" if ordered else f"- {it.text}" for i, it in enumerate(b.items))
    if b.cells:
        table = _md_table(b.cells)
        return table if b.kind == "table" else (f"{b.text.splitlines()[0]}\n\n{table}" if b.kind != "chart" else table)
    if b.kind == "formula":
        return f"$$\n{b.text}\n$$" if b.text else ""
    if b.kind in ("image", "chart"):
        return f"![{b.text.replace(chr(10), ' ')}]()" if b.text else "![image]()"
    if b.kind == "caption":
        return f"*{b.text}*"
    if b.kind == "code":
        return f"```\n{b.text}\n```"
    return b.text


def _md_table(rows: list[list[str]]) -> str:
    width = max(len(r) for r in rows)
    rows = [[c.replace("|", "\\|").replace("\n", " ") for c in r] + [""] * (width - len(r)) for r in rows]
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * width]
    lines += ["| " + " | ".join(r) + " |" for r in rows[1:]]
    return "\n".join(lines)

