"""Constrained decoding in the engine: masks from llguidance, one matcher per sequence (batching), the
cache of compiled grammars, and clear errors for bad grammars."""

from __future__ import annotations

import json
import re

import pytest
import torch

from qwenvl.engine.engine import Engine, Sequence, generate
from qwenvl.engine.sampling import SamplingParams
from qwenvl.model.weights import load_model
from qwenvl.processing.tokenizer import Tokenizer

pytest.importorskip("llguidance")
from qwenvl.engine.grammar import GrammarError, Grammars  # noqa: E402


@pytest.fixture(scope="module")
def setup(own_ckpt):
    model = load_model(own_ckpt)
    tok = Tokenizer.from_pretrained(own_ckpt)
    eos = (tok.token_to_id("<|im_end|>"),)
    return model, tok, Grammars(tok.backend.to_str(), model.config.text.vocab_size, eos), eos


def test_batched_sequences_follow_their_own_grammars(setup):
    model, tok, grammars, eos = setup
    schema = {"type": "object", "properties": {"n": {"type": "integer", "minimum": 0, "maximum": 50},
                                               "tag": {"enum": ["cat", "dog"]}},
              "required": ["n", "tag"], "additionalProperties": False}
    specs = [("regex", r"[a-c]{4}-[0-9]{2}"), ("json_schema", schema), ("regex", r"(yes|no)")]
    seqs = [Sequence(prompt_ids=[5, 6, 7 + i], params=SamplingParams(max_new_tokens=40, temperature=1.0, seed=i),
                     eos_ids=eos, constraint=grammars.constraint(*spec)) for i, spec in enumerate(specs)]
    seqs.append(Sequence(prompt_ids=[5, 6, 9], params=SamplingParams(max_new_tokens=5, temperature=0),
                         eos_ids=eos))   # an unconstrained neighbour in the same batch
    for _ in generate(Engine(model, max_batch=4, max_len=64), seqs):
        pass
    texts = [tok.decode(s.output_ids, skip_special_tokens=True) for s in seqs]
    assert re.fullmatch(r"[a-c]{4}-[0-9]{2}", texts[0]), texts[0]
    obj = json.loads(texts[1])
    assert set(obj) == {"n", "tag"} and 0 <= obj["n"] <= 50 and obj["tag"] in ("cat", "dog")
    assert texts[2] in ("yes", "no")
    assert all(s.finish_reason == "stop" for s in seqs[:3])
    assert seqs[3].finish_reason in ("stop", "length")


def test_mask_allows_only_grammar_tokens(setup):
    _, tok, grammars, _ = setup
    c = grammars.constraint("regex", "ab")
    allowed = c.allowed()
    ids = torch.nonzero(allowed).flatten().tolist()
    assert ids and all("ab".startswith(tok.decode([i])) for i in ids)
    logits = c.mask(torch.zeros(allowed.shape[0] + 3))   # rows past the grammar's vocabulary stay forbidden
    assert torch.isinf(logits[-3:]).all() and torch.isfinite(logits[ids]).all()


def test_compiled_grammars_are_cached_and_errors_are_clear(setup):
    _, _, grammars, _ = setup
    n = grammars.compiled
    a, b = grammars.constraint("regex", "x+y"), grammars.constraint("regex", "x+y")
    assert grammars.compiled == n + 1 and a.matcher is not b.matcher   # one compile, separate states
    with pytest.raises(GrammarError, match="unclosed group"):
        grammars.constraint("regex", "a(b")
    with pytest.raises(GrammarError, match="foo"):
        grammars.constraint("json_schema", {"type": "foo"})
    with pytest.raises(GrammarError, match="unknown grammar kind"):
        grammars.constraint("ebnf", "x")
