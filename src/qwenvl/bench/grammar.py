"""Per-token cost of constrained decoding with llguidance, xgrammar and outlines-core on this CPU.

    python -m qwenvl.bench.grammar [--vocab 32000]

For each library: the time to compile one JSON schema for a byte-level BPE tokenizer, then the time per
generated token to compute the allowed-token mask and advance the matcher, while a valid document is fed
token by token (the work the engine adds to every constrained decoding step). The tokenizer is trained
here (no download) at two sizes: the tiny test vocabulary and a larger one. The figures are in
docs/serving.md; the engine uses llguidance (engine/grammar.py).
"""

from __future__ import annotations

import argparse
import json
import sysconfig
import time
from pathlib import Path

import numpy as np
import torch

SCHEMA = {"type": "object", "properties": {
    "name": {"type": "string"}, "age": {"type": "integer"}, "tags": {"type": "array", "items": {"type": "string"}},
    "address": {"type": "object", "properties": {"city": {"type": "string"}, "zip": {"type": "string"}},
                "required": ["city", "zip"], "additionalProperties": False}},
    "required": ["name", "age", "tags", "address"], "additionalProperties": False}
DOC = json.dumps({"name": "Ada Lovelace", "age": 36, "tags": ["math", "engines", "poetry"],
                  "address": {"city": "London", "zip": "W1"}})


def train_tokenizer(vocab: int):
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers

    from ..tiny import NOT_SPECIAL, SPECIAL_TOKENS, _CORPUS
    lib = Path(sysconfig.get_paths()["stdlib"])
    text = [_CORPUS]
    if vocab > 1000:   # the tiny corpus cannot fill a large vocabulary: add the stdlib's sources
        text += [p.read_text(errors="ignore") for p in sorted(lib.glob("*.py"))[:120]]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(text * 4, trainers.BpeTrainer(vocab_size=vocab, show_progress=False,
                                                          initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    for t in SPECIAL_TOKENS:   # one by one, as tiny.build_tokenizer does: <tool_call> & co. are not special
        (tok.add_tokens if t in NOT_SPECIAL else tok.add_special_tokens)([AddedToken(t, special=t not in NOT_SPECIAL,
                                                                                     normalized=False)])
    return tok


def token_bytes(tok) -> list[bytes]:
    """Each token's bytes (outlines-core's vocabulary is keyed by them)."""
    from ..serve.fields import _bytes_to_unicode
    byte_of = {c: b for b, c in _bytes_to_unicode().items()}
    added = set(tok.get_added_tokens_decoder())
    out = []
    for i in range(tok.get_vocab_size()):
        s = tok.id_to_token(i)
        out.append(s.encode() if i in added or not all(c in byte_of for c in s) else bytes(byte_of[c] for c in s))
    return out


def bench_llguidance(tok, ids, eos):
    import llguidance
    import llguidance.torch as lt
    t0 = time.perf_counter()
    lltok = llguidance.LLTokenizer(tok.to_str(), n_vocab=tok.get_vocab_size(), eos_token=eos)
    t1 = time.perf_counter()
    grammar = llguidance.LLMatcher.grammar_from_json_schema(SCHEMA)
    m = llguidance.LLMatcher(lltok, grammar)
    t2 = time.perf_counter()
    mask = lt.allocate_token_bitmask(1, tok.get_vocab_size())
    per = []
    for t in ids:
        s = time.perf_counter()
        lt.fill_next_token_bitmask(m, mask, 0)
        assert m.consume_token(t), m.get_error()
        per.append(time.perf_counter() - s)
    return t1 - t0, t2 - t1, per


def bench_xgrammar(tok, ids, eos):
    import xgrammar as xgr
    t0 = time.perf_counter()
    info = xgr.TokenizerInfo([tok.id_to_token(i) for i in range(tok.get_vocab_size())],
                             vocab_type=xgr.VocabType.BYTE_LEVEL, vocab_size=tok.get_vocab_size(),
                             stop_token_ids=[eos])
    compiler = xgr.GrammarCompiler(info, max_threads=1)
    t1 = time.perf_counter()
    compiled = compiler.compile_json_schema(json.dumps(SCHEMA), any_whitespace=False)
    m = xgr.GrammarMatcher(compiled)
    t2 = time.perf_counter()
    mask = xgr.allocate_token_bitmask(1, tok.get_vocab_size())
    per = []
    for t in ids:
        s = time.perf_counter()
        m.fill_next_token_bitmask(mask)
        assert m.accept_token(t)
        per.append(time.perf_counter() - s)
    return t1 - t0, t2 - t1, per


def bench_outlines(tok, ids, eos):
    from outlines_core import Guide, Index, Vocabulary
    from outlines_core.json_schema import build_regex_from_schema
    t0 = time.perf_counter()
    special = {tok.token_to_id(t) for t in ("<|endoftext|>", "<|im_end|>", "<|im_start|>")}
    vocab: dict[bytes, list[int]] = {}
    for i, b in enumerate(token_bytes(tok)):
        if i not in special:
            vocab.setdefault(b, []).append(i)
    v = Vocabulary(eos, vocab)
    t1 = time.perf_counter()
    index = Index(build_regex_from_schema(json.dumps(SCHEMA)), v)
    g = Guide(index)
    t2 = time.perf_counter()
    mask = torch.zeros((tok.get_vocab_size() + 31) // 32, dtype=torch.int32)
    per = []
    for t in ids:
        s = time.perf_counter()
        g.write_mask_into(mask.data_ptr(), mask.numel(), mask.element_size())
        g.advance(t)
        per.append(time.perf_counter() - s)
    return t1 - t0, t2 - t1, per


def bench_engine(tok, ids, eos):
    """What the engine adds per constrained token: llguidance's mask, applied to float32 logits, plus the advance."""
    from ..engine.grammar import Grammars
    t0 = time.perf_counter()
    grammars = Grammars(tok.to_str(), tok.get_vocab_size(), [eos])
    t1 = time.perf_counter()
    c = grammars.constraint("json_schema", SCHEMA)
    t2 = time.perf_counter()
    logits = torch.randn(tok.get_vocab_size())
    per = []
    for t in ids:
        s = time.perf_counter()
        masked = c.mask(logits)
        assert torch.isfinite(masked[t])
        c.advance(t)
        per.append(time.perf_counter() - s)
    return t1 - t0, t2 - t1, per


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vocab", type=int, nargs="+", default=[512, 32000])
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    for size in args.vocab:
        tok = train_tokenizer(size)
        ids = tok.encode(DOC).ids
        eos = tok.token_to_id("<|im_end|>")
        print(f"vocabulary {tok.get_vocab_size()} tokens; document {len(ids)} tokens")
        for name, fn in (("llguidance", bench_llguidance), ("xgrammar", bench_xgrammar),
                         ("outlines-core", bench_outlines), ("engine (llg)", bench_engine)):
            try:
                setup, compile_s, per = fn(tok, ids, eos)
            except ImportError as e:
                print(f"  {name:14s} not installed ({e})")
                continue
            per_us = np.array(per) * 1e6
            print(f"  {name:14s} tokenizer setup {setup * 1e3:8.1f} ms  schema compile {compile_s * 1e3:8.1f} ms  "
                  f"per token median {np.median(per_us):7.1f} us  p90 {np.percentile(per_us, 90):7.1f} us  "
                  f"max {per_us.max():8.1f} us")


if __name__ == "__main__":
    main()
