"""POST /v1/chat/completions: a conversation (text, images, videos, tools) through the chat template.
Tool calls are parsed out of the text (serve/tools.py), streamed as OpenAI's tool-call deltas."""

from __future__ import annotations

from fastapi import APIRouter, Request

from ...engine.driver import Usage
from .. import protocol, tools as tooling
from ..prepare import prepare
from ..scheduler import ChoiceDelta, ChoiceEnd
from .common import Accepted, Collected, Renderer, answer, sse

router = APIRouter()


def respond(acc: Accepted, out: Collected) -> dict:
    req, token_text = acc.req, acc.state.token_text
    choices = [{"index": i, "text": out.texts[i], "finish_reason": out.reasons[i]} for i in range(req.n)]
    if req.logprobs is not None:
        for i, c in enumerate(choices):
            c["logprobs"] = {"content": [token_text.entry(e) for e in out.logprobs[i]], "refusal": None}
    u = out.usage
    return protocol.completion(req, acc.name, choices, u.prompt_tokens, u.completion_tokens, u.cached_tokens)


class ChatStream(Renderer):
    def __init__(self, acc):
        super().__init__(acc)
        req = self.acc.req
        self.parsers = [tooling.ToolStreamParser() if req.tools is not None else None for _ in range(req.n)]

    def start(self) -> list[str]:
        first = [{"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                  "finish_reason": None} for i in range(self.acc.req.n)]
        return [sse(protocol.chunk(self.acc.req, self.acc.name, first))]

    def _one_call(self, deltas: list[dict]) -> list[dict]:
        """parallel_tool_calls: false -> only the first call goes out (as in the non-streamed answer)."""
        tools = self.acc.req.tools
        if tools is None or tools.parallel:
            return deltas
        return [d for d in deltas if not ("tool_calls" in d and d["tool_calls"][0]["index"] > 0)]

    def _chunks(self, i: int, deltas: list[dict], reason: str | None = None) -> list[str]:
        req, out = self.acc.req, []
        for k, delta in enumerate(deltas):
            lp = None
            if req.logprobs is not None and k == 0 and self.pending[i]:
                lp = {"content": [self.acc.state.token_text.entry(e) for e in self.pending[i]], "refusal": None}
                self.pending[i] = []
            last = k == len(deltas) - 1
            out.append(sse(protocol.chunk(req, self.acc.name, [{"index": i, "delta": delta, "logprobs": lp,
                                                                 "finish_reason": reason if last else None}])))
        return out

    def delta(self, event: ChoiceDelta) -> list[str]:
        parser, text = self.parsers[event.index], event.text
        deltas = parser.feed(text) if parser is not None else ([{"content": text}] if text else [])
        return self._chunks(event.index, self._one_call(deltas))

    def end(self, event: ChoiceEnd) -> list[str]:
        parser, reason = self.parsers[event.index], event.reason
        deltas = self._one_call(parser.feed("", final=True)) if parser is not None else []
        if parser is not None and parser.calls and reason == "stop":
            reason = "tool_calls"
        return self._chunks(event.index, deltas + [{}], reason)

    def usage(self, usage: Usage) -> str:
        return sse(protocol.chunk(self.acc.req, self.acc.name, [],
                                  protocol.usage(usage.prompt_tokens, usage.completion_tokens, usage.cached_tokens)))


@router.post("/v1/chat/completions")
async def chat_completions(request: Request):
    return await answer(request, protocol.parse_chat_request, prepare, ChatStream, respond)
