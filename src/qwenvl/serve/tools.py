"""Function calling in the OpenAI API over Qwen's hermes-style <tool_call> format.

Request side: `tools` and `tool_choice` are validated here; the tools go into the prompt through the
chat template (processing/chat.py renders Qwen2.5's tools block when the checkpoint's template has
none). `tool_choice: "required"` or a named function is enforced with a grammar (engine/grammar.py)
that admits only `<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>` blocks whose JSON
matches the function's parameter schema.

Answer side: the model's text is split into `content` and `tool_calls` (id, type "function", name,
arguments as a JSON string), with finish_reason "tool_calls"; when streaming, ToolStreamParser turns
the text deltas into content deltas and tool-call deltas shaped like OpenAI's (a first delta with
index, id, type and name, then argument fragments).
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field

from ..engine.grammar import JSON_OPTIONS
from .errors import bad_request

OPEN, CLOSE = "<tool_call>", "</tool_call>"
_NAME = re.compile(r'\s*\{\s*"name"\s*:\s*"((?:[^"\\]|\\.)*)"\s*,\s*"arguments"\s*:\s*', re.S)
_FN_NAME = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")


@dataclass
class ToolSpec:
    tools: list[dict]                  # as sent: [{"type": "function", "function": {...}}]
    choice: str = "auto"               # "auto" | "required" | "named"
    name: str | None = None            # the function a named tool_choice forces
    parallel: bool = True

    @property
    def functions(self) -> dict[str, dict]:
        return {t["function"]["name"]: t["function"] for t in self.tools}


def parse_tools(body: dict) -> ToolSpec | None:
    """`tools`, `tool_choice`, `parallel_tool_calls` -> ToolSpec, or None when no tools are in play."""
    tools, choice = body.get("tools"), body.get("tool_choice")
    parallel = body.get("parallel_tool_calls", True)
    if not isinstance(parallel, bool):
        raise bad_request(f"'parallel_tool_calls' must be a boolean, got {parallel!r}", "parallel_tool_calls")
    if body.get("functions") is not None or body.get("function_call") is not None:
        raise bad_request("'functions' / 'function_call' (the deprecated API) are not supported; send 'tools' and "
                          "'tool_choice'", "functions" if body.get("functions") is not None else "function_call")
    if tools is None:
        if choice not in (None, "none"):
            raise bad_request("'tool_choice' is set but no 'tools' are given", "tool_choice")
        return None
    if not isinstance(tools, list):
        raise bad_request("'tools' must be a list of {\"type\": \"function\", \"function\": {...}} objects", "tools")
    seen = set()
    for i, tool in enumerate(tools):
        where = f"tools[{i}]"
        if not isinstance(tool, dict) or tool.get("type") != "function":
            raise bad_request(f"{where}: only tools of type 'function' are supported", f"{where}.type")
        fn = tool.get("function")
        if not isinstance(fn, dict):
            raise bad_request(f"{where}.function must be an object", f"{where}.function")
        name = fn.get("name")
        if not isinstance(name, str) or not _FN_NAME.match(name):
            raise bad_request(f"{where}.function.name must be 1-64 letters, digits, '_', '-' or '.', got {name!r}",
                              f"{where}.function.name")
        if name in seen:
            raise bad_request(f"{where}.function.name: the function {name!r} is defined twice",
                              f"{where}.function.name")
        seen.add(name)
        if fn.get("description") is not None and not isinstance(fn["description"], str):
            raise bad_request(f"{where}.function.description must be a string", f"{where}.function.description")
        params = fn.get("parameters")
        if params is not None and not isinstance(params, dict):
            raise bad_request(f"{where}.function.parameters must be a JSON schema object",
                              f"{where}.function.parameters")
    if not tools:
        return None
    if choice is None or choice == "auto":
        return ToolSpec(tools, "auto", parallel=parallel)
    if choice == "none":
        return None   # the tools are neither shown to the model nor parsed out of its answer
    if choice == "required":
        return ToolSpec(tools, "required", parallel=parallel)
    if isinstance(choice, dict) and choice.get("type") == "function" and isinstance(choice.get("function"), dict):
        name = choice["function"].get("name")
        if name not in seen:
            raise bad_request(f"'tool_choice' names the function {name!r}, which is not among the tools "
                              f"({', '.join(sorted(seen))})", "tool_choice.function.name")
        return ToolSpec(tools, "named", name=name, parallel=False)
    raise bad_request("'tool_choice' must be 'none', 'auto', 'required' or {\"type\": \"function\", \"function\": "
                      "{\"name\": ...}}", "tool_choice")


def call_schema(fn: dict) -> dict:
    """The JSON of one call of `fn` as Qwen writes it: {"name": <the name>, "arguments": <its parameters>}."""
    params = fn.get("parameters") or {"type": "object"}
    return {"type": "object", "properties": {"name": {"const": fn["name"]}, "arguments": params},
            "required": ["name", "arguments"], "additionalProperties": False, "x-guidance": JSON_OPTIONS}


def tool_grammar(spec: ToolSpec, open_id: int, close_id: int) -> str | None:
    """A Lark grammar (llguidance) for the forced choices: one call of the named function, or one or more
    calls of any tool for "required" (one when parallel_tool_calls is false). None for "auto"."""
    if spec.choice == "auto":
        return None
    names = [spec.name] if spec.choice == "named" else list(spec.functions)
    fns = spec.functions
    rules = [f"fn{i}: %json {json.dumps(call_schema(fns[n]))}" for i, n in enumerate(names)]
    start = 'start: call ("\\n" call)*' if spec.parallel and spec.choice == "required" else "start: call"
    # the tags are single added tokens in Qwen's vocabulary: name them by id, not as text
    return "\n".join([start, f'call: <[{open_id}]> "\\n" body "\\n" <[{close_id}]>',
                      "body: " + " | ".join(f"fn{i}" for i in range(len(names)))] + rules)


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def _parse_call(body: str) -> tuple[str, str] | None:
    """One <tool_call> body -> (name, arguments JSON string), or None if it is not such a call."""
    try:
        obj = json.loads(body)
    except json.JSONDecodeError:
        return None
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return None
    args = obj.get("arguments", obj.get("parameters", {}))
    if isinstance(args, str):   # already a JSON string
        return obj["name"], args
    return obj["name"], json.dumps(args, ensure_ascii=False)


def split_tool_calls(text: str) -> tuple[str | None, list[dict]]:
    """A finished answer -> (content or None, tool_calls in the OpenAI shape). Blocks that do not parse
    as a call stay in the content, as vLLM's hermes parser leaves them."""
    calls, content, pos = [], [], 0
    while True:
        i = text.find(OPEN, pos)
        if i == -1:
            content.append(text[pos:])
            break
        j = text.find(CLOSE, i)
        end = len(text) if j == -1 else j + len(CLOSE)
        parsed = _parse_call(text[i + len(OPEN): j if j != -1 else len(text)])
        content.append(text[pos:i])
        if parsed is None:
            content.append(text[i:end])
        else:
            calls.append({"id": new_call_id(), "type": "function",
                          "function": {"name": parsed[0], "arguments": parsed[1]}})
        pos = end
    rest = "".join(content).strip() if calls else "".join(content)
    return (rest or None) if calls else rest, calls


@dataclass
class ToolStreamParser:
    """Text deltas -> OpenAI delta objects: {"content": ...} outside calls, {"tool_calls": [...]} inside.

    Text that may be the start of "<tool_call>" is held back until decided. Inside a call, the name is sent
    once `{"name": "...", "arguments": ` has arrived, then the arguments as they grow, holding back a
    final `}` (which closes the call object, not the arguments) until `</tool_call>` settles it."""
    buffer: str = ""
    in_call: bool = False
    call_text: str = ""
    sent_args: int = 0
    header_sent: bool = False
    name: str = ""
    index: int = -1
    calls: list[dict] = field(default_factory=list)   # completed calls (for finish_reason)

    def feed(self, text: str, final: bool = False) -> list[dict]:
        out: list[dict] = []
        self.buffer += text
        while self.buffer:
            if not self.in_call:
                i = self.buffer.find(OPEN)
                if i == -1:
                    keep = 0 if final else max((k for k in range(1, len(OPEN)) if self.buffer.endswith(OPEN[:k])),
                                               default=0)
                    emit, self.buffer = self.buffer[:len(self.buffer) - keep], self.buffer[len(self.buffer) - keep:]
                    if emit:
                        out.append({"content": emit})
                    break
                if self.buffer[:i]:
                    out.append({"content": self.buffer[:i]})
                self.buffer = self.buffer[i + len(OPEN):]
                self.in_call, self.call_text, self.sent_args, self.header_sent = True, "", 0, False
                self.index += 1
                continue
            j = self.buffer.find(CLOSE)
            if j == -1:   # keep a possible start of </tool_call> back until it is decided
                keep = 0 if final else max((k for k in range(1, len(CLOSE)) if self.buffer.endswith(CLOSE[:k])),
                                           default=0)
                self.call_text += self.buffer[:len(self.buffer) - keep]
                self.buffer = self.buffer[len(self.buffer) - keep:]
                out += self._progress(closed=False)
                if final:   # the answer ended inside a call (max_tokens): send what there is
                    out += self._progress(closed=True)
                    self.in_call = False
                break
            self.call_text += self.buffer[:j]
            self.buffer = self.buffer[j + len(CLOSE):]
            out += self._progress(closed=True)
            self.in_call = False
        if final and self.buffer:
            out.append({"content": self.buffer})
            self.buffer = ""
        return out

    def _delta(self, fn: dict, header: bool) -> dict:
        call = {"index": self.index, "function": fn}
        if header:
            call = {"index": self.index, "id": new_call_id(), "type": "function", "function": fn}
        return {"tool_calls": [call]}

    def _progress(self, closed: bool) -> list[dict]:
        out = []
        m = _NAME.match(self.call_text)
        if not self.header_sent:
            if m is None:
                if not closed:
                    return []
                parsed = _parse_call(self.call_text)   # another layout (arguments first, ...): send it whole
                if parsed is None:
                    self.index -= 1
                    return [{"content": OPEN + self.call_text + CLOSE}]
                self.header_sent, self.name = True, parsed[0]
                self.calls.append({"name": parsed[0], "arguments": parsed[1]})
                return [self._delta({"name": parsed[0], "arguments": parsed[1]}, header=True)]
            self.header_sent, self.name = True, json.loads(f'"{m.group(1)}"')
            out.append(self._delta({"name": self.name, "arguments": ""}, header=True))
        if m is None:   # sent whole above
            return out
        args = self.call_text[m.end():]
        if closed:
            args = args.rstrip()
            args = args[:-1].rstrip() if args.endswith("}") else args   # the call object's closing brace
            self.calls.append({"name": self.name, "arguments": args})
        else:
            stripped = args.rstrip()
            if stripped.endswith("}"):   # maybe the call object's closing brace: decided by </tool_call>
                args = stripped[:-1]
        if len(args) > self.sent_args:
            out.append(self._delta({"arguments": args[self.sent_args:]}, header=False))
            self.sent_args = len(args)
        return out


def parse_tool_messages(msg: dict, where: str, role: str) -> dict:
    """The tool-call fields of one history message, validated: an assistant's `tool_calls`, a tool
    result's `tool_call_id`. Returns the fields to keep on the normalized message."""
    extra = {}
    if role == "assistant" and msg.get("tool_calls") is not None:
        calls = msg["tool_calls"]
        if not isinstance(calls, list):
            raise bad_request(f"{where}.tool_calls must be a list", f"{where}.tool_calls")
        for k, call in enumerate(calls):
            w = f"{where}.tool_calls[{k}]"
            fn = call.get("function") if isinstance(call, dict) else None
            if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
                raise bad_request(f"{w}.function must be an object with a string name", f"{w}.function")
            args = fn.get("arguments", "{}")
            if isinstance(args, str):
                try:
                    json.loads(args or "{}")
                except json.JSONDecodeError as e:
                    raise bad_request(f"{w}.function.arguments is not valid JSON: {e}", f"{w}.function.arguments")
            elif not isinstance(args, dict):
                raise bad_request(f"{w}.function.arguments must be a JSON string", f"{w}.function.arguments")
        extra["tool_calls"] = calls
    if role == "tool":
        tid = msg.get("tool_call_id")
        if tid is not None and not isinstance(tid, str):
            raise bad_request(f"{where}.tool_call_id must be a string", f"{where}.tool_call_id")
        if tid is not None:
            extra["tool_call_id"] = tid
    return extra
