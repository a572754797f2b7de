"""Training records: JSONL -> checked conversations -> encoded samples -> a resumable stream of micro-batches.

Accepted records (one JSON object per line):
- qwen-vl-finetune: {"image": path | [paths], "video": path | [paths],
  "conversations": [{"from": "human" | "gpt" | "system", "value": "<image>\\nWhat is this?"}, ...]}
  with one <image>/<video> tag per file, in order;
- messages: {"messages": [{"role": "user", "content": "..." | [{"type": "image", "image": path}, ...]}, ...],
  "images": [...], "videos": [...]} (string contents may use <image>/<video> tags with those lists);
- preference: the prompt as "prompt" (a string or a message list), "messages" or "conversations",
  plus "chosen" and "rejected" (a string or an assistant message), media as above.
Media paths are absolute, URLs, or relative to --data-root (default: the JSONL's folder).

The chat format is the processor's: a conversation is rendered and tokenised by `Processor`, and the
labels are read off its token ids (each `<|im_start|>assistant\\n` header opens a supervised span that
ends with `<|im_end|>` and the newline after it), so training sees exactly what inference sees.
"""

from __future__ import annotations

import json
import random
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from ..model.rope import mrope_positions
from ..processing import chat
from .pack import IGNORE, TrainSample, collate, plan_rows, shift_labels
from .validate import BadRecord, check_record, decode_line


@dataclass
class Record:
    where: str                  # file:line
    messages: list[dict]        # the conversation (SFT) or the prompt + chosen reply (preference)
    rejected: list[dict] | None = None  # preference records: the prompt + rejected reply


ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}
TAG = re.compile(r"<(image|video)>")


def _as_list(x) -> list:
    if x is None:
        return []
    return list(x) if isinstance(x, (list, tuple)) else [x]


def _resolve(path: str, root: Path, where: str) -> str:
    if re.match(r"^(https?|data):", path):
        return path
    p = Path(path[7:] if path.startswith("file://") else path).expanduser()
    if not p.is_absolute():
        p = root / p
    if not p.exists():
        raise BadRecord(f"{where}: media file not found: {p}")
    return str(p)


def _split_tags(text: str, media: dict[str, list[str]], used: dict[str, int], where: str) -> list[dict]:
    """'<image>\\nWhat?' -> [{"type": "image", "image": path}, {"type": "text", "text": "\\nWhat?"}]."""
    items = []
    pos = 0
    for m in TAG.finditer(text):
        if m.start() > pos:
            items.append({"type": "text", "text": text[pos:m.start()]})
        kind = m.group(1)
        if used[kind] >= len(media[kind]):
            raise BadRecord(f"{where}: more <{kind}> tags than {kind} files ({len(media[kind])})")
        items.append({"type": kind, kind: media[kind][used[kind]]})
        used[kind] += 1
        pos = m.end()
    if pos < len(text):
        items.append({"type": "text", "text": text[pos:]})
    return items


def _message(m: dict, media, used, root: Path, where: str) -> dict:
    if "from" in m:
        role, content = m["from"], m.get("value", "")
    else:
        role, content = m.get("role"), m.get("content", "")
    if role not in ROLES:
        raise BadRecord(f"{where}: unknown role {role!r}")
    role = ROLES[role]
    if isinstance(content, str):
        if role == "assistant" and TAG.search(content):
            raise BadRecord(f"{where}: an assistant reply holds a media tag")
        items = _split_tags(content, media, used, where) if TAG.search(content) else None
        return {"role": role, "content": items if items is not None else content}
    items = []
    for it in content:
        it = dict(it)
        kind = it.get("type") or ("image" if "image" in it else "video" if "video" in it else "text")
        if kind in ("image", "video"):
            src = it.get(kind) or it.get(f"{kind}_url")
            if isinstance(src, dict):
                src = src.get("url")
            if src is None:  # a bare {"type": "image"} takes the next file of the record's list
                if used[kind] >= len(media[kind]):
                    raise BadRecord(f"{where}: more {kind} items than {kind} files ({len(media[kind])})")
                src = media[kind][used[kind]]
                used[kind] += 1
            elif isinstance(src, str):
                src = _resolve(src, root, where)
            it = {"type": kind, kind: src, **{k: v for k, v in it.items() if k not in ("type", kind, f"{kind}_url")}}
        elif "text" not in it:
            raise BadRecord(f"{where}: content item without text, image or video: {it}")
        items.append(it)
    return {"role": role, "content": items}


def _reply(x, where: str) -> dict:
    if isinstance(x, str):
        return {"role": "assistant", "content": x}
    if isinstance(x, list) and len(x) == 1:
        x = x[0]
    if isinstance(x, dict):
        text = x.get("value", x.get("content"))
        if isinstance(text, str) and not TAG.search(text):
            return {"role": "assistant", "content": text}
    raise BadRecord(f"{where}: chosen/rejected must be a string or one assistant message")


def parse_record(obj: dict, root: Path, where: str) -> Record:
    """One JSON object -> Record, with media resolved and checked to exist and tags matched to files."""
    check_record(obj, where)
    media = {
        "image": [_resolve(p, root, where) for p in _as_list(obj.get("image", obj.get("images")))],
        "video": [_resolve(p, root, where) for p in _as_list(obj.get("video", obj.get("videos")))],
    }
    for kind, files in media.items():
        if any(not isinstance(p, str) for p in files):
            raise BadRecord(f"{where}: {kind} paths must be strings")
    used = {"image": 0, "video": 0}
    preference = "chosen" in obj or "rejected" in obj
    turns = obj.get("conversations", obj.get("messages", obj.get("prompt")))
    if isinstance(turns, str):
        turns = [{"role": "user", "content": turns}]
    if not isinstance(turns, list) or not turns:
        raise BadRecord(f"{where}: no conversations/messages")
    messages = [_message(m, media, used, root, where) for m in turns]
    for kind in media:
        if used[kind] != len(media[kind]):
            raise BadRecord(f"{where}: {len(media[kind])} {kind} file(s) but {used[kind]} <{kind}> tag(s)")
    if preference:
        if "chosen" not in obj or "rejected" not in obj:
            raise BadRecord(f"{where}: a preference record needs both chosen and rejected")
        if messages[-1]["role"] == "assistant":
            raise BadRecord(f"{where}: the prompt of a preference record must end with a user turn")
        return Record(where, messages + [_reply(obj["chosen"], where)], messages + [_reply(obj["rejected"], where)])
    if not any(m["role"] == "assistant" for m in messages):
        raise BadRecord(f"{where}: no assistant turn to learn from")
    return Record(where, messages)


def report(e: Exception, on_bad: str) -> None:
    if on_bad == "fail":
        raise e
    print(f"skipping bad record: {e}", file=sys.stderr)


def read_records(path: str | Path, data_root: str | Path | None = None, on_bad: str = "skip") -> list[Record]:
    path = Path(path)
    root = Path(data_root) if data_root else path.parent
    records = []
    with open(path, "rb") as f:  # bytes, decoded per line: one line that is not UTF-8 is one bad record
        for i, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            where = f"{path}:{i}"
            try:
                try:
                    obj = json.loads(decode_line(raw, where, i == 1))
                except (json.JSONDecodeError, RecursionError) as e:
                    raise BadRecord(f"{where}: invalid JSON ({type(e).__name__}: {e})") from None
                try:
                    records.append(parse_record(obj, root, where))
                except BadRecord:
                    raise
                except Exception as e:  # a shape check_record let through: still this record's fault
                    raise BadRecord(f"{where}: malformed record ({type(e).__name__}: {e})") from None
            except BadRecord as e:
                report(e, on_bad)
    if not records:
        raise ValueError(f"{path}: no usable records")
    return records


# ------------------------------------------------------------------------------------------- encoding

def supervised_mask(processor, messages: list[dict], inputs) -> torch.Tensor:
    """True on the tokens of every assistant reply where the chat template writes it (chat.render_with_spans:
    for Qwen the reply, its <|im_end|> and the newline after it); a token that straddles a span's edge (a
    reply starting with a newline merges into the header's) counts as supervised. `inputs`: the
    processor's output for the same messages, whose ids the mask is checked to line up with."""
    tok = processor.tokenizer
    text, spans = chat.render_with_spans(processor.chat_template, chat.normalize_messages(messages),
                                         special_tokens=tok.special_tokens_map())
    enc = tok.backend.encode(text, add_special_tokens=True)
    # the processor repeats each media pad once per merged patch after rendering: repeat its mask value too
    merge = processor.spec.merge_size ** 2
    repeats = {token: iter((grid.prod(-1) // merge).tolist() if grid is not None else [])
               for token, grid in ((processor.image_token_id, inputs.get("image_grid_thw")),
                                   (processor.video_token_id, inputs.get("video_grid_thw")))}
    expanded, mask = [], []
    for t, (a, b) in zip(enc.ids, enc.offsets):
        n = next(repeats[t]) if t in repeats else 1
        expanded += [t] * n
        mask += [any(a < e and b > s for s, e in spans)] * n
    if expanded != inputs["input_ids"][0].tolist():
        raise ValueError("the chat template's text does not tokenize to the processor's ids")
    return torch.tensor(mask, dtype=torch.bool)


def encode(processor, messages: list[dict], config, where: str = "") -> TrainSample:
    """A conversation -> TrainSample, through the inference processor (chat template, media, pad expansion)."""
    try:
        b = processor(messages, add_generation_prompt=False)
    except Exception as e:  # undecodable or missing media, bad sizes: the record is bad, not the run
        raise BadRecord(f"{where}: cannot process: {type(e).__name__}: {e}") from None
    ids = b["input_ids"][0]
    try:
        keep = supervised_mask(processor, messages, b)
    except ValueError as e:  # e.g. a conversation that opens with a reply: nothing to place it after
        raise BadRecord(f"{where}: {e}") from None
    labels = torch.where(keep, ids, torch.full_like(ids, IGNORE))
    spg = b.get("second_per_grid_ts")
    positions, _ = mrope_positions(ids[None], config, None, b.get("image_grid_thw"), b.get("video_grid_thw"), spg)
    return TrainSample(ids, shift_labels(labels), positions[:, 0], b.get("pixel_values"), b.get("image_grid_thw"),
                       b.get("pixel_values_videos"), b.get("video_grid_thw"), spg, where,
                       reply_weights(shift_labels(labels)))


def reply_weights(targets: torch.Tensor) -> torch.Tensor:
    """Per-token weights that make each assistant reply count once (1 / its length) whatever its
    length, for --loss-weighting reply: a 3-token count answer then weighs as much as a 36-token box."""
    sup = targets != IGNORE
    # A reply is a run of supervised targets; a new run starts where the previous target was not.
    start = sup & ~torch.cat([sup.new_zeros(1), sup[:-1]])
    run = torch.cumsum(start.long(), 0) * sup
    counts = torch.bincount(run, minlength=1).float()
    w = torch.where(sup, 1.0 / counts[run].clamp(min=1), torch.zeros(()))
    return w


def with_video_fps(messages: list[dict], fps: float) -> list[dict]:
    """A copy whose video items sample at `fps` (dynamic-FPS training)."""
    out = []
    for m in messages:
        if isinstance(m["content"], list):
            m = {**m, "content": [{**it, "fps": fps} if it.get("type") == "video" and not isinstance(
                it.get("video"), list) else it for it in m["content"]]}
        out.append(m)
    return out


# ------------------------------------------------------------------------------------------- the stream

@dataclass
class DataOptions:
    max_len: int = 4096
    pack: bool = False
    batch_size: int = 1          # rows per micro-batch
    chunk: int = 64              # records encoded and packed together
    fps_range: tuple[float, float] | None = (0.5, 2.0)  # dynamic FPS: drawn per video sample
    on_bad: str = "skip"
    seed: int = 0


class Packing:
    """What every stream of micro-batches counts: real tokens against the token slots paid for."""

    def __init__(self, opts: DataOptions):
        self.opts = opts
        self.packing_stats = {"tokens": 0, "slots": 0, "rows": 0, "samples": 0}

    def _count(self, batch) -> None:
        st = self.packing_stats
        st["tokens"] += batch.stats["tokens"]
        st["slots"] += batch.stats["rows"] * (self.opts.max_len if self.opts.pack else batch.input_ids.shape[1])
        st["rows"] += batch.stats["rows"]
        st["samples"] += batch.stats["samples"]

    @property
    def efficiency(self) -> float:
        """Real tokens over the token slots paid for (rows x --max-len when packing, rows x longest row
        otherwise)."""
        st = self.packing_stats
        return st["tokens"] / st["slots"] if st["slots"] else 0.0


class Stream(Packing):
    """Endless micro-batches over this rank's share of the records (records rank::world of a seeded
    per-epoch shuffle). Records are taken in chunks; a chunk is encoded, packed and cut into
    micro-batches. `state()` is (epoch, chunk start, micro-batches consumed in the chunk) and is
    enough to resume exactly, because every random choice is seeded by (seed, epoch, record)."""

    def __init__(self, records: list[Record], processor, config, opts: DataOptions, rank: int = 0,
                 world: int = 1, pad_id: int = 0, preference: bool = False):
        super().__init__(opts)
        self.records, self.processor, self.config = records, processor, config
        self.rank, self.world, self.pad_id, self.preference = rank, world, pad_id, preference
        self.epoch, self.start, self.taken = 0, 0, 0
        self._batches: list | None = None

    def _order(self) -> list[int]:
        g = torch.Generator().manual_seed(self.opts.seed * 1000 + self.epoch)
        return torch.randperm(len(self.records), generator=g).tolist()[self.rank::self.world]

    def _encode(self, index: int) -> list[TrainSample]:
        rec = self.records[index]
        rng = random.Random(f"{self.opts.seed}/{self.epoch}/{index}")
        convs = [rec.messages] if rec.rejected is None else [rec.messages, rec.rejected]
        if self.opts.fps_range:
            fps = round(rng.uniform(*self.opts.fps_range), 3)  # one draw for the record: a pair shares it
            convs = [with_video_fps(c, fps) for c in convs]
        unit = [encode(self.processor, c, self.config, rec.where) for c in convs]
        n = sum(len(s) for s in unit) if self.opts.pack else max(len(s) for s in unit)
        if n > self.opts.max_len:
            raise BadRecord(f"{rec.where}: {n} tokens exceed --max-len {self.opts.max_len}")
        if all(s.n_supervised == 0 for s in unit):
            raise BadRecord(f"{rec.where}: no supervised tokens")
        return unit

    def _fill(self) -> None:
        while True:
            order = self._order()
            if self.start >= len(order):
                if not order:
                    raise ValueError(f"rank {self.rank} has no records (fewer records than processes)")
                self.epoch, self.start, self.taken = self.epoch + 1, 0, 0
                continue
            units = []
            for i in order[self.start:self.start + self.opts.chunk]:
                try:
                    units.append(self._encode(i))
                except BadRecord as e:
                    report(e, self.opts.on_bad)
            rows = plan_rows(units, self.opts.max_len, self.opts.pack)
            per = self.opts.batch_size * (2 if self.preference and not self.opts.pack else 1)
            self._batches = [rows[i:i + per] for i in range(0, len(rows), per)]
            if self._batches:
                return
            self.start += self.opts.chunk  # a chunk of bad records only
            self.taken = 0

    def next(self):
        """The next micro-batch (a collated TrainBatch)."""
        if self._batches is None:
            self._fill()
        while self.taken >= len(self._batches):
            self.start += self.opts.chunk
            self.taken = 0
            self._fill()
        rows = self._batches[self.taken]
        self.taken += 1
        batch = collate(rows, self.pad_id, self.config.vision.merge_unit)
        self._count(batch)
        return batch

    def state(self) -> dict:
        return {"epoch": self.epoch, "start": self.start, "taken": self.taken}

    def load_state(self, s: dict) -> None:
        self.epoch, self.start, self.taken = s["epoch"], s["start"], s["taken"]
        self._batches = None
        if self.taken:
            self._fill()
