"""OpenAI request fields shared by /v1/chat/completions and /v1/completions: logprobs, logit_bias, guided
decoding (response_format and vLLM's guided_* extensions), and the fields this server refuses.

Refusing is deliberate: a field the server does not implement gets a 400 naming it, instead of an
answer that silently ignores what the client asked for (OpenAI answers unknown fields the same way).
"""

from __future__ import annotations

import json

from .errors import bad_request

# OpenAI fields with no implementation here; harmless ones (user, metadata, store=false, stream_options,
# parallel_tool_calls, prompt_cache_key, safety_identifier) are accepted and ignored.
UNSUPPORTED = ("reasoning_effort", "service_tier", "modalities", "audio", "prediction", "web_search_options",
               "verbosity", "suffix", "background", "include_reasoning", "reasoning")
# Sampling extensions of vLLM / SGLang not implemented here: refused unless given their no-op value.
NOOP_DEFAULTS = {"best_of": (1,), "min_p": (0, 0.0), "min_tokens": (0,), "use_beam_search": (False,),
                 "bad_words": ([],), "allowed_token_ids": ([],), "prompt_logprobs": (), "store": (False,),
                 "include_stop_str_in_output": (False,), "length_penalty": (1, 1.0)}
GUIDED = ("guided_json", "guided_regex", "guided_choice", "guided_grammar")
MAX_TOP_LOGPROBS = 20


def check_unsupported(body: dict) -> None:
    for name in UNSUPPORTED:
        if body.get(name) is not None:
            raise bad_request(f"'{name}' is not supported by this server", name, code="unsupported_parameter")
    for name, noop in NOOP_DEFAULTS.items():
        value = body.get(name)
        if value is not None and not any(value == v and type(value) is type(v) for v in noop):
            raise bad_request(f"'{name}' = {value!r} is not supported by this server", name,
                              code="unsupported_parameter")


def parse_logit_bias(body: dict) -> tuple[tuple[int, float], ...]:
    """{"<token id>": bias in [-100, 100]} -> sorted (id, bias) pairs. Ids are checked against the
    vocabulary later, where it is known."""
    bias = body.get("logit_bias")
    if bias is None:
        return ()
    if not isinstance(bias, dict):
        raise bad_request("'logit_bias' must be an object mapping token ids to numbers", "logit_bias")
    out = []
    for key, value in bias.items():
        try:
            token = int(key)
        except (TypeError, ValueError):
            raise bad_request(f"'logit_bias' key {key!r} is not a token id", "logit_bias") from None
        if token < 0:
            raise bad_request(f"'logit_bias' key {key!r} is not a token id", "logit_bias")
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not -100 <= value <= 100:
            raise bad_request(f"'logit_bias' value for token {key} must be a number in [-100, 100], got {value!r}",
                              "logit_bias")
        out.append((token, float(value)))
    return tuple(sorted(out))


def check_token_ids(pairs, vocab_size: int, param: str) -> None:
    for token, _ in pairs:
        if token >= vocab_size:
            raise bad_request(f"'{param}' names token {token}, outside the vocabulary of {vocab_size}", param)


def parse_chat_logprobs(body: dict) -> int | None:
    """Chat: `logprobs` (bool) and `top_logprobs` (0-20, only with logprobs) -> the number of alternatives
    to report, or None for no logprobs."""
    lp = body.get("logprobs")
    if lp is not None and not isinstance(lp, bool):
        raise bad_request(f"'logprobs' must be a boolean, got {lp!r}", "logprobs")
    top = body.get("top_logprobs")
    if top is not None:
        if not isinstance(top, int) or isinstance(top, bool) or not 0 <= top <= MAX_TOP_LOGPROBS:
            raise bad_request(f"'top_logprobs' must be an integer in [0, {MAX_TOP_LOGPROBS}], got {top!r}",
                              "top_logprobs")
        if not lp:
            raise bad_request("'top_logprobs' needs 'logprobs' set to true", "top_logprobs")
    return (top or 0) if lp else None


def parse_guided(body: dict) -> tuple[str, object, str] | None:
    """`response_format` or one guided_* extension -> (grammar kind, spec, the field it came from)."""
    found = []
    rf = body.get("response_format")
    if rf is not None:
        if not isinstance(rf, dict) or rf.get("type") not in ("text", "json_object", "json_schema"):
            raise bad_request("'response_format' must be {\"type\": \"text\"}, {\"type\": \"json_object\"} or "
                              "{\"type\": \"json_schema\", \"json_schema\": {...}}", "response_format")
        if rf["type"] == "json_object":
            found.append(("json_schema", {"type": "object"}, "response_format"))
        elif rf["type"] == "json_schema":
            js = rf.get("json_schema")
            if not isinstance(js, dict) or not isinstance(js.get("schema", {}), dict):
                raise bad_request("'response_format.json_schema' must be an object with a 'schema' object",
                                  "response_format.json_schema")
            name = js.get("name")
            if name is not None and not isinstance(name, str):
                raise bad_request("'response_format.json_schema.name' must be a string",
                                  "response_format.json_schema.name")
            found.append(("json_schema", js.get("schema") or {"type": "object"},
                          "response_format.json_schema.schema"))
    for name in GUIDED:
        value = body.get(name)
        if value is None:
            continue
        if name == "guided_json":
            if isinstance(value, str):
                try:
                    value = json.loads(value)
                except json.JSONDecodeError as e:
                    raise bad_request(f"'guided_json' is not valid JSON: {e}", name) from None
            if not isinstance(value, dict):
                raise bad_request("'guided_json' must be a JSON schema object", name)
            found.append(("json_schema", value, name))
        elif name == "guided_choice":
            if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
                raise bad_request("'guided_choice' must be a non-empty list of non-empty strings", name)
            found.append(("lark", "start: " + " | ".join(json.dumps(v) for v in value), name))
        else:
            if not isinstance(value, str) or not value:
                raise bad_request(f"'{name}' must be a non-empty string", name)
            found.append(("regex" if name == "guided_regex" else "lark", value, name))
    if len(found) > 1:
        raise bad_request(f"only one of response_format and {', '.join(GUIDED)} may be given "
                          f"(got {', '.join(f[2].split('.')[0] for f in found)})", found[1][2].split(".")[0])
    return found[0] if found else None


class TokenText:
    """Token id -> (text, UTF-8 bytes) for logprobs entries. Byte-level BPE tokens can hold part of a
    character: `bytes` is then exact and `text` has U+FFFD, as in OpenAI's answers."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.cache: dict[int, tuple[str, list[int]]] = {}
        self.byte_of = {c: b for b, c in _bytes_to_unicode().items()}
        self.added = set(tokenizer.backend.get_added_tokens_decoder())   # written as themselves

    def __call__(self, token: int) -> tuple[str, list[int]]:
        hit = self.cache.get(token)
        if hit is None:
            piece = self.tokenizer.id_to_token(token)
            if piece is None:   # an embedding row past the tokenizer's vocabulary
                raw = b""
            elif token not in self.added and all(c in self.byte_of for c in piece):
                raw = bytes(self.byte_of[c] for c in piece)
            else:
                raw = piece.encode()
            hit = self.cache[token] = (raw.decode("utf-8", errors="replace"), list(raw))
        return hit

    def entry(self, e) -> dict:
        """A TokenLogprob -> one item of the chat API's logprobs.content."""
        text, raw = self(e.token)
        top = []
        for t, lp in e.top:
            tt, tb = self(t)
            top.append({"token": tt, "logprob": lp, "bytes": tb})
        return {"token": text, "logprob": e.logprob, "bytes": raw, "top_logprobs": top}


def _bytes_to_unicode() -> dict[int, str]:
    # GPT-2's reversible table between bytes and the printable characters byte-level BPE vocabularies use
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))
