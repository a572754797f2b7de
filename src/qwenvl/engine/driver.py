"""The generation driver: an Engine stepped for text. It owns what every caller of the engine needs
besides token ids: incremental detokenizing, stop strings, the finish reason, the logprobs of the
answer, and the failure of one sequence, handed out as typed events.

    driver = pipe.driver(max_batch=4)
    for event in driver.run(seqs):               # to completion: Pipeline.chat, Pipeline.stream
        ...
    driver.admit(seq); events = driver.step()    # one step of a continuous batch: the server's scheduler

Events, per sequence and in this order: any number of `Delta`, then one `Finished` or one `Failed`.
After a sequence's last event its slot is free again (nothing to release).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, Union

from ..processing.stops import StopMatcher
from ..processing.tokenizer import StreamDecoder
from .engine import Engine, Sequence


@dataclass(eq=False)
class Delta:
    """New output of `seq`: `tokens` sampled since its last event and the text they complete. `text` may
    be "" (a token inside a multi-byte character, or text held back while it may start a stop string).
    `logprobs` holds a TokenLogprob per token of the answer; the token that ended the sequence (eos, a
    stop token id) is not part of the answer and has none, as in OpenAI's answers."""
    seq: Sequence
    text: str
    tokens: list[int]
    logprobs: list = field(default_factory=list)


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0   # prompt tokens whose keys/values came from the prefix cache

    def __add__(self, other: "Usage") -> "Usage":
        return Usage(self.prompt_tokens + other.prompt_tokens, self.completion_tokens + other.completion_tokens,
                     self.cached_tokens + other.cached_tokens)


@dataclass(eq=False)
class Finished:
    """`seq` ended normally: reason "stop" (eos, a stop token id or string, a complete grammar) or "length".
    `text` is its whole answer (the Deltas' texts joined)."""
    seq: Sequence
    reason: str
    text: str
    usage: Usage


@dataclass(eq=False)
class Failed:
    """`seq` ended with an error; the other sequences go on. stage "prefill": its prefill raised (the whole
    prompt group fails with it); "sampling": its own token choice failed (NaN logits, its sampler or
    grammar constraint raised)."""
    seq: Sequence
    error: Exception
    stage: str


Event = Union[Delta, Finished, Failed]


class TextTracker:
    """Turns a growing list of output ids into text deltas (incremental detokenizing: a multi-byte
    character is never split) and cuts the text at the first stop string, holding back a possible
    start of one until it is decided."""

    def __init__(self, tokenizer, stop: tuple[str, ...] = ()):
        self.decoder = StreamDecoder(tokenizer, skip_special_tokens=True)
        self.stop = stop
        self.matcher = StopMatcher(stop)   # incremental: each new character costs O(1) per stop string
        self.fed = 0
        self.raw = ""       # everything decoded so far
        self.text = ""      # what has been emitted (never past a stop string)
        self.stopped = False

    def update(self, ids: list[int]) -> str:
        if len(ids) > self.fed:
            self._add(self.decoder.add(ids[self.fed:]))
            self.fed = len(ids)
        return self._emit(final=False)

    def finish(self, ids: list[int]) -> str:
        """The last delta once the sequence has ended: held-back text is final now."""
        self.update(ids)
        self._add(self.decoder.flush())
        return self._emit(final=True)

    def _add(self, piece: str) -> None:
        self.raw += piece
        self.matcher.feed(piece)

    def _emit(self, final: bool) -> str:
        if self.stopped:
            return ""
        end = len(self.raw)
        if self.matcher.match is not None:
            end, self.stopped = self.matcher.match, True
        elif not final:
            end -= self.matcher.pending
        delta = self.raw[len(self.text):end]
        self.text += delta
        return delta


@dataclass(eq=False)
class _Track:
    text: TextTracker
    tokens: int = 0     # output ids already handed out
    logprobs: int = 0   # entries of seq.logprobs already handed out


class Driver:
    """One Engine and the text of each sequence in it. Only one thread may call it (the engine's rule).

    Two ways to feed it, as the engine has: `add` prefills at once (a batch of prompts, `run`); `admit`
    queues the prefill for `step`, which runs it in units next to the decoding (serving, chunked prefill).
    n > 1 completions of one prompt are admitted together (`siblings`) and share one prefill."""

    def __init__(self, engine: Engine, tokenizer):
        self.engine = engine
        self.tokenizer = tokenizer
        self.tracks: dict[int, _Track] = {}   # id(seq) -> its text state, for the sequences in the engine

    @property
    def last_batch(self) -> int:
        """Sequences in the last decode step."""
        return self.engine.last_batch

    def has_free_slot(self) -> bool:
        return self.engine.has_free_slot()

    def free_slots(self) -> int:
        return self.engine.free_slots()

    def _track(self, seq: Sequence) -> None:
        self.tracks[id(seq)] = _Track(TextTracker(self.tokenizer, seq.params.stop))

    def _drop(self, seq: Sequence) -> None:
        self.tracks.pop(id(seq), None)
        self.engine.release(seq)

    # ------------------------------------------------------------------ feeding

    def admit(self, seq: Sequence, siblings: list[Sequence] = ()) -> None:
        """Queue `seq`'s prefill for `step` (siblings: more completions of the same prompt, one prefill).
        Raises as Engine.admit does (a ValueError for a prompt of its own fault, too long for the model),
        with no slot left taken."""
        group = [seq, *siblings]
        try:
            self.engine.admit(seq, list(siblings))
        except Exception:
            for s in group:
                self.engine.release(s)
            raise
        for s in group:
            self._track(s)

    def add(self, seq: Sequence) -> list[Event]:
        """Prefill `seq` now and return the events of its first token. An exception of the prefill itself
        propagates (the slot is freed)."""
        self._track(seq)
        try:
            self.engine.add(seq)
        except Exception:
            self.tracks.pop(id(seq), None)
            raise
        if seq.error is not None:
            self._drop(seq)
            return [Failed(seq, seq.error, "sampling")]
        return self._advance(seq)

    def release(self, seq: Sequence) -> None:
        """Take `seq` out before it ended (cancelled, timed out, its request failed): its slot is freed and
        it has no more events. Harmless for a sequence already ended or never admitted."""
        self._drop(seq)

    # ------------------------------------------------------------------ stepping

    def step(self) -> list[Event]:
        """One engine step (a decode step of the running batch and one unit of a queued prefill) -> events:
        the failures first, then the new output of each sequence that got a token."""
        pairs = self.engine.step()
        events: list[Event] = []
        failed, self.engine.failed = self.engine.failed, []
        for seq, err in failed:   # the engine freed their slots already
            if self.tracks.pop(id(seq), None) is not None:
                events.append(Failed(seq, err, "prefill"))
        for seq in self.engine.active:
            if seq.error is not None and id(seq) in self.tracks:
                self._drop(seq)
                events.append(Failed(seq, seq.error, "sampling"))
        for seq, _ in pairs:
            if id(seq) in self.tracks:
                events += self._advance(seq)
        return events

    def _advance(self, seq: Sequence) -> list[Event]:
        track = self.tracks[id(seq)]
        text = track.text.update(seq.output_ids)
        if track.text.stopped:
            seq.finish("stop")
        if seq.finished:   # held-back text (an incomplete character, a partial stop string) is final now
            text += track.text.finish(seq.output_ids)
        tokens = seq.output_ids[track.tokens:]
        track.tokens = len(seq.output_ids)
        events: list[Event] = [Delta(seq, text, tokens, self._new_logprobs(seq, track))]
        if seq.finished:
            events.append(Finished(seq, seq.finish_reason, track.text.text,
                                   Usage(len(seq.prompt_ids), len(seq.output_ids), seq.cached_tokens)))
            self._drop(seq)
        return events

    @staticmethod
    def _new_logprobs(seq: Sequence, track: _Track) -> list:
        if seq.params.logprobs is None:
            return []
        n = len(seq.logprobs)
        if seq.finished and n and not seq.params.ignore_eos and \
                (seq.output_ids[-1] in seq.eos_ids or seq.output_ids[-1] in seq.params.stop_token_ids):
            n -= 1
        out = seq.logprobs[track.logprobs:n]
        track.logprobs = max(track.logprobs, n)
        return out

    def run(self, seqs: list[Sequence]) -> Iterator[Event]:
        """Drive `seqs` to their end, prefilling each as soon as a slot is free, decoding the running ones
        together. A prefill that raises propagates; a sequence whose sampling fails gets its Failed event
        and the others go on."""
        pending = list(seqs)
        while pending or self.tracks:
            while pending and self.engine.has_free_slot():
                yield from self.add(pending.pop(0))
            yield from self.step()
