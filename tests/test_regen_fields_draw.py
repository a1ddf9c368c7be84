"""Field line crops: the value boxes, and their crops from flat and photographed documents, for the
built-in types and a user's Chinese type (examples/doctypes/cn_resident_card.yaml)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from docray.regen import fields, layout
from docray.doctypes import BUILTIN, registry
from docray.imageio import decode_image
from docray.synth import generate
from docray.synth.captures import map_box

CN = "cn_resident_card"


@pytest.fixture(autouse=True)
def user_types(monkeypatch):
    """The example Chinese type registered as a user would: a template file in $DOCRAY_DOCTYPES."""
    monkeypatch.setenv("DOCRAY_DOCTYPES", str(Path(__file__).parents[1] / "examples" / "doctypes"))


def test_value_box_stops_at_the_next_caption_on_its_row():
    boxes, (dw, _) = fields.value_boxes("identity_card"), fields._boxes("identity_card")[1]
    names = layout.field_names("identity_card")
    sex, nat = boxes[names.index("sex")], registry()["identity_card"].fields[names.index("nationality")]
    assert sex[2] < nat.x * dw  # "Sex F  Nat. CHN": the sex box never reaches the "Nat." caption
    assert all(x0 < x1 and y0 < y1 for x0, y0, x1, y1 in boxes)


@pytest.mark.parametrize("doc_type, value", [*((t, "W" * 6) for t in BUILTIN), (CN, "王伟北京88号")])
def test_lines_of_a_flat_render_hold_each_value_and_nothing_else(doc_type, value):
    size = fields.CANON
    values = [value] * len(layout.field_names(doc_type))
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


@pytest.mark.parametrize("doc_types", [(), (CN,)])
def test_lines_follow_a_photographed_document(doc_types):
    rows = generate("documents", 0, 2, seed=3, size=(384, 240), n_angles=0, doc_types=doc_types).to_pylist()
    for row in rows:
        assert row["doc_type"] == registry().index(row["doc_type_name"])
        img, quad = np.asarray(decode_image(row["image"])), np.reshape(row["doc_quad"], (4, 2))
        lines = fields.crop_lines(img, quad, row["doc_type"], (32, 384))
        assert lines.shape == (len(row["fields"]), 32, 384, 3)
        # each value box mapped through the corners' homography covers the labelled (warped) value box
        H = fields.doc_to_image(quad, row["doc_type"])
        for box, f in zip(fields.value_boxes(row["doc_type"]), row["fields"]):
            ax0, ay0, ax1, ay1 = map_box(H, box)
            fx0, fy0, fx1, fy1 = f["box"]
            assert ax0 - 2 <= fx0 and ay0 - 2 <= fy0 and ax1 + 2 >= fx1 and ay1 + 2 >= fy1, (f, (ax0, ay0, ax1, ay1))
    if doc_types:
        assert all(r["doc_type_name"] == CN for r in rows)


def test_chinese_values_land_in_their_own_lines():
    """Each field's value, rendered alone on a blank page, inks its own line and no other."""
    size, n = fields.CANON, len(layout.field_names(CN))
    white = np.full((size[1], size[0], 3), 255, np.uint8)
    quad = fields.frame_quad(CN, size)
    for k in range(n):
        values = [""] * n
        values[k] = "公民身份号码"[: 2 + k % 4]
        page = layout.composite(layout.render_layer(CN, values, size), white)
        blank = layout.composite(layout.render_layer(CN, [""] * n, size), white)
        diff = np.abs(page.astype(int) - blank.astype(int)).sum(axis=2) > 60  # the value's own glyphs
        only = np.where(diff[..., None], page, 255).astype(np.uint8)
        lines = fields.crop_lines(only, quad, CN, (32, 384)).astype(int)
        inked = ((lines < 128).any(axis=3) & (lines.sum(axis=3) > 0)).sum(axis=(1, 2))
        assert inked[k] > 20 and inked.sum() - inked[k] < 0.05 * inked[k], (k, inked)
