"""Helpers for the server tests: a real uvicorn server in a thread, images, messages."""

from __future__ import annotations

import base64
import contextlib
import io
import socket
import threading
import time

import numpy as np
import openai
import pytest
from PIL import Image


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_server(pipe, adapters=None, **settings):
    """Start create_app(pipe, ServerSettings(**settings), adapters) under uvicorn; yields (base_url, app, server)."""
    import uvicorn

    from qwenvl.serve.app import ServerSettings, create_app

    app = create_app(pipe, ServerSettings(**settings), adapters)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                           timeout_graceful_shutdown=10))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}", app, server
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def client(base: str, **kw):
    return openai.OpenAI(base_url=f"{base}/v1", api_key=kw.pop("api_key", "none"), max_retries=0, timeout=60, **kw)


def png_bytes(w: int = 80, h: int = 60, seed: int = 0) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def data_uri(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def image_message(url: str, text: str = "What is in the image?") -> list[dict]:
    return [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                         {"type": "text", "text": text}]}]


def small_video(path, frames: int = 8, size=(64, 48), fps: int = 4) -> None:
    av = pytest.importorskip("av")
    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        rng = np.random.default_rng(0)
        for _ in range(frames):
            frame = av.VideoFrame.from_ndarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8), "rgb24")
            out.mux(stream.encode(frame))
        out.mux(stream.encode())
