"""Pictures: box edges coloured, interiors untouched, points drawn, PNG written."""

from PIL import Image

from qwenvl.tasks import Block, Detection, Document, draw_actions, draw_detections, draw_document
from qwenvl.tasks.agent import Action
from qwenvl.tasks.draw import color_for

BG = (255, 255, 255)


def test_boxes_on_original_image(tmp_path):
    img = Image.new("RGB", (400, 300), BG)
    dets = [Detection("cat", bbox=(100.0, 80.0, 300.0, 250.0)), Detection("dog", point=(50.0, 50.0))]
    out = tmp_path / "out.png"
    drawn = draw_detections(img, dets, out)
    saved = Image.open(out)
    assert saved.format == "PNG" and saved.size == (400, 300)
    px = saved.convert("RGB").load()
    for edge in [(100, 150), (300, 150), (200, 80), (200, 250)]:         # all four sides
        assert px[edge] != BG, edge
    assert px[200, 165] == BG and px[150, 120] == BG                      # interior unchanged
    assert px[50, 50] != BG                                               # the point
    assert px[100, 150] == color_for("cat")
    assert img.getpixel((100, 150)) == BG                                 # input image not modified
    assert drawn.size == img.size


def test_labels_keep_colours():
    assert color_for("cat") == color_for("cat")
    assert len({color_for(str(i)) for i in range(50)}) > 5


def test_document_blocks(tmp_path):
    page = Image.new("L", (200, 200), 255)
    doc = Document([Block("title", "T", (10.0, 10.0, 190.0, 40.0)), Block("paragraph", "no box", None),
                    Block("list", "", (10.0, 60.0, 190.0, 120.0), items=[Block("list_item", "a", (12.0, 62.0, 188.0, 80.0))])])
    img = draw_document(page, doc, tmp_path / "doc.png")
    assert img.mode == "RGB" and (tmp_path / "doc.png").exists()
    assert img.getpixel((10, 25)) != BG and img.getpixel((100, 25)) == BG
    assert img.getpixel((12, 70)) != BG and img.getpixel((100, 100)) == BG


def test_actions_drawn():
    img = draw_actions(Image.new("RGB", (100, 100), BG),
                       [Action("mobile_use", {"action": "swipe", "coordinate": [20, 20], "coordinate2": [80, 80]})])
    assert img.getpixel((20, 20)) != BG and img.getpixel((80, 80)) != BG and img.getpixel((50, 80)) == BG


def test_transparent_pixels_drawn_as_the_model_saw_them(tmp_path):
    """An RGBA image is composited onto white for the model (processing.image.to_rgb); the picture under
    the boxes must be that same image, not the black a plain convert("RGB") leaves."""
    from qwenvl.cli.tools import render_pages

    img = Image.new("RGBA", (200, 100), (10, 20, 30, 0))                  # fully transparent
    img.putpixel((150, 60), (200, 0, 0, 255))                             # one opaque pixel
    drawn = draw_detections(img, [Detection("cat", bbox=(20.0, 20.0, 60.0, 60.0))])
    assert drawn.mode == "RGB"
    assert drawn.getpixel((100, 80)) == BG and drawn.getpixel((150, 60)) == (200, 0, 0)
    img.save(tmp_path / "page.png")
    (page,) = render_pages(tmp_path / "page.png")                         # parse-doc's pages: same rule
    assert page.getpixel((100, 80)) == BG and page.getpixel((150, 60)) == (200, 0, 0)
