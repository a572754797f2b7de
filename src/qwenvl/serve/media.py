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
- videos: only self-contained containers, recognised from their magic numbers and opened with that
  one demuxer (never a playlist such as ffconcat or HLS, which would open other files or URLs); then
  probed with PyAV (resolution, the frames the sampling would take, one frame decoded) before the
  processor decodes them;
- budgets from headers, before anything is decoded: pixels per image, pixels per request (originals
  and the sizes the resize would make), and the media tokens against the context length.
"""

from __future__ import annotations

import base64
import binascii
import io
import ipaddress
import math
import os
import socket
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urljoin, urlsplit, urlunsplit

from ..processing.image import MediaSettings, PatchSpec, smart_resize, target_size, to_rgb  # one conversion rule
from ..processing.video import FRAME_FACTOR, open_container, sample_indices, sniff_container, video_target
from .errors import APIError, bad_request
from .protocol import MediaRef

IMAGE_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF")


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
    max_request_pixels: int = 100_000_000    # all images and sampled video frames of a request, from headers
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
    try:
        scheme = urlsplit(source).scheme.lower() if "://" in source else ""
    except ValueError:   # e.g. http://[::1/
        raise bad_request(f"{param}: malformed URL", param, code="invalid_url") from None
    if scheme in ("http", "https"):
        if not policy.allow_remote:
            raise APIError(403, f"{param}: remote media URLs are disabled on this server (start it with "
                                "--allow-remote-media)", param=param, code="remote_media_disabled")
        return fetch_url(source, param, policy, max_bytes)
    if scheme == "file":
        parts = urlsplit(source)   # (parsed once above: cannot fail now)
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
    if "\x00" in path or len(path) > MAX_PATH_CHARS:
        raise bad_request(f"{param}: invalid path (empty, over {MAX_PATH_CHARS} characters or holding NUL)",
                          param, code="invalid_path")
    p = Path(path)
    missing = bad_request(f"{param}: no such file under the allowed media directory", param, code="file_not_found")
    try:
        # realpath resolves every symlink and `..`; the result must still lie under the allowed root.
        real = Path(os.path.realpath(p if p.is_absolute() else root / p))
        if real != root and root not in real.parents:
            raise APIError(403, f"{param}: the path is outside the allowed media directory", param=param,
                           code="path_not_allowed")
        if not real.is_file():
            raise missing
        size = real.stat().st_size
    except OSError:   # a name too long, a loop of links, no permission: all "no such file"
        raise missing from None
    if size > max_bytes:
        raise bad_request(f"{param}: the file is larger than the limit of {max_bytes} bytes", param,
                          code="media_too_large")
    return real


MAX_PATH_CHARS = 4096
# Python calls these global, but they relay to or embed other addresses: 192.88.99.0/24 is the 6to4
# relay anycast, 64:ff9b::/96 (NAT64) carries an IPv4 address in its last 32 bits.
RELAY_NETS = (ipaddress.ip_network("192.88.99.0/24"),)
NAT64 = ipaddress.ip_network("64:ff9b::/96")


def _public(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if ip.version == 6:
        # an IPv6 address that stands for an IPv4 one is as public as that one
        embedded = ip.ipv4_mapped or ip.sixtofour or (ip.teredo[1] if ip.teredo else None)
        if embedded is None and ip in NAT64:
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if embedded is not None:
            return _public(embedded)
        if ip.is_site_local:   # fec0::/10: deprecated, but routed as private where still configured
            return False
    if any(ip in net for net in RELAY_NETS if net.version == ip.version):
        return False
    return ip.is_global and not (ip.is_loopback or ip.is_private or ip.is_link_local or ip.is_multicast
                                 or ip.is_reserved or ip.is_unspecified)


def resolve_host(host: str, port: int, param: str, policy: MediaPolicy) -> str:
    """Resolve `host` and check every address it has; returns the one to connect to."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError, ValueError):   # gaierror, a label over 63 characters, a NUL
        raise bad_request(f"{param}: cannot resolve host {host[:100]!r}", param, code="media_fetch_failed") from None
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
        try:
            parts = urlsplit(url)
            hostname, port = parts.hostname, parts.port   # .port raises on 99999 or "x"
        except ValueError:
            raise bad_request(f"{param}: malformed URL (bad host or port)", param, code="invalid_url") from None
        if parts.scheme not in ("http", "https") or not hostname:
            raise bad_request(f"{param}: invalid URL (http or https with a host needed)", param, code="invalid_url")
        if parts.username or parts.password:
            raise bad_request(f"{param}: URLs with credentials are not accepted", param)
        port = port or (443 if parts.scheme == "https" else 80)
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
                    try:
                        url = urljoin(url, r.headers["location"])
                    except ValueError:
                        raise bad_request(f"{param}: the URL redirects to a malformed URL", param,
                                          code="media_fetch_failed") from None
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


# ---------------------------------------------------------------------- budgets

@dataclass
class Budget:
    """What a request's media will cost, added up from headers and stream metadata before anything
    is decoded: pixels held (originals and the sizes the processor's first resize makes) against
    --max-request-pixels, and media tokens against the room left in the context."""
    policy: MediaPolicy
    settings: MediaSettings = field(default_factory=MediaSettings)   # the processor's, to size like it does
    spec: PatchSpec = field(default_factory=PatchSpec)
    max_tokens: int | None = None
    deadline: float | None = None     # time.perf_counter() by which the request must be done
    pixels: int = 0
    tokens: int = 0

    def check_time(self, param: str) -> None:
        """Between parts and frames: a request of many slow fetches must not hold a worker past its timeout."""
        if self.deadline is not None and time.perf_counter() > self.deadline:
            raise APIError(504, f"{param}: the request ran out of time while loading its media (--request-timeout)",
                           param=param, code="timeout")

    def add(self, param: str, pixels: int, tokens: int) -> None:
        self.pixels += pixels
        if self.pixels > self.policy.max_request_pixels:
            raise bad_request(f"{param}: the request's images and video frames come to {self.pixels} pixels (at "
                              f"their sizes and after resizing), over the limit of {self.policy.max_request_pixels} "
                              "per request; send smaller or fewer images, or lower min_pixels / fps",
                              param, code="media_too_large")
        self.tokens += tokens
        if self.max_tokens is not None and self.tokens >= self.max_tokens:
            raise bad_request(f"{param}: the request's images and videos alone take {self.tokens} tokens, over this "
                              f"model's maximum context length of {self.max_tokens} tokens; use smaller media or "
                              "lower max_pixels / fps", param, code="context_length_exceeded")

    def final_size(self, h: int, w: int) -> tuple[int, int]:
        """The processor's own resize (checkpoint bounds) after the first one."""
        return smart_resize(h, w, self.spec.factor, self.spec.min_pixels, self.spec.max_pixels)

    def image(self, w: int, h: int, options: dict, param: str, frames: int = 1, originals: bool = True) -> None:
        """An image (frames=1) or a video given as `frames` images of the first one's size."""
        try:
            th, tw = target_size(h, w, options, self.settings)
            ph, pw = self.final_size(th, tw)
        except (ValueError, ArithmeticError) as e:
            raise bad_request(f"{param}: {e}", param, code="invalid_image") from None
        # frames pair up into one temporal patch (an odd count is padded)
        self.add(param, frames * th * tw + (w * h if originals else 0),
                 math.ceil(frames / FRAME_FACTOR) * ph * pw // self.spec.factor ** 2)

    def video(self, info: "VideoInfo", options: dict, param: str) -> None:
        try:
            th, tw = video_target(info.height, info.width, options, info.nframes, self.settings)
            ph, pw = self.final_size(th, tw)
        except (ValueError, ArithmeticError) as e:
            raise bad_request(f"{param}: {e}", param, code="invalid_video") from None
        # frames are decoded one at a time at their own size and kept at the resized one
        self.add(param, info.width * info.height + info.nframes * th * tw,
                 info.nframes // FRAME_FACTOR * ph * pw // self.spec.factor ** 2)


# ---------------------------------------------------------------------- images

def image_header(data: bytes | Path, param: str, policy: MediaPolicy):
    """Open an image lazily (PIL reads the header only) and check its size. Nothing is decoded."""
    from PIL import Image

    Image.init()   # register every plugin, so that `formats` below can name them
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)   # our own limit follows
            img = Image.open(io.BytesIO(data) if isinstance(data, bytes) else data, formats=IMAGE_FORMATS)
    except Image.DecompressionBombError:
        raise bad_request(f"{param}: the image is too large", param, code="image_too_large") from None
    except Exception:   # UnidentifiedImageError, OSError, SyntaxError, struct errors of odd headers ...
        raise bad_request(f"{param}: the data is not a valid image (supported: {', '.join(IMAGE_FORMATS)})",
                          param, code="invalid_image") from None
    w, h = img.size
    if w * h > policy.max_image_pixels:
        raise bad_request(f"{param}: the image is {w}x{h} = {w * h} pixels, over the limit of "
                          f"{policy.max_image_pixels} pixels", param, code="image_too_large")
    if w < 1 or h < 1:
        raise bad_request(f"{param}: the image is empty", param, code="invalid_image")
    return img


def decode_image(img, param: str):
    """Decode an image opened by image_header. Returns an RGB PIL image."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # we checked the size ourselves
            img.load()
            return to_rgb(img)
    except Exception:
        raise bad_request(f"{param}: the image could not be decoded (truncated or corrupt)", param,
                          code="invalid_image") from None


def open_image(data: bytes | Path, param: str, policy: MediaPolicy):
    """Decode an image after checking its header's pixel count. Returns an RGB PIL image."""
    return decode_image(image_header(data, param, policy), param)


# ---------------------------------------------------------------------- videos

@dataclass
class VideoInfo:
    width: int
    height: int
    frames: int       # in the file (or its video_start..video_end window)
    fps: float
    nframes: int      # what the sampling takes


NOT_A_VIDEO = ("the data is not a supported video (MP4/MOV, Matroska/WebM, AVI, MPEG-TS/PS, GIF or FLV "
               "with a readable video stream)")


def probe_video(path: str, param: str, options: dict, policy: MediaPolicy,
                settings: MediaSettings | None = None) -> VideoInfo:
    """Check a video before the processor decodes it: a real container (from its magic numbers, opened
    with that demuxer only), its frame size, the frames its sampling would take, one decodable frame.
    Every failure is the same 400, so the answer never tells whether some file named inside exists."""
    settings = settings or MediaSettings()
    invalid = bad_request(f"{param}: {NOT_A_VIDEO}", param, code="invalid_video")
    try:
        with open_container(path) as container:
            if not container.streams.video:
                raise invalid
            stream = container.streams.video[0]
            w, h = stream.codec_context.width, stream.codec_context.height
            if w * h > policy.max_image_pixels:
                raise bad_request(f"{param}: video frames are {w}x{h} = {w * h} pixels, over the limit of "
                                  f"{policy.max_image_pixels} pixels", param, code="video_too_large")
            rate = float(stream.average_rate or stream.guessed_rate or 0)
            total = stream.frames
            if total <= 0:   # no frame count in the header: count packets (the decoder does the same)
                total = sum(1 for pkt in container.demux(stream) if pkt.size)
                container.seek(0)
            next(container.decode(stream))   # one frame must decode (raises StopIteration when none does)
    except APIError:
        raise
    except Exception:
        raise invalid from None
    if w < 1 or h < 1 or rate <= 0 or total < FRAME_FACTOR:
        raise invalid
    def too_many(n):
        return bad_request(f"{param}: sampling this video would take {int(n)} frames, over the limit of "
                           f"{policy.max_video_frames} frames per video; lower 'fps' or set 'nframes'", param,
                           code="too_many_frames")
    if options.get("nframes", 0) > policy.max_video_frames:
        raise too_many(options["nframes"])
    try:
        idx, _ = sample_indices(options, total, rate, settings.fps)
    except (ValueError, ArithmeticError) as e:
        raise bad_request(f"{param}: {e}", param, code="invalid_video") from None
    if len(idx) > policy.max_video_frames:
        raise too_many(len(idx))
    return VideoInfo(w, h, total, rate, len(idx))


# ---------------------------------------------------------------------- one part

class Staged:
    """A media part whose source is read and whose headers are checked; `decode()` makes the item."""

    def __init__(self, ref: MediaRef, images=None, video: str | None = None, temp: list[str] | None = None):
        self.ref, self.images, self.video, self.temp = ref, images, video, temp or []

    def decode(self) -> LoadedMedia:
        ref = self.ref
        if self.video is not None:
            return LoadedMedia({"type": "video", "video": self.video, **ref.options}, self.temp)
        frames = [decode_image(img, param) for img, param in self.images]
        if ref.kind == "image":
            return LoadedMedia({"type": "image", "image": frames[0], **ref.options})
        return LoadedMedia({"type": "video", "video": frames, **ref.options})


def stage_media(ref: MediaRef, policy: MediaPolicy, budget: Budget) -> Staged:
    budget.check_time(ref.param)
    if ref.kind == "image":
        data = read_source(ref.source, ref.param, policy, policy.max_media_bytes)
        img = image_header(data, ref.param, policy)
        budget.image(*img.size, ref.options, ref.param)
        return Staged(ref, images=[(img, ref.param)])
    if isinstance(ref.source, list):   # frames given as images
        if len(ref.source) > policy.max_video_frames:
            raise bad_request(f"{ref.param}: {len(ref.source)} frames, over the limit of {policy.max_video_frames} "
                              "frames per video", ref.param, code="too_many_frames")
        images = []
        for k, s in enumerate(ref.source):
            param = f"{ref.param}[{k}]"
            budget.check_time(param)
            img = image_header(read_source(s, param, policy, policy.max_media_bytes), param, policy)
            images.append((img, param))
            budget.add(param, img.width * img.height, 0)
        # the processor resizes every frame to the first one's target size
        budget.image(*images[0][0].size, ref.options, ref.param, frames=len(images), originals=False)
        return Staged(ref, images=images)
    data = read_source(ref.source, ref.param, policy, policy.max_video_bytes)
    temp = []
    if isinstance(data, bytes):   # the video decoder wants a file: write the checked bytes to one
        if sniff_container(data[:256]) is None:   # refuse playlists before they touch the disk
            raise bad_request(f"{ref.param}: {NOT_A_VIDEO}", ref.param, code="invalid_video")
        fd, name = tempfile.mkstemp(prefix="qwenvl-video-", suffix=".bin")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        temp.append(name)
        path = name
    else:
        path = str(data)
    try:
        info = probe_video(path, ref.param, ref.options, policy, budget.settings)
        budget.video(info, ref.options, ref.param)
    except BaseException:
        remove_files(temp)
        raise
    return Staged(ref, video=path, temp=temp)


def load_media(ref: MediaRef, policy: MediaPolicy, budget: Budget | None = None) -> LoadedMedia:
    return stage_media(ref, policy, budget or Budget(policy)).decode()


def load_conversation(messages: list[dict], media: list[MediaRef], policy: MediaPolicy,
                      budget: Budget | None = None) -> tuple[list[dict], list[str]]:
    """The processor's conversation for a parsed request: media parts replaced by loaded items.
    Every part's source is read and its headers checked against the budgets before any is decoded.
    Returns (conversation, temporary files to delete once the processor is done)."""
    budget = budget or Budget(policy)
    images = sum(m.kind == "image" for m in media)
    videos = len(media) - images
    if images > policy.max_images:
        raise bad_request(f"the request has {images} images, over the limit of {policy.max_images} per request",
                          "messages", code="too_many_images")
    if videos > policy.max_videos:
        raise bad_request(f"the request has {videos} videos, over the limit of {policy.max_videos} per request",
                          "messages", code="too_many_videos")
    temp: list[str] = []
    try:
        staged = {}
        for ref in media:
            staged[id(ref)] = st = stage_media(ref, policy, budget)
            temp += st.temp
        out = []
        for msg in messages:
            content = msg["content"]
            if isinstance(content, list):
                content = [staged[id(part["ref"])].decode().item if "ref" in part else part for part in content]
            out.append({**msg, "content": content})   # keeps tool_calls / tool_call_id
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
