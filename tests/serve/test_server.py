"""The real server (uvicorn on a loopback port) driven by the official `openai` client and raw HTTP."""

from __future__ import annotations

import asyncio
import json
import struct
import threading
import time
import zlib

import httpx
import pytest

from qwenvl.serve.metrics import parse as parse_metrics

from serve_util import client, data_uri, image_message, openai, png_bytes, running_server, small_video

TEXT = [{"role": "user", "content": "Describe a red square."}]


@pytest.fixture(scope="module")
def media_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("media")
    allowed, outside = root / "allowed", root / "outside"
    allowed.mkdir()
    outside.mkdir()
    (allowed / "cat.png").write_bytes(png_bytes(seed=5))
    (outside / "secret.png").write_bytes(png_bytes(seed=6))
    (allowed / "link.png").symlink_to(outside / "secret.png")
    return allowed, outside


@pytest.fixture(scope="module")
def server(pipe, media_dirs):
    from qwenvl.serve.media import MediaPolicy

    policy = MediaPolicy(allowed_local_path=media_dirs[0])
    with running_server(pipe, max_batch=4, max_model_len=1024, media=policy) as (base, _, _):
        yield base


def metrics(base: str) -> dict:
    return parse_metrics(httpx.get(f"{base}/metrics").text)


def good_request_works(base: str) -> None:
    r = client(base).chat.completions.create(model="m", messages=TEXT, max_tokens=2, temperature=0)
    assert r.choices[0].finish_reason in ("stop", "length")


# ---------------------------------------------------------------------- happy paths

def test_models_health_metrics(server):
    models = client(server).models.list()
    assert [m.id for m in models.data] == ["qwenvl"]
    h = httpx.get(f"{server}/health").json()
    assert h["status"] == "ok" and h["slots"] == 4
    text = httpx.get(f"{server}/metrics").text
    assert "# TYPE qwenvl_time_to_first_token_seconds histogram" in text
    assert 'qwenvl_request_latency_seconds_bucket{le="+Inf"}' in text


def test_completion_and_stream_match_pipe_chat(server, pipe):
    msgs = image_message(data_uri(png_bytes()))
    ref = pipe.chat(msgs, max_new_tokens=6, temperature=0, ignore_eos=True)
    c = client(server)
    r = c.chat.completions.create(model="qwenvl", messages=msgs, max_tokens=6, temperature=0,
                                  extra_body={"ignore_eos": True})
    assert r.choices[0].message.content == ref.text
    assert r.choices[0].finish_reason == "length"
    assert r.usage.prompt_tokens == ref.prompt_tokens and r.usage.completion_tokens == 6
    assert r.usage.total_tokens == ref.prompt_tokens + 6

    chunks = list(c.chat.completions.create(model="qwenvl", messages=msgs, max_completion_tokens=6, temperature=0,
                                            stream=True, stream_options={"include_usage": True},
                                            extra_body={"ignore_eos": True}))
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == ref.text
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 6
    assert all(ch.usage is None for ch in chunks[:-1])


def test_stream_ends_with_done(server):
    body = {"model": "m", "messages": TEXT, "max_tokens": 3, "stream": True}
    with httpx.stream("POST", f"{server}/v1/chat/completions", json=body, timeout=60) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in r.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    assert all(line.startswith("data: ") for line in lines)


def test_local_paths_inside_the_allowed_dir(server, media_dirs, pipe):
    allowed, _ = media_dirs
    by_uri = client(server).chat.completions.create(
        model="m", messages=image_message(data_uri((allowed / "cat.png").read_bytes())), max_tokens=4,
        temperature=0, extra_body={"ignore_eos": True}).choices[0].message.content
    for url in (str(allowed / "cat.png"), f"file://{allowed / 'cat.png'}", "cat.png", str(allowed / "x/../cat.png")):
        r = client(server).chat.completions.create(model="m", messages=image_message(url), max_tokens=4,
                                                   temperature=0, extra_body={"ignore_eos": True})
        assert r.choices[0].message.content == by_uri, url


def test_qwen_style_items_and_sampling_fields(server, pipe):
    uri = data_uri(png_bytes(120, 90, seed=2))
    msgs = [{"role": "system", "content": "Be brief."},
            {"role": "user", "content": [{"type": "image", "image": uri, "min_pixels": 3136, "max_pixels": 12544},
                                         {"type": "text", "text": "and this?"}]}]
    kw = dict(temperature=0.9, top_p=0.9, top_k=20, seed=7, repetition_penalty=1.1)
    ref = pipe.chat(msgs, max_new_tokens=5, ignore_eos=True, **kw)
    c = client(server)
    for _ in range(2):  # seeded sampling is reproducible and equals the pipeline's
        r = c.chat.completions.create(model="m", messages=msgs, max_tokens=5, extra_body={"ignore_eos": True,
                                      "top_k": 20, "repetition_penalty": 1.1}, temperature=0.9, top_p=0.9, seed=7)
        assert r.choices[0].message.content == ref.text
        assert r.usage.prompt_tokens == ref.prompt_tokens


def test_stop_strings_and_n(server):
    c = client(server)
    full = c.chat.completions.create(model="m", messages=TEXT, max_tokens=10, temperature=0,
                                     extra_body={"ignore_eos": True}).choices[0].message.content
    cut = next((i for i in range(1, len(full) - 1) if full[i:i + 2].isascii() and full[i:i + 2].strip()
                and full.find(full[i:i + 2]) == i), None)
    if cut is not None:
        r = c.chat.completions.create(model="m", messages=TEXT, max_tokens=10, temperature=0,
                                      stop=[full[cut:cut + 2]], extra_body={"ignore_eos": True})
        assert r.choices[0].message.content == full[:cut]
        assert r.choices[0].finish_reason == "stop"
    r = c.chat.completions.create(model="m", messages=TEXT, max_tokens=10, temperature=0, n=2,
                                  extra_body={"ignore_eos": True})
    assert [ch.index for ch in r.choices] == [0, 1]
    assert all(ch.message.content == full for ch in r.choices)
    assert r.usage.completion_tokens == 20
    chunks = list(c.chat.completions.create(model="m", messages=TEXT, max_tokens=10, temperature=0, n=2, stream=True,
                                            extra_body={"ignore_eos": True}))
    for i in (0, 1):
        assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices and ch.choices[0].index == i) \
            == full


def test_videos(server, media_dirs, pipe):
    allowed, _ = media_dirs
    small_video(allowed / "clip.mp4", frames=8, fps=4)
    uri = data_uri((allowed / "clip.mp4").read_bytes(), "video/mp4")
    c = client(server)
    texts = []
    for part in ({"type": "video_url", "video_url": {"url": uri}},
                 {"type": "video_url", "video_url": {"url": str(allowed / "clip.mp4")}},
                 {"type": "video", "video": "clip.mp4", "fps": 2.0}):
        msgs = [{"role": "user", "content": [part, {"type": "text", "text": "What happens?"}]}]
        r = c.chat.completions.create(model="m", messages=msgs, max_tokens=4, temperature=0,
                                      extra_body={"ignore_eos": True})
        texts.append(r.choices[0].message.content)
    ref = pipe.chat([{"role": "user", "content": [{"type": "video", "video": str(allowed / "clip.mp4")},
                                                  {"type": "text", "text": "What happens?"}]}],
                    max_new_tokens=4, temperature=0, ignore_eos=True)
    assert texts == [ref.text] * 3
    frames = [data_uri(png_bytes(56, 56, seed=i)) for i in range(4)]
    r = c.chat.completions.create(model="m", max_tokens=2, messages=[{"role": "user", "content": [
        {"type": "video", "video": frames, "fps": 1.0}, {"type": "text", "text": "?"}]}])
    assert r.usage.prompt_tokens > 10
    for part, code in (({"type": "video", "video": "clip.mp4", "nframes": 1000}, "too_many_frames"),
                       ({"type": "video_url", "video_url": {"url": data_uri(b"not a video", "video/mp4")}},
                        "invalid_video")):
        with pytest.raises(openai.BadRequestError) as e:
            c.chat.completions.create(model="m", messages=[{"role": "user", "content": [part]}], max_tokens=2)
        assert e.value.body["code"] == code
    good_request_works(server)


# ---------------------------------------------------------------------- bad inputs

def png_header(w: int, h: int) -> bytes:
    """A PNG whose header claims w x h pixels (a few dozen bytes: a decompression bomb's calling card)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))


def _bad_cases(allowed, outside):
    url = "messages[0].content[0].image_url.url"
    return {
        "unknown_role": ({"messages": [{"role": "wizard", "content": "hi"}]}, 400, "messages[0].role"),
        "missing_messages": ({}, 400, "messages"),
        "bad_base64": ({"messages": image_message("data:image/png;base64,@@not*base64@@")}, 400, url),
        "not_an_image": ({"messages": image_message(data_uri(b"plain text, not an image"))}, 400, url),
        "bomb_header": ({"messages": image_message(data_uri(png_header(30000, 30000)))}, 400, url),
        "over_pixel_limit": ({"messages": image_message(data_uri(png_header(8000, 6000)))}, 400, url),
        "path_outside": ({"messages": image_message(str(outside / "secret.png"))}, 403, url),
        "dotdot_escape": ({"messages": image_message(str(allowed / ".." / "outside" / "secret.png"))}, 403, url),
        "relative_escape": ({"messages": image_message("../outside/secret.png")}, 403, url),
        "symlink_escape": ({"messages": image_message(str(allowed / "link.png"))}, 403, url),
        "file_url_outside": ({"messages": image_message(f"file://{outside / 'secret.png'}")}, 403, url),
        "etc_passwd": ({"messages": image_message("/etc/passwd")}, 403, url),
        "missing_file": ({"messages": image_message(str(allowed / "nope.png"))}, 400, url),
        "remote_disabled": ({"messages": image_message("https://example.com/cat.png")}, 403, url),
        "bad_scheme": ({"messages": image_message("ftp://example.com/cat.png")}, 400, url),
        "unknown_part": ({"messages": [{"role": "user", "content": [{"type": "audio", "audio": "x"}]}]}, 400,
                         "messages[0].content[0].type"),
        "temperature_type": ({"messages": TEXT, "temperature": "hot"}, 400, "temperature"),
        "max_tokens_zero": ({"messages": TEXT, "max_tokens": 0}, 400, "max_tokens"),
        "n_too_big": ({"messages": TEXT, "n": 1000}, 400, "n"),
        "stop_type": ({"messages": TEXT, "stop": 5}, 400, "stop"),
        "too_many_images": ({"messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": data_uri(png_bytes(28, 28))}}] * 17}]}, 400, "messages"),
        "prompt_too_long": ({"messages": [{"role": "user", "content": "the quick brown fox " * 600}]}, 400,
                            "messages"),
        "unsupported_field": ({"messages": TEXT, "reasoning_effort": "high"}, 400, "reasoning_effort"),
        "temperature_over_2": ({"messages": TEXT, "temperature": 2.5}, 400, "temperature"),
    }


BAD = ["unknown_role", "missing_messages", "bad_base64", "not_an_image", "bomb_header", "over_pixel_limit",
       "path_outside", "dotdot_escape", "relative_escape", "symlink_escape", "file_url_outside", "etc_passwd",
       "missing_file", "remote_disabled", "bad_scheme", "unknown_part", "temperature_type", "max_tokens_zero",
       "n_too_big", "stop_type", "too_many_images", "prompt_too_long", "unsupported_field", "temperature_over_2"]


@pytest.mark.parametrize("case", BAD)
def test_bad_input_gets_4xx_then_server_still_serves(server, media_dirs, case):
    body, status, param = _bad_cases(*media_dirs)[case]
    r = httpx.post(f"{server}/v1/chat/completions", json={"model": "m", **body}, timeout=60)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["param"] == param and param.split(".")[-1].split("[")[0] in err["message"] or err["param"] == param
    assert err["type"] == ("permission_error" if status == 403 else "invalid_request_error")
    good_request_works(server)


def test_bad_inputs_through_the_openai_client(server, media_dirs):
    c = client(server)
    with pytest.raises(openai.BadRequestError) as e:
        c.chat.completions.create(model="m", messages=image_message("data:image/png;base64,!!!"))
    assert "base64" in e.value.body["message"]
    with pytest.raises(openai.PermissionDeniedError):
        c.chat.completions.create(model="m", messages=image_message("/etc/hostname"))
    with pytest.raises(openai.BadRequestError) as e:
        c.chat.completions.create(model="m", messages=[{"role": "user", "content": "x " * 2000}])
    assert e.value.body["code"] == "context_length_exceeded"
    good_request_works(server)


def test_malformed_json_and_unknown_routes(server):
    r = httpx.post(f"{server}/v1/chat/completions", content=b'{"messages": [', timeout=30,
                   headers={"content-type": "application/json"})
    assert r.status_code == 400 and "malformed JSON" in r.json()["error"]["message"]
    r = httpx.post(f"{server}/v1/chat/completions", content=b'[1, 2]', timeout=30)
    assert r.status_code == 400
    r = httpx.get(f"{server}/v1/nothing-here")
    assert r.status_code == 404 and set(r.json()["error"]) == {"message", "type", "param", "code"}
    r = httpx.get(f"{server}/v1/chat/completions")
    assert r.status_code == 405 and "error" in r.json()
    good_request_works(server)


def test_pydantic_validation_errors_use_the_openai_shape(pipe):
    from fastapi.testclient import TestClient

    from qwenvl.serve.app import create_app

    app = create_app(pipe)

    @app.get("/_probe")
    async def probe(count: int):
        return {"count": count}

    r = TestClient(app).get("/_probe?count=many")
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "query.count" and r.json()["error"]["type"] == "invalid_request_error"


# ---------------------------------------------------------------------- batching, disconnects, limits

def test_concurrent_requests_batch_and_beat_sequential(pipe):
    with running_server(pipe, max_batch=8) as (base, _, _):
        c = client(base)
        kw = dict(model="m", messages=TEXT, max_tokens=16, temperature=0, extra_body={"ignore_eos": True})
        c.chat.completions.create(**kw)  # warm-up
        t0 = time.perf_counter()
        for _ in range(4):
            assert c.chat.completions.create(**kw).usage.completion_tokens == 16
        sequential = 4 * 16 / (time.perf_counter() - t0)

        async def many():
            ac = openai.AsyncOpenAI(base_url=f"{base}/v1", api_key="none", max_retries=0, timeout=120)
            return await asyncio.gather(*(ac.chat.completions.create(**kw) for _ in range(16)))

        t0 = time.perf_counter()
        results = asyncio.run(many())
        concurrent = 16 * 16 / (time.perf_counter() - t0)
        assert [r.usage.completion_tokens for r in results] == [16] * 16
        assert len({r.choices[0].message.content for r in results}) == 1
        m = metrics(base)
        assert m["qwenvl_max_running_batch"] > 1
        assert m['qwenvl_batch_size_bucket{le="1"}'] < m['qwenvl_batch_size_bucket{le="+Inf"}']
        assert m['qwenvl_requests_total{status="200"}'] == 21
        assert m["qwenvl_generation_tokens_total"] == 21 * 16
        # Aggregate tokens/s against the sequential run is a benchmark (qwenvl bench-serve, docs/benchmarks.md),
        # not a timed assertion: on a loaded 2-core machine the tiny model's batching gain is within the noise.
        print(f"tokens/s: sequential {sequential:.0f}, 16 concurrent {concurrent:.0f}")


def wait_running(base: str, value: int, timeout: float = 10.0) -> dict:
    end = time.monotonic() + timeout
    while True:
        h = httpx.get(f"{base}/health").json()
        if h["running"] == value or time.monotonic() > end:
            return h
        time.sleep(0.05)


def test_disconnected_clients_free_their_slots(pipe):
    with running_server(pipe, max_batch=2) as (base, _, _):
        body = {"model": "m", "messages": TEXT, "max_tokens": 3500, "ignore_eos": True, "stream": True}
        with httpx.stream("POST", f"{base}/v1/chat/completions", json=body, timeout=60) as r:
            lines = r.iter_lines()   # keep a reference: a collected iterator closes the connection
            next(lines)
            assert wait_running(base, 1)["running"] == 1
        # the stream is closed: its slot is freed long before 3500 tokens could be generated
        assert wait_running(base, 0)["running"] == 0
        m = metrics(base)
        assert m['qwenvl_finished_total{reason="cancelled"}'] == 1
        assert m["qwenvl_generation_tokens_total"] < 3500

        # a non-streaming client that gives up (read timeout) is noticed too
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{base}/v1/chat/completions", json={**body, "stream": False},
                       timeout=httpx.Timeout(30, read=0.5))
        assert wait_running(base, 0)["running"] == 0
        assert metrics(base)['qwenvl_finished_total{reason="cancelled"}'] == 2
        good_request_works(base)


def test_queue_limit_answers_429_and_timeouts_answer_504(pipe):
    with running_server(pipe, max_batch=1, max_queue=1, request_timeout=20) as (base, _, _):
        long = {"model": "m", "messages": TEXT, "max_tokens": 3500, "ignore_eos": True, "stream": True}
        with httpx.stream("POST", f"{base}/v1/chat/completions", json=long, timeout=60) as r:
            lines = r.iter_lines()
            next(lines)
            assert wait_running(base, 1)["running"] == 1
            queued = {}
            t = threading.Thread(target=lambda: queued.update(r=httpx.post(
                f"{base}/v1/chat/completions", json={"model": "m", "messages": TEXT, "max_tokens": 2}, timeout=60)))
            t.start()
            end = time.monotonic() + 10
            while httpx.get(f"{base}/health").json()["waiting"] < 1 and time.monotonic() < end:
                time.sleep(0.02)
            with pytest.raises(openai.RateLimitError) as e:
                client(base).chat.completions.create(model="m", messages=TEXT, max_tokens=2)
            assert e.value.body["code"] == "queue_full"
        t.join(30)
        assert queued["r"].status_code == 200   # the queued request ran once the stream's slot was freed
        assert metrics(base)['qwenvl_requests_total{status="429"}'] == 1

    with running_server(pipe, max_batch=2, request_timeout=1.0) as (base, _, _):
        t0 = time.perf_counter()
        r = httpx.post(f"{base}/v1/chat/completions", timeout=60,
                       json={"model": "m", "messages": TEXT, "max_tokens": 3500, "ignore_eos": True})
        assert r.status_code == 504 and r.json()["error"]["code"] == "timeout"
        assert time.perf_counter() - t0 < 5
        assert wait_running(base, 0)["running"] == 0
        good_request_works(base)


def test_api_key_and_remote_media_guard(pipe):
    from qwenvl.serve.media import MediaPolicy

    with running_server(pipe, api_key="sekret", media=MediaPolicy(allow_remote=True)) as (base, _, _):
        with pytest.raises(openai.AuthenticationError) as e:
            client(base).chat.completions.create(model="m", messages=TEXT, max_tokens=2)
        assert e.value.status_code == 401 and e.value.body["code"] == "invalid_api_key"
        with pytest.raises(openai.AuthenticationError):
            client(base, api_key="wrong").models.list()
        assert httpx.get(f"{base}/health").status_code == 200   # health and metrics stay open
        c = client(base, api_key="sekret")
        c.chat.completions.create(model="m", messages=TEXT, max_tokens=2)
        # remote media on, but never to loopback / private / link-local addresses
        for url in (f"{base}/health", "http://localhost:1/x.png", "http://[::1]/x.png", "http://10.1.2.3/x.png",
                    "http://169.254.169.254/latest/meta-data", "http://2130706433/x.png"):
            with pytest.raises(openai.PermissionDeniedError) as e:
                c.chat.completions.create(model="m", messages=image_message(url), max_tokens=2)
            assert e.value.body["code"] == "url_not_allowed", url
        c.chat.completions.create(model="m", messages=TEXT, max_tokens=2)


def test_graceful_shutdown_finishes_in_flight_streams(pipe):
    with running_server(pipe, max_batch=2) as (base, _, server):
        body = {"model": "m", "messages": TEXT, "max_tokens": 200, "ignore_eos": True, "stream": True,
                "stream_options": {"include_usage": True}}
        with httpx.stream("POST", f"{base}/v1/chat/completions", json=body, timeout=60) as r:
            lines = iter(r.iter_lines())
            next(lines)
            server.should_exit = True     # what SIGTERM does
            rest = [line for line in lines if line]
        assert rest[-1] == "data: [DONE]"
        assert json.loads(rest[-2][6:])["usage"]["completion_tokens"] == 200
