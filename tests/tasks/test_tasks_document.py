"""parse_document on QwenVL HTML: the cookbook's output, the paper's schema, and broken variants."""

import json

import pytest

from qwenvl.tasks import parse_document

# document_parsing cookbook (72B, 1014x1532 page, 1008x1540 input), fenced.
COOKBOOK = """```html
<html><body>
<h2 data-bbox="310 94 658 132">Qwen2.5 Technical Report</h2>
<p data-bbox="427 154 542 182">Qwen Team</p>
<div class="image" data-bbox="262 195 708 272"><img data-bbox="262 195 708 272"/></div>
<p data-bbox="99 339 869 565">In this report, we introduce Qwen2.5, a comprehensive series of large language models.</p>
</body></html>
```"""


def test_cookbook_output():
    doc = parse_document(COOKBOOK, input_size=(1008, 1540), image_size=(1014, 1532))
    assert [b.kind for b in doc.blocks] == ["title", "paragraph", "image", "paragraph"]
    title = doc.blocks[0]
    assert title.text == "Qwen2.5 Technical Report" and title.level == 2
    sx, sy = 1014 / 1008, 1532 / 1540
    assert title.bbox == pytest.approx((310 * sx, 94 * sy, 658 * sx, 132 * sy))
    assert doc.blocks[2].text == "" and doc.blocks[2].bbox is not None
    assert doc.warnings == []
    md = doc.to_markdown()
    assert md.startswith("## Qwen2.5 Technical Report\n\nQwen Team\n\n")
    data = json.loads(doc.to_json())
    assert data["blocks"][1] == {"kind": "paragraph", "text": "Qwen Team",
                                 "bbox": [round(v, 2) for v in doc.blocks[1].bbox], "attrs": {"tag": "p"}}


SCHEMA = """<html><body>
<style>table1 {border: 1px}</style><table data-bbox="10 10 200 100" class="table1"><tr><th>Name</th><th>Score</th></tr><tr><td>A &amp; B</td><td>90</td></tr><tr><td>C</td></tr></table>
<div class="chart" data-bbox="10 110 200 200"> <img data-bbox="10 110 200 200" /><table><tr><td>2020</td><td>5</td></tr></table></div>
<div class="formula.machine_printed" data-bbox="10 210 200 230"> <img data-bbox="10 210 200 230" /> <div>E = mc^2</div></div>
<div class="formula.handwritten" data-bbox="10 232 200 240"><img data-bbox="10 232 200 240"/><div>a+b</div></div>
<div class="image caption" data-bbox="10 240 200 300"> <img data-bbox="10 240 200 300" /><p>Figure 1: a cat</p></div>
<div class="image ocr" data-bbox="10 300 200 320"> <img data-bbox="10 300 200 320" /><p>STOP</p></div>
<div class="music sheet" format="abc notation" data-bbox="1 1 2 2"><img data-bbox="1 1 2 2"/><div>X:1</div></div>
<div class="chemical formula" format="smile" data-bbox="1 1 2 2"><img data-bbox="1 1 2 2"/><div>CCO</div></div>
<ol><li data-bbox="10 330 200 340">first item</li><li data-bbox="10 341 200 350">second <b>item</b></li></ol>
<ul data-bbox="5 360 205 380"><li data-bbox="10 360 200 370">dot</li></ul>
<h1 data-bbox="0 0 10 10">Big</h1><h4 data-bbox="0 0 10 10">Small</h4>
<p class="caption" data-bbox="0 0 5 5">Table 1: results</p>
</body></html>"""


def test_paper_schema_blocks():
    doc = parse_document(SCHEMA, input_size=(1000, 1000), image_size=(1000, 1000))
    kinds = [b.kind for b in doc.blocks]
    assert kinds == ["table", "chart", "formula", "formula", "image", "image", "music", "chemical", "list", "list",
                     "title", "title", "caption"]
    table = doc.blocks[0]
    assert table.cells == [["Name", "Score"], ["A & B", "90"], ["C"]] and table.bbox == (10, 10, 200, 100)
    assert doc.blocks[1].cells == [["2020", "5"]]
    assert doc.blocks[2].text == "E = mc^2" and doc.blocks[3].text == "a+b"
    assert doc.blocks[4].text == "Figure 1: a cat" and doc.blocks[5].text == "STOP"
    assert doc.blocks[6].attrs["format"] == "abc notation" and doc.blocks[7].text == "CCO"
    ol = doc.blocks[8]
    assert [i.text for i in ol.items] == ["first item", "second item"]
    assert ol.items[1].bbox == (10, 341, 200, 350)
    assert ol.bbox == (10, 330, 200, 350)          # no box of its own: union of its items
    assert doc.blocks[9].bbox == (5, 360, 205, 380)
    assert [doc.blocks[10].level, doc.blocks[11].level] == [1, 4]
    md = doc.to_markdown()
    assert "| Name | Score |\n|---|---|\n| A & B | 90 |\n| C |  |" in md
    assert "$$\nE = mc^2\n$$" in md and "1. first item\n2. second item" in md and "- dot" in md
    assert "# Big" in md and "#### Small" in md


def test_truncated_and_unclosed():
    text = ('```html\n<html><body>\n<p data-bbox="0 0 50 10">One\n<p data-bbox="0 20 50 30">Two</p>\n'
            '<table data-bbox="0 40 50 90"><tr><td>a<td>b<tr><td>c</td></tr>\n<p data-bbox="0 95 50 99">cut her')
    doc = parse_document(text, input_size=(100, 100), image_size=(200, 200))
    assert [b.text for b in doc.blocks[:2]] == ["One", "Two"]
    assert doc.blocks[2].cells == [["a", "b"], ["c"]]
    assert doc.blocks[-1].text == "cut her" and doc.blocks[-1].bbox == (0, 190, 100, 198)
    assert any("truncated" in w for w in doc.warnings)


def test_plain_html_without_boxes_and_loose_text():
    doc = parse_document("<!DOCTYPE html><html><head><title>T</title></head><body>Intro text"
                         "<div><p>Para</p></div><h3>Head</h3></body></html>")
    assert [(b.kind, b.text, b.bbox) for b in doc.blocks] == [("paragraph", "Intro text", None),
                                                             ("paragraph", "Para", None), ("title", "Head", None)]


def test_polygon_and_style_attributes_dropped():
    doc = parse_document('<p data-bbox="1 2 3 4" data-polygon="1 2 3 4" style="color:red">x</p>')
    assert doc.blocks[0].attrs == {"tag": "p"} and doc.blocks[0].bbox == (1, 2, 3, 4)


@pytest.mark.parametrize("text", ["", "I can't parse this image.", "<<<>>>", "</p></div>", None])
def test_garbage_never_crashes(text):
    doc = parse_document(text, input_size=(10, 10), image_size=(10, 10))
    assert isinstance(doc.blocks, list)
    assert isinstance(doc.to_markdown(), str) and json.loads(doc.to_json())["blocks"] is not None
