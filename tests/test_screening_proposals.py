"""Layout-free region proposals (issue 20 item 1): a picture pasted into a photo or a texture is
proposed as a region; the count per picture stays bounded; the benchmark's backgrounds."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from docray.screening.backgrounds import BACKGROUNDS, GROUPS, background, paste_upload
from docray.screening.matching import Screener, ScreenConfig, find_regions
from docray.screening.proposals import edge_boxes, iou, propose, window_boxes
from docray.screening.templates import cut
from tests.test_screening import make_library, poster


@pytest.mark.parametrize("kind", ["pattern", "spectral_noise", "dead_leaves"])
def test_a_tile_pasted_on_a_textured_background_is_proposed(kind):
    rng = np.random.default_rng(3)
    for trial in range(3):
        tile = poster(10 + trial, (90, 70))
        up = paste_upload(tile, rng, kind, size_range=(320, 480), scale=(0.3, 0.5))
        boxes = edge_boxes(up["image"])
        assert 0 < len(boxes) <= 16
        assert max(iou(b, up["box"]) for b in boxes) >= 0.5, (kind, trial, up["box"], boxes[:5])


def test_the_layout_alone_misses_what_edges_find():
    """On a brick texture the layout's connected components do not isolate the picture; edges do."""
    rng = np.random.default_rng(5)
    up = paste_upload(poster(4, (80, 80)), rng, "pattern", size_range=(400, 400), scale=(0.35, 0.35))
    layout = find_regions(up["image"], ScreenConfig())
    edges = find_regions(up["image"], ScreenConfig(proposals="edges"))
    assert edges[: len(layout)] == layout  # the layout's regions first, unchanged
    assert max(iou(b, up["box"]) for b in edges) >= 0.5 > max(iou(b, up["box"]) for b in layout)


def test_blank_and_busy_pictures_give_bounded_proposals():
    blank = Image.new("RGB", (640, 480), (200, 200, 200))
    assert edge_boxes(blank) == []
    assert len(window_boxes(blank.size, max_boxes=10)) <= 10
    assert all(0 <= b[0] < b[2] <= 640 and 0 <= b[1] < b[3] <= 480 for b in window_boxes(blank.size))
    for kind in ("layout", "edges", "windows", "edges+windows"):
        regions = find_regions(blank, ScreenConfig(proposals=kind, max_proposals=12))
        assert 1 <= len(regions) <= 1 + 12 and regions[0] == (0, 0, 640, 480)
    rng = np.random.default_rng(0)
    for kind in BACKGROUNDS:  # full of edges of their own: still at most max_boxes
        busy = background(rng, (480, 360), kind)
        assert len(edge_boxes(busy, max_boxes=8)) <= 8 and len(propose(busy, "edges+windows", 10)) <= 10
    with pytest.raises(ValueError, match="unknown proposals"):
        propose(blank, "corners", 4)
    with pytest.raises(ValueError):
        ScreenConfig(proposals="corners")


def test_screening_finds_a_tile_pasted_into_a_texture_with_edge_proposals(tmp_path):
    lib, embed = make_library(tmp_path / "lib", 3)
    tile = cut(poster(1), "2x2", None)[1].image  # a tile of target 1
    rng = np.random.default_rng(11)
    up = paste_upload(tile.resize((tile.width * 2, tile.height * 2), Image.NEAREST), rng, "pattern",
                      size_range=(360, 360), scale=(0.35, 0.35))
    cfg = ScreenConfig(threshold=0.9, learn=False)
    before = Screener(lib, embed, cfg).screen([up["image"]], release_time=101)
    after = Screener(lib, embed, cfg.model_copy(update={"proposals": "edges"})).screen([up["image"]], release_time=101)
    assert not before["abnormal"]
    assert after["abnormal"] and after["matches"][0]["target_id"] == "t1"
    assert iou(tuple(after["matches"][0]["region"]), up["box"]) >= 0.8
    assert after["regions"] > before["regions"]


def test_paste_upload_groups():
    rng = np.random.default_rng(2)
    for group, kinds in GROUPS.items():
        up = paste_upload(poster(1, (40, 30)), rng, group=group, size_range=(200, 240))
        assert up["background"] in kinds
        x0, y0, x1, y1 = up["box"]
        assert 0 <= x0 < x1 <= up["image"].width and 0 <= y0 < y1 <= up["image"].height
    assert set(GROUPS["photo"]) | set(GROUPS["texture"]) == set(BACKGROUNDS)
    with pytest.raises(ValueError, match="unknown background group"):
        paste_upload(poster(1), rng, group="space")
