"""Loading a request's images and videos safely, before the processor sees them.

The processor can open paths and URLs by itself; the server never lets it. Every source is checked
and loaded here, and the processor gets only already-vetted objects (decoded images, paths of files
we checked or wrote):

- data URIs: strict base64, a size cap;
- local paths (plain or file://): only inside --allowed-local-media-path, after resolving symlinks and
  `..`, so neither can escape it;
- http(s): only with --allow-remote-media; the host is resolved and every address must be public
  (no loopback, private, link-local, multicast, reserved), the connection goes to the address we
  checked (no DNS rebinding), redirects are re-checked hop by hop, with a timeout and a size cap;
- images: the header is read first and the pixel count checked before anything is decoded
  (decompression bombs), and only common formats are opened;
- videos: probed with PyAV (resolution and the number of frames the sampling would take) before the
  processor decodes them.
"""

from __future__ import annotations

import base64
import binascii
import io
import ipaddress
import os
import socket
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urljoin, urlsplit, urlunsplit

from ..processing.image import to_rgb   # one conversion rule for the API and the library
from .errors import APIError, bad_request
from .protocol import MediaRef

IMAGE_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF")
DEFAULT_FPS = 2.0   # the Qwen processors' default video sampling rate


@dataclass
class MediaPolicy:
    allowed_local_path: Path | None = None   # None: no local files at all
    allow_remote: bool = False
    max_image_pixels: int = 40_000_000       # per image / per video frame, checked before decoding
    max_media_bytes: int = 20 * 2**20        # per image (encoded)
    max_video_bytes: int = 200 * 2**20       # per video file
    max_images: int = 16                     # per request
    max_videos: int = 2                      # per request
    max_video_frames: int = 256              # frames sampled from one video
    fetch_timeout: float = 10.0              # seconds, per remote fetch (connect + read)
    max_redirects: int = 3
    allow_private_hosts: bool = False        # tests only: lets remote fetches reach loopback

    def __post_init__(self):
        if self.allowed_local_path is not None:
            self.allowed_local_path = Path(os.path.realpath(self.allowed_local_path))


@dataclass
class LoadedMedia:
    """What the processor receives for one media part, plus temporary files to delete afterwards."""
    item: dict
    temp_files: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------- sources

def read_source(source: str, param: str, policy: MediaPolicy, max_bytes: int) -> bytes | Path:
    """The bytes of a data URI or remote URL, or the checked real path of an allowed local file."""
    if source.startswith("data:"):
        return decode_data_uri(source, param, max_bytes)
    scheme = urlsplit(source).scheme.lower() if "://" in source else ""
    if scheme in ("http", "https"):
        if not policy.allow_remote:
            raise APIError(403, f"{param}: remote media URLs are disabled on this server (start it with "
                                "--allow-remote-media)", param=param, code="remote_media_disabled")
        return fetch_url(source, param, policy, max_bytes)
    if scheme == "file":
        parts = urlsplit(source)
        if parts.netloc not in ("", "localhost"):
            raise bad_request(f"{param}: file:// URLs must not name a host", param)
        return local_path(unquote(parts.path), param, policy, max_bytes)
    if scheme:
        raise bad_request(f"{param}: unsupported URL scheme {scheme!r} (use data:, http(s):, file: or a path)", param)
    return local_path(source, param, policy, max_bytes)


def decode_data_uri(uri: str, param: str, max_bytes: int) -> bytes:
    header, sep, payload = uri.partition(",")
    if not sep or not header.endswith(";base64"):
        raise bad_request(f"{param}: data URIs must have the form data:<mime type>;base64,<data>", param,
                          code="invalid_data_uri")
    payload = "".join(payload.split())       # tolerate line breaks in the base64 text
    if len(payload) * 3 // 4 > max_bytes:
        raise bad_request(f"{param}: the data is larger than the limit of {max_bytes} bytes", param,
                          code="media_too_large")
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise bad_request(f"{param}: invalid base64 data in the data URI", param, code="invalid_base64") from None


def local_path(path: str, param: str, policy: MediaPolicy, max_bytes: int) -> Path:
    root = policy.allowed_local_path
    if root is None:
        raise APIError(403, f"{param}: local file paths are disabled on this server (start it with "
                            "--allowed-local-media-path DIR)", param=param, code="local_media_disabled")
    if "\x00" in path:
        raise bad_request(f"{param}: invalid path", param)
    p = Path(path)
    # realpath resolves every symlink and `..`; the result must still lie under the allowed root.
    real = Path(os.path.realpath(p if p.is_absolute() else root / p))
    if real != root and root not in real.parents:
        raise APIError(403, f"{param}: the path is outside the allowed media directory", param=param,
                       code="path_not_allowed")
    if not real.is_file():
        raise bad_request(f"{param}: no such file under the allowed media directory", param, code="file_not_found")
    if real.stat().st_size > max_bytes:
        raise bad_request(f"{param}: the file is larger than the limit of {max_bytes} bytes", param,
                          code="media_too_large")
    return real


def _public(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if ip.version == 6 and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return ip.is_global and not (ip.is_loopback or ip.is_private or ip.is_link_local or ip.is_multicast
                                 or ip.is_reserved or ip.is_unspecified)


def resolve_host(host: str, port: int, param: str, policy: MediaPolicy) -> str:
    """Resolve `host` and check every address it has; returns the one to connect to."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        raise bad_request(f"{param}: cannot resolve host {host!r}", param, code="media_fetch_failed") from None
    addrs = [info[4][0] for info in infos]
    for addr in addrs:
        ip = ipaddress.ip_address(addr.split("%")[0])
        if not policy.allow_private_hosts and not _public(ip):
            raise APIError(403, f"{param}: the host {host!r} resolves to a non-public address ({ip}); only public "
                                "hosts may be fetched", param=param, code="url_not_allowed")
    return addrs[0]


def fetch_url(url: str, param: str, policy: MediaPolicy, max_bytes: int) -> bytes:
    import httpx

    for _ in range(policy.max_redirects + 1):
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise bad_request(f"{param}: invalid URL {url!r}", param)
        if parts.username or parts.password:
            raise bad_request(f"{param}: URLs with credentials are not accepted", param)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        addr = resolve_host(parts.hostname, port, param, policy)
        # Connect to the address we checked, not to whatever the name resolves to a moment later.
        netloc = f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"
        pinned = urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, ""))
        host_header = parts.hostname if parts.port is None else f"{parts.hostname}:{parts.port}"
        try:
            # trust_env=False: no proxy from the environment may take the request elsewhere
            with httpx.Client(timeout=policy.fetch_timeout, follow_redirects=False, trust_env=False) as http, \
                    http.stream("GET", pinned, headers={"Host": host_header},
                                extensions={"sni_hostname": parts.hostname}) as r:
                if r.is_redirect and "location" in r.headers:
                    url = urljoin(url, r.headers["location"])
                    continue
                if r.status_code != 200:
                    raise bad_request(f"{param}: fetching the URL returned HTTP {r.status_code}", param,
                                      code="media_fetch_failed")
                if int(r.headers.get("content-length") or 0) > max_bytes:
                    raise bad_request(f"{param}: the remote file is larger than the limit of {max_bytes} bytes",
                                      param, code="media_too_large")
                data = bytearray()
                for piece in r.iter_bytes():
                    data += piece
                    if len(data) > max_bytes:
                        raise bad_request(f"{param}: the remote file is larger than the limit of {max_bytes} bytes",
                                          param, code="media_too_large")
                return bytes(data)
        except httpx.TimeoutException:
            raise bad_request(f"{param}: fetching the URL timed out after {policy.fetch_timeout} s", param,
                              code="media_fetch_failed") from None
        except httpx.HTTPError as e:
            raise bad_request(f"{param}: fetching the URL failed ({type(e).__name__})", param,
                              code="media_fetch_failed") from None
    raise bad_request(f"{param}: too many redirects", param, code="media_fetch_failed")


# ---------------------------------------------------------------------- images

def open_image(data: bytes | Path, param: str, policy: MediaPolicy):
    """Decode an image after checking its header's pixel count. Returns an RGB PIL image."""
    from PIL import Image, UnidentifiedImageError

    Image.init()   # register every plugin, so that `formats` below can name them
    try:
        img = Image.open(io.BytesIO(data) if isinstance(data, bytes) else data, formats=IMAGE_FORMATS)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        raise bad_request(f"{param}: the data is not a valid image (supported: {', '.join(IMAGE_FORMATS)})",
                          param, code="invalid_image") from None
    except Image.DecompressionBombError:
        raise bad_request(f"{param}: the image is too large", param, code="image_too_large") from None
    w, h = img.size
    if w * h > policy.max_image_pixels:
        raise bad_request(f"{param}: the image is {w}x{h} = {w * h} pixels, over the limit of "
                          f"{policy.max_image_pixels} pixels", param, code="image_too_large")
    if w < 1 or h < 1:
        raise bad_request(f"{param}: the image is empty", param, code="invalid_image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # we checked the size ourselves
            img.load()
            return to_rgb(img)
    except Exception:
        raise bad_request(f"{param}: the image could not be decoded (truncated or corrupt)", param,
                          code="invalid_image") from None


# ---------------------------------------------------------------------- videos

def probe_video(path: str, param: str, options: dict, policy: MediaPolicy) -> None:
    """Check a video's frame size and the number of frames its sampling would take, without decoding."""
    import av

    try:
        with av.open(path) as container:
            if not container.streams.video:
                raise bad_request(f"{param}: the file has no video stream", param, code="invalid_video")
            stream = container.streams.video[0]
            w, h = stream.codec_context.width, stream.codec_context.height
            rate = float(stream.average_rate or stream.guessed_rate or 0)
            total = stream.frames
            if stream.duration is not None and stream.time_base is not None:
                duration = float(stream.duration * stream.time_base)
            elif container.duration:
                duration = container.duration / 1_000_000
            else:
                duration = total / rate if total and rate else 0.0
            if not total and rate:
                total = int(duration * rate)
    except APIError:
        raise
    except Exception:
        raise bad_request(f"{param}: the data is not a readable video", param, code="invalid_video") from None
    if w * h > policy.max_image_pixels:
        raise bad_request(f"{param}: video frames are {w}x{h} = {w * h} pixels, over the limit of "
                          f"{policy.max_image_pixels} pixels", param, code="video_too_large")
    if "nframes" in options:
        frames = options["nframes"]
    else:
        frames = duration * options.get("fps", DEFAULT_FPS)
        if total:
            frames = min(frames, total)
        if "max_frames" in options:
            frames = min(frames, options["max_frames"])
    if frames > policy.max_video_frames:
        raise bad_request(f"{param}: sampling this video would take {int(frames)} frames, over the limit of "
                          f"{policy.max_video_frames} frames per video; lower 'fps' or set 'nframes'", param,
                          code="too_many_frames")


# ---------------------------------------------------------------------- one part

def load_media(ref: MediaRef, policy: MediaPolicy) -> LoadedMedia:
    if ref.kind == "image":
        data = read_source(ref.source, ref.param, policy, policy.max_media_bytes)
        return LoadedMedia({"type": "image", "image": open_image(data, ref.param, policy), **ref.options})
    if isinstance(ref.source, list):   # frames given as images
        if len(ref.source) > policy.max_video_frames:
            raise bad_request(f"{ref.param}: {len(ref.source)} frames, over the limit of {policy.max_video_frames} "
                              "frames per video", ref.param, code="too_many_frames")
        frames = [open_image(read_source(s, f"{ref.param}[{k}]", policy, policy.max_media_bytes),
                             f"{ref.param}[{k}]", policy) for k, s in enumerate(ref.source)]
        return LoadedMedia({"type": "video", "video": frames, **ref.options})
    data = read_source(ref.source, ref.param, policy, policy.max_video_bytes)
    temp = []
    if isinstance(data, bytes):   # the video decoder wants a file: write the checked bytes to one
        fd, name = tempfile.mkstemp(prefix="qwenvl-video-", suffix=".bin")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        temp.append(name)
        path = name
    else:
        path = str(data)
    try:
        probe_video(path, ref.param, ref.options, policy)
    except Exception:
        for name in temp:
            os.unlink(name)
        raise
    return LoadedMedia({"type": "video", "video": path, **ref.options}, temp)


def load_conversation(messages: list[dict], media: list[MediaRef], policy: MediaPolicy) -> tuple[list[dict], list[str]]:
    """The processor's conversation for a parsed request: media parts replaced by loaded items.
    Returns (conversation, temporary files to delete once the processor is done)."""
    images = sum(m.kind == "image" for m in media)
    videos = len(media) - images
    if images > policy.max_images:
        raise bad_request(f"the request has {images} images, over the limit of {policy.max_images} per request",
                          "messages", code="too_many_images")
    if videos > policy.max_videos:
        raise bad_request(f"the request has {videos} videos, over the limit of {policy.max_videos} per request",
                          "messages", code="too_many_videos")
    temp: list[str] = []
    out = []
    try:
        for msg in messages:
            content = msg["content"]
            if isinstance(content, list):
                parts = []
                for part in content:
                    if "ref" in part:
                        loaded = load_media(part["ref"], policy)
                        temp += loaded.temp_files
                        parts.append(loaded.item)
                    else:
                        parts.append(part)
                content = parts
            out.append({"role": msg["role"], "content": content})
    except BaseException:
        remove_files(temp)
        raise
    return out, temp


def remove_files(names: list[str]) -> None:
    for name in names:
        try:
            os.unlink(name)
        except OSError:
            pass
