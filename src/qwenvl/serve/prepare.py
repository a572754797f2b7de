"""A request's preprocessing, run in a worker thread (never on the event loop): sampling parameters,
media loading, the processor, and one Sequence per choice, built through the Pipeline's public API.
A grammar (response_format, guided_*, a forced tool_choice) becomes one engine.grammar.Constraint per
choice."""

from __future__ import annotations

import dataclasses

from ..engine.engine import Sequence
from ..engine.grammar import GrammarError
from ..engine.prefix_cache import media_items
from ..errors import ContextLengthError, MediaError
from ..pipeline import Pipeline
from . import completions, fields, protocol, tools as tooling
from .errors import APIError, bad_request
from .media import Budget, load_conversation, remove_files
from .settings import ServerSettings


def _sampling(pipe: Pipeline, req):
    try:
        params = pipe.sampling_params(max_new_tokens=1, **req.sampling)
    except (TypeError, ValueError) as e:
        raise bad_request(str(e)) from None
    fields.check_token_ids(params.logit_bias, pipe.vocab_size, "logit_bias")
    return params


def _constraint_maker(pipe: Pipeline, req, grammars):
    """A function making each choice's grammar constraint (None when the request has no grammar)."""
    kind = spec = param = None
    if req.guided is not None:
        kind, spec, param = req.guided
    elif req.tools is not None and req.tools.choice != "auto":
        tok = pipe.tokenizer
        kind, spec, param = "lark", tooling.tool_grammar(req.tools, tok.token_to_id(tooling.OPEN),
                                                         tok.token_to_id(tooling.CLOSE)), "tools"
    if kind is None:
        return lambda: None
    try:
        g = grammars()
        g.constraint(kind, spec)   # compile (and cache) now, so a bad schema is a 400 before queueing
    except GrammarError as e:
        raise bad_request(f"'{param}': {e}", param, code="invalid_grammar") from None
    return lambda: g.constraint(kind, spec)


def _choices(seq: Sequence, params, n: int, max_new: int, make_constraint, media_items=None) -> list[Sequence]:
    out = []
    for i in range(n):
        seed = None if params.seed is None else params.seed + i   # n samples of one seed must differ
        p = dataclasses.replace(params, max_new_tokens=max_new, seed=seed)
        out.append(Sequence(prompt_ids=list(seq.prompt_ids), params=p, media=seq.media, eos_ids=seq.eos_ids,
                            constraint=make_constraint(), media_items=media_items))
    return out


def prompt_chars(req: protocol.ChatRequest) -> int:
    return sum(len(m["content"]) if isinstance(m["content"], str) else
               sum(len(p.get("text", "")) for p in m["content"]) for m in req.messages)


def check_prompt_chars(chars: int, settings: ServerSettings, max_len: int, param: str) -> None:
    """Text length before tokenizing: a cheap bound on the tokenizer's work."""
    max_chars = settings.max_prompt_chars or 16 * max_len
    if chars > max_chars:
        where = "messages hold" if param == "messages" else f"'{param}' holds"
        raise bad_request(f"the {where} {chars} characters of text, over the limit of {max_chars} "
                          f"(--max-prompt-chars) for this model's context of {max_len} tokens", param,
                          code="context_length_exceeded")


def prepare(pipe: Pipeline, req: protocol.ChatRequest, settings: ServerSettings, max_len: int,
            grammars=None, deadline: float | None = None) -> tuple[list[Sequence], dict]:
    """Load the media, run the processor and build one Sequence per choice."""
    params = _sampling(pipe, req)
    make_constraint = _constraint_maker(pipe, req, grammars)
    # Cheap checks first: text length before tokenizing, media headers and token counts before decoding.
    check_prompt_chars(prompt_chars(req), settings, max_len, "messages")
    proc = pipe.processor
    budget = Budget(settings.media, proc.settings, proc.spec, max_tokens=max_len, deadline=deadline)
    conversation, temp = load_conversation(req.messages, req.media, settings.media, budget)
    template = {"tools": req.tools.tools} if req.tools is not None else {}
    try:
        seq, _ = pipe.sequence(conversation, params, **template)
    except APIError:
        raise
    except (ValueError, TypeError, KeyError, OSError, ArithmeticError, IndexError) as e:
        code = "context_length_exceeded" if isinstance(e, ContextLengthError) else "processing_failed"
        param = "messages"
        if isinstance(e, MediaError) and e.number <= len(req.media) and req.media[e.number - 1].kind == e.kind:
            param = req.media[e.number - 1].param   # blame the part, not the whole request
        raise bad_request(f"{param}: the request could not be processed: {str(e)[:500]}", param, code=code) from None
    finally:
        remove_files(temp)
    n_prompt = len(seq.prompt_ids)
    if n_prompt >= max_len:
        raise bad_request(f"this model's maximum context length is {max_len} tokens, but the prompt has {n_prompt} "
                          "tokens (images and videos included); shorten the messages or use smaller media",
                          "messages", code="context_length_exceeded")
    room = max_len - n_prompt
    # content hashes for the prefix cache, here in the preprocessing thread rather than the engine's
    items = media_items(seq.media, pipe.config) if settings.prefix_cache_mb > 0 else None
    return _choices(seq, params, req.n, min(req.max_tokens or room, room), make_constraint, items), {}


def prepare_completion(pipe: Pipeline, req: completions.CompletionRequest, settings: ServerSettings, max_len: int,
                       grammars=None, deadline: float | None = None) -> tuple[list[Sequence], dict]:
    """Tokenize each prompt (or take its ids), and with echo + logprobs score the prompt itself."""
    params = _sampling(pipe, req)
    make_constraint = _constraint_maker(pipe, req, grammars)
    check_prompt_chars(sum(len(p) for p in req.prompts if isinstance(p, str)), settings, max_len, "prompt")
    tok = pipe.tokenizer
    vocab = pipe.vocab_size
    seqs, info = [], {"prompt_texts": [], "prompt_logprobs": [], "prompt_tokens": 0}
    for i, prompt in enumerate(req.prompts):
        param = "prompt" if len(req.prompts) == 1 else f"prompt[{i}]"
        ids = tok.encode(prompt) if isinstance(prompt, str) else list(prompt)
        bad = [t for t in ids if not 0 <= t < vocab]
        if bad:
            raise bad_request(f"'{param}' has token id {bad[0]}, outside the vocabulary of {vocab}", param)
        if not ids:
            raise bad_request(f"'{param}' encodes to no tokens", param)
        if len(ids) >= max_len:
            raise bad_request(f"this model's maximum context length is {max_len} tokens, but '{param}' has "
                              f"{len(ids)} tokens", param, code="context_length_exceeded")
        info["prompt_tokens"] += len(ids)
        if req.echo:
            info["prompt_texts"].append(prompt if isinstance(prompt, str) else tok.decode(ids))
            if req.logprobs is not None:
                info["prompt_logprobs"].append(list(zip(pipe.prompt_logprobs(ids, req.logprobs), ids)))
        room = max_len - len(ids)
        base = pipe.token_sequence(ids, params)
        seqs += _choices(base, params, req.n, min(req.max_tokens, room), make_constraint)
    return seqs, info
