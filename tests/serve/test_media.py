"""Media loading rules, without a model: sources, addresses, sizes, images, videos."""

from __future__ import annotations

import http.server
import io
import threading

import pytest
from PIL import Image

from qwenvl.serve.errors import APIError
from qwenvl.serve.media import MediaPolicy, decode_data_uri, fetch_url, load_media, local_path, open_image, \
    probe_video, read_source
from qwenvl.serve.protocol import MediaRef

from serve_util import data_uri, png_bytes, small_video


@pytest.fixture(scope="module")
def http_files():
    """A loopback HTTP server: /cat.png, /big.bin, /redirect -> /cat.png, anything else 404."""
    files = {"/cat.png": png_bytes(), "/big.bin": b"x" * 5000}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path == "/redirect":
                self.send_response(302)
                self.send_header("Location", "/cat.png")
                self.end_headers()
                return
            body = files.get(self.path)
            self.send_response(200 if body else 404)
            self.send_header("Content-Length", str(len(body or b"")))
            self.end_headers()
            self.wfile.write(body or b"")

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", files
    server.shutdown()


def status(fn, *args) -> tuple[int, str | None]:
    with pytest.raises(APIError) as e:
        fn(*args)
    return e.value.status, e.value.code


def test_remote_fetch_rules(http_files):
    base, files = http_files
    open_policy = MediaPolicy(allow_remote=True, allow_private_hosts=True)   # loopback allowed for this test only
    assert fetch_url(f"{base}/cat.png", "p", open_policy, 100_000) == files["/cat.png"]
    assert fetch_url(f"{base}/redirect", "p", open_policy, 100_000) == files["/cat.png"]
    assert status(fetch_url, f"{base}/big.bin", "p", open_policy, 1000) == (400, "media_too_large")
    assert status(fetch_url, f"{base}/missing", "p", open_policy, 1000) == (400, "media_fetch_failed")
    # the real policy refuses loopback, and remote media are off unless asked for
    assert status(read_source, f"{base}/cat.png", "p", MediaPolicy(allow_remote=True), 100_000) == (403, "url_not_allowed")
    assert status(read_source, f"{base}/cat.png", "p", MediaPolicy(), 100_000) == (403, "remote_media_disabled")
    assert status(fetch_url, "http://user:pw@example.com/x.png", "p", open_policy, 10)[0] == 400


def test_data_uris():
    assert decode_data_uri(data_uri(b"abc"), "p", 100) == b"abc"
    assert decode_data_uri("data:image/png;base64,YW\nJj", "p", 100) == b"abc"   # line breaks are fine
    assert status(decode_data_uri, "data:image/png,abc", "p", 100) == (400, "invalid_data_uri")
    assert status(decode_data_uri, "data:image/png;base64,a$c=", "p", 100) == (400, "invalid_base64")
    assert status(decode_data_uri, data_uri(b"x" * 1000), "p", 100) == (400, "media_too_large")


def test_local_paths(tmp_path):
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "a.png").write_bytes(png_bytes())
    (tmp_path / "secret.png").write_bytes(png_bytes())
    (root / "escape").symlink_to(tmp_path)
    (root / "inside").symlink_to(root / "sub")
    policy = MediaPolicy(allowed_local_path=root)
    assert local_path("sub/a.png", "p", policy, 10**6) == (root / "sub" / "a.png").resolve()
    assert local_path(str(root / "inside" / "a.png"), "p", policy, 10**6) == (root / "sub" / "a.png").resolve()
    for bad in ("../secret.png", str(root / "escape" / "secret.png"), str(tmp_path / "secret.png"),
                str(root / "sub" / ".." / ".." / "secret.png"), "/etc/passwd"):
        assert status(local_path, bad, "p", policy, 10**6) == (403, "path_not_allowed"), bad
    assert status(local_path, "sub/a.png", "p", policy, 10) == (400, "media_too_large")
    assert status(local_path, "sub", "p", policy, 10**6) == (400, "file_not_found")
    assert status(local_path, "sub/a.png", "p", MediaPolicy(), 10**6) == (403, "local_media_disabled")
    assert status(read_source, "file://host/x.png", "p", policy, 10**6)[0] == 400


def test_images_are_checked_before_decoding():
    policy = MediaPolicy(max_image_pixels=100 * 100)
    img = open_image(png_bytes(100, 100), "p", policy)
    assert img.mode == "RGB" and img.size == (100, 100)
    assert status(open_image, png_bytes(101, 100), "p", policy) == (400, "image_too_large")
    assert status(open_image, b"GIF89a-but-not-really", "p", policy) == (400, "invalid_image")
    assert status(open_image, png_bytes()[:60], "p", MediaPolicy()) == (400, "invalid_image")   # truncated
    buf = io.BytesIO()
    Image.new("RGBA", (4, 4), (0, 0, 0, 0)).save(buf, "PNG")
    assert open_image(buf.getvalue(), "p", policy).getpixel((0, 0)) == (255, 255, 255)   # transparent -> white


def test_videos_are_probed(tmp_path):
    small_video(tmp_path / "v.mp4")
    policy = MediaPolicy(allowed_local_path=tmp_path, max_video_frames=6)
    probe_video(str(tmp_path / "v.mp4"), "p", {}, policy)                 # 2 s at 2 fps: 4 frames
    assert status(probe_video, str(tmp_path / "v.mp4"), "p", {"fps": 4.0}, policy) == (400, "too_many_frames")
    assert status(probe_video, str(tmp_path / "v.mp4"), "p", {"nframes": 8}, policy) == (400, "too_many_frames")
    assert status(probe_video, str(tmp_path / "v.mp4"), "p", {}, MediaPolicy(max_image_pixels=100)) == \
        (400, "video_too_large")
    (tmp_path / "junk.mp4").write_bytes(b"not a video at all" * 10)
    assert status(probe_video, str(tmp_path / "junk.mp4"), "p", {}, policy) == (400, "invalid_video")
    # a data-URI video is written to a temporary file for the decoder, and that file is reported for cleanup
    uri = data_uri((tmp_path / "v.mp4").read_bytes(), "video/mp4")
    loaded = load_media(MediaRef("video", uri, {"fps": 1.0}, "p"), policy)
    assert loaded.item["fps"] == 1.0 and loaded.temp_files == [loaded.item["video"]]
