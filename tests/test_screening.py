"""Cut-out screening: templates, dedup, attribute filters, extension rule, index, library, matching."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageDraw

from docray.screening.dedup import dedup, exact_hash, hamming, phash
from docray.screening.index import TileIndex
from docray.screening.library import Library, cut_target, to_day
from docray.screening.matching import Screener, ScreenConfig, find_regions, picture_boxes
from docray.screening.rules import AttrFilter, ExtensionRule, extended_filter, mask, primary_filter
from docray.screening.templates import DEFAULT_TEMPLATES, cut, cut_code, grid, tile_boxes


def poster(i: int, size=(150, 97)) -> Image.Image:
    """A picture with distinct text and shapes (odd size on purpose)."""
    rng = np.random.default_rng(i)
    img = Image.new("RGB", size, tuple(int(c) for c in rng.integers(0, 256, 3)))
    d = ImageDraw.Draw(img)
    for _ in range(6):
        x, y = rng.integers(0, size[0]), rng.integers(0, size[1])
        d.rectangle([x, y, x + rng.integers(5, 40), y + rng.integers(5, 30)], fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
    d.text((5, size[1] // 2), f"{i * 7919} Elm St", fill=(0, 0, 0))
    return img


def unit(n, d, seed=0):
    v = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


# -- templates ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name", DEFAULT_TEMPLATES)
def test_template_tiles_partition_the_picture(name):
    rows, cols = grid(name)
    w, h = 151, 97  # sizes that do not divide evenly
    boxes = tile_boxes(w, h, rows, cols)
    assert len(boxes) == rows * cols
    cover = np.zeros((h, w), int)
    for x0, y0, x1, y1 in boxes:
        assert x1 > x0 and y1 > y0
        cover[y0:y1, x0:x1] += 1
    assert (cover == 1).all()  # every pixel in exactly one tile


def test_cut_gives_grid_in_row_major_order_and_scaled_tiles():
    img = poster(1)
    tiles = cut(img, "1x3", tile_size=32)
    assert [t.position for t in tiles] == [0, 1, 2]
    assert [t.box[0] for t in tiles] == sorted(t.box[0] for t in tiles) and tiles[0].box[1] == 0
    assert all(t.image.size == (32, 32) for t in tiles)
    strip = cut(img, "3x1", tile_size=None)
    assert [t.box[1] for t in strip] == [0, 32, 65] and all(t.box[0] == 0 and t.box[2] == 150 for t in strip)
    with pytest.raises(ValueError, match="unknown cut type"):
        cut_code("4x4")
    with pytest.raises(ValueError):
        tile_boxes(2, 2, 3, 3)


# -- dedup -------------------------------------------------------------------------------------
def test_dedup_exact_near_and_seen():
    a, b = poster(1), poster(2)
    hashes = [exact_hash(x) for x in (a, b, a.copy(), b)]
    assert list(dedup(hashes)) == [0, 1]
    assert list(dedup(hashes, seen_hashes={hashes[1]})) == [0]
    v = unit(4, 16)
    v[2] = v[0] + 0.01 * unit(1, 16, 5)[0]  # near copy of 0
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    assert list(dedup(["h0", "h1", "h2", "h3"], vectors=v, min_similarity=0.95)) == [0, 1, 3]
    ph = np.array([phash(a), phash(a.resize((140, 90))), phash(b)], np.uint64)
    assert hamming(ph[0], ph[1]) <= 4 < hamming(ph[0], ph[2])
    assert list(dedup(["x", "y", "z"], phashes=ph, max_hamming=4)) == [0, 2]


# -- rules -------------------------------------------------------------------------------------
def test_extension_rule_directions_and_cut_types():
    times, cuts = np.array([10, 12, 20, 8, 10, 10]), np.array([6, 6, 6, 6, 1, 6])
    p = primary_filter(10, "3x3")
    assert list(np.flatnonzero(mask(p, times, cuts))) == [0, 5]
    both = extended_filter(ExtensionRule(delta_t=2, direction="both", other_cut_types=False), 10, "3x3")
    assert list(np.flatnonzero(mask(both, times, cuts))) == [1, 3]  # primary ones left out
    later = extended_filter(ExtensionRule(delta_t=2, direction="+", other_cut_types=False), 10, "3x3")
    assert list(np.flatnonzero(mask(later, times, cuts))) == [1]
    earlier = extended_filter(ExtensionRule(delta_t=2, direction="-", other_cut_types=True), 10, "3x3")
    assert list(np.flatnonzero(mask(earlier, times, cuts))) == [3, 4]
    assert extended_filter(ExtensionRule(delta_t=0, other_cut_types=False), 10, "3x3") is None
    assert extended_filter(ExtensionRule(enabled=False), 10, "3x3") is None
    assert primary_filter().is_all


# -- index -------------------------------------------------------------------------------------
@pytest.mark.parametrize("threshold,kind", [(10_000, "ivf"), (500, "ivf"), (500, "ivfpq")])  # flat; IVF; PQ + re-rank
def test_filtered_search_returns_only_matching_candidates(threshold, kind):
    rng = np.random.default_rng(0)
    n = 3000
    v = unit(n, 32)
    times, cuts = rng.integers(0, 50, n), rng.integers(0, 8, n)
    idx = TileIndex(32, ann_threshold=threshold, nprobe=8, exact_below=100, kind=kind)
    id_of = np.concatenate([idx.add(v[:1000], times[:1000], cuts[:1000]),
                            idx.add(v[1000:], times[1000:], cuts[1000:])])  # add without rebuild (or the one ANN switch)
    assert idx.current_kind == ("flat" if threshold > n else kind) and idx.ntotal == n
    assert sorted(id_of) == list(range(n))  # each row has its own id
    for f in (AttrFilter(cuts=frozenset({3})), AttrFilter(t_lo=10, t_hi=30), AttrFilter(t_lo=7, t_hi=7, cuts=frozenset({2}))):
        sims, ids = idx.search(v[:20], 10, f)
        allowed = np.zeros(n, bool)
        allowed[id_of[mask(f, times, cuts)]] = True  # the filter on the input rows, in ids
        got = ids[ids >= 0]
        assert len(got) and allowed[got].all()
    sims, ids = idx.search(v[:5], 3)
    assert list(ids[:, 0]) == list(id_of[:5]) and np.allclose(sims[:, 0], 1, atol=1e-4)
    sims, ids = idx.search(v[:2], 3, AttrFilter(t_lo=999, t_hi=999))
    assert (ids == -1).all() and np.isneginf(sims).all()


@pytest.mark.parametrize("kind", ["ivf", "ivfpq"])
def test_index_save_load_roundtrip(tmp_path, kind):
    v = unit(600, 16)
    idx = TileIndex(16, ann_threshold=400, kind=kind, exact_below=10)
    idx.add(v, np.arange(600), np.arange(600) % 8)
    idx.save(tmp_path / "ix")
    back = TileIndex.load(tmp_path / "ix")
    f = AttrFilter(cuts=frozenset({5}))
    assert back.current_kind == kind
    np.testing.assert_array_equal(back.search(v[:8], 4, f)[1], idx.search(v[:8], 4, f)[1])


# -- library and matching ----------------------------------------------------------------------
class FakeEmbed:
    """Deterministic stand-in for the descriptor: a 12x12 grey thumbnail, centred and normalised."""

    dim = 144

    def __call__(self, tiles):
        out = np.stack([np.asarray(t.convert("L").resize((12, 12)), np.float32).ravel() for t in tiles])
        out -= out.mean(1, keepdims=True)
        return out / (np.linalg.norm(out, axis=1, keepdims=True) + 1e-6)


def make_library(root, n_targets=3, day=100):
    lib = Library.create(root, dim=FakeEmbed.dim, tile_size=32, descriptor="fake")
    embed = FakeEmbed()
    for i in range(n_targets):
        b = cut_target(poster(i), f"t{i}", f"src-{i}", day + i, 32, min_detail=0)
        lib.append(b, embed(b.tiles))
    return lib, embed


def test_library_append_is_incremental_and_versioned(tmp_path):
    lib, embed = make_library(tmp_path / "lib", 2)
    assert lib.version == 2 and len(lib) == lib.index.ntotal and len(lib) > 0
    n = len(lib)
    again = cut_target(poster(0), "t0-again", "src-x", 100, 32, min_detail=0)
    res = lib.append(again, embed(again.tiles))  # the same target again: all duplicates
    assert res == {"added": 0, "skipped": len(again.rows), "version": 2, "n_tiles": n}
    new = cut_target(poster(7), "t7", "src-7", 120, 32, min_detail=0)
    res = lib.append(new, embed(new.tiles))
    assert res["version"] == 3 and res["added"] > 0 and len(lib) == n + res["added"]
    back = Library.open(tmp_path / "lib")
    assert back.version == 3 and len(back) == len(lib) == back.index.ntotal
    assert Library.current_version(tmp_path / "lib") == 3
    assert back.rows([n])[0]["target_id"] == "t7" and back.tile_image(n).size == (32, 32)
    assert back.meta.column("tile_id").to_pylist() == list(range(len(back)))
    with pytest.raises(FileExistsError):
        Library.create(tmp_path / "lib", dim=4, tile_size=32, descriptor="x")


def test_picture_boxes_find_pasted_pictures(tmp_path):
    canvas = Image.new("RGB", (200, 120), (240, 240, 240))
    canvas.paste(poster(3, (60, 50)), (10, 40))
    canvas.paste(poster(4, (70, 60)), (110, 30))
    pasted = [(10, 40, 70, 90), (110, 30, 180, 90)]
    assert sorted(picture_boxes(canvas)) == pasted  # exactly the pasted pictures
    buf = io.BytesIO()
    canvas.save(buf, "JPEG", quality=40)  # ringing around the borders must not widen the boxes
    found = sorted(picture_boxes(Image.open(buf).convert("RGB")))
    assert len(found) == 2 and all(max(abs(u - v) for u, v in zip(f, p)) <= 2 for f, p in zip(found, pasted))  # 2x2 chroma
    assert find_regions(canvas, ScreenConfig()) == [(0, 0, 200, 120), (110, 30, 180, 90), (10, 40, 70, 90)]
    assert find_regions(canvas, ScreenConfig(whole_picture=False, max_regions=1)) == [(110, 30, 180, 90)]
    lib, embed = make_library(tmp_path / "lib", 1)
    only_big = lambda crop: [(0, 0, 1, 1)] if crop.size == (70, 60) else []  # "OCR" finds text in one region
    regions = Screener(lib, embed, ScreenConfig(), text_finder=only_big).regions([canvas])
    assert [r.box for r in regions] == [(110, 30, 180, 90)] and regions[0].crop.size == (70, 60)


def test_matching_primary_extended_and_learning(tmp_path):
    lib, embed = make_library(tmp_path / "lib", 3, day=100)
    text_everywhere = lambda img: [(0, 0, img.width, img.height)]
    cfg = ScreenConfig(threshold=0.9, rule=ExtensionRule(delta_t=5, direction="both", other_cut_types=True))
    s = Screener(lib, embed, cfg, text_finder=text_everywhere)
    tile = cut(poster(1), "2x2", None)[1].image  # a tile of target 1 (released day 101)
    clean = poster(50)
    v = s.screen([clean, tile], release_time=101, cut_type="2x2")
    assert v["abnormal"] and v["stage"] == "primary" and v["added_tiles"] == 0
    m = v["matches"][0]
    assert m["picture"] == 1 and m["target_id"] == "t1" and m["cut_type"] == "2x2" and m["position"] == 1
    assert m["similarity"] >= 0.9 and m["stage"] == "primary"
    # wrong cut type and release day 3 days off: primary misses, the extension rule finds it
    version = lib.version
    v = s.screen([tile], release_time=104, cut_type="3x3")
    assert v["abnormal"] and v["stage"] == "extended" and v["matches"][0]["target_id"] == "t1"
    assert v["added_tiles"] == 1 and lib.version == version + 1  # the picture joined the library
    v = s.screen([tile], release_time=104, cut_type="3x3")  # now a primary match on the wild tile
    assert v["stage"] == "primary" and v["matches"][0]["source_id"] == "wild:src-1"
    # outside the window, and no extension: clean
    far = Screener(lib, embed, ScreenConfig(threshold=0.9, rule=ExtensionRule(delta_t=5)), text_finder=text_everywhere)
    assert not far.screen([tile], release_time=300, cut_type="2x2")["abnormal"]
    off = Screener(lib, embed, ScreenConfig(threshold=0.9, rule=ExtensionRule(enabled=False)), text_finder=text_everywhere)
    v = off.screen([tile], release_time=101, cut_type="3x3")
    assert not v["abnormal"] and v["best"][0]["similarity"] < 0.9 or v["best"][0] is None
    assert not s.screen([clean], release_time=101)["abnormal"]
    notext = Screener(lib, embed, cfg, text_finder=lambda img: [])
    assert notext.screen([tile], 101)["regions"] == 0


def test_score_normalisation_by_the_background_bank(tmp_path):
    lib, embed = make_library(tmp_path / "lib", 3, day=100)
    tile = cut(poster(1), "2x2", None)[1].image
    every = lambda img: [(0, 0, img.width, img.height)]
    cfg = ScreenConfig(threshold=0.9, whole_picture=True, norm_beta=0.5, norm_k=2)
    raw = Screener(lib, embed, cfg, text_finder=every).screen([tile], 101)
    assert raw["abnormal"] and raw["matches"][0]["score"] == raw["matches"][0]["similarity"]  # no bank: raw
    v = embed([tile])[0]
    far, near = -v, v  # a bank of unrelated content lowers nothing much; one like the tile lowers the score
    for bank, abnormal in ((np.stack([far, far, far]), True), (np.stack([near, near, far]), False)):
        s = Screener(lib, embed, cfg, text_finder=every, background=bank)
        out = s.screen([tile], 101)
        best = out["best"][0]
        mean_top2 = np.sort(bank @ v)[-2:].mean()
        assert abs(best["score"] - (best["similarity"] - 0.5 * mean_top2)) < 1e-3 and out["abnormal"] == abnormal
    off = Screener(lib, embed, cfg.model_copy(update={"norm_beta": 0.0}), text_finder=every, background=np.stack([near]))
    assert off.screen([tile], 101)["abnormal"]


def test_background_bank_travels_with_the_descriptor(tmp_path):
    from docray.models import build_model, save_pretrained
    from docray.screening.embed import BACKGROUND, Embedder, load_background, npy_bytes
    from docray.storage.registry import ModelRegistry

    model = build_model("descriptor_tiny")
    bank = np.random.default_rng(0).normal(size=(5, 32)).astype(np.float32)
    folder = save_pretrained(model, tmp_path / "d")
    assert load_background(str(folder)) is None and Embedder.load(str(folder)).background is None
    (tmp_path / "d" / BACKGROUND).write_bytes(npy_bytes(bank))
    assert np.array_equal(Embedder.load(str(folder)).background, bank)
    reg = ModelRegistry()  # the test session's DOCRAY_HOME
    spec = {"name": "descriptor_tiny", "overrides": {}}
    v1 = reg.save("desc-bank-test", model, config=spec)
    v2 = reg.save("desc-bank-test", model, config=spec, extra_files={BACKGROUND: npy_bytes(bank)})
    assert load_background(f"registry:desc-bank-test:{v1}") is None
    assert np.array_equal(Embedder.load("registry:desc-bank-test").background, bank)  # latest = v2
    assert np.array_equal(load_background(f"registry:desc-bank-test:{v2}"), bank)


def test_threshold_travels_with_the_descriptor(tmp_path):
    """calibration.json beside the weights (a folder, an fsspec URI, a registry version) is read back by
    Embedder.load; Screener matches at it unless ScreenConfig.threshold sets one."""
    from docray.models import build_model, save_pretrained
    from docray.screening.calibrate import write_calibration
    from docray.screening.embed import Embedder, load_calibration
    from docray.storage.registry import ModelRegistry

    model = build_model("descriptor_tiny")
    folder = str(save_pretrained(model, tmp_path / "d"))
    assert load_calibration(folder) is None and Embedder.load(folder).calibration is None
    record = {"method": "screening", "threshold": 0.42, "max_fpr": 0.005, "n_neg": 400}
    assert write_calibration(folder, record) == f"{folder}/calibration.json"
    assert Embedder.load(folder).calibration == record
    write_calibration("memory://docray-test/desc", record)  # an object store's URI: through fsspec
    assert load_calibration("memory://docray-test/desc")["threshold"] == 0.42
    reg = ModelRegistry()  # the test session's DOCRAY_HOME
    v1 = reg.save("desc-cal-test", model, config={"name": "descriptor_tiny", "overrides": {}})
    assert load_calibration("registry:desc-cal-test") is None
    assert write_calibration("registry:desc-cal-test", dict(record, threshold=0.61)).endswith(f"/{v1}/calibration.json")
    assert Embedder.load(f"registry:desc-cal-test@{v1}").calibration["threshold"] == 0.61
    with pytest.raises(ValueError, match="nowhere"):
        write_calibration("build:descriptor_tiny", record)


def test_the_match_threshold_is_the_calibrated_one_unless_configured(tmp_path, monkeypatch, caplog):
    from docray.screening import matching

    lib, embed = make_library(tmp_path / "lib", 2)
    every = lambda img: [(0, 0, img.width, img.height)]
    tile = cut(poster(1), "2x2", None)[1].image  # a library tile: score ~1
    cal = Screener(lib, embed, ScreenConfig(), text_finder=every, calibration={"threshold": 0.42})
    v = cal.screen([tile], 101)
    assert (v["threshold"], v["threshold_source"]) == (0.42, "calibrated") and v["abnormal"]
    above = Screener(lib, embed, ScreenConfig(), text_finder=every, calibration={"threshold": 1.01})
    assert not above.screen([tile], 101)["abnormal"]  # the calibrated threshold decides
    embed.calibration = {"threshold": 1.01}  # read from the embedder (Embedder.load's calibration.json)
    assert Screener(lib, embed, ScreenConfig(), text_finder=every).threshold == 1.01
    over = Screener(lib, embed, ScreenConfig(threshold=0.42), text_finder=every)  # an explicit override
    v = over.screen([tile], 101)
    assert (v["threshold"], v["threshold_source"]) == (0.42, "config") and v["abnormal"]
    del embed.calibration
    monkeypatch.setattr(matching, "_warned", False)
    with caplog.at_level("WARNING", logger="docray.screening"):
        bare = Screener(lib, embed, ScreenConfig(), text_finder=every)
        Screener(lib, embed, ScreenConfig(), text_finder=every)
    v = bare.screen([tile], 101)
    assert (v["threshold"], v["threshold_source"]) == (matching.UNCALIBRATED_THRESHOLD, "uncalibrated-default")
    assert sum("no calibration.json" in r.getMessage() for r in caplog.records) == 1  # warned once


def test_save_descriptor_writes_model_and_background_bank_then_calibrates(tmp_path):
    from docray.models import build_model
    from docray.screening.data import raw_tiles
    from docray.screening.embed import Embedder
    from train_jobs.train_screening import ScreeningTrainConfig, save_descriptor

    cfg = ScreeningTrainConfig(model="descriptor_tiny", background_pictures=3, background_distractors=5, to_registry=True)
    model = build_model("descriptor_tiny")
    pictures = [poster(i) for i in range(6)]
    res = save_descriptor(model, model.docray_spec, {"val_top1": 0.5}, cfg, str(tmp_path / "run"), pictures)
    local, registered = Embedder.load(res["model_dir"]), Embedder.load(f"registry:descriptor:{res['registry_version']}")
    assert local.background.shape == (len(raw_tiles(pictures[:3])) + 5, 32)  # tiles of 3 pictures + 5 whole ones
    assert np.array_equal(local.background, registered.background)
    assert np.allclose(np.linalg.norm(local.background, axis=1), 1, atol=1e-4)
    # then its threshold, calibrated on other pictures: beside the saved model and the registered version
    from docray.storage.datasets import write_shards
    from docray.synth import generate
    from train_jobs.train_screening import calibrate

    write_shards(generate("targets", 0, 8, seed=3, size=96), str(tmp_path / "cal"))
    cfg = cfg.model_copy(update={"calibrate": str(tmp_path / "cal"), "calibrate_queries": 4, "max_fpr": 0.25})
    record = calibrate(model, res, cfg)
    assert Embedder.load(res["model_dir"]).calibration == record and record["n_neg"] == 4
    registered = Embedder.load(f"registry:descriptor@{res['registry_version']}").calibration
    assert registered["threshold"] == record["threshold"]
    assert registered["descriptor"] == f"registry:descriptor@{res['registry_version']}"


def test_to_day():
    assert to_day("1970-01-11") == 10 and to_day(42) == 42
    assert to_day("2024-01-01T12:00:00Z") == to_day(np.datetime64("2024-01-01")) == 19723
    with pytest.raises(ValueError):
        to_day("yesterday")


def test_real_ocr_finds_the_text_of_a_poster():
    """The one test that runs rapidocr (detection only, cached engine)."""
    from docray.imageio import decode_image
    from docray.screening.ocr import text_boxes
    from docray.synth import generate

    t = generate("targets", 0, 8, seed=0, target_rate=1.0)
    row = t.slice(0, 1).to_pylist()[0]
    boxes = text_boxes(decode_image(row["image"]))
    x0, y0, x1, y1 = row["text_box"]
    assert boxes and any(b[0] < x1 and x0 < b[2] and b[1] < y1 and y0 < b[3] for b in boxes)
    assert text_boxes(Image.new("RGB", (120, 80), (200, 210, 220))) == []  # a flat picture has no text
    # a small crop is scaled up for the detector; its boxes come back in the crop's own pixels
    crop = decode_image(row["image"]).crop((x0, y0, x1, y1)).resize(((x1 - x0) // 3, (y1 - y0) // 3))
    small = text_boxes(crop, min_side=1, upscale_to=128)
    assert small and all(0 <= b[0] < b[2] <= crop.width and 0 <= b[1] < b[3] <= crop.height for b in small)


def test_region_jitter():
    from docray.screening.augment import region_jitter

    rng = np.random.default_rng(0)
    tile = Image.new("RGB", (100, 50), (0, 0, 0))
    for _ in range(20):
        out = np.asarray(region_jitter(tile, rng, max_in=0.06, max_out=0.04))
        assert 88 <= out.shape[1] <= 108 and 44 <= out.shape[0] <= 54  # at most 6% in, 4% out per side
        page = out.min(-1) > 200  # outside the tile only the (light) page shows, and only as a margin
        assert not page[out.shape[0] // 2 - 5: out.shape[0] // 2 + 5, 10:-10].any()


def test_descriptor_tiny_shapes_norm_and_roundtrip(tmp_path):
    import torch

    from docray.models import build_model, from_pretrained, save_pretrained
    from train_jobs.train_screening import info_nce, koleo

    torch.manual_seed(0)
    m = build_model("descriptor_tiny").eval()
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        z = m(x)
    assert z.shape == (4, 32) and torch.allclose(z.norm(dim=1), torch.ones(4), atol=1e-5) and torch.isfinite(z).all()
    back = from_pretrained(save_pretrained(m, tmp_path / "d")).eval()
    with torch.no_grad():
        assert torch.allclose(back(x), z, atol=1e-6)
    keys = torch.arange(4)
    assert info_nce(z, z, keys, 0.05) < info_nce(z, z.roll(1, 0), keys, 0.05)  # aligned pairs cost less
    assert torch.isfinite(koleo(z))


def test_default_ann_is_ivfpq_on_cpu_and_ivf_flat_where_faiss_searches_on_a_gpu():
    v = unit(300, 16)
    cpu, gpu = TileIndex(16, ann_threshold=100, use_gpu=False), TileIndex(16, ann_threshold=100, use_gpu=True)
    ids = [idx.add(v, np.arange(300), np.arange(300) % 8) for idx in (cpu, gpu)][0]
    assert cpu.current_kind == "ivfpq" and gpu.current_kind == "ivf"  # fast-scan PQ has no GPU search
    assert list(cpu.search(v[:4], 1)[1][:, 0]) == list(ids[:4])


def test_ocr_crop_adds_the_text_region_with_its_margin(tmp_path):
    lib, embed = make_library(tmp_path / "lib", 1)
    pic = poster(7, (200, 100))
    lines = lambda img: [(60, 40, 120, 52)] if img.size == (200, 100) else []  # "OCR": one line, found on the picture
    cfg = ScreenConfig(ocr_crop=True, ocr_margin=0.1)
    plain = [r.box for r in Screener(lib, embed, cfg.model_copy(update={"ocr_crop": False}), text_boxes=lines).regions([pic])]
    regions = Screener(lib, embed, cfg, text_boxes=lines).regions([pic])
    assert [r.box for r in regions] == plain + [(50, 30, 130, 62)]  # the text line widened by 10 px (0.1 x 100)
    assert regions[-1].crop.size == (80, 32)
    assert [r.box for r in Screener(lib, embed, cfg, text_boxes=lambda img: []).regions([pic])] == plain  # no text
    tiny = Screener(lib, embed, cfg.model_copy(update={"ocr_margin": 0.0, "min_region": 16}), text_boxes=lines)
    assert [r.box for r in tiny.regions([pic])] == plain  # a 12 px high crop is below min_region
    wide = Screener(lib, embed, cfg.model_copy(update={"ocr_margin": 1.0}), text_boxes=lines)
    assert [r.box for r in wide.regions([pic])] == plain  # the crop is the whole picture: not searched twice


def test_the_second_match_adds_every_picture_of_the_document(tmp_path):
    lib, embed = make_library(tmp_path / "lib", 3, day=100)
    cfg = ScreenConfig(threshold=0.9, rule=ExtensionRule(delta_t=5, direction="both", other_cut_types=True))
    tile = cut(poster(1), "2x2", None)[1].image  # target 1's tile, found only by the extension rule below
    others = [poster(60), poster(61, (90, 120))]
    n = len(lib)
    v = Screener(lib, embed, cfg).screen([others[0], tile, others[1]], release_time=104, cut_type="3x3")
    assert v["abnormal"] and v["stage"] == "extended" and v["added_tiles"] == 3 and len(lib) == n + 3
    added = lib.meta.slice(n).to_pylist()
    assert {r["origin"] for r in added} == {"wild"} and {r["release_day"] for r in added} == {to_day(104)}
    assert {r["cut_type"] for r in added} == {"3x3"} and {r["source_id"] for r in added} == {"wild:src-1"}
    # the document's other pictures are found now, by the first match
    for pic in others:
        assert Screener(lib, embed, cfg).screen([pic], release_time=104, cut_type="3x3")["stage"] == "primary"
    # without the whole pictures among the regions (OCR gate) the embedder adds them; nothing twice
    lib2, embed2 = make_library(tmp_path / "lib2", 3, day=100)
    gate = lambda crop: [(0, 0, 1, 1)] if crop.size == tile.size else []
    v = Screener(lib2, embed2, cfg, text_finder=gate).screen([others[0], tile, others[1]], release_time=104, cut_type="3x3")
    assert v["added_tiles"] == 3
    v = Screener(lib2, embed2, cfg, text_finder=gate).screen([others[0], tile], release_time=104, cut_type="3x3")
    assert v["stage"] == "primary" and v["added_tiles"] == 0
