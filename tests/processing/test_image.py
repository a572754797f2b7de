"""smart_resize worked examples, image sources, colour handling, fetch_image sizes and the patch layout."""

from __future__ import annotations

import base64
import io
import math
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import numpy as np
import pytest
import torch
from PIL import Image

from qwenvl.processing import fetch_image, load_image, smart_resize
from qwenvl.processing.image import MediaSettings, PatchSpec, patchify


# ------------------------------------------------------------------------------ smart_resize

@pytest.mark.parametrize("hw, kwargs, expected", [
    ((428, 640), dict(min_pixels=3136, max_pixels=1003520), (420, 644)),   # process_bbox notebook
    ((1532, 1014), {}, (1540, 1008)),                                       # document_parsing
    ((1398, 870), {}, (1400, 868)),                                         # ocr receipt
    ((2400, 1080), {}, (2408, 1092)),                                       # phone screenshot
    ((1280, 720), {}, (1288, 728)),
    ((4000, 6000), {}, (2912, 4368)),
    ((4000, 6000), dict(max_pixels=1280 * 28 * 28), (812, 1204)),
    ((20, 20), {}, (56, 56)),
    ((10, 1000), {}, (28, 1008)),        # max(factor, .): a 10 px side still gets one row of patches
])
def test_smart_resize_examples(hw, kwargs, expected):
    assert smart_resize(*hw, **kwargs) == expected


def published_smart_resize(height, width, factor, min_pixels, max_pixels, release):
    """smart_resize as both PyPI wheels (qwen-vl-utils 0.0.11 and 0.0.14) publish it, restated: round
    to the factor (at least one factor), and if over max_pixels scale by beta = sqrt(h*w/max) and floor
    (with NO one-factor floor: a side can become 0, which upstream then fails on), if under min_pixels
    scale up and ceil. 0.0.14 first asserts max_pixels >= min_pixels. Returns None where upstream fails."""
    if release == "0.0.14" and max_pixels < min_pixels:
        return None
    if max(height, width) / min(height, width) > 200:
        return None
    h = max(factor, round(height / factor) * factor)
    w = max(factor, round(width / factor) * factor)
    if h * w > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h, w = math.floor(height / beta / factor) * factor, math.floor(width / beta / factor) * factor
    elif h * w < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h, w = math.ceil(height * beta / factor) * factor, math.ceil(width * beta / factor) * factor
    return None if h == 0 or w == 0 else (h, w)


@pytest.mark.parametrize("rules", ["0.0.11", "0.0.14"])
def test_smart_resize_matches_each_release(rules):
    rng = np.random.default_rng(1)
    cases = [(1276, 297, 28, 784, 3136), (30, 5000, 28, 3136, 7840), (100, 100, 28, 5000, 1000),
             (20, 20, 28, 3136, 12845056), (10, 1000, 28, 3136, 12845056)]
    cases += [(int(h), int(w), 28, int(lo), int(hi)) for h, w, lo, hi in zip(
        rng.integers(1, 3000, 300), rng.integers(1, 3000, 300),
        rng.integers(1, 200, 300) * 784, rng.integers(1, 2000, 300) * 784)]
    failures = 0
    for h, w, f, lo, hi in cases:
        want = published_smart_resize(h, w, f, lo, hi, rules)
        if want is None:
            failures += 1
            with pytest.raises(ValueError):
                smart_resize(h, w, f, lo, hi, rules=rules)
        else:
            assert smart_resize(h, w, f, lo, hi, rules=rules) == want, (h, w, lo, hi)
    assert failures >= 2   # the failing cases are reached


def test_smart_resize_zero_side_is_an_error():
    # upstream floors the thin side to 0 (PIL then refuses the resize); we say so up front
    with pytest.raises(ValueError, match=r"297x1276.*max_pixels=3136.*side of 0"):
        smart_resize(1276, 297, 28, 784, 3136)
    with pytest.raises(ValueError, match="side of 0"):
        smart_resize(30, 5000, max_pixels=28 * 28 * 10, rules="0.0.14")


def test_max_below_min_pixels_by_release():
    assert smart_resize(100, 100, 28, 5000, 1000, rules="0.0.11") == (28, 28)   # 0.0.11 just proceeds
    with pytest.raises(ValueError, match=r"max_pixels \(1000\) is below min_pixels \(5000\).*0\.0\.14"):
        smart_resize(100, 100, 28, 5000, 1000, rules="0.0.14")
    with pytest.raises(ValueError, match="unknown qwen-vl-utils rules '0.0.12'"):
        smart_resize(100, 100, rules="0.0.12")
    with pytest.raises(ValueError, match="unknown qwen-vl-utils rules"):
        MediaSettings(rules="latest")
    img = Image.new("RGB", (100, 100))
    assert fetch_image({"image": img, "min_pixels": 5000, "max_pixels": 1000}).size == (28, 28)
    with pytest.raises(ValueError, match="below min_pixels"):
        fetch_image({"image": img, "min_pixels": 5000, "max_pixels": 1000}, MediaSettings(rules="0.0.14"))


def test_aspect_ratio_error_names_size():
    with pytest.raises(ValueError, match=r"aspect ratio.*200.*2010x10"):
        smart_resize(10, 2010)


# ----------------------------------------------------------------------------- sources

def _rgb(w=40, h=30, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_sources_agree(tmp_path):
    arr = _rgb()
    path = tmp_path / "x.png"
    Image.fromarray(arr).save(path)
    uri = "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()
    for src in (arr, Image.fromarray(arr), str(path), path, f"file://{path}", uri, "data:image;base64," + uri.split(",")[1]):
        im = load_image(src)
        assert im.mode == "RGB" and im.size == (40, 30)
        assert np.array_equal(np.asarray(im), arr), src if isinstance(src, str) else type(src)


def qwen_vl_utils_rgb(image: Image.Image) -> np.ndarray:
    """The published qwen-vl-utils rule (to_rgb, the same in 0.0.11 and 0.0.14), restated: an RGBA
    image is alpha-blended onto white with PIL's 8-bit blend (c*a + 255*(255-a) + 128, /255 rounded
    by (t + (t >> 8)) >> 8); any other mode is PIL's plain convert("RGB")."""
    if image.mode == "RGBA":
        a = np.asarray(image).astype(np.int64)
        t = a[..., :3] * a[..., 3:] + 255 * (255 - a[..., 3:]) + 128
        return ((t + (t >> 8)) >> 8).astype(np.uint8)
    return np.asarray(image.convert("RGB"))


def every_mode() -> dict[str, Image.Image]:
    rng = np.random.default_rng(0)
    g = rng.integers(0, 256, (6, 5), dtype=np.uint8)
    alpha = rng.integers(0, 256, (6, 5), dtype=np.uint8)
    alpha[0] = 0                                   # a fully transparent row
    rgb = rng.integers(0, 256, (6, 5, 3), dtype=np.uint8)
    palette = rng.integers(0, 256, 768, dtype=np.uint8).tolist()
    p = Image.fromarray(g, "L").convert("P")
    p.putpalette(palette)
    pt = p.copy()
    pt.info["transparency"] = int(g[0, 0])         # index of a pixel that is there
    pa = p.convert("PA")
    pa.putalpha(Image.fromarray(alpha, "L"))
    ycc = Image.fromarray(rgb, "RGB").convert("YCbCr")
    return {
        "1": Image.fromarray(g > 127).convert("1"), "L": Image.fromarray(g, "L"),
        "LA": Image.fromarray(np.stack([g, alpha], -1), "LA"), "P": p, "P+transparency": pt, "PA": pa,
        "RGB": Image.fromarray(rgb, "RGB"), "RGBA": Image.fromarray(np.dstack([rgb, alpha]), "RGBA"),
        "CMYK": Image.frombytes("CMYK", (5, 6), np.dstack([rgb, g]).tobytes()), "YCbCr": ycc,
        "I": Image.fromarray(g.astype(np.int32) * 3 - 100),
        "I;16": Image.fromarray(g.astype(np.uint16) * 250),
        "F": Image.fromarray(g.astype(np.float32) * 1.5 - 50.25),
    }


@pytest.mark.parametrize("name", list(every_mode()))
def test_every_pil_mode_converts_as_qwen_vl_utils(name, tmp_path):
    from qwenvl.serve.media import MediaPolicy, open_image

    image = every_mode()[name]
    assert image.mode == name.split("+")[0]
    want = qwen_vl_utils_rgb(image)
    got = load_image(image)
    assert got.mode == "RGB" and np.array_equal(np.asarray(got), want), name
    if name in ("LA", "P+transparency", "RGBA", "P", "L", "RGB", "1"):   # what PNG stores as is
        buf = io.BytesIO()
        image.save(buf, "PNG")
        reread = Image.open(io.BytesIO(buf.getvalue()))
        assert np.array_equal(np.asarray(load_image(reread)), qwen_vl_utils_rgb(reread)), name
        assert np.array_equal(np.asarray(open_image(buf.getvalue(), "p", MediaPolicy())), qwen_vl_utils_rgb(reread))


def test_only_rgba_goes_onto_white():
    modes = every_mode()
    g = np.asarray(modes["L"])
    # LA: the grey is kept under alpha 0 (no white), as convert("RGB") drops the alpha band
    la = np.asarray(load_image(modes["LA"]))
    assert (la[0] == g[0][:, None]).all() and not (la[0] == 255).all()
    # palette with a transparent index: the palette colour, not white
    pt = modes["P+transparency"]
    idx = int(np.asarray(pt)[0, 0])
    assert np.asarray(load_image(pt))[0, 0].tolist() == pt.getpalette()[3 * idx:3 * idx + 3]
    # RGBA: alpha 0 -> white, alpha 255 -> the colour
    rgba = np.zeros((2, 1, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[1, :, 3] = 255
    assert np.asarray(load_image(Image.fromarray(rgba, "RGBA"))).tolist() == [[[255, 255, 255]], [[200, 0, 0]]]


def test_source_errors_name_the_item(tmp_path):
    with pytest.raises(ValueError, match="not found.*nope.png"):
        load_image(str(tmp_path / "nope.png"))
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image at all")
    with pytest.raises(ValueError, match="could not decode image.*bad.jpg"):
        load_image(str(bad))
    with pytest.raises(ValueError, match="could not decode image data URI"):
        load_image("data:image/png;base64," + base64.b64encode(b"garbage").decode())
    with pytest.raises(ValueError, match="unrecognized image input"):
        load_image(12)


def test_http_source_with_size_cap():
    png = io.BytesIO()
    Image.fromarray(_rgb(8, 8)).save(png, format="PNG")
    body = png.getvalue()

    class H(BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path == "/missing":
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    server = HTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}"
    try:
        assert load_image(url + "/a.png").size == (8, 8)
        with pytest.raises(ValueError, match="size limit"):
            load_image(url + "/a.png", MediaSettings(max_bytes=10))
        with pytest.raises(ValueError, match="could not download.*missing"):
            load_image(url + "/missing")
    finally:
        server.shutdown()


# ------------------------------------------------------------------------------ fetch_image

def test_fetch_image_sizes_and_resampler():
    arr = _rgb(97, 61)
    im = fetch_image({"image": arr})
    assert im.size == (84, 56)                                  # smart_resize(61, 97) -> (56, 84)
    assert np.array_equal(np.asarray(im), np.asarray(Image.fromarray(arr).resize((84, 56), Image.BICUBIC)))
    assert fetch_image({"image": arr, "max_pixels": 28 * 28 * 2}).size == (28, 28)   # floors, both sides
    assert fetch_image({"image": arr, "min_pixels": 28 * 28 * 64}).size == smart_resize(61, 97, min_pixels=28 * 28 * 64)[::-1]
    # resized_* are rounded with the default bounds, not the item's min/max
    assert fetch_image({"image": arr, "resized_height": 100, "resized_width": 30, "max_pixels": 1}).size == (28, 112)
    assert fetch_image({"image_url": {"url": arr}}).size == (84, 56)


def test_patch_layout_matches_reference_order():
    """Row r of pixel_values is patch (t, bh, bw, mh, mw) in merge-block order; each row is (C, tp, P, P)."""
    spec = PatchSpec()
    frames = torch.randint(0, 256, (2, 3, 56, 84)).float()
    values, grid = patchify(frames, spec)
    assert grid == (1, 4, 6) and values.shape == (24, 3 * 2 * 14 * 14)
    norm = (frames / 255 - torch.tensor(spec.image_mean).view(1, 3, 1, 1)) / torch.tensor(spec.image_std).view(1, 3, 1, 1)
    row = 0
    for bh in range(2):
        for bw in range(3):
            for mh in range(2):
                for mw in range(2):
                    y, x = (bh * 2 + mh) * 14, (bw * 2 + mw) * 14
                    want = norm[:, :, y:y + 14, x:x + 14].permute(1, 0, 2, 3).reshape(-1)
                    assert torch.allclose(values[row], want, atol=1e-6)
                    row += 1
    # one image: the frame is repeated over the temporal patch
    v1, g1 = patchify(frames[:1], spec)
    assert g1 == (1, 4, 6)
    assert torch.equal(v1.view(24, 3, 2, 196)[:, :, 0], v1.view(24, 3, 2, 196)[:, :, 1])
