"""Regen compression, pure parts: thresholds, the quality formula, seals, portrait geometry, layout."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageDraw

from docray.regen import layout, portrait as P
from docray.regen.file_types import Threshold, ThresholdError, load_file_types
from docray.regen.quality import compress_to_threshold, quality_level
from docray.doctypes import registry
from docray.regen.seals import detect_seals
from docray.synth import seals as synth_seals
from docray.synth.common import font


def _lib(**second):
    s = {"width": 200, "height": 120, "bytes": 5000, **second}
    return {"first": {"width": 256, "height": 160, "bytes": 100000},
            "types": {"identity_card": {"base": 80, "format": "jpeg", "second": s}}}


def test_packaged_library_is_valid_and_covers_every_type():
    lib = load_file_types()
    assert set(lib.types) == set(registry().names) and lib.default is not None  # a user's type gets the default
    for ft in lib.types.values():
        assert ft.second.below(lib.first)


@pytest.mark.parametrize("second, msg", [({"width": 300}, "no wider"), ({"height": 161}, "no wider"),
                                         ({"bytes": 100000}, "fewer bytes")])
def test_second_must_be_below_first(second, msg):
    with pytest.raises(ThresholdError, match=msg):
        load_file_types(_lib(**second))


def test_first_must_be_below_original():
    lib = load_file_types(_lib())
    lib.check_original(384, 240, 150000)  # fine
    with pytest.raises(ThresholdError, match="above the first threshold"):
        lib.check_original(200, 240, 150000)  # narrower than first
    with pytest.raises(ThresholdError, match="above the first threshold"):
        lib.check_original(384, 240, 90000)  # fewer bytes than first


def test_quality_formula_is_monotonic_and_in_range():
    for base in (1, 40, 85, 100):
        qs = [quality_level(base, Threshold(width=256, height=160, bytes=b), 384, 240) for b in range(200, 40000, 300)]
        assert all(1 <= q <= 100 for q in qs)
        assert qs == sorted(qs)  # non-decreasing in the byte budget
        assert qs[-1] == base  # an ample budget gives the base
    two = Threshold(width=256, height=160, bytes=3000)
    assert [quality_level(b, two, 256, 160) for b in (10, 50, 90)] == sorted(quality_level(b, two, 256, 160) for b in (10, 50, 90))


def _noisy(seed=0, size=(256, 160)):
    r = np.random.default_rng(seed)
    return Image.fromarray(r.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


@pytest.mark.parametrize("fmt", ["jpeg", "webp"])
@pytest.mark.parametrize("budget", [400, 2500, 12000])
def test_search_always_meets_the_second_threshold(fmt, budget):
    second = Threshold(width=200, height=100, bytes=budget)
    c = compress_to_threshold(_noisy(), 80, second, fmt)  # noise: the hardest case for a codec
    assert c.nbytes <= budget and c.size[0] <= 200 and c.size[1] <= 100
    assert 1 <= c.quality <= c.formula_quality
    Image.open(io.BytesIO(c.data)).load()  # a valid file


def test_search_keeps_the_formula_quality_when_it_fits():
    flat = Image.new("RGB", (256, 160), (200, 220, 240))
    second = Threshold(width=256, height=160, bytes=20000)
    c = compress_to_threshold(flat, 70, second, "jpeg")
    assert c.quality == c.formula_quality == quality_level(70, second, 256, 160)


# -- seals ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", synth_seals.SEAL_SHAPES)
@pytest.mark.parametrize("color", ["red", "blue"])
@pytest.mark.parametrize("angle", [0, 12])
def test_seals_found_across_shapes_and_colours(shape, color, angle):
    img = Image.new("RGB", (200, 140), (240, 236, 220))
    box = synth_seals.stamp(img, None, shape, color, 1, 56, (100, 70), angle, 0.8, (0.3, 0.6))
    found = detect_seals(img)
    assert len(found) == 1, found
    s = found[0]
    assert (s.shape, s.color) == (shape, color)
    assert max(abs(a - b) for a, b in zip(s.box, box)) <= 4


def test_seal_negatives_green_circle_and_red_text():
    img = Image.new("RGB", (240, 160), (240, 236, 220))
    d = ImageDraw.Draw(img)
    d.ellipse([60, 30, 140, 110], outline=(30, 160, 40), width=4)  # green circle: wrong colour
    d.text((10, 8), "URGENT COPY", font=font("sans-bold", 22), fill=(205, 35, 40))  # red text
    d.text((10, 110), "NO", font=font("sans-bold", 30), fill=(205, 35, 40))  # red letters with holes
    d.text((160, 60), "DO", font=font("sans", 28), fill=(35, 70, 190))  # blue letters
    assert detect_seals(img) == []
    synth_seals.stamp(img, None, "circle", "red", 0, 50, (190, 120), 0, 0.8, (0.1, 0.1))
    assert [(s.shape, s.color) for s in detect_seals(img)] == [("circle", "red")]  # and a real one still found


# -- portrait geometry --------------------------------------------------------------------------

def _doc_with_portrait():
    img = Image.new("RGB", (300, 200), (230, 235, 245))
    ImageDraw.Draw(img).rectangle([200, 40, 269, 139], fill=(180, 120, 90))
    return img, [200, 40, 270, 140]


@pytest.mark.parametrize("scale", [0.5, 2 / 3, 1.0])
def test_background_split_and_paste_round_trip_positions(scale):
    img, box = _doc_with_portrait()
    face, rest, split = P.split_portrait(img, box, "background")
    assert split == {"position": box, "fill": "background", "scale": 1.0} and face.size == (70, 100)
    assert np.abs(np.asarray(rest)[60:120, 210:260].astype(int) - [230, 235, 245]).max() < 12  # filled with background
    processed = rest.resize((round(300 * scale), round(200 * scale)))
    out, split2 = P.paste_portrait(processed, face, split, scale)
    mapped = split2["pasted_at"]
    assert mapped == P.map_box(box, scale)
    back = P.map_box(mapped, 1 / scale)  # positions round-trip within a pixel of rounding
    assert max(abs(a - b) for a, b in zip(back, box)) <= round(1 / scale) + 1
    cx, cy = (mapped[0] + mapped[2]) // 2, (mapped[1] + mapped[3]) // 2
    assert np.abs(np.asarray(out)[cy, cx].astype(int) - [180, 120, 90]).max() < 20


def test_blank_split_is_found_again_after_resizing():
    img, box = _doc_with_portrait()
    face, rest, split = P.split_portrait(img, box, "blank")
    assert (np.asarray(rest)[41:139, 201:269] == 255).all()
    processed = rest.resize((150, 100))
    assert P.find_blank_region(processed) == P.map_box(box, 0.5)
    out, split2 = P.paste_portrait(processed, face, split, 0.5)
    assert split2["pasted_at"] == [100, 20, 135, 70] and split2["scale"] == 0.5


def test_bad_split_inputs():
    img, box = _doc_with_portrait()
    with pytest.raises(ValueError, match="fill"):
        P.split_portrait(img, box, "smear")
    with pytest.raises(ValueError, match="empty portrait box"):
        P.split_portrait(img, [10, 10, 10, 50])


def test_find_portrait_uses_the_slot_without_a_photographed_face():
    img, box = _doc_with_portrait()
    assert P.find_portrait(img, slot_hint=box) == box
    assert P.find_portrait(img) is None


def test_layout_layer_is_deterministic_and_never_truncates():
    a = layout.render_layer("passport_page", ["JENSEN", "UN1262405"] + ["X"] * 7, (256, 160))
    b = layout.render_layer("passport_page", ["JENSEN", "UN1262405"] + ["X"] * 7, (256, 160))
    assert a.shape == (160, 256, 4) and (a == b).all()
    slot = layout.slot_box("passport_page", (256, 160))
    assert (a[slot[1]:slot[3], slot[0]:slot[2], 3] == 255).all()  # the blank portrait slot
    assert layout.slot_box("business_licence", (256, 160)) is None
    assert layout.split_content("a|b", "identity_card") == ["a", "b", "", "", "", ""]
