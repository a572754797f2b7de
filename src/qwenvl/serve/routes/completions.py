"""POST /v1/completions: raw prompts, no chat template (request and answer shapes in serve/completions.py).
With `echo` the prompt goes in front of the text, and with `logprobs` its own logprobs in front of the
answer's."""

from __future__ import annotations

from fastapi import APIRouter, Request

from ...engine.driver import Usage
from .. import completions, protocol
from ..prepare import prepare_completion
from ..scheduler import ChoiceDelta, ChoiceEnd
from .common import Accepted, Collected, Renderer, answer, sse

router = APIRouter()


def respond(acc: Accepted, out: Collected) -> dict:
    req, info, token_text = acc.req, acc.info, acc.state.token_text
    choices = [{"index": i, "text": out.texts[i], "finish_reason": out.reasons[i]} for i in range(req.choices)]
    for i, c in enumerate(choices):
        p = i // req.n   # choices are numbered prompt-major
        if req.echo:
            c["text"] = info["prompt_texts"][p] + c["text"]
        if req.logprobs is not None:
            entries = (info["prompt_logprobs"][p] if req.echo else []) + [(e, e.token) for e in out.logprobs[i]]
            c["logprobs"] = completions.legacy_logprobs(entries, token_text)
    return completions.response(req, acc.name, choices, out.usage.prompt_tokens, out.usage.completion_tokens)


class CompletionStream(Renderer):
    def __init__(self, acc):
        super().__init__(acc)
        self.offsets = [0] * self.acc.choices   # text offset of each choice's next chunk (legacy logprobs)

    def start(self) -> list[str]:
        req, info = self.acc.req, self.acc.info
        if not req.echo:
            return []
        out = []
        for i in range(req.choices):
            p = i // req.n
            lp = (completions.legacy_logprobs(info["prompt_logprobs"][p], self.acc.state.token_text)
                  if req.logprobs is not None else None)
            self.offsets[i] = len(info["prompt_texts"][p])
            out.append(sse(completions.chunk(req, self.acc.name, [{"index": i, "text": info["prompt_texts"][p],
                                                                   "logprobs": lp, "finish_reason": None}])))
        return out

    def _chunk(self, i: int, text: str, reason: str | None = None) -> str:
        lp = None
        if self.acc.req.logprobs is not None:
            lp = completions.legacy_logprobs([(e, e.token) for e in self.pending[i]], self.acc.state.token_text,
                                             self.offsets[i])
            self.pending[i] = []
        self.offsets[i] += len(text)
        return sse(completions.chunk(self.acc.req, self.acc.name, [{"index": i, "text": text, "logprobs": lp,
                                                                     "finish_reason": reason}]))

    def delta(self, event: ChoiceDelta) -> list[str]:
        return [self._chunk(event.index, event.text)]

    def end(self, event: ChoiceEnd) -> list[str]:
        return [self._chunk(event.index, "", event.reason)]

    def usage(self, usage: Usage) -> str:
        return sse(completions.chunk(self.acc.req, self.acc.name, [],
                                     protocol.usage(usage.prompt_tokens, usage.completion_tokens, usage.cached_tokens)))


@router.post("/v1/completions")
async def text_completions(request: Request):
    return await answer(request, completions.parse_completion_request, prepare_completion, CompletionStream, respond)
