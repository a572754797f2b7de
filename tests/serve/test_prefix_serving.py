"""Prefix caching through the server: cached_tokens in usage and /metrics, the same text as an uncached run,
no reuse across different images, n > 1 with one vision pass, chunked prefill."""

from __future__ import annotations

import contextlib

import httpx
import pytest

from qwenvl.engine.sampling import SamplingParams
from qwenvl.serve.metrics import parse as parse_metrics

from serve_util import client, data_uri, image_message, png_bytes, running_server

W, H = 448, 336   # 192 image tokens on the tiny model: most of the prompt


@pytest.fixture(scope="module")
def cached_server(pipe):
    with running_server(pipe, max_batch=4, max_model_len=1024) as (base, app, _):
        yield base


@contextlib.contextmanager
def tower_calls(pipe):
    """Tower runs, counted at the patch embedding (a chunked prefill runs the tower block by block)."""
    calls = []
    hook = pipe.model.visual.patch_embed.register_forward_pre_hook(lambda m, args: calls.append(args[0].shape[0]))
    try:
        yield calls
    finally:
        hook.remove()


def ask(base, messages, **kw):
    kw = {"max_tokens": 8, "temperature": 0, **kw}
    return client(base).chat.completions.create(model="m", messages=messages, **kw)


def cached(r) -> int:
    return r.usage.prompt_tokens_details.cached_tokens


def prompt_ids(pipe, messages) -> list[int]:
    return pipe.sequence(messages, SamplingParams())[0].prompt_ids


def shared_prefix(a, b) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def test_repeat_and_second_turn_reuse_the_prefix(cached_server, pipe):
    base = cached_server
    turn1 = image_message(data_uri(png_bytes(W, H, seed=1)), "Describe the picture.")
    ref1 = pipe.chat(turn1, max_new_tokens=8, temperature=0)
    r1 = ask(base, turn1)
    assert r1.choices[0].message.content == ref1.text
    r2 = ask(base, turn1)
    assert r2.choices[0].message.content == ref1.text
    assert cached(r2) >= 0.8 * r2.usage.prompt_tokens

    turn2 = turn1 + [{"role": "assistant", "content": r1.choices[0].message.content},
                     {"role": "user", "content": "What colours does it have?"}]
    shared = shared_prefix(prompt_ids(pipe, turn2), prompt_ids(pipe, turn1) + ref1.token_ids)
    assert shared >= ref1.prompt_tokens
    r3 = ask(base, turn2)
    assert cached(r3) >= 0.8 * shared
    assert r3.choices[0].message.content == pipe.chat(turn2, max_new_tokens=8, temperature=0).text

    # streamed usage carries it too
    chunks = list(client(base).chat.completions.create(model="m", messages=turn2, max_tokens=4, temperature=0,
                                                       stream=True, stream_options={"include_usage": True}))
    assert chunks[-1].usage.prompt_tokens_details.cached_tokens >= 0.8 * shared

    m = parse_metrics(httpx.get(f"{base}/metrics").text)
    assert m["qwenvl_prompt_tokens_cached_total"] >= cached(r2) + cached(r3)
    assert m["qwenvl_prefix_cache_hit_tokens_total"] >= m["qwenvl_prompt_tokens_cached_total"]
    assert m["qwenvl_prefix_cache_bytes"] > 0 and m["qwenvl_vision_cache_misses_total"] >= 1


def test_no_reuse_across_different_images_of_equal_size(cached_server, pipe):
    a = image_message(data_uri(png_bytes(W, H, seed=2)), "What is this?")
    b = image_message(data_uri(png_bytes(W, H, seed=3)), "What is this?")
    ids = prompt_ids(pipe, b)
    assert ids == prompt_ids(pipe, a)
    ask(cached_server, a)
    with tower_calls(pipe) as calls:
        rb = ask(cached_server, b)
    assert len(calls) == 1   # b's own pixels went through the tower
    assert cached(rb) <= ids.index(pipe.config.image_token_id)
    assert rb.choices[0].message.content == pipe.chat(b, max_new_tokens=8, temperature=0).text


def test_n_choices_share_one_vision_pass(cached_server, pipe):
    msgs = image_message(data_uri(png_bytes(W, H, seed=4)), "Tell me a story about it.")
    with tower_calls(pipe) as calls:
        r = ask(cached_server, msgs, n=3, temperature=1.0, seed=5, max_tokens=12)
    assert len(calls) == 1 and len(r.choices) == 3
    assert len({c.message.content for c in r.choices}) > 1   # each choice samples with its own seed


def test_without_cache_chunked_prefill_gives_the_same_text_and_n_still_shares(pipe):
    msgs = image_message(data_uri(png_bytes(W, H, seed=6)), "Describe the picture.")
    ref = pipe.chat(msgs, max_new_tokens=8, temperature=0)
    with running_server(pipe, max_batch=4, max_model_len=1024, prefix_cache_mb=0, prefill_chunk=16) as (base, _, _):
        r = ask(base, msgs)
        assert r.choices[0].message.content == ref.text and cached(r) == 0
        assert ask(base, msgs).usage.prompt_tokens_details.cached_tokens == 0
        with tower_calls(pipe) as calls:
            r = ask(base, msgs, n=3)
        assert len(calls) == 1
        assert [c.message.content for c in r.choices] == [ref.text] * 3
        m = parse_metrics(httpx.get(f"{base}/metrics").text)
        assert "qwenvl_prefix_cache_bytes" not in m and m["qwenvl_prompt_tokens_cached_total"] == 0


def test_serve_flags():
    from qwenvl.cli.main import build_parser
    from qwenvl.cli.serve import settings_from_args

    parse = build_parser().parse_args
    s = settings_from_args(parse(["serve", "--model", "x"]), "x")
    assert s.prefix_cache_mb == 1024 and s.vision_cache_mb == 256 and s.prefill_chunk == 256
    s = settings_from_args(parse(["serve", "--model", "x", "--no-prefix-cache", "--prefill-chunk", "0"]), "x")
    assert s.prefix_cache_mb == 0 and s.prefill_chunk is None
    s = settings_from_args(parse(["serve", "--model", "x", "--prefix-cache-mb", "64"]), "x")
    assert s.prefix_cache_mb == 64
    with pytest.raises(ValueError, match="--prefix-cache-mb"):
        settings_from_args(parse(["serve", "--model", "x", "--prefix-cache-mb", "-1"]), "x")


def test_bench_serve_reports_stall_and_second_turn(pipe, tmp_path, capsys):
    import json

    from qwenvl.cli.main import build_parser

    with running_server(pipe, max_batch=4, max_model_len=1024, prefill_chunk=32) as (base, _, _):
        args = build_parser().parse_args(["bench-serve", "--url", base, "--concurrency", "2", "--requests", "4",
                                          "--max-tokens", "6", "--image-size", "224", "--unique-images",
                                          "--second-turn", "--json", str(tmp_path / "out.json")])
        assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "worst stall (s)" in out and "turn-2 TTFT" in out
    row = json.loads((tmp_path / "out.json").read_text())[0]
    assert row["failed"] == 0 and row["stall_max"] > 0
    assert row["turn2_cached_tokens_mean"] >= 64   # the image (64 tokens at 224 px) and the text around it


def test_a_failing_prefill_fails_its_request_only(pipe):
    import threading

    import openai

    def boom(module, args):
        if args[0].shape[0] == 16 * 12:   # the 14-px patches of a 224x168 image: only this request's tower fails
            raise RuntimeError("boom")

    with running_server(pipe, max_batch=4, max_model_len=1024, prefill_chunk=16) as (base, _, _):
        result = {}

        def stream():
            chunks = client(base).chat.completions.create(
                model="m", messages=[{"role": "user", "content": "Tell a long story."}], max_tokens=40,
                temperature=0, stream=True, stream_options={"include_usage": True}, extra_body={"ignore_eos": True})
            result["usage"] = [c.usage for c in chunks][-1]

        hook = pipe.model.visual.patch_embed.register_forward_pre_hook(boom)
        try:
            t = threading.Thread(target=stream)
            t.start()
            with pytest.raises(openai.InternalServerError, match="prefill failed: boom"):
                ask(base, image_message(data_uri(png_bytes(224, 168, seed=9))))
            t.join(60)
        finally:
            hook.remove()
        assert result["usage"].completion_tokens == 40
        assert ask(base, image_message(data_uri(png_bytes(224, 168, seed=9)))).choices[0].finish_reason
