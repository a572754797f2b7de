"""Videos: qwen-vl-utils fetch_video (0.0.11 rules by default, 0.0.14 on request), decoding with PyAV.

A file is sampled uniformly: n frames (fps x duration, even, within [min_frames, max_frames], or the
item's nframes) at linspace(start, end, n).round() indices, then resized so that the whole video fits
a total pixel budget (each LLM token covers 2 frames x 28 x 28 px). A list of frames goes frame by
frame through the image path instead, padded to an even count (0.0.14 then also applies the video
pixel budget, see frame_list).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import torch
import torch.nn.functional as F

from .image import DEFAULT_SETTINGS, MediaSettings, fetch_image_sized, pil_to_tensor, smart_resize, _describe

FRAME_FACTOR = 2
FPS_MIN_FRAMES = 4
FPS_MAX_FRAMES = 768

# The demuxers a video may be opened with. FFmpeg probes the format from the bytes and would happily
# pick a playlist (concat, hls, image2 patterns, ...) that then opens other files or URLs named inside
# the data; only self-contained containers are allowed. Passed to FFmpeg as `format_whitelist`.
VIDEO_DEMUXERS = "mov,mp4,m4a,3gp,3g2,mj2,matroska,webm,avi,mpegts,mpeg,gif,flv"


def sniff_container(head: bytes) -> str | None:
    """The demuxer for a file whose first bytes are `head` (64 are plenty), from its magic numbers;
    None when it is no container we open."""
    if len(head) >= 12 and head[4:8] in (b"ftyp", b"moov", b"mdat", b"free", b"wide", b"skip", b"pnot"):
        return "mov"
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return "matroska"
    if head.startswith(b"RIFF") and head[8:12] == b"AVI ":
        return "avi"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "gif"
    if head.startswith(b"FLV\x01"):
        return "flv"
    if head.startswith(b"\x00\x00\x01\xba"):
        return "mpeg"
    if head[:1] == b"\x47" and (len(head) < 189 or head[188:189] == b"\x47"):
        return "mpegts"
    return None


def open_container(path: str, what: str = "the data", **kwargs):
    """av.open a local file as the container its magic numbers say (never a playlist), or an http(s)
    URL with the demuxers limited to VIDEO_DEMUXERS. ValueError when the bytes are no allowed container."""
    import av

    fmt, options = None, {"format_whitelist": VIDEO_DEMUXERS}
    if path.startswith(("http://", "https://")):
        options["protocol_whitelist"] = "http,https,tcp,tls"
    else:
        options["protocol_whitelist"] = "file"   # nothing inside a local file may reach the network
        with open(path, "rb") as f:
            fmt = sniff_container(f.read(256))
        if fmt is None:
            raise ValueError(f"could not decode {what}: not a supported video container (MP4/MOV, "
                             "Matroska/WebM, AVI, MPEG-TS/PS, GIF or FLV)")
    return av.open(path, format=fmt, options=options, **kwargs)


def _round2(x: float) -> int:
    return round(x / FRAME_FACTOR) * FRAME_FACTOR


def _ceil2(x: float) -> int:
    return math.ceil(x / FRAME_FACTOR) * FRAME_FACTOR


def _floor2(x: float) -> int:
    return math.floor(x / FRAME_FACTOR) * FRAME_FACTOR


def smart_nframes(item: dict, total_frames: int, video_fps: float, default_fps: float = 2.0) -> int:
    """How many frames to sample: the item's `nframes` (rounded to even), else fps x duration
    clamped to [min_frames, max_frames] and the frame count, floored to even."""
    if "fps" in item and "nframes" in item:
        raise ValueError("a video item takes either `fps` or `nframes`, not both")
    if "nframes" in item:
        n = _round2(item["nframes"])
    else:
        fps = item.get("fps", default_fps)
        min_frames = _ceil2(item.get("min_frames", FPS_MIN_FRAMES))
        max_frames = _floor2(item.get("max_frames", min(FPS_MAX_FRAMES, total_frames)))
        n = total_frames / video_fps * fps
        n = _floor2(min(max(n, min_frames), max_frames, total_frames))
    if not FRAME_FACTOR <= n <= total_frames:
        raise ValueError(f"nframes should be in [{FRAME_FACTOR}, {total_frames}], got {n}")
    return n


def frame_range(item: dict, total_frames: int, video_fps: float) -> tuple[int, int, int]:
    """(first, last, count) frame of the item's video_start/video_end window (seconds),
    calculate_video_frame_range of qwen-vl-utils 0.0.11."""
    start, end = item.get("video_start"), item.get("video_end")
    if start is None and end is None:
        return 0, total_frames - 1, total_frames
    duration = total_frames / video_fps
    first = math.ceil(max(0.0, min(start, duration)) * video_fps) if start is not None else 0
    last = total_frames - 1
    if end is not None:
        last = min(math.floor(max(0.0, min(end, duration)) * video_fps), total_frames - 1)
    if first >= last:
        raise ValueError(f"invalid time range: video_start={start} video_end={end} gives frames {first}..{last} "
                         f"of a {duration:.2f}s video ({total_frames} frames at {video_fps:g} fps)")
    return first, last, last - first + 1


def sample_indices(item: dict, total_frames: int, video_fps: float, default_fps: float = 2.0) -> tuple[list[int], float]:
    """Frame indices to decode and the resulting sample fps."""
    first, last, count = frame_range(item, total_frames, video_fps)
    n = smart_nframes(item, count, video_fps, default_fps)
    idx = torch.linspace(first, last, n).round().long().tolist()
    return idx, n / max(count, 1e-6) * video_fps


def frame_budget(item: dict, nframes: int, settings: MediaSettings = DEFAULT_SETTINGS) -> tuple[int, float]:
    """(min_pixels, max_pixels) per frame: the total budget shared by the frame pairs, floored at
    1.05 x min_pixels; a user max_pixels can only lower it."""
    min_pixels = item.get("min_pixels", settings.video_min_pixels)
    total = item.get("total_pixels", settings.video_total_pixels)
    max_pixels = max(min(settings.video_max_pixels, total / nframes * FRAME_FACTOR), int(min_pixels * 1.05))
    return min_pixels, min(item.get("max_pixels", max_pixels), max_pixels)


def video_target(height: int, width: int, item: dict, nframes: int,
                 settings: MediaSettings = DEFAULT_SETTINGS) -> tuple[int, int]:
    if "resized_height" in item and "resized_width" in item:
        return smart_resize(item["resized_height"], item["resized_width"], settings.factor,
                            settings.min_pixels, settings.max_pixels, settings.rules)
    min_pixels, max_pixels = frame_budget(item, nframes, settings)
    return smart_resize(height, width, settings.factor, min_pixels, max_pixels, settings.rules)


def resize_frames(frames: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """uint8 [T, C, H, W] -> float [T, C, h, w] holding whole numbers 0..255: bicubic with antialias,
    rounded and clamped as torchvision does for uint8 input."""
    x = frames.float()
    if tuple(x.shape[-2:]) != tuple(size):
        x = F.interpolate(x, size=size, mode="bicubic", antialias=True, align_corners=False)
    return x.round_().clamp_(0, 255)


def _probe(container, what: str):
    if not container.streams.video:
        raise ValueError(f"{what} has no video stream")
    stream = container.streams.video[0]
    fps = float(stream.average_rate or stream.guessed_rate or 0)
    total = stream.frames
    return stream, fps, total


def read_video(path: str, item: dict, settings: MediaSettings = DEFAULT_SETTINGS) -> tuple[torch.Tensor, float, tuple[int, int]]:
    """Decode the sampled frames of a video file: (frames float [T, C, H, W] resized, sample fps,
    original (w, h))."""
    import av

    what = f"video {_describe(path)}"
    try:
        opts = {"timeout": settings.http_timeout} if path.startswith(("http://", "https://")) else {}
        with open_container(path, what, **opts) as c:
            stream, fps, total = _probe(c, what)
            if total <= 0:   # no frame count in the container: count by demuxing
                total = sum(1 for p in c.demux(stream) if p.size)
        if fps <= 0 or total <= 0:
            raise ValueError(f"{what} has no frames (or no frame rate)")
        if total < FRAME_FACTOR:
            raise ValueError(f"{what} has {total} frame(s); a video needs at least {FRAME_FACTOR}")
        idx, sample_fps = sample_indices(item, total, fps, settings.fps)
        wanted: dict[int, int] = {}
        for i in idx:
            wanted[i] = wanted.get(i, 0) + 1
        out, size, last = [], None, None
        with open_container(path, what, **opts) as c:
            stream = c.streams.video[0]
            stream.thread_type = "AUTO"
            for k, frame in enumerate(c.decode(stream)):
                if k > idx[-1]:
                    break
                if k not in wanted:
                    continue
                arr = torch.from_numpy(frame.to_ndarray(format="rgb24")).permute(2, 0, 1)[None]
                if size is None:
                    orig = (arr.shape[3], arr.shape[2])
                    size = video_target(arr.shape[2], arr.shape[3], item, len(idx), settings)
                last = resize_frames(arr, size)
                out += [last] * wanted.get(k, 0)
    except av.error.FFmpegError as e:   # (some of these subclass ValueError)
        raise ValueError(f"could not decode {what}: {type(e).__name__}: {e}") from None
    except ValueError:
        raise
    except Exception as e:  # anything else PyAV raises: not a video we can read
        raise ValueError(f"could not decode {what}: {type(e).__name__}: {e}") from None
    if not out:
        raise ValueError(f"could not decode any frame of {what}")
    # a container that reported more frames than it holds: repeat the last decoded one
    out += [last] * (len(idx) - len(out))
    return torch.cat(out), sample_fps, orig


def fetch_video(item: dict, settings: MediaSettings = DEFAULT_SETTINGS) -> tuple[torch.Tensor, float]:
    """A video item -> (frames float [T, C, H, W] holding whole numbers 0..255, sample fps).
    `video` is a path / file:// URI / http(s) URL, or a list of frames (each through the image path;
    `fps` is then the frames' rate, default 2.0)."""
    frames, fps, _ = fetch_video_sized(item, settings)
    return frames, fps


def fetch_video_sized(item: dict, settings: MediaSettings = DEFAULT_SETTINGS) -> tuple[torch.Tensor, float, tuple[int, int]]:
    """fetch_video, plus the original (w, h) of the source."""
    src = item.get("video")
    if src is None:
        url = item.get("video_url")
        src = url.get("url") if isinstance(url, dict) else url
    if isinstance(src, (list, tuple)):
        if not src:
            raise ValueError("video item has an empty list of frames")
        return frame_list(list(src), item, settings)
    if not isinstance(src, (str, Path)):
        raise ValueError(f"video item has no usable source (a path, file:// URI or list of frames): {_describe(src)}")
    s = str(src)
    if s.startswith(("http://", "https://")):   # ffmpeg streams it (with a timeout)
        return read_video(s, item, settings)
    path = s[7:] if s.startswith("file://") else s
    if not Path(path).is_file():
        raise ValueError(f"video file not found: {s!r}")
    return read_video(path, item, settings)


def frame_list(src: list, item: dict, settings: MediaSettings = DEFAULT_SETTINGS) -> tuple[torch.Tensor, float, tuple[int, int]]:
    """A video given as frames. 0.0.11: each frame is an image (fetch_image with the item's keys and
    the image bounds), padded to an even count; the rate is the item's `fps`. 0.0.14: each frame goes
    through fetch_image with the factor doubled (upstream passes the 28 factor where fetch_image
    expects the 14 patch size, so frames land on multiples of 56 under 4..16384 tokens of 56x56), then
    the padded stack is resized once more under the video budget, as a decoded file is; the rate is
    the item's `sample_fps`."""
    opts = {k: v for k, v in item.items() if k not in ("type", "video", "video_url")}
    frame_settings = settings
    if settings.rules == "0.0.14":
        k = 2 * settings.factor
        frame_settings = dataclasses.replace(settings, factor=k, min_pixels=4 * k * k, max_pixels=16384 * k * k)
    fetched = [fetch_image_sized({**opts, "image": f}, frame_settings) for f in src]
    images, orig = [im for im, _ in fetched], fetched[0][1]
    first = images[0]
    # frames of other sizes follow the first (the reference assumes they agree)
    images = [im if im.size == first.size else im.resize(first.size) for im in images]
    images += [images[-1]] * (math.ceil(len(images) / FRAME_FACTOR) * FRAME_FACTOR - len(images))
    frames = pil_to_tensor(images)
    if settings.rules == "0.0.11":
        return frames.float(), float(item.get("fps", settings.fps)), orig
    size = video_target(frames.shape[2], frames.shape[3], item, frames.shape[0], settings)
    return resize_frames(frames, size), float(item.get("sample_fps", settings.fps)), orig
