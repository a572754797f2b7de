"""Constrained decoding: a grammar (JSON schema, regex, Lark) turned into a per-step mask over the
vocabulary by llguidance, for structured output and forced tool calls.

    grammars = Grammars(tokenizer.backend.to_str(), vocab_size=model_vocab, eos_ids=(im_end, endoftext))
    seq.constraint = grammars.constraint("json_schema", {"type": "object", ...})   # GrammarError if invalid

The engine calls `constraint.mask(logits)` before each token choice and `constraint.advance(token)` after
it. llguidance was chosen over xgrammar and outlines-core by its per-token cost measured on this CPU
(bench/grammar.py, figures in docs/serving.md), its lack of dependencies (xgrammar imports transformers)
and its fast compiles (outlines-core builds a whole-vocabulary index per schema). A compiled grammar is
cached per spec; each sequence gets a copy of the cached matcher, so equal schemas compile once.
"""

from __future__ import annotations

import collections
import json
import threading

import numpy as np
import torch

KINDS = ("json_schema", "regex", "lark")
# JSON is written the way json.dumps (and Qwen's training data) writes it: ", " and ": ", no free
# whitespace, so a model cannot wander into endless blanks. A schema's own "x-guidance" overrides this.
JSON_OPTIONS = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


class GrammarError(ValueError):
    """A grammar or schema the library refuses; the message says why."""


def _llguidance():
    try:
        import llguidance
    except ImportError:
        raise GrammarError("constrained decoding needs llguidance: pip install 'qwenvl[grammar]'") from None
    return llguidance


def lark_json(schema: dict) -> str:
    """A JSON schema as a Lark fragment (llguidance's %json), for embedding in larger grammars."""
    return "%json " + json.dumps(schema)


class Constraint:
    """One sequence's position in a grammar."""

    def __init__(self, matcher, vocab_size: int):
        self.matcher = matcher
        self.vocab_size = vocab_size
        self.words = np.zeros((vocab_size + 31) // 32, dtype=np.int32)

    def allowed(self) -> torch.Tensor:
        """Bool [V]: the tokens the grammar allows next (eos only once it is complete)."""
        self.matcher.unsafe_compute_mask_ptr(self.words.ctypes.data, self.words.nbytes)
        if self.matcher.is_error():
            raise GrammarError(f"grammar state error: {self.matcher.get_error()}")
        # bit i of word w is token 32*w + i; x86 stores the words little-endian
        bits = np.unpackbits(self.words.view(np.uint8), bitorder="little")[: self.vocab_size]
        return torch.from_numpy(bits.view(np.bool_))   # 0/1 bytes: a bool view, no copy

    def mask(self, logits: torch.Tensor) -> torch.Tensor:
        allowed = self.allowed().to(logits.device)
        V = logits.shape[-1]
        if V > self.vocab_size:   # rows the grammar's tokenizer does not know can never be allowed
            allowed = torch.cat([allowed, allowed.new_zeros(V - self.vocab_size)])
        return logits.masked_fill(~allowed[:V], float("-inf"))

    def advance(self, token: int) -> None:
        if not self.matcher.consume_token(token):
            raise GrammarError(f"token {token} rejected by the grammar: {self.matcher.get_error()}")

    @property
    def done(self) -> bool:
        """Nothing but the end of the sequence can follow."""
        return self.matcher.is_stopped()


class Grammars:
    """Grammar compilation for one tokenizer, with an LRU cache of compiled matchers per spec."""

    def __init__(self, tokenizer_json: str, vocab_size: int, eos_ids, cache_size: int = 256):
        llg = _llguidance()
        self.llg = llg
        self.vocab_size = vocab_size
        self.tokenizer = llg.LLTokenizer(tokenizer_json, n_vocab=vocab_size, eos_token=list(eos_ids))
        self.cache: collections.OrderedDict[tuple, object] = collections.OrderedDict()
        self.cache_size = cache_size
        self.lock = threading.Lock()   # preprocessing threads compile concurrently
        self.compiled = 0              # cache misses, for tests and metrics

    def grammar(self, kind: str, spec) -> str:
        M = self.llg.LLMatcher
        if kind == "json_schema":
            if not isinstance(spec, dict):
                raise GrammarError("a JSON schema must be an object")
            try:
                return M.grammar_from_json_schema(spec, defaults=JSON_OPTIONS)
            except ValueError as e:
                raise GrammarError(f"invalid JSON schema: {e}") from None
        if kind == "regex":
            return M.grammar_from_regex(spec)
        if kind == "lark":
            return M.grammar_from_lark(spec)
        raise GrammarError(f"unknown grammar kind {kind!r}; expected one of {', '.join(KINDS)}")

    def constraint(self, kind: str, spec) -> Constraint:
        key = (kind, json.dumps(spec, sort_keys=True) if not isinstance(spec, str) else spec)
        with self.lock:
            proto = self.cache.get(key)
            if proto is not None:
                self.cache.move_to_end(key)
        if proto is None:
            grammar = self.grammar(kind, spec)
            ok, messages = self.llg.LLMatcher.validate_grammar_with_warnings(grammar, self.tokenizer)
            if ok:   # is_error
                raise GrammarError(messages[0] if messages else "invalid grammar")
            proto = self.llg.LLMatcher(self.tokenizer, grammar, log_level=0)
            if proto.is_error():
                raise GrammarError(proto.get_error())
            with self.lock:
                self.compiled += 1
                self.cache[key] = proto
                while len(self.cache) > self.cache_size:
                    self.cache.popitem(last=False)
        with self.lock:   # the prototype is shared by the preprocessing threads
            return Constraint(proto.deep_copy(), self.vocab_size)
