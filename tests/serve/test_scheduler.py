"""The scheduler on its own (no HTTP): the typed events a request gets, in order, and the same greedy
text as Pipeline.chat for requests decoded together with chunked prefill."""

from __future__ import annotations

import asyncio
import dataclasses
import time

from qwenvl.serve.metrics import Metrics
from qwenvl.serve.scheduler import ChoiceDelta, ChoiceEnd, Handle, RequestDone, RequestError, Scheduler


def conv(text: str) -> list[dict]:
    return [{"role": "user", "content": [{"type": "text", "text": text}]}]


async def events_of(handle: Handle) -> list:
    out = []
    while not out or not isinstance(out[-1], (RequestDone, RequestError)):
        out.append(await asyncio.wait_for(handle.events.get(), 60))
    return out


def test_requests_get_typed_events_and_the_chat_text(pipe):
    params = pipe.sampling_params(max_new_tokens=7, temperature=0, ignore_eos=True)
    texts = ["a first request", "a second, longer request than the first one"]
    want = [pipe.chat(conv(t), params) for t in texts]
    sched = Scheduler(pipe.driver(max_batch=2, max_len=256, prefill_chunk=4), Metrics(2))
    sched.start()

    async def main():
        loop = asyncio.get_running_loop()
        handles = []
        for i, t in enumerate(texts):
            seq = pipe.sequence(conv(t), params)[0]
            choices = [seq] + ([dataclasses.replace(seq, output_ids=[], timings={}, logprobs=[])]
                              if i == 1 else [])   # n = 2 for the second: one shared prefill
            h = Handle(loop=loop, arrival=time.perf_counter(), deadline=None)
            sched.reserve()
            sched.submit(h, choices)
            handles.append(h)
        return [await events_of(h) for h in handles]

    try:
        got = asyncio.run(main())
    finally:
        sched.stop()
    for events, ref, n in zip(got, want, (1, 2)):
        assert isinstance(events[-1], RequestDone)
        for i in range(n):
            mine = [e for e in events if getattr(e, "index", None) == i]
            assert all(isinstance(e, ChoiceDelta) for e in mine[:-1]) and mine[-1] == ChoiceEnd(i, "length")
            assert "".join(e.text for e in mine[:-1]) == ref.text
        usage = events[-1].usage
        assert (usage.prompt_tokens, usage.completion_tokens) == (ref.prompt_tokens, n * len(ref.token_ids))
