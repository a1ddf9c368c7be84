"""docray.synth: determinism, schemas, labels that agree with the pixels, option checks. No Ray."""
from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa
import pytest
import yaml
from PIL import Image

from docray.imageio import decode_array, decode_image
from docray.synth import KINDS, contact_sheet, generate, schema
from docray.synth.captures import homography, warp_labels
from docray.synth.faces import face_geometry, render_face, sample_pose
from docray.synth.masks import BIN_EDGES, area_bin
from docray.synth.targets import make_upload
from docray.synth.templates import DOC_TYPES

SMALL = {"documents": {"size": (128, 80), "n_angles": 1}, "faces": {"size": 32}, "targets": {"size": 64}, "masks": {"size": 32}}


@pytest.fixture(scope="module")
def docs() -> list[dict]:
    """120 documents at the default size: enough for every type and for the rates."""
    return generate("documents", 0, 120, seed=0).to_pylist()


def _rank(x) -> np.ndarray:
    return np.argsort(np.argsort(np.asarray(x)))


def spearman(a, b) -> float:
    return float(np.corrcoef(_rank(a), _rank(b))[0, 1])


def _inside(box, w, h) -> bool:
    x0, y0, x1, y1 = box
    return 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h


# ---------------------------------------------------------------- determinism, schemas, options


@pytest.mark.parametrize("kind", KINDS)
def test_deterministic_and_split_invariant(kind):
    opts = SMALL[kind]
    a = generate(kind, 0, 6, seed=3, **opts)
    assert a.schema == schema(kind) and a.num_rows == 6
    assert a.equals(generate(kind, 0, 6, seed=3, **opts))
    assert a.equals(pa.concat_tables([generate(kind, 0, 2, seed=3, **opts), generate(kind, 2, 6, seed=3, **opts)]))
    key = "mask" if kind == "masks" else "image"
    other = generate(kind, 0, 6, seed=4, **opts)
    assert other.column(key).to_pylist() != a.column(key).to_pylist()
    assert len(set(a.column("id").to_pylist())) == 6


def test_unknown_kind_and_options_raise():
    with pytest.raises(ValueError, match="unknown kind"):
        generate("cats", 0, 1)
    with pytest.raises(ValueError, match="unknown kind"):
        schema("cats")
    with pytest.raises(ValueError, match="unknown option.*bogus"):
        generate("faces", 0, 1, bogus=1)
    with pytest.raises(ValueError, match="n_angles"):
        generate("documents", 0, 1, n_angles=-1)
    with pytest.raises(ValueError, match="start"):
        generate("masks", 5, 2)
    assert generate("masks", 3, 3).num_rows == 0


def test_option_rates_and_angles():
    t = generate("documents", 0, 8, tamper_rate=1.0, recapture_rate=0.0, n_angles=0, size=(160, 100)).to_pylist()
    assert all(r["tampered"] and not r["recapture"] and r["angles"] == [] for r in t)
    assert decode_image(t[0]["image"]).size == (160, 100)


# ---------------------------------------------------------------- documents


def test_every_document_type_appears(docs):
    names = [r["doc_type_name"] for r in docs]
    assert set(names) == set(DOC_TYPES) and len(DOC_TYPES) >= 6
    assert min(names.count(n) for n in DOC_TYPES) >= 8
    assert all(DOC_TYPES[r["doc_type"]] == r["doc_type_name"] for r in docs)


def test_documents_of_a_user_type(monkeypatch, tmp_path):
    """A type added by a template file alone (examples/doctypes: Chinese fields) is drawn on request;
    the default rows stay the six built-ins whatever the user registered."""
    monkeypatch.setenv("DOCRAY_DOCTYPES", str(Path(__file__).parents[1] / "examples" / "doctypes"))
    rows = generate("documents", 0, 12, seed=1, doc_types=["cn_resident_card", "passport_page"], n_angles=0).to_pylist()
    cn = [r for r in rows if r["doc_type_name"] == "cn_resident_card"]
    assert 3 <= len(cn) <= 9 and {r["doc_type_name"] for r in rows} == {"cn_resident_card", "passport_page"}
    assert all(r["doc_type"] == 6 for r in cn)  # after the six built-ins
    for r in cn:
        assert [f["name"] for f in r["fields"]] == ["name", "sex", "ethnicity", "birth_date", "address", "id_number"]
        name, sex = r["fields"][0]["text"], r["fields"][1]["text"]
        assert 2 <= len(name) <= 3 and all("\u4e00" <= c <= "\u9fff" for c in name) and sex in ("男", "女")
        assert r["portrait_box"] and not r["seal_box"]  # the template has a portrait slot and no seal
        assert all(_inside(f["box"], 256, 160) for f in r["fields"])
    assert set(generate("documents", 0, 12, seed=0, n_angles=0).column("doc_type_name").to_pylist()) <= set(DOC_TYPES)
    with pytest.raises(ValueError, match="unknown document type 'visa'.*cn_resident_card"):
        generate("documents", 0, 1, doc_types=["visa"])
    data = yaml.safe_load((Path(__file__).parents[1] / "examples" / "doctypes" / "cn_resident_card.yaml").read_text("utf-8"))
    data["fields"][0]["value"] = ""  # a type known from its dataset only: no generator to draw it with
    (tmp_path / "no_values.yaml").write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    monkeypatch.setenv("DOCRAY_DOCTYPES", str(tmp_path))
    with pytest.raises(ValueError, match="type 'no_values' field 'name' has value generator ''"):
        generate("documents", 0, 1, doc_types=["no_values"])


def test_document_images_and_boxes(docs):
    for r in docs:
        img = decode_image(r["image"])
        w, h = img.size
        assert (w, h) == (256, 160) and decode_image(r["clean"]).size == (w, h) and decode_image(r["flash"]).size == (w, h)
        assert len(r["angles"]) == 2 and all(decode_image(a).size == (w, h) for a in r["angles"])
        assert len(r["fields"]) >= 5 and all(f["text"] for f in r["fields"])
        assert [f["name"] for f in r["fields"]] == [f["name"] for f in r["clean_fields"]]
        for f in r["fields"]:
            assert _inside(f["box"], w, h), (r["id"], f)
        doc = r["clean_doc_box"]
        for f in r["clean_fields"]:
            b = f["box"]
            assert doc[0] <= b[0] < b[2] <= doc[2] and doc[1] <= b[1] < b[3] <= doc[3], (r["id"], f)
        for k in ("portrait_box", "seal_box", "tamper_box"):
            assert (r[k] == []) == (r["clean_" + k] == [])
            assert r[k] == [] or (_inside(r[k], w, h) and _inside(r["clean_" + k], w, h))
        assert (r["identity"] >= 0) == bool(r["portrait_box"])
        assert (r["seal_color"] in ("red", "blue")) == bool(r["seal_box"])
        assert (r["seal_shape"] in ("circle", "ellipse", "rectangle", "square")) == bool(r["seal_box"])
        assert r["split"] in ("train", "val", "test")


def test_seg_map_agrees_with_boxes(docs):
    n_portraits = 0
    for r in docs:
        seg = decode_array(r["seg"], mode="L")
        assert set(np.unique(seg)) <= {0, 1, 2, 3}
        box_mask = lambda b: np.pad(np.ones((b[3] - b[1], b[2] - b[0]), bool), ((b[1], seg.shape[0] - b[3]), (b[0], seg.shape[1] - b[2])))
        if r["portrait_box"]:
            n_portraits += 1
            inside = box_mask(r["portrait_box"])
            assert not ((seg == 1) & ~inside).any(), r["id"]
            assert (seg[inside] == 1).mean() > 0.6, r["id"]
        else:
            assert not (seg == 1).any()
        if r["seal_box"]:
            assert not ((seg == 2) & ~box_mask(r["seal_box"])).any(), r["id"]
            assert (seg == 2).sum() > 0.4 * box_mask(r["seal_box"]).sum()
        else:
            assert not (seg == 2).any()
        text = np.zeros_like(seg, bool)
        for f in r["fields"]:
            text |= box_mask(f["box"])
        assert (seg == 3).any() and not ((seg == 3) & ~text).any(), r["id"]
    assert n_portraits > 40


def test_quality_follows_the_pixels(docs):
    """quality ~ PSNR of the capture against the clean document warped by the recorded quad, and ~ sharpness."""
    psnr, sharp, quality = [], [], []
    for r in docs:
        img = decode_array(r["image"]).astype(np.float32)
        x0, y0, x1, y1 = r["clean_doc_box"]
        doc = decode_array(r["clean"])[y0:y1, x0:x1]
        H = homography([(0, 0), (x1 - x0, 0), (x1 - x0, y1 - y0), (0, y1 - y0)], np.reshape(r["doc_quad"], (4, 2)))
        ref = cv2.warpPerspective(doc, H, (img.shape[1], img.shape[0]), flags=cv2.INTER_LINEAR).astype(np.float32)
        inside = cv2.erode(warp_labels(np.ones(doc.shape[:2], np.uint8), H, (img.shape[1], img.shape[0])), np.ones((5, 5))) > 0
        assert inside.mean() > 0.4
        psnr.append(10 * np.log10(255**2 / ((img - ref) ** 2)[inside].mean()))
        gray = cv2.medianBlur(cv2.cvtColor(img.astype(np.uint8), cv2.COLOR_RGB2GRAY), 3)
        sharp.append(cv2.Laplacian(gray, cv2.CV_32F)[inside].var())
        quality.append(r["quality"])
    assert 0 < min(quality) and max(quality) <= 1 and np.ptp(quality) > 0.5
    assert spearman(quality, psnr) > 0.7
    assert spearman(quality, sharp) > 0.5


def test_recapture_and_tamper_rates(docs):
    rec = np.mean([r["recapture"] for r in docs])
    tam = np.mean([r["tampered"] for r in docs])
    assert 0.1 < rec < 0.32 and 0.1 < tam < 0.32, (rec, tam)
    for r in docs:
        assert bool(r["tamper_box"]) == r["tampered"] == bool(r["tamper_field"])
        assert not r["angles_tampered"] or r["tampered"]
        if r["tampered"]:
            f = {f["name"]: f["box"] for f in r["clean_fields"]}[r["tamper_field"]]
            t = r["clean_tamper_box"]
            assert t[0] <= f[0] and t[1] <= f[1] and f[2] <= t[2] and f[3] <= t[3]
    assert 0 < sum(r["angles_tampered"] for r in docs) < sum(r["tampered"] for r in docs)


def test_substituted_angle_views_leave_every_other_column_unchanged(docs):
    assert not any(r["angles_swapped"] for r in docs)  # swap_rate defaults to 0
    swapped = generate("documents", 0, 12, seed=0, swap_rate=0.5).to_pylist()
    assert 0 < sum(r["angles_swapped"] for r in swapped) < 12
    for a, b in zip(swapped, docs[:12]):  # its own random stream: only the angle views differ
        assert {k: v for k, v in a.items() if k not in ("angles", "angles_swapped")} == \
               {k: v for k, v in b.items() if k not in ("angles", "angles_swapped")}
        assert (a["angles"] == b["angles"]) == (not a["angles_swapped"])


def test_flash_frame_has_a_hotspot(docs):
    """flash is the same scene plus flash light: more near-saturated pixels than the no-flash frame."""
    brighter = [(decode_array(r["flash"]).min(2) > 245).mean() > (decode_array(r["image"]).min(2) > 245).mean() for r in docs]
    assert np.mean(brighter) > 0.8


def test_recaptures_carry_moire():
    """Same index, same document; a recapture adds band energy at low frequency across the frame."""
    a = generate("documents", 0, 6, recapture_rate=0.0, n_angles=0).to_pylist()
    b = generate("documents", 0, 6, recapture_rate=1.0, n_angles=0).to_pylist()
    assert [r["clean"] for r in a] == [r["clean"] for r in b]
    assert all(x["image"] != y["image"] and y["recapture"] for x, y in zip(a, b))


# ---------------------------------------------------------------- faces


def test_face_geometry_is_set_by_identity():
    assert face_geometry(7) == face_geometry(7)
    g = [face_geometry(i) for i in range(60)]
    assert len({x.eye_dx for x in g}) == 60 and len({x.face_w for x in g}) == 60  # geometry, not only colour
    assert len({x.hair_style for x in g}) >= 6 and len({x.skin for x in g}) == 60


def test_face_rows():
    t = generate("faces", 0, 30, n_identities=10, size=48).to_pylist()
    assert [r["identity"] for r in t] == [i % 10 for i in range(30)]
    assert [r["sample"] for r in t] == [i // 10 for i in range(30)]
    assert all(decode_image(r["image"]).size == (48, 48) for r in t)
    a, b = decode_array(t[0]["image"]), decode_array(t[10]["image"])  # same identity, other sample
    assert not np.array_equal(a, b)
    splits = {r["sample"]: r["split"] for r in generate("faces", 0, 10 * 4, n_identities=4, size=32).to_pylist()}
    assert splits[8] == "val" and splits[9] == "test" and splits[0] == "train"


def test_faces_cluster_by_identity():
    """Nearest neighbour on the centre of small thumbnails (face, little background) beats chance by far."""
    t = generate("faces", 0, 16 * 6, n_identities=16, size=32).to_pylist()
    y = np.array([r["identity"] for r in t])
    x = np.stack([decode_array(r["image"])[8:24, 8:24].astype(np.float32).ravel() for r in t])
    x -= x.mean(1, keepdims=True)
    d = ((x[:, None] - x[None]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    acc = (y[d.argmin(1)] == y).mean()
    assert acc > 4 / 16, acc  # chance is 1/16


# ---------------------------------------------------------------- targets


def test_targets():
    t = generate("targets", 0, 60, size=96).to_pylist()
    frac = np.mean([r["is_target"] for r in t])
    assert 0.3 < frac < 0.7
    t0 = dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc)
    for r in t:
        img = decode_image(r["image"])
        assert img.size == (96, 96)
        assert t0 <= r["release_time"] < t0 + dt.timedelta(days=367)
        assert r["source_id"].startswith("src-")
        if r["is_target"]:
            assert r["category"] in ("address_poster", "url_poster") and r["text"] and _inside(r["text_box"], 96, 96)
        elif r["category"] == "text_poster":
            assert r["text"] and _inside(r["text_box"], 96, 96)
        else:
            assert r["text"] == "" and r["text_box"] == []
    assert any("." in r["text"] for r in t if r["category"] == "url_poster")


def test_make_upload_carries_the_tile():
    tile = Image.new("RGB", (40, 30), (255, 0, 255))
    up = make_upload(tile, np.random.default_rng(0), n_pictures=4, size=(384, 256))
    img = np.asarray(up["image"])
    assert up["image"].size == (384, 256) and len(up["boxes"]) == 4 and up["tile_box"] in up["boxes"]
    x0, y0, x1, y1 = up["tile_box"]
    assert _inside(up["tile_box"], 384, 256) and abs((x1 - x0) / (y1 - y0) - 4 / 3) < 0.1
    assert np.abs(img[y0:y1, x0:x1].astype(int) - (255, 0, 255)).max() < 10
    for b in up["boxes"]:
        assert _inside(b, 384, 256)
        if b != up["tile_box"]:
            assert b[2] <= x0 or x1 <= b[0] or b[3] <= y0 or y1 <= b[1]  # no overlap with the tile


# ---------------------------------------------------------------- masks


def test_area_bin():
    assert [area_bin(v) for v in (0.005, 0.01, 0.0101, 0.1, 0.15, 0.6, 0.61)] == [-1, -1, 0, 0, 1, 5, -1]
    assert BIN_EDGES == (0.01, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6)


def test_masks_land_in_their_bins():
    t = generate("masks", 0, 36).to_pylist()
    for i, r in enumerate(t):
        img = decode_image(r["mask"], mode=None)
        m = np.asarray(img)
        assert img.mode == "L" and img.size == (64, 64) and set(np.unique(m)) <= {0, 255}
        ratio = (m == 0).mean()
        assert abs(ratio - r["hole_ratio"]) < 1e-6
        assert area_bin(ratio) == r["bin"] == i % 6
    assert sorted({r["bin"] for r in t}) == list(range(6))


# ---------------------------------------------------------------- contact sheets


@pytest.mark.parametrize("kind", KINDS)
def test_contact_sheet(kind):
    t = generate(kind, 0, 5, **SMALL[kind])
    sheet = contact_sheet(t, kind, n=4)
    a = np.asarray(sheet)
    assert isinstance(sheet, Image.Image) and sheet.width > 100 and sheet.height > 50 and a.std() > 10


# ---------------------------------------------------------------- procedural mix of targets


def test_targets_mix_zero_is_the_posters_as_before():
    """mix=0 (the default) draws exactly the rows it always drew; with a mix, the rows that stay
    posters are those same rows (the mix draws from its own stream)."""
    import hashlib
    import json

    base = generate("targets", 0, 40, seed=5, size=64)
    assert base.equals(generate("targets", 0, 40, seed=5, size=64, mix=0.0))
    # the columns drawn after the picture (release_time, source_id) move if the posters' draws change
    meta = [[r[c] for c in ("id", "is_target", "category", "text", "text_box", "source_id")] + [str(r["release_time"])]
            for r in base.to_pylist()]
    digest = hashlib.sha256(json.dumps(meta).encode()).hexdigest()[:16]
    assert digest == "55dbfbd335b506c1", digest  # drawn by the code before the mix existed
    mixed = generate("targets", 0, 40, seed=5, size=64, mix=0.5).to_pylist()
    from docray.synth.procedural import FAMILIES

    kept = [i for i, r in enumerate(mixed) if r["category"] not in FAMILIES]
    assert 8 < len(kept) < 32
    assert all(mixed[i] == base.slice(i, 1).to_pylist()[0] for i in kept)


def test_targets_mix_rows_are_deterministic_and_keep_the_contract():
    from docray.synth.procedural import FAMILIES

    opts = dict(size=64, mix=1.0, families=("voronoi", "faces", "documents"))
    a = generate("targets", 0, 12, seed=2, **opts)
    assert a.schema == schema("targets") and a.equals(generate("targets", 0, 12, seed=2, **opts))
    assert a.equals(pa.concat_tables([generate("targets", 0, 5, seed=2, **opts), generate("targets", 5, 12, seed=2, **opts)]))
    rows = a.to_pylist()
    assert {r["category"] for r in rows} <= {"voronoi", "faces", "documents"}
    for r in rows:
        assert decode_image(r["image"]).size == (64, 64)
        if r["is_target"]:
            assert r["text"] and _inside(r["text_box"], 64, 64)
        assert bool(r["text"]) == bool(r["text_box"])
    assert contact_sheet(a, "targets").size[0] > 64
    with pytest.raises(ValueError, match="families"):
        generate("targets", 0, 1, families=("dead_leaves",))
    with pytest.raises(ValueError, match="mix"):
        generate("targets", 0, 1, mix=1.5)
    assert set(FAMILIES).isdisjoint({"dead_leaves", "spectral_noise", "gradient", "collage", "pattern"})


@pytest.mark.parametrize("family", ["polygons", "voronoi", "waves", "value_noise", "ifs", "faces", "documents"])
def test_procedural_family_draws_a_picture(family):
    from docray.screening.backgrounds import BACKGROUNDS
    from docray.synth.procedural import FAMILIES, draw

    assert family in FAMILIES and family not in BACKGROUNDS  # the benchmark's backdrops stay unseen
    img = draw(family, np.random.default_rng([0, 1]), (96, 80))
    arr = np.asarray(img)
    assert img.mode == "RGB" and img.size == (96, 80)
    assert arr.std() > 10 and len(np.unique(arr.reshape(-1, 3), axis=0)) >= 8  # not flat
    assert np.array_equal(arr, np.asarray(draw(family, np.random.default_rng([0, 1]), (96, 80))))


def test_a_fringe_below_the_brows_draws_at_any_size():
    """Hair style 3 (a fringe to the brows) with the brows above the hairline raised in Pillow at
    the procedural pictures' size (192 px); such a face now has no fringe."""
    g = dataclasses.replace(face_geometry(0), hair_style=3, hairline=0.12, eye_y=-0.07, brow_gap=0.075)
    for size in (32, 192, 384):
        assert render_face(g, sample_pose(np.random.default_rng(0)), (size, size)).size == (size, size)
