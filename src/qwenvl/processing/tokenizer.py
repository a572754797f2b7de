"""The checkpoint's tokenizer: tokenizer.json through the `tokenizers` library, plus the special
tokens named in tokenizer_config.json. Encoding recognises special tokens written in the text (the
chat template writes them); decoding is the library's byte-level decoder."""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import AddedToken, Tokenizer as _Backend


def _content(tok) -> str | None:
    return tok.get("content") if isinstance(tok, dict) else tok


class Tokenizer:
    def __init__(self, backend: _Backend, config: dict | None = None):
        self.backend = backend
        self.config = config or {}
        # added tokens the tokenizer.json may lack (tokenizer_config is authoritative in HF)
        missing = [AddedToken(t["content"], special=t.get("special", True), normalized=t.get("normalized", False),
                              lstrip=t.get("lstrip", False), rstrip=t.get("rstrip", False),
                              single_word=t.get("single_word", False))
                   for t in (self.config.get("added_tokens_decoder") or {}).values()
                   if backend.token_to_id(t["content"]) is None]
        if missing:
            backend.add_tokens(missing)
        self.eos_token = _content(self.config.get("eos_token")) or "<|im_end|>"
        self.bos_token = _content(self.config.get("bos_token"))
        pad = _content(self.config.get("pad_token"))
        self.pad_token = pad if pad is not None and backend.token_to_id(pad) is not None else "<|endoftext|>"
        self.eos_token_id = self.token_to_id(self.eos_token)
        self.pad_token_id = self.token_to_id(self.pad_token)

    @classmethod
    def from_pretrained(cls, path: str | Path) -> "Tokenizer":
        path = Path(path)
        f = path / "tokenizer.json"
        if not f.exists():
            raise FileNotFoundError(f"{path}: no tokenizer.json (only fast-tokenizer checkpoints are supported)")
        cfg_path = path / "tokenizer_config.json"
        cfg = json.loads(cfg_path.read_text()) if cfg_path.exists() else {}
        return cls(_Backend.from_file(str(f)), cfg)

    @property
    def vocab_size(self) -> int:
        """Base vocabulary plus added tokens (HF's len(tokenizer))."""
        return self.backend.get_vocab_size(with_added_tokens=True)

    def __len__(self) -> int:
        return self.vocab_size

    def special_tokens_map(self) -> dict:
        """What HF passes to chat templates as variables (bos_token, eos_token, ...)."""
        out = {}
        for k in ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token"):
            v = _content(self.config.get(k))
            if v is not None:
                out[k] = v
        if "pad_token" in out:
            out["pad_token"] = self.pad_token
        extra = self.config.get("additional_special_tokens")
        if extra:
            out["additional_special_tokens"] = [_content(t) for t in extra]
        return out

    def encode(self, text: str) -> list[int]:
        return self.backend.encode(text, add_special_tokens=True).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.backend.encode_batch(texts, add_special_tokens=True)]

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        if hasattr(ids, "tolist"):
            ids = ids.tolist()
        return self.backend.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def token_to_id(self, token: str) -> int | None:
        return self.backend.token_to_id(token)

    def id_to_token(self, i: int) -> str | None:
        return self.backend.id_to_token(i)


class StreamDecoder:
    """Incremental detokenizer. Feed ids one at a time (or a few); each call returns only new,
    complete text. Decoding a window of recent ids and comparing it with the same window minus the
    newest ids lets byte-level merges and multi-byte characters settle: text ending in U+FFFD is a
    character still missing bytes, so it is held back until a later id completes it."""

    def __init__(self, tokenizer: Tokenizer, skip_special_tokens: bool = True):
        self.tokenizer = tokenizer
        self.skip = skip_special_tokens
        self.ids: list[int] = []
        self.prefix = 0   # start of the window decoded for context
        self.read = 0     # ids before this have been emitted

    def _decode(self, ids) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=self.skip)

    def add(self, ids) -> str:
        if isinstance(ids, int):
            ids = [ids]
        self.ids.extend(ids)
        before = self._decode(self.ids[self.prefix:self.read])
        now = self._decode(self.ids[self.prefix:])
        if len(now) > len(before) and not now.endswith("\ufffd"):
            self.prefix, self.read = self.read, len(self.ids)
            return now[len(before):]
        return ""

    def flush(self) -> str:
        """What is still held back at the end of the sequence (an incomplete character stays U+FFFD)."""
        before = self._decode(self.ids[self.prefix:self.read])
        now = self._decode(self.ids[self.prefix:])
        self.prefix = self.read = len(self.ids)
        return now[len(before):]
