"""Video sampling against the qwen-vl-utils 0.0.11 rules, checked on clips whose frames carry their index.

Expected values are worked out by hand from the rules (90 frames at 30 fps = 3 s):
  n = frames/fps*sample_fps clamped to [4, 90] and floored to even, or round(nframes/2)*2 (banker's);
  indices = linspace(first, last, n).round(); sample fps = n / count * 30.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from qwenvl.processing import fetch_video
from qwenvl.processing.video import fetch_video_sized
from qwenvl.processing.video import frame_budget, video_target
from media_util import index_frame, read_index, write_video

SMALL = {"min_pixels": 28 * 28 * 4}    # keeps the frames at 56x56: fast, and the index stays readable


@pytest.mark.parametrize("opts, indices, fps", [
    ({}, [0, 18, 36, 53, 71, 89], 2.0),
    ({"fps": 1.0}, [0, 30, 59, 89], 4 / 90 * 30),                               # min_frames 4
    ({"fps": 4.0}, list(np.linspace(0, 89, 12).round().astype(int)), 4.0),
    ({"nframes": 7}, [0, 13, 25, 38, 51, 64, 76, 89], 8 / 90 * 30),           # round(3.5) = 4 -> 8
    ({"nframes": 5}, [0, 30, 59, 89], 4 / 90 * 30),                           # round(2.5) = 2 -> 4
    ({"video_start": 1.0, "video_end": 2.5}, [30, 45, 60, 75], 4 / 46 * 30),  # frames 30..75
    ({"video_start": 0.5, "fps": 4.0}, [15, 23, 31, 40, 48, 56, 64, 73, 81, 89], 10 / 75 * 30),
    ({"video_end": 10.0, "nframes": 4}, [0, 30, 59, 89], 4 / 90 * 30),       # end clamped to the last frame
    ({"fps": 0.5, "min_frames": 5}, list(np.linspace(0, 89, 6).round().astype(int)),
     6 / 90 * 30),                                                            # min_frames 5 -> 6
    ({"fps": 30.0, "max_frames": 9}, list(np.linspace(0, 89, 8).round().astype(int)), 8 / 90 * 30),
])
def test_sampling(clip, opts, indices, fps):
    frames, sample_fps, orig = fetch_video_sized({"video": str(clip), **SMALL, **opts})
    assert orig == (64, 48)
    assert frames.dtype == torch.float32 and frames.shape == (len(indices), 3, 56, 56)
    assert torch.equal(frames, frames.round()) and frames.min() >= 0 and frames.max() <= 255
    assert [read_index(f) for f in frames] == indices
    assert sample_fps == pytest.approx(fps)


def test_container_without_frame_count(clip_mkv):
    frames, sample_fps = fetch_video({"video": f"file://{clip_mkv}", **SMALL})
    assert [read_index(f) for f in frames] == [0, 18, 36, 53, 71, 89] and sample_fps == pytest.approx(2.0)


def test_default_budget_upscales_small_video(clip):
    frames, _ = fetch_video({"video": str(clip), "nframes": 2})
    # 64x48 under VIDEO_MIN_PIXELS (128*28*28): scaled up to 392x280
    assert frames.shape == (2, 3, 280, 392)
    assert [read_index(f) for f in frames] == [0, 89]


def test_frame_budget_cookbook_numbers():
    item = {"total_pixels": 20480 * 28 * 28, "min_pixels": 16 * 28 * 28}
    _, cap = frame_budget(item, 60)
    assert int(cap) == 535210
    assert video_target(1080, 1920, item, 60) == (532, 952)
    _, cap = frame_budget(item, 768)
    assert int(cap) == 41813
    assert video_target(1080, 1920, item, 768) == (140, 252)
    assert frame_budget({}, 768)[1] == 235200                        # library defaults, long video
    assert frame_budget({"max_pixels": 10 ** 9}, 4)[1] == 768 * 28 * 28   # a user max can only lower it
    assert frame_budget({"max_pixels": 50000}, 4)[1] == 50000
    assert frame_budget({"min_pixels": 1000, "total_pixels": 100}, 100)[1] == 1050   # floor 1.05 x min


def test_frames_list_padded_to_even():
    frames = [Image.fromarray(index_frame(k)) for k in range(5)]
    out, fps, orig = fetch_video_sized({"video": frames, "fps": 3.0})
    assert orig == (64, 48) and fps == 3.0
    assert out.shape == (6, 3, 56, 56)                                # image budget: smart_resize(48, 64)
    assert [read_index(f) for f in out] == [0, 1, 2, 3, 4, 4]
    out, fps = fetch_video({"video": [index_frame(k) for k in range(4)]})
    assert fps == 2.0 and out.shape[0] == 4


def test_errors(tmp_path, clip):
    one = write_video(tmp_path / "one.mp4", 1)
    with pytest.raises(ValueError, match=r"one\.mp4.*1 frame"):
        fetch_video({"video": str(one)})
    with pytest.raises(ValueError, match="not found.*missing.mp4"):
        fetch_video({"video": str(tmp_path / "missing.mp4")})
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"\x00" * 1000)
    with pytest.raises(ValueError, match=r"could not decode video.*junk\.mp4"):
        fetch_video({"video": str(junk)})
    with pytest.raises(ValueError, match="either `fps` or `nframes`"):
        fetch_video({"video": str(clip), "fps": 1, "nframes": 4})
    with pytest.raises(ValueError, match="invalid time range"):
        fetch_video({"video": str(clip), "video_start": 2.0, "video_end": 1.0})
    with pytest.raises(ValueError, match="empty list"):
        fetch_video({"video": []})


def test_http_video(clip):
    import functools
    import threading
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *a):
            pass

    handler = functools.partial(Quiet, directory=str(clip.parent))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}/"
    try:
        frames, fps = fetch_video({"video": url + clip.name, **SMALL})
        assert [read_index(f) for f in frames] == [0, 18, 36, 53, 71, 89] and fps == pytest.approx(2.0)
        with pytest.raises(ValueError, match="could not decode video.*nope.mp4.*404"):
            fetch_video({"video": url + "nope.mp4"})
    finally:
        server.shutdown()


def test_frames_list_under_0014_rules():
    """qwen-vl-utils 0.0.14: each frame through fetch_image at factor 56 (4..16384 tokens of 56x56),
    the padded stack then under the video budget at factor 28; the rate from `sample_fps`."""
    from qwenvl.processing.image import MediaSettings

    new = MediaSettings(rules="0.0.14")
    frames = [Image.fromarray(index_frame(k)) for k in range(5)]   # 64x48 (WxH)
    # 48x64 at factor 56: rounds to 56x56 = 3136 < 4*56*56 -> beta = sqrt(12544/3072) -> 112x168;
    # then 6 frames under the video budget (min 128*28*28 = 100352): beta = sqrt(100352/18816) -> 280x392
    out, fps, orig = fetch_video_sized({"video": frames, "fps": 3.0}, new)
    assert orig == (64, 48) and out.shape == (6, 3, 280, 392)
    assert fps == 2.0                                    # 0.0.14 ignores `fps` for frame lists
    out, fps, _ = fetch_video_sized({"video": frames, "sample_fps": 3.0, **SMALL}, new)
    assert fps == 3.0 and out.shape == (6, 3, 56, 56)    # item bounds apply at both steps
    assert [read_index(f) for f in out] == [0, 1, 2, 3, 4, 4]
    assert out.dtype == torch.float32 and float(out.max()) <= 255 and torch.equal(out, out.round())
    # video budget below the 56-multiple frame size: scaled down at factor 28 (not 56)
    # (56x56 frames; 6 frames sharing total_pixels 7056 allow 2352 each -> floor to 28x28)
    out, _, _ = fetch_video_sized({"video": frames, "min_pixels": 28 * 28, "total_pixels": 7056}, new)
    assert out.shape == (6, 3, 28, 28)
    # the default rules are unchanged: frames as images, `fps` is the rate
    out, fps, _ = fetch_video_sized({"video": frames, "fps": 3.0, "sample_fps": 9.0})
    assert fps == 3.0 and out.shape == (6, 3, 56, 56)


def test_video_budget_by_release():
    from qwenvl.processing.image import MediaSettings

    with pytest.raises(ValueError, match="below min_pixels"):
        video_target(100, 100, {"min_pixels": 5000, "max_pixels": 1000}, 4, MediaSettings(rules="0.0.14"))
    assert video_target(100, 100, {"min_pixels": 5000, "max_pixels": 1000}, 4) == (28, 28)
