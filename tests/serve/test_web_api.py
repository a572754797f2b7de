"""The web page's server side: / and /static, /v1/qwenvl/info, /v1/qwenvl/parse (no browser needed)."""

from __future__ import annotations

import httpx
import pytest
from serve_util import data_uri, png_bytes, running_server

from qwenvl.serve.routes.web import STATIC, input_size
from qwenvl.tasks.grounding import parse_boxes


@pytest.fixture(scope="module")
def server(pipe):
    with running_server(pipe, api_key="sekret") as (base, app, _):
        yield base


AUTH = {"Authorization": "Bearer sekret"}


@pytest.mark.parametrize("size", [(80, 60), (500, 370), (1000, 30), (3000, 2000)])
def test_input_size_is_what_the_processor_gives_the_model(pipe, size):
    conv = [{"role": "user", "content": [{"type": "image", "image": data_uri(png_bytes(*size))},
                                         {"type": "text", "text": "hi"}]}]
    (info,) = pipe.processor.prepare(conv).media
    assert info.original_size == size
    assert input_size(pipe.processor, *size) == tuple(info.input_size)


def test_page_and_static_files_are_served(server):
    page = httpx.get(f"{server}/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert '<script src="/static/app.js"' in page.text and "/static/style.css" in page.text
    for name, kind in (("app.js", "javascript"), ("style.css", "text/css")):
        r = httpx.get(f"{server}/static/{name}")
        assert r.status_code == 200 and kind in r.headers["content-type"], name
    assert httpx.get(f"{server}/static/nope.js").status_code == 404
    # the page needs no network: nothing it loads comes from another host
    for name in ("index.html", "app.js", "style.css"):
        text = (STATIC / name).read_text().replace("http://www.w3.org/2000/svg", "")   # the SVG namespace name
        assert "http://" not in text and "https://" not in text and "//cdn" not in text, name


def test_info_has_the_resize_bounds(server, pipe):
    r = httpx.get(f"{server}/v1/qwenvl/info")      # no key needed: nothing secret in it
    assert r.status_code == 200
    body = r.json()
    assert body["auth"] is True and body["model"] == "qwenvl"
    assert body["image"]["min_pixels"] == pipe.processor.settings.min_pixels
    assert body["image"]["processor_max_pixels"] == pipe.processor.spec.max_pixels


def test_parse_maps_boxes_to_original_pixels(server, pipe):
    size = (500, 370)
    insize = input_size(pipe.processor, *size)
    text = '```json\n[{"bbox_2d": [10, 20, 200, 180], "label": "cat"}, {"point_2d": [50, 60], "label": "eye"}]\n```'
    r = httpx.post(f"{server}/v1/qwenvl/parse", json={"text": text, "image_size": list(size)}, headers=AUTH)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["input_size"] == list(insize) and body["document"] is None and body["span"] is None
    want = parse_boxes(text, input_size=insize, image_size=size)
    assert body["detections"]["format"] == "json"
    assert body["detections"]["items"] == [d.to_dict() for d in want]
    assert body["detections"]["items"][0]["bbox"][2] == pytest.approx(200 * size[0] / insize[0], abs=0.01)


def test_parse_document_and_video_span(server, pipe):
    html = '<html><body><h1 data-bbox="10 10 300 40">Title</h1><p data-bbox="10 50 300 120">Some text.</p></body></html>'
    r = httpx.post(f"{server}/v1/qwenvl/parse", json={"text": html, "image_size": [280, 280]}, headers=AUTH)
    blocks = r.json()["document"]["blocks"]
    assert [b["kind"] for b in blocks] == ["title", "paragraph"] and blocks[1]["text"] == "Some text."
    r = httpx.post(f"{server}/v1/qwenvl/parse", json={"text": "The given query happens in 2.5 - 7.0 seconds.",
                                                       "video": True}, headers=AUTH)
    assert r.json()["span"] == [2.5, 7.0] and r.json()["detections"] is None


@pytest.mark.parametrize("body, param", [({"text": 3}, "text"), ({"text": "x", "image_size": [0, 5]}, "image_size"),
                                         ({"text": "x", "image_size": "big"}, "image_size"),
                                         ({"text": "x", "image_size": [5000, 10]}, "image_size")])
def test_parse_refuses_bad_input_naming_the_field(server, body, param):
    r = httpx.post(f"{server}/v1/qwenvl/parse", json=body, headers=AUTH)
    assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text


def test_parse_needs_the_key_when_the_server_has_one(server):
    r = httpx.post(f"{server}/v1/qwenvl/parse", json={"text": "x"})
    assert r.status_code == 401
