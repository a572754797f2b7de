"""The fault suite: hostile and careless requests against the server (issue 19).

Each case replays a failure found by a fault campaign, plus the general class behind it (fuzzed JSON
bodies, random bytes and truncations as media). What must hold: every malformed input gets a 4xx that
names the field or content part, never a 5xx; no file outside the allowed folder is read (and the
answer does not reveal whether one exists); one request cannot harm the others in the batch.
"""

from __future__ import annotations

import asyncio
import io
import ipaddress
import json
import os
import random
import socket
import tempfile
import threading
import time

import httpx
import pytest
from PIL import Image

from qwenvl.serve.errors import APIError
from qwenvl.serve.metrics import parse as parse_metrics

from serve_util import client, data_uri, openai, png_bytes, running_server, small_video

TEXT = [{"role": "user", "content": "Describe a red square."}]
URL = "messages[0].content[0].video_url.url"


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults")
    allowed, outside = root / "allowed", root / "outside"
    allowed.mkdir()
    outside.mkdir()
    small_video(outside / "secret.mp4", frames=8, fps=4)
    small_video(allowed / "clip.mp4", frames=8, fps=4)
    (allowed / "cat.png").write_bytes(png_bytes(seed=5))
    return allowed, outside


@pytest.fixture(scope="module")
def server(pipe, dirs):
    from qwenvl.serve.media import MediaPolicy

    policy = MediaPolicy(allowed_local_path=dirs[0])
    with running_server(pipe, max_batch=4, max_model_len=1024, media=policy) as (base, app, _):
        yield base, app


def post(base: str, body, timeout: float = 60) -> httpx.Response:
    content = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return httpx.post(f"{base}/v1/chat/completions", content=content, timeout=timeout,
                      headers={"Content-Type": "application/json"})


def error_of(r: httpx.Response, status: int = 400) -> dict:
    assert r.status_code == status, r.text
    return r.json()["error"]


def good_request_works(base: str) -> None:
    r = client(base).chat.completions.create(model="m", messages=TEXT, max_tokens=2, temperature=0)
    assert r.choices[0].finish_reason in ("stop", "length")


def at_once(base: str, *requests: dict) -> list:
    """Chat requests sent together (so the engine batches them); each result or the exception it raised."""
    async def run():
        ac = openai.AsyncOpenAI(base_url=f"{base}/v1", api_key="none", max_retries=0, timeout=120)
        return await asyncio.gather(*(ac.chat.completions.create(**r) for r in requests), return_exceptions=True)
    return asyncio.run(run())


def video_part(url: str, **options) -> list[dict]:
    return [{"role": "user", "content": [{"type": "video_url", "video_url": {"url": url, **options}},
                                         {"type": "text", "text": "What happens?"}]}]


# ---------------------------------------------------------------------- media: only real containers

def playlists(target: str) -> dict[str, bytes]:
    """Files FFmpeg would follow to `target` (a path or URL) if it probed the format by itself."""
    return {
        "ffconcat": f"ffconcat version 1.0\nfile '{target}'\n".encode(),
        "hls": f"#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:10,\n{target}\n#EXT-X-ENDLIST\n".encode(),
        "sdp": b"v=0\no=- 0 0 IN IP4 127.0.0.1\ns=x\nc=IN IP4 127.0.0.1\nt=0 0\nm=video 9 RTP/AVP 96\n",
    }


def test_sniffing_knows_containers_and_refuses_playlists(dirs):
    from qwenvl.processing.video import sniff_container

    allowed, _ = dirs
    assert sniff_container((allowed / "clip.mp4").read_bytes()[:256]) == "mov"
    assert sniff_container(b"\x1a\x45\xdf\xa3" + b"\0" * 60) == "matroska"
    assert sniff_container(b"RIFF\0\0\0\0AVI LIST") == "avi"
    assert sniff_container(b"GIF89a" + b"\0" * 20) == "gif"
    for name, data in playlists("/etc/passwd").items():
        assert sniff_container(data) is None, name
    assert sniff_container(b"") is None and sniff_container(b"\0" * 300) is None


@pytest.mark.parametrize("kind", ["ffconcat", "hls"])
def test_playlist_data_uri_reads_no_file_and_leaks_no_existence(server, dirs, kind):
    base, _ = server
    allowed, outside = dirs
    answers = []
    # FFmpeg's concat demuxer refuses absolute names by default but follows relative ones, from the
    # folder of the playlist: the temporary file a data URI is written to.
    rel = lambda p: os.path.relpath(p, tempfile.gettempdir())
    for target in (rel(outside / "secret.mp4"), rel(outside / "missing.mp4"), rel(allowed / "clip.mp4"),
                   outside / "secret.mp4"):
        r = post(base, {"messages": video_part(data_uri(playlists(str(target))[kind], "video/mp4")),
                        "max_tokens": 2})
        err = error_of(r)
        assert err["param"] == URL and err["code"] == "invalid_video"
        answers.append(err["message"])
    assert len(set(answers)) == 1   # existing or not, inside or outside: the same answer
    good_request_works(base)


def test_playlist_files_and_the_library_path_are_refused(server, dirs):
    from qwenvl.processing.video import fetch_video

    base, _ = server
    allowed, outside = dirs
    (allowed / "list.mp4").write_bytes(playlists("../outside/secret.mp4")["ffconcat"])
    err = error_of(post(base, {"messages": video_part(str(allowed / "list.mp4")), "max_tokens": 2}))
    assert err["param"] == URL and err["code"] == "invalid_video"
    with pytest.raises(ValueError, match="not a supported video container"):   # the processor on its own
        fetch_video({"video": str(allowed / "list.mp4")})


def test_random_bytes_and_truncations_as_media_are_4xx(pipe, dirs, tmp_path):
    """Random bytes, truncated and bit-flipped real files, through the whole preprocessing of a request."""
    from qwenvl.serve.app import ServerSettings
    from qwenvl.serve.prepare import prepare
    from qwenvl.serve.media import MediaPolicy
    from qwenvl.serve.protocol import parse_chat_request

    allowed, _ = dirs
    settings = ServerSettings(media=MediaPolicy(allowed_local_path=tmp_path))
    rng = random.Random(0)
    jpeg = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 10, 10)).save(jpeg, "JPEG")
    gif = io.BytesIO()
    Image.new("P", (40, 30)).save(gif, "GIF")
    real = {"png": png_bytes(64, 48), "jpeg": jpeg.getvalue(), "gif": gif.getvalue(),
            "mp4": (allowed / "clip.mp4").read_bytes()}
    samples = [bytes(rng.getrandbits(8) for _ in range(rng.choice([0, 1, 7, 64, 300, 5000]))) for _ in range(12)]
    for data in real.values():
        samples += [data[:rng.randrange(len(data))] for _ in range(6)]
        for _ in range(4):
            flipped = bytearray(data)
            for _ in range(5):
                flipped[rng.randrange(len(flipped))] ^= 1 << rng.randrange(8)
            samples.append(bytes(flipped))
    outcomes = {"ok": 0, "4xx": 0}
    for k, data in enumerate(samples):
        for kind in ("image_url", "video_url"):
            for url in (data_uri(data, "application/octet-stream"), f"f{k}.bin"):
                (tmp_path / f"f{k}.bin").write_bytes(data)
                body = {"messages": [{"role": "user", "content": [{"type": kind, kind: {"url": url}}]}],
                        "max_tokens": 2}
                try:
                    prepare(pipe, parse_chat_request(body), settings, 1024)
                    outcomes["ok"] += 1
                except APIError as e:
                    assert 400 <= e.status < 500 and e.param.startswith("messages[0].content[0]"), (e.status, e.message)
                    outcomes["4xx"] += 1
    assert outcomes["4xx"] > outcomes["ok"] > 0   # some flipped files still decode; most inputs are refused


# ---------------------------------------------------------------------- request isolation

@pytest.mark.parametrize("field, value", [
    ("temperature", float("nan")), ("temperature", float("inf")), ("temperature", -1), ("temperature", 2.5),
    ("top_p", float("nan")), ("top_p", 0), ("top_p", 1.5), ("top_p", float("inf")),
    ("repetition_penalty", float("nan")), ("repetition_penalty", 0), ("repetition_penalty", float("inf")),
    ("repetition_penalty", 1e-40), ("seed", 2**63), ("seed", -2**63 - 1), ("seed", 2**100), ("seed", 1.5),
    ("max_tokens", float("inf")), ("top_k", float("nan")), ("n", float("nan")),
    ("presence_penalty", float("nan")), ("frequency_penalty", float("-inf")),
])
@pytest.mark.parametrize("endpoint", ["chat", "completions"])
def test_numeric_fields_out_of_range_are_400_at_parse_time(field, value, endpoint):
    from qwenvl.serve.completions import parse_completion_request
    from qwenvl.serve.protocol import parse_chat_request

    with pytest.raises(APIError) as e:   # /v1/completions shares the checks (protocol.parse_sampling)
        if endpoint == "chat":
            parse_chat_request({"messages": TEXT, field: value})
        else:
            parse_completion_request({"prompt": "A red square", field: value})
    assert e.value.status == 400 and e.value.param == field


def test_tiny_temperature_is_clamped_and_the_seed_range_holds_for_every_choice():
    from qwenvl.serve.protocol import MIN_TEMPERATURE, parse_chat_request

    assert parse_chat_request({"messages": TEXT, "temperature": 1e-39}).sampling["temperature"] == MIN_TEMPERATURE
    assert parse_chat_request({"messages": TEXT, "temperature": 0}).sampling["temperature"] == 0
    assert parse_chat_request({"messages": TEXT, "seed": 2**63 - 1}).sampling["seed"] == 2**63 - 1
    with pytest.raises(APIError, match="seed"):   # choice 1 would use seed + 1, past int64
        parse_chat_request({"messages": TEXT, "seed": 2**63 - 1, "n": 2})


def test_overflowing_scores_are_a_clear_error_of_the_sampler():
    import torch

    from qwenvl.engine.sampling import SamplingParams, next_token

    logits = torch.tensor([1.0, 50.0, 3.0])
    with pytest.raises(ValueError, match="non-finite"):
        next_token(logits, SamplingParams(temperature=1e-39), torch.tensor([0]), torch.Generator().manual_seed(0))


def test_nan_logits_end_that_sequence_only(pipe, monkeypatch):
    import torch

    from qwenvl.engine.engine import Engine, Sequence
    from qwenvl.engine.sampling import SamplingParams

    engine = Engine(pipe.model, max_batch=2, max_len=64)
    prompt = pipe.processor(TEXT)["input_ids"][0].tolist()
    params = SamplingParams(max_new_tokens=6, temperature=0, ignore_eos=True)
    good, bad = Sequence(list(prompt), params), Sequence(list(prompt), params)
    engine.add(good)
    engine.add(bad)
    logits = pipe.model.logits

    def poisoned(hidden):
        out = logits(hidden)
        if out.dim() == 2 and out.shape[0] == 2:
            out[1] = float("nan")   # the second running sequence (slot 1) goes bad
        return out

    monkeypatch.setattr(pipe.model, "logits", poisoned)
    pairs = engine.step()
    assert [s for s, _ in pairs] == [good]
    assert bad.finish_reason == "error" and isinstance(bad.error, FloatingPointError)
    while not good.finished:
        engine.step()
    assert good.finish_reason == "length" and len(good.output_ids) == 6


def test_a_failing_sequence_does_not_harm_its_neighbour(server, pipe, monkeypatch):
    """Two concurrent requests; the sampler raises for one of them mid-generation: that one gets an
    error, the other completes with exactly the text it gets alone."""
    import qwenvl.engine.engine as engine_mod

    base, _ = server
    kw = dict(model="m", messages=TEXT, max_tokens=12, temperature=0, extra_body={"ignore_eos": True})
    alone = client(base).chat.completions.create(**kw).choices[0].message.content
    real = engine_mod.sample
    calls = {"poisoned": 0}

    def sampler(logits, params, generator):
        if params.seed == 666:
            calls["poisoned"] += 1
            if calls["poisoned"] == 3:   # mid-generation, with the neighbour in the same batch
                raise RuntimeError("a bug in this sequence's sampler")
        return real(logits, params, generator)

    monkeypatch.setattr(engine_mod, "sample", sampler)

    good, bad = at_once(base, kw, {**kw, "seed": 666})
    assert isinstance(bad, openai.InternalServerError) and bad.body["code"] == "generation_failed"
    assert good.choices[0].message.content == alone and good.usage.completion_tokens == 12
    monkeypatch.setattr(engine_mod, "sample", real)
    good_request_works(base)


def test_tiny_temperature_runs_next_to_a_neighbour(server):
    base, _ = server
    kw = dict(model="m", messages=TEXT, max_tokens=8, extra_body={"ignore_eos": True})

    for r in at_once(base, {**kw, "temperature": 1e-39, "seed": 1}, {**kw, "temperature": 0}):
        assert not isinstance(r, Exception), r
        assert r.usage.completion_tokens == 8


# ---------------------------------------------------------------------- resource limits before work

def solid_png(w: int, h: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), (10, 200, 30)).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture()
def no_decoding(monkeypatch):
    """Fail the request (500) if any image is decoded: the budgets must refuse from headers alone."""
    import qwenvl.serve.media as media

    def refuse(img, param):
        raise RuntimeError("decoded although the budget should have refused it")

    monkeypatch.setattr(media, "decode_image", refuse)


def test_min_pixels_beyond_the_budget_is_refused_before_decoding(server, no_decoding):
    base, _ = server
    for options in ({"min_pixels": 1e10}, {"min_pixels": 4e7}, {"resized_height": 90000, "resized_width": 90000}):
        body = {"messages": [{"role": "user", "content": [{"type": "image", "image": data_uri(png_bytes(32, 32)),
                                                           **options}]}], "max_tokens": 2}
        err = error_of(post(base, body))
        assert err["param"] == "messages[0].content[0].image" and err["code"] in ("media_too_large",
                                                                                   "context_length_exceeded")


def test_big_frames_are_refused_from_their_headers(server, no_decoding):
    base, _ = server
    frame = data_uri(solid_png(6000, 6000))   # 36 Mpx each, under the per-image limit; four are over the request's
    body = {"messages": [{"role": "user", "content": [{"type": "video", "video": [frame] * 4}]}], "max_tokens": 2}
    err = error_of(post(base, body))
    assert err["code"] == "media_too_large" and err["param"].startswith("messages[0].content[0].video")


def test_media_tokens_over_the_context_are_refused_before_decoding(server, no_decoding):
    base, _ = server
    part = {"type": "image_url", "image_url": {"url": data_uri(solid_png(600, 600))}}   # 441 tokens each
    body = {"messages": [{"role": "user", "content": [part, part, part]}], "max_tokens": 2}
    err = error_of(post(base, body))   # the third one is over the context of 1024
    assert err["code"] == "context_length_exceeded" and err["param"] == "messages[0].content[2].image_url.url"


def test_long_text_is_refused_before_tokenizing(server, pipe, monkeypatch):
    base, _ = server

    def refuse(*a, **k):
        raise RuntimeError("tokenized although the text is over the limit")

    monkeypatch.setattr(pipe, "sequence", refuse)
    t0 = time.perf_counter()
    err = error_of(post(base, {"messages": [{"role": "user", "content": "x" * 4_000_000}]}))
    assert err["code"] == "context_length_exceeded" and err["param"] == "messages"
    assert time.perf_counter() - t0 < 20


def test_stop_strings_are_capped(server):
    base, _ = server
    for stop in (["s" * 200_000], ["a"] * 100):   # one 200k-character stop string froze a neighbour for 28 s
        assert error_of(post(base, {"messages": TEXT, "stop": stop}))["param"] == "stop"
    r = post(base, {"messages": TEXT, "stop": ["ab" * 499 + "c"] * 16, "max_tokens": 8, "ignore_eos": True})
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 8   # at the caps: fine


def test_chunked_body_is_cut_at_the_limit(pipe):
    """A chunked body has no Content-Length: the server must stop reading at the limit, not buffer it all."""
    with running_server(pipe, max_batch=1, max_request_bytes=10_000) as (base, _, _):
        port = int(base.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      b"Transfer-Encoding: chunked\r\n\r\n")
            chunk = b"x" * 4000
            for _ in range(4):   # 16 kB sent, and the body never ends
                s.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            s.settimeout(10)
            head = s.recv(200)
        assert head.startswith(b"HTTP/1.1 413"), head
        good_request_works(base)


def test_request_deadline_is_checked_during_generation(pipe):
    with running_server(pipe, max_batch=2, request_timeout=1.0) as (base, _, _):
        t0 = time.perf_counter()
        kw = {"model": "m", "messages": TEXT, "max_tokens": 3000, "ignore_eos": True}
        with httpx.stream("POST", f"{base}/v1/chat/completions", json={**kw, "stream": True}, timeout=60) as r:
            events = [line for line in r.iter_lines() if line.startswith("data: {\"error\"")]
        assert json.loads(events[0][6:])["error"]["code"] == "timeout" and time.perf_counter() - t0 < 10
        good_request_works(base)


# ---------------------------------------------------------------------- 4xx for every malformed input

def test_malformed_inputs_are_4xx_naming_the_part(server, dirs):
    base, _ = server
    allowed, _ = dirs
    img = "messages[0].content[0].image_url.url"
    image = lambda url: [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}]
    cases = [
        ("[" * 100_000 + "]" * 100_000, 400, None),
        ('{"messages": ' + "[" * 5000 + "]" * 5000 + "}", 400, None),
        ('{"messages": ' + "[" * 900 + "]" * 900 + "}", 400, "messages[0]"),   # parses; then refused by name
        ('{"messages": [], "seed": ' + "9" * 5000 + "}", 400, None),
        ({"messages": image("a" * 10_000)}, 400, img),
        ({"messages": image("/" + "a/" * 5000 + "x.png")}, 400, img),
        ({"messages": image("http://127.0.0.1:99999/")}, 403, img),   # remote media are off here
        ({"messages": image("http://[::1/")}, 400, img),
        ({"messages": TEXT, "seed": 2**64}, 400, "seed"),
        ({"messages": [{"role": ["user"], "content": "hi"}]}, 400, "messages[0].role"),
        ({"messages": [{"role": "user", "content": [{"type": {"a": 1}}]}]}, 400, "messages[0].content[0].type"),
        ({"messages": [{"role": "user", "content": [{"type": "image", "image": "cat.png", "min_pixels": float("nan")}]}]},
         400, "messages[0].content[0].min_pixels"),
        ({"messages": [{"role": "user", "content": [{"type": "video", "video": "clip.mp4", "fps": float("inf")}]}]},
         400, "messages[0].content[0].fps"),
        ({"messages": TEXT, "stop_token_ids": list(range(10_000))}, 400, "stop_token_ids"),
    ]
    for body, status, param in cases:
        r = post(base, body)
        err = error_of(r, status)
        assert err["param"] == param, (body if isinstance(body, dict) else body[:50], err)
    good_request_works(base)


def test_remote_url_faults_are_4xx():
    from qwenvl.serve.media import MediaPolicy, read_source

    policy = MediaPolicy(allow_remote=True)
    for url in ("http://127.0.0.1:99999/", "http://[::1/", "http://[::1]:abc/", "http://" + "a" * 300 + ".com/",
                "http://exa\x00mple.com/", "https:///nohost"):
        with pytest.raises(APIError) as e:
            read_source(url, "p", policy, 1000)
        assert 400 <= e.value.status < 500 and e.value.param == "p", url


def test_video_errors_are_blamed_on_the_part(server, dirs):
    base, _ = server
    part = "messages[0].content[1].video_url.url"
    for options in ({"nframes": 20}, {"fps": 1, "nframes": 4}, {"video_start": 3.0, "video_end": 1.0}):
        body = {"messages": [{"role": "user", "content": [
            {"type": "text", "text": "Look:"}, {"type": "video_url", "video_url": {"url": "clip.mp4", **options}}]}],
            "max_tokens": 2}
        err = error_of(post(base, body))
        assert err["param"] == part and err["message"].startswith(part), (options, err)
    good_request_works(base)


# ---------------------------------------------------------------------- addresses and metrics

@pytest.mark.parametrize("addr", [
    "2002:7f00:1::1",         # 6to4 of 127.0.0.1
    "2002:a9fe:a9fe::1",      # 6to4 of 169.254.169.254 (cloud metadata)
    "2002:c0a8:0101::1",      # 6to4 of 192.168.1.1
    "fec0::1",                # site-local
    "192.88.99.1",            # the 6to4 relay anycast
    "64:ff9b::7f00:1",        # NAT64 of 127.0.0.1
    "::ffff:10.0.0.1",        # mapped private
    "2001:0:4136:e378:8000:63bf:f5ff:fffe",   # Teredo whose client is 10.0.0.1
])
def test_non_public_addresses_are_refused(addr):
    from qwenvl.serve.media import MediaPolicy, resolve_host

    with pytest.raises(APIError) as e:
        resolve_host(addr, 80, "p", MediaPolicy(allow_remote=True))
    assert e.value.status == 403 and e.value.code == "url_not_allowed"


def test_public_addresses_pass():
    from qwenvl.serve.media import _public

    for addr in ("8.8.8.8", "2002:0808:0808::1", "2606:4700::1111", "64:ff9b::808:808"):
        assert _public(ipaddress.ip_address(addr)), addr


def test_cancelled_streams_are_counted_as_499(pipe):
    with running_server(pipe, max_batch=2) as (base, _, _):
        body = {"model": "m", "messages": TEXT, "max_tokens": 3000, "ignore_eos": True, "stream": True}
        with httpx.stream("POST", f"{base}/v1/chat/completions", json=body, timeout=60) as r:
            lines = r.iter_lines()
            next(lines)
        end = time.monotonic() + 10
        while httpx.get(f"{base}/health").json()["running"] and time.monotonic() < end:
            time.sleep(0.05)
        with httpx.stream("POST", f"{base}/v1/chat/completions", json={**body, "max_tokens": 2}, timeout=60) as r:
            assert list(r.iter_lines())[-2] == "data: [DONE]"
        m = {}
        end = time.monotonic() + 5
        while m.get('qwenvl_requests_total{status="499"}') != 1 and time.monotonic() < end:
            m = parse_metrics(httpx.get(f"{base}/metrics").text)
            time.sleep(0.05)
        assert m.get('qwenvl_requests_total{status="499"}') == 1
        assert m.get('qwenvl_requests_total{status="200"}') == 1   # the finished stream only


# ---------------------------------------------------------------------- fuzzed JSON bodies

WEIRD = [None, True, False, 0, -1, 1, 3, 2**31, 2**63, 2**64, -2**70, 0.5, 1e-39, 1e308, -0.0,
         float("nan"), float("inf"), float("-inf"), "", "x", "user", "text", "\x00", "a" * 3000, [], [1, "a"],
         {}, {"url": 5}, {"type": "text"}, [[[[[]]]]], {"a": {"b": {"c": []}}}]
FIELDS = ["messages", "model", "max_tokens", "max_completion_tokens", "n", "temperature", "top_p", "top_k",
          "seed", "stop", "stop_token_ids", "repetition_penalty", "presence_penalty", "frequency_penalty",
          "stream", "stream_options", "ignore_eos", "logprobs", "top_logprobs", "tools", "tool_choice",
          "response_format"]
PART_KEYS = ["type", "text", "image_url", "video_url", "image", "video", "url", "min_pixels", "max_pixels",
             "resized_height", "resized_width", "fps", "nframes", "min_frames", "max_frames", "total_pixels",
             "video_start", "video_end"]


def fuzz_body(rng: random.Random, media: list[str]) -> dict:
    pool = WEIRD + media

    def part():
        kind = rng.choice(["text", "image_url", "video_url", "image", "video", rng.choice(WEIRD)])
        p = {"type": kind}
        if kind == "text":
            p["text"] = rng.choice(["hi", rng.choice(WEIRD)])
        elif kind in ("image_url", "video_url"):
            p[kind] = rng.choice([{"url": rng.choice(pool)}, rng.choice(pool)])
        elif kind in ("image", "video"):
            p[kind] = rng.choice(pool + [[rng.choice(pool)]])
        for _ in range(rng.randint(0, 3)):
            p[rng.choice(PART_KEYS)] = rng.choice(pool + [1, 2, 4, 28, 800])
        return p

    def message():
        m = {"role": rng.choice(["user", "assistant", "system", "developer", rng.choice(WEIRD)])}
        m["content"] = rng.choice(["hello", [part() for _ in range(rng.randint(0, 3))], rng.choice(WEIRD)])
        return m if rng.random() > 0.05 else rng.choice(WEIRD)

    body = {"messages": [message() for _ in range(rng.randint(1, 3))] if rng.random() > 0.1 else rng.choice(WEIRD)}
    for name in rng.sample(FIELDS[1:], rng.randint(0, 6)):
        body[name] = rng.choice(WEIRD + [0.7, 8, ["a", "b"], {"include_usage": True}])
    body.setdefault("max_tokens", rng.choice([1, 2, 4]))
    return body


def test_fuzzed_bodies_never_get_a_5xx(pipe, dirs):
    """Random types and values for every field, through parsing and the whole preprocessing."""
    from qwenvl.serve.app import ServerSettings
    from qwenvl.serve.prepare import prepare
    from qwenvl.serve.media import MediaPolicy
    from qwenvl.serve.protocol import parse_chat_request

    allowed, outside = dirs
    settings = ServerSettings(media=MediaPolicy(allowed_local_path=allowed))
    media = ["cat.png", "clip.mp4", str(outside / "secret.mp4"), data_uri(png_bytes(30, 30)),
             data_uri(playlists(os.path.relpath(outside / "secret.mp4", tempfile.gettempdir()))["ffconcat"]),
             "../outside/secret.mp4"]
    rng = random.Random(7)
    counts = {"ok": 0, "refused": 0}
    for _ in range(400):
        body = json.loads(json.dumps(fuzz_body(rng, media)))   # what a server would get on the wire
        try:
            prepare(pipe, parse_chat_request(body), settings, 1024)
            counts["ok"] += 1
        except APIError as e:
            assert 400 <= e.status < 500, (body, e.status, e.message)
            counts["refused"] += 1
    assert counts["ok"] > 10 and counts["refused"] > 100


def test_fuzzed_bodies_over_http_leave_a_neighbour_unharmed(server, dirs):
    base, _ = server
    allowed, outside = dirs
    kw = dict(model="m", messages=TEXT, max_tokens=24, temperature=0, extra_body={"ignore_eos": True})
    alone = client(base).chat.completions.create(**kw).choices[0].message.content
    result = {}
    neighbour = threading.Thread(target=lambda: result.update(r=client(base).chat.completions.create(**kw)))
    neighbour.start()
    rng = random.Random(11)
    media = ["cat.png", "clip.mp4", data_uri(playlists(str(outside / "secret.mp4"))["ffconcat"])]
    statuses = []
    for _ in range(60):
        body = fuzz_body(rng, media)
        body["stream"] = rng.random() < 0.3
        statuses.append(post(base, json.dumps(body)).status_code)
    neighbour.join(120)
    assert all(s < 500 for s in statuses), statuses
    assert result["r"].choices[0].message.content == alone
    good_request_works(base)


def test_limit_flags_reach_the_settings():
    from qwenvl.cli.main import build_parser
    from qwenvl.cli.serve import settings_from_args

    args = build_parser().parse_args(["serve", "--model", "x", "--max-request-pixels", "5000", "--max-request-bytes",
                                      "999", "--max-prompt-chars", "77", "--max-stop-strings", "2",
                                      "--max-stop-chars", "9"])
    s = settings_from_args(args, "x")
    assert (s.media.max_request_pixels, s.max_request_bytes, s.max_prompt_chars, s.max_stop, s.max_stop_chars) == \
        (5000, 999, 77, 2, 9)
    with pytest.raises(ValueError, match="max-prompt-chars"):
        settings_from_args(build_parser().parse_args(["serve", "--model", "x", "--max-prompt-chars", "0"]), "x")


def test_a_client_gone_mid_body_is_499_not_500(pipe):
    with running_server(pipe, max_batch=1) as (base, app, _):
        port = int(base.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      b"Content-Length: 5000\r\n\r\n{\"messages\": [")
        end = time.monotonic() + 10
        m = {}
        while not m.get('qwenvl_requests_total{status="499"}') and time.monotonic() < end:
            time.sleep(0.05)
            m = parse_metrics(httpx.get(f"{base}/metrics").text)
        assert m.get('qwenvl_requests_total{status="499"}') == 1 and not m.get('qwenvl_requests_total{status="500"}')
        good_request_works(base)


def test_the_library_raises_a_failed_sequence(pipe, monkeypatch):
    """Outside the server, a sequence the engine ended with an error fails the call instead of
    returning a cut answer."""
    import qwenvl.engine.engine as engine_mod

    real = engine_mod.sample

    def broken(*args):
        raise RuntimeError("sampler bug")

    monkeypatch.setattr(engine_mod, "sample", broken)
    with pytest.raises(RuntimeError, match="sampler bug"):   # at the first token (prefill): the sequence ends with the error, which the call raises
        pipe.chat(TEXT, max_new_tokens=4, temperature=0)
    calls = {"n": 0}

    def later(*args):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("sampler bug at step 2")
        return real(*args)

    monkeypatch.setattr(engine_mod, "sample", later)
    with pytest.raises(RuntimeError, match="step 2"):
        pipe.chat(TEXT, max_new_tokens=4, temperature=0)


def test_media_loading_stops_at_the_deadline(pipe, dirs, monkeypatch):
    """Many slow sources (each under its own fetch timeout) must not hold a worker past the request's."""
    import qwenvl.serve.media as media
    from qwenvl.serve.app import ServerSettings
    from qwenvl.serve.prepare import prepare
    from qwenvl.serve.media import MediaPolicy
    from qwenvl.serve.protocol import parse_chat_request

    real = media.read_source

    def slow(*args):
        time.sleep(0.2)
        return real(*args)

    monkeypatch.setattr(media, "read_source", slow)
    settings = ServerSettings(media=MediaPolicy(allowed_local_path=dirs[0]))
    body = {"messages": [{"role": "user", "content": [{"type": "video", "video": ["cat.png"] * 50}]}]}
    t0 = time.perf_counter()
    with pytest.raises(APIError) as e:
        prepare(pipe, parse_chat_request(body), settings, 1024, deadline=time.perf_counter() + 0.5)
    assert e.value.status == 504 and e.value.param.startswith("messages[0].content[0].video[")
    assert time.perf_counter() - t0 < 2


def test_a_failing_grammar_constraint_ends_only_its_own_request(server, monkeypatch):
    """A constrained request whose grammar matcher raises mid-generation gets a 500 of its own; a plain
    request decoded in the same batch completes with exactly the text it gets alone."""
    pytest.importorskip("llguidance")
    from qwenvl.engine.grammar import Constraint

    base, _ = server
    kw = dict(model="m", messages=TEXT, max_tokens=10, temperature=0, extra_body={"ignore_eos": True})
    alone = client(base).chat.completions.create(**kw).choices[0].message.content
    real, calls = Constraint.advance, {"n": 0}

    def advance(self, token):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("grammar matcher failed")
        return real(self, token)

    monkeypatch.setattr(Constraint, "advance", advance)

    good, bad = at_once(base, kw, {**kw, "extra_body": {"ignore_eos": True, "guided_regex": "[a-z]{20,40}"}})
    assert isinstance(bad, openai.InternalServerError) and bad.body["code"] == "generation_failed"
    assert good.choices[0].message.content == alone and good.usage.completion_tokens == 10
    monkeypatch.setattr(Constraint, "advance", real)
    good_request_works(base)
