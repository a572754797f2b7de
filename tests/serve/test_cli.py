"""`qwenvl serve` as a process (as users start it) and `qwenvl bench-serve` against a server."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import httpx

from qwenvl.cli.main import build_parser

from serve_util import client, data_uri, free_port, image_message, png_bytes, running_server


def test_qwenvl_serve_process(tiny_ckpt, tmp_path):
    port = free_port()
    (tmp_path / "img.png").write_bytes(png_bytes())
    cmd = [sys.executable, "-m", "qwenvl.cli.main", "serve", "--model", str(tiny_ckpt), "--port", str(port),
           "--max-batch", "2", "--allowed-local-media-path", str(tmp_path), "--api-key", "k", "--log-level", "warning"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "QWENVL_API_KEY": ""})
    base = f"http://127.0.0.1:{port}"
    try:
        end = time.monotonic() + 120
        while True:
            assert proc.poll() is None, proc.stdout.read()
            try:
                if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < end, "server did not come up"
            time.sleep(0.2)
        c = client(base, api_key="k")
        assert c.models.list().data[0].id == str(tiny_ckpt)
        r = c.chat.completions.create(model=str(tiny_ckpt), messages=image_message(str(tmp_path / "img.png")),
                                      max_tokens=3)
        assert r.usage.completion_tokens >= 1
        r = c.chat.completions.create(model="x", messages=image_message(data_uri(png_bytes(seed=1))), max_tokens=3,
                                      stream=True)
        assert [ch for ch in r]
    finally:
        proc.send_signal(signal.SIGTERM)   # graceful shutdown: exits by itself
        try:
            # uvicorn shuts down gracefully, then re-raises the signal: killed by SIGTERM, but by itself
            assert proc.wait(timeout=60) in (0, -signal.SIGTERM)
            assert "Traceback" not in proc.stdout.read()
        finally:
            proc.kill()


def test_bench_serve_reports_levels(pipe, tmp_path, capsys):
    with running_server(pipe, max_batch=4) as (base, _, _):
        args = build_parser().parse_args(["bench-serve", "--url", base, "--concurrency", "1,4", "--requests", "4",
                                          "--max-tokens", "4", "--image-size", "56",
                                          "--json", str(tmp_path / "out.json")])
        assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "| concurrency |" in out and "\n| 4 | 4 | 0 |" in out
    import json
    rows = json.loads((tmp_path / "out.json").read_text())
    assert [r["concurrency"] for r in rows] == [1, 4] and all(r["tokens"] == 16 for r in rows)


def test_bench_serve_takes_an_openai_base_url(pipe, capsys):
    """`--url http://host:port/v1`, as OpenAI clients take it, reaches the same server (not /v1/v1/...)."""
    from qwenvl.cli.main import main

    with running_server(pipe, max_batch=2) as (base, _, _):
        assert main(["bench-serve", "--url", base + "/v1/", "--concurrency", "1", "--requests", "2",
                     "--max-tokens", "2"]) == 0
    out = capsys.readouterr().out
    assert "\n| 1 | 2 | 0 |" in out


def test_bench_serve_failures_are_one_line(pipe, capsys):
    from qwenvl.cli.main import main

    with running_server(pipe, max_batch=2, api_key="secret") as (base, _, _):
        # no key: /v1/models answers 401
        assert main(["bench-serve", "--url", base, "--concurrency", "1", "--requests", "1", "--max-tokens", "2"]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "HTTP 401" in err[0] and "Traceback" not in err[0]
        # a model given, so the requests themselves fail: counted, listed, then one line
        assert main(["bench-serve", "--url", base, "--model", "m", "--concurrency", "1", "--requests", "1",
                     "--max-tokens", "2"]) == 1
        captured = capsys.readouterr()
        assert "| 1 | 1 | 1 |" in captured.out
        err = captured.err.strip().splitlines()
        assert len(err) == 1 and "requests to" in err[0] and "--api-key" in err[0]
