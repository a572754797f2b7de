"""Per-sequence failure isolation on the engine's newer paths: a grammar constraint that raises, and NaN
logits at the end of a (shared, chunked) prefill, end that sequence only with `error` set."""

from __future__ import annotations

import pytest

from qwenvl.engine.engine import Engine, Sequence, generate
from qwenvl.engine.prefix_cache import PrefixCache
from qwenvl.engine.sampling import SamplingParams
from qwenvl.model.weights import load_model

PARAMS = SamplingParams(max_new_tokens=6, temperature=0, ignore_eos=True)
PROMPT = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]


@pytest.fixture(scope="module")
def model(own_ckpt):
    return load_model(own_ckpt)


class Broken:
    """A constraint that allows everything and raises on its `fail_at`-th mask (0: the first token)."""

    def __init__(self, fail_at: int):
        self.fail_at, self.calls, self.done = fail_at, 0, False

    def mask(self, logits):
        self.calls += 1
        if self.calls > self.fail_at:
            raise RuntimeError("grammar matcher failed")
        return logits

    def advance(self, token):
        pass


def seq(constraint=None):
    return Sequence(list(PROMPT), PARAMS, constraint=constraint)


def run(engine):
    while engine.active or engine.prefills:
        engine.step()
        for s in engine.active:
            if s.finished:
                engine.release(s)


def test_a_constraint_raising_mid_decode_ends_that_sequence_only(model):
    ref = seq()
    list(generate(Engine(model, max_batch=1, max_len=64), [ref]))
    engine = Engine(model, max_batch=2, max_len=64)
    good, bad = seq(), seq(Broken(fail_at=3))
    engine.add(good)
    engine.add(bad)
    seen = []
    while not good.finished:
        seen += [s for s, _ in engine.step()]
    assert bad.finish_reason == "error" and isinstance(bad.error, RuntimeError)
    assert len(bad.output_ids) == 3 and seen.count(bad) == 2   # tokens 2 and 3; the failed 4th has no pair
    assert good.finish_reason == "length" and good.output_ids == ref.output_ids and good.error is None


def test_a_sibling_whose_first_token_fails_leaves_the_shared_prefill_to_the_others(model):
    engine = Engine(model, max_batch=3, max_len=64, prefill_chunk=4)
    a, b, c = seq(), seq(Broken(fail_at=0)), seq()
    engine.admit(a, [b, c])
    firsts = []
    while not firsts:
        firsts = engine.step()
    assert [s for s, _ in firsts] == [a, c]   # the failed sibling has no first token to hand out
    assert b.finish_reason == "error" and b.output_ids == [] and "grammar" in str(b.error)
    run(engine)
    assert a.finish_reason == c.finish_reason == "length" and a.output_ids == c.output_ids
    assert engine.free_slots() == 3


def test_nan_at_the_end_of_a_prefill_fails_its_group_and_is_not_cached(model, monkeypatch):
    pc = PrefixCache(64, 0, block_size=4)
    engine = Engine(model, max_batch=3, max_len=64, prefix_cache=pc)
    neighbour = Sequence([20, 21, 22, 23, 24], PARAMS)
    engine.add(neighbour)
    a, b = seq(), seq()
    engine.admit(a, [b])
    # NaN logits from the prefill only (inside _advance), not from the neighbour's decode step
    in_prefill, real_advance, real_logits = [False], engine._advance, model.logits

    def advance(state):
        in_prefill[0] = True
        try:
            return real_advance(state)
        finally:
            in_prefill[0] = False

    monkeypatch.setattr(engine, "_advance", advance)
    monkeypatch.setattr(model, "logits", lambda h: real_logits(h).fill_(float("nan")) if in_prefill[0]
                        else real_logits(h))
    pairs = engine.step()
    assert [s for s, _ in pairs] == [neighbour]
    assert a.finish_reason == b.finish_reason == "error" and isinstance(b.error, FloatingPointError)
    assert engine.failed == []   # not a failed prefill: the group's token choice failed
    run(engine)   # releases a and b: their NaN rows must not be stored either
    assert pc.match(a.block_keys, len(PROMPT) - 1) == []
    assert neighbour.finish_reason == "length" and neighbour.error is None and engine.free_slots() == 3
