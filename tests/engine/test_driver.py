"""The generation driver (engine/driver.py): the events it hands out, stop strings across token
boundaries, a failing sequence beside a healthy one, and one answer whichever way it is driven."""

from __future__ import annotations

import dataclasses

import pytest

import qwenvl
import qwenvl.engine.engine as engine_mod
from qwenvl.engine.driver import Delta, Failed, Finished, TextTracker
from qwenvl.engine.prefix_cache import PrefixCache
from qwenvl.engine.sampling import SamplingParams

GREEDY = SamplingParams(max_new_tokens=12, temperature=0, ignore_eos=True)


@pytest.fixture(scope="module")
def pipe(tiny_ckpt):
    return qwenvl.load(tiny_ckpt, dtype="float32")


def conv(text: str) -> list[dict]:
    return [{"role": "user", "content": [{"type": "text", "text": text}]}]


def seq_of(pipe, text: str, params: SamplingParams = GREEDY):
    return pipe.sequence(conv(text), pipe.sampling_params(params))[0]


def by_seq(events) -> dict[int, list]:
    out: dict[int, list] = {}
    for e in events:
        out.setdefault(id(e.seq), []).append(e)
    return out


def drive(driver, seqs, siblings=False):
    """The scheduler's way: admit (one prefill for a group when `siblings`), then step until all ended."""
    if siblings:
        driver.admit(seqs[0], seqs[1:])
    else:
        for s in seqs:
            driver.admit(s)
    events = []
    while driver.tracks:
        events += driver.step()
    return events


def test_events_per_sequence_are_deltas_then_one_end(pipe):
    seqs = [seq_of(pipe, "one question"), seq_of(pipe, "another, longer question", dataclasses.replace(
        GREEDY, max_new_tokens=5))]
    events = list(pipe.driver(max_batch=2).run(seqs))
    for s in seqs:
        mine = by_seq(events)[id(s)]
        assert all(isinstance(e, Delta) for e in mine[:-1]) and isinstance(mine[-1], Finished)
        end = mine[-1]
        assert [t for e in mine[:-1] for t in e.tokens] == s.output_ids   # every token handed out once
        assert "".join(e.text for e in mine[:-1]) == end.text
        assert end.text == pipe.tokenizer.decode(s.output_ids, skip_special_tokens=True)
        assert end.reason == "length" and len(s.output_ids) == s.params.max_new_tokens
        assert (end.usage.prompt_tokens, end.usage.completion_tokens) == (len(s.prompt_ids), len(s.output_ids))
    # the two were decoded together: the shorter ended while the longer still had tokens to come
    order = [(id(e.seq), type(e)) for e in events]
    assert order.index((id(seqs[1]), Finished)) < order.index((id(seqs[0]), Finished))


def test_a_stop_string_split_across_tokens_is_cut_and_never_streamed(pipe):
    full = [e for e in pipe.driver(max_batch=1).run([seq_of(pipe, "hello there")]) if isinstance(e, Delta)]
    pieces = [e.text for e in full]
    text = "".join(pieces)

    def spanning(i):   # the end of piece i's text and the start of the next one's, first seen there
        if not (pieces[i] and pieces[i + 1]):
            return None
        stop, at = pieces[i][-1] + pieces[i + 1][0], len("".join(pieces[:i + 1])) - 1
        return stop if text.find(stop) == at else None

    stop = next(s for s in map(spanning, range(1, len(pieces) - 1)) if s)
    want = text[:text.find(stop)]
    s = seq_of(pipe, "hello there", dataclasses.replace(GREEDY, stop=(stop,)))
    events = list(pipe.driver(max_batch=1).run([s]))
    deltas, end = events[:-1], events[-1]
    assert isinstance(end, Finished) and end.reason == "stop"
    assert "".join(e.text for e in deltas) == end.text == want
    assert len(s.output_ids) < GREEDY.max_new_tokens   # generation stopped at the stop string


def test_text_tracker_holds_back_a_possible_stop_start(pipe):
    tok = pipe.tokenizer
    ids = tok.encode("abcdef")
    t = TextTracker(tok, ("cdx",))
    out = "".join(t.update(ids[:k]) for k in range(1, len(ids) + 1))
    assert "abcdef".startswith(out)
    assert out + t.finish(ids) == "abcdef" and not t.stopped   # "cd" was held back, then released
    t = TextTracker(tok, ("cd",))
    assert "".join(t.update(ids[:k]) for k in range(1, len(ids) + 1)) + t.finish(ids) == "ab" and t.stopped


def failing_for(monkeypatch, seed: int, after: int):
    """Make the sampler raise for the sequence with this seed from its `after`-th token on."""
    real = engine_mod.sample
    calls = {"n": 0}

    def sample(logits, p, generator):
        if p.seed == seed:
            calls["n"] += 1
            if calls["n"] > after:
                raise RuntimeError("sampler bug")
        return real(logits, p, generator)

    monkeypatch.setattr(engine_mod, "sample", sample)


@pytest.mark.parametrize("after", [0, 3])   # at the first token (in the prefill), in a decode step
@pytest.mark.parametrize("way", ["run", "admit"])
def test_a_failing_sequence_leaves_its_neighbour_alone(pipe, monkeypatch, after, way):
    alone = list(pipe.driver(max_batch=1).run([seq_of(pipe, "the healthy one")]))[-1].text
    failing_for(monkeypatch, seed=7, after=after)
    good, bad = seq_of(pipe, "the healthy one"), seq_of(pipe, "the failing one", dataclasses.replace(GREEDY, seed=7))
    driver = pipe.driver(max_batch=2, prefill_chunk=4 if way == "admit" else None)
    events = list(driver.run([bad, good])) if way == "run" else drive(driver, [bad, good])
    mine = by_seq(events)
    assert isinstance(mine[id(bad)][-1], Failed) and mine[id(bad)][-1].stage == "sampling"
    assert str(mine[id(bad)][-1].error) == "sampler bug"
    assert sum(isinstance(e, (Finished, Failed)) for e in mine[id(bad)]) == 1
    assert len([t for e in mine[id(bad)] if isinstance(e, Delta) for t in e.tokens]) == after
    assert isinstance(mine[id(good)][-1], Finished) and mine[id(good)][-1].text == alone
    assert not driver.tracks and driver.free_slots() == 2   # both slots are free again


def test_a_failing_prefill_is_a_failed_event(pipe, monkeypatch):
    driver = pipe.driver(max_batch=2, prefill_chunk=4)
    good, bad = seq_of(pipe, "the healthy one"), seq_of(pipe, "a prefill that fails")
    driver.admit(good)
    events = driver.step()   # good's whole prompt: one chunk would not do, so step until it runs
    while not any(isinstance(e, Delta) for e in events):
        events += driver.step()
    real = pipe.model.language_model.forward

    def forward(embeds, *args, **kw):
        if embeds.shape[1] > 1:   # a prefill chunk, not the decode step
            raise RuntimeError("prefill bug")
        return real(embeds, *args, **kw)

    driver.admit(bad)
    monkeypatch.setattr(pipe.model.language_model, "forward", forward)
    events += drive(driver, [])
    monkeypatch.undo()
    mine = by_seq(events)
    assert [type(e) for e in mine[id(bad)]] == [Failed] and mine[id(bad)][0].stage == "prefill"
    assert isinstance(mine[id(good)][-1], Finished) and len(good.output_ids) == GREEDY.max_new_tokens


def test_n_choices_share_one_prefill_and_give_the_same_greedy_text(pipe):
    seqs = [seq_of(pipe, "three choices") for _ in range(3)]
    events = drive(pipe.driver(max_batch=3, prefill_chunk=5), seqs, siblings=True)
    texts = [by_seq(events)[id(s)][-1].text for s in seqs]
    assert texts[0] and texts == [texts[0]] * 3


def test_chat_stream_and_stepped_driver_give_the_same_answer(pipe):
    """The same greedy request through Pipeline.chat, Pipeline.stream and the server's way (admission,
    chunked prefill, a prefix cache, a neighbour joining mid-way)."""
    messages = conv("the same request, three ways")
    params = dict(max_new_tokens=10, temperature=0, ignore_eos=True)
    chat = pipe.chat(messages, **params)
    streamed = "".join(pipe.stream(messages, **params))
    driver = pipe.driver(max_batch=2, prefix_cache=PrefixCache(16), prefill_chunk=3)
    s = pipe.sequence(messages, pipe.sampling_params(**params))[0]
    other = seq_of(pipe, "a neighbour")
    driver.admit(s)
    events = driver.step() + driver.step()
    driver.admit(other)
    events += drive(driver, [])
    end = by_seq(events)[id(s)][-1]
    assert chat.text == streamed == end.text and chat.token_ids == s.output_ids
    assert chat.finish_reason == end.reason == "length"
