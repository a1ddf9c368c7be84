"""Field line crops: the value boxes, and their crops from flat and photographed documents."""
from __future__ import annotations

import numpy as np
import pytest

from docray.compression import fields, layout
from docray.imageio import decode_image
from docray.synth import generate
from docray.synth.captures import map_box
from docray.synth.templates import TEMPLATES


def test_value_box_stops_at_the_next_caption_on_its_row():
    boxes, (dw, _) = fields.value_boxes("identity_card"), fields._boxes(0)[1]
    names = layout.field_names("identity_card")
    sex, nat = boxes[names.index("sex")], TEMPLATES[0].fields[names.index("nationality")]
    assert sex[2] < nat.x * dw  # "Sex F  Nat. CHN": the sex box never reaches the "Nat." caption
    assert all(x0 < x1 and y0 < y1 for x0, y0, x1, y1 in boxes)


@pytest.mark.parametrize("doc_type", range(len(TEMPLATES)))
def test_lines_of_a_flat_render_hold_each_value_and_nothing_else(doc_type):
    size = fields.CANON
    values = ["W" * 6] * len(TEMPLATES[doc_type].fields)
    white = np.full((size[1], size[0], 3), 255, np.uint8)
    page = layout.composite(layout.render_layer(doc_type, values, size), white)
    blank = layout.composite(layout.render_layer(doc_type, [""] * len(values), size), white)
    quad = fields.frame_quad(doc_type, size)
    lines = fields.crop_lines(page, quad, doc_type, (32, 384)).astype(int)
    ink = (lines < 100).any(axis=3) & (lines.sum(axis=3) > 0)  # dark, but not the black padding
    assert ink.shape == (len(values), 32, 384) and ink.any(axis=(1, 2)).all()  # every value is in its line
    assert not ink[:, :2].any() and not ink[:, -2:].any()  # and whole: no glyph cut at the top or bottom
    empty = fields.crop_lines(blank, quad, doc_type, (32, 384)).astype(int)
    assert not ((empty < 100).any(axis=3) & (empty.sum(axis=3) > 0)).any()  # no caption, title or slot


def test_lines_follow_a_photographed_document():
    row = generate("documents", 0, 1, seed=3, size=(384, 240), n_angles=0).to_pylist()[0]
    img, quad = np.asarray(decode_image(row["image"])), np.reshape(row["doc_quad"], (4, 2))
    lines = fields.crop_lines(img, quad, row["doc_type"], (32, 384))
    assert lines.shape == (len(row["fields"]), 32, 384, 3)
    # each value box mapped through the corners' homography covers the labelled (warped) value box
    H = fields.doc_to_image(quad, row["doc_type"])
    for box, f in zip(fields.value_boxes(row["doc_type"]), row["fields"]):
        ax0, ay0, ax1, ay1 = map_box(H, box)
        fx0, fy0, fx1, fy1 = f["box"]
        assert ax0 - 2 <= fx0 and ay0 - 2 <= fy0 and ax1 + 2 >= fx1 and ay1 + 2 >= fy1, (f, (ax0, ay0, ax1, ay1))
