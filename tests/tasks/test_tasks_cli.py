"""`qwenvl ground / parse-doc / locate` with a fake pipe in place of qwenvl.load."""

import json

import pytest
from PIL import Image

import qwenvl
from qwenvl.cli.main import main
from qwenvl.processing import smart_resize
from task_fakes import FakePipe, media_info, write_video


def fake_checkpoint(folder):
    """A folder that passes the CLI's checks before loading (config.json, a complete .safetensors)."""
    import numpy as np
    from safetensors.numpy import save_file

    folder.mkdir()
    (folder / "config.json").write_text("{}")
    save_file({"w": np.zeros(4, np.float32)}, str(folder / "model.safetensors"))
    return str(folder)


@pytest.fixture
def fake_load(monkeypatch, tmp_path):
    default = fake_checkpoint(tmp_path / "fake-default")

    def install(pipe):
        loaded = []
        monkeypatch.setattr(qwenvl, "load", lambda path, **kw: loaded.append((path, kw)) or pipe, raising=False)
        monkeypatch.setattr(qwenvl, "DEFAULT_MODEL", default, raising=False)
        return loaded
    return install


def run(capsys, argv):
    rc = main(argv)
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_ground(tmp_path, capsys, fake_load):
    path = tmp_path / "img.png"
    Image.new("RGB", (640, 428), "white").save(path)
    text = '```json\n[{"bbox_2d": [147, 134, 619, 407], "label": "dog"}]\n```'
    pipe = FakePipe([text], media=[media_info("image", (640, 428), (644, 420))])
    loaded = fake_load(pipe)
    save = tmp_path / "out.png"
    rc, out, _ = run(capsys, ["ground", str(path), "the dog", "--save", str(save), "--max-pixels", "1003520"])
    assert rc == 0 and loaded[0][0].endswith("fake-default")
    data = json.loads(out)
    assert data["input_size"] == [644, 420] and data["image_size"] == [640, 428]
    (det,) = data["detections"]
    assert det["label"] == "dog"
    assert det["bbox"] == pytest.approx([146, 137, 615, 415], abs=1.0)
    assert save.exists() and Image.open(save).size == (640, 428)
    messages, sampling = pipe.calls[0]
    # no system message of the CLI's own: the checkpoint's template supplies its default (the bundled
    # model was trained without one)
    assert [m["role"] for m in messages] == ["user"]
    user = messages[-1]["content"]
    assert user[0]["text"] == "Locate the dog, output its bbox coordinates using JSON format."
    assert user[1]["max_pixels"] == 1003520 and sampling["temperature"] == 0


def test_ground_points_and_fallback_size(tmp_path, capsys, fake_load):
    path = tmp_path / "img.png"
    Image.new("RGB", (1000, 500), "white").save(path)
    fake_load(FakePipe(['<points x1="100" y1="50" alt="cup">cup</points>']))        # no media info
    rc, out, _ = run(capsys, ["ground", str(path), "the cup", "--points", "--model", fake_checkpoint(tmp_path / "m")])
    data = json.loads(out)
    h, w = smart_resize(500, 1000, min_pixels=4 * 28 * 28, max_pixels=1280 * 28 * 28)
    assert data["input_size"] == [w, h]
    assert data["detections"][0]["point"] == pytest.approx([100 * 1000 / w, 50 * 500 / h], abs=0.01)


def test_parse_doc_image_and_formats(tmp_path, capsys, fake_load):
    path = tmp_path / "page.png"
    Image.new("RGB", (1014, 1532), "white").save(path)
    html = ('```html\n<html><body>\n<h2 data-bbox="310 94 658 132">Qwen2.5 Technical Report</h2>\n'
            '<p data-bbox="427 154 542 182">Qwen Team</p>\n</body></html>\n```')
    pipe = FakePipe([html], media=[media_info("image", (1014, 1532), (1008, 1540))])
    fake_load(pipe)
    rc, out, _ = run(capsys, ["parse-doc", str(path), "--save", str(tmp_path / "doc.png")])
    page = json.loads(out)["pages"][0]
    assert rc == 0 and [b["kind"] for b in page["blocks"]] == ["title", "paragraph"]
    assert (tmp_path / "doc.png").exists()
    assert pipe.calls[0][0][-1]["content"][0]["text"] == "QwenVL HTML"
    rc, out, _ = run(capsys, ["parse-doc", str(path), "--format", "markdown"])
    assert json.loads(out)["pages"][0]["markdown"] == "## Qwen2.5 Technical Report\n\nQwen Team"
    rc, out, _ = run(capsys, ["parse-doc", str(path), "--format", "html"])
    assert json.loads(out)["pages"][0]["html"].startswith("<html><body>")


def test_parse_doc_pdf_one_result_per_page(tmp_path, capsys, fake_load):
    pdfium = pytest.importorskip("pypdfium2")
    pdf = pdfium.PdfDocument.new()
    pdf.new_page(300, 400)
    pdf.new_page(300, 400)
    path = tmp_path / "doc.pdf"
    pdf.save(str(path))
    pdf.close()
    pipe = FakePipe(['<p data-bbox="0 0 10 10">page one</p>', '<p data-bbox="0 0 10 10">page two</p>'],
                    media=lambda messages: [media_info("image", messages[-1]["content"][1]["image"].size, (588, 784))])
    fake_load(pipe)
    rc, out, _ = run(capsys, ["parse-doc", str(path), "--dpi", "144", "--save", str(tmp_path / "p.png")])
    pages = json.loads(out)["pages"]
    assert [p["page"] for p in pages] == [1, 2] and pages[0]["image_size"] == [600, 800]
    assert [p["blocks"][0]["text"] for p in pages] == ["page one", "page two"]
    assert (tmp_path / "p-page1.png").exists() and (tmp_path / "p-page2.png").exists()


def test_locate(tmp_path, capsys, fake_load):
    video = write_video(tmp_path / "v.mp4")
    pipe = FakePipe(["The given query happens in 64.0 - 72.0 seconds."],
                    media=[media_info("video", (640, 360), (644, 364), fps=2.0, num_frames=200)])
    fake_load(pipe)
    rc, out, _ = run(capsys, ["locate", str(video), "seasoning the steak", "--fps", "2"])
    data = json.loads(out)
    assert rc == 0 and (data["start"], data["end"]) == (64.0, 72.0) and data["fps"] == 2.0
    item = pipe.calls[0][0][-1]["content"][1]
    assert item == {"type": "video", "video": str(video), "fps": 2.0}


def test_missing_file_and_missing_model(tmp_path, capsys, monkeypatch):
    rc, _, err = run(capsys, ["ground", str(tmp_path / "nope.png"), "x"])
    assert rc == 1 and "nope.png: no such file" in err
    path = tmp_path / "img.png"
    Image.new("RGB", (10, 10)).save(path)
    monkeypatch.delattr(qwenvl, "DEFAULT_MODEL", raising=False)
    rc, _, err = run(capsys, ["ground", str(path), "x"])
    assert rc == 1 and "model" in err


@pytest.mark.parametrize("answer", ["I saw 3 dogs and 7 cats", "Lorem ipsum 5 dolor 5."])
def test_locate_reports_no_span(tmp_path, capsys, fake_load, answer):
    """An answer without an explicit span gives nulls and exit status 3, never a made-up span."""
    video = write_video(tmp_path / "v.mp4")
    fake_load(FakePipe([answer]))
    rc, out, err = run(capsys, ["locate", str(video), "the dog jumps"])
    data = json.loads(out)
    assert rc == 3 and data["start"] is None and data["end"] is None and data["rule"] is None
    assert data["raw"] == answer and "no time span" in data["warnings"][0]
    assert err.count("\n") == 1 and "no time span" in err
