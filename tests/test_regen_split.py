"""Issue 17, item 4: split mode's terminal file stored one-to-one, attachments by number and role (the
seals compressed, the document without its portrait stored), the processed image within the first
threshold's bytes, and the portrait of a skewed capture pasted back through the document's corners.
Tiny untrained models; the gate and the corners are set by hand where a trained model would give them."""
from __future__ import annotations

import io

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from docray.client import compress_on_terminal
from docray.regen import fields, layout
from docray.regen.file_types import ThresholdError, load_file_types
from docray.regen.pipeline import RegenCompressor, UploadRefused
from docray.regen.provenance import read_provenance
from docray.regen.quality import encode, fit_first
from docray.imageio import encode_png, sniff_format
from docray.models import build_model
from docray.storage.blobs import NotFound
from docray.storage.repository import AccessDenied, ImageRepository
from docray.synth import generate
from tests.test_regen_models import TINY_LIB


@pytest.fixture(scope="module")
def rows():
    return generate("documents", 0, 11, seed=0, n_angles=0).to_pylist()  # 0: residence permit, 10: identity card + seal


@pytest.fixture
def repo(tmp_path):
    with ImageRepository(url=f"sqlite:///{tmp_path}/r.db", blob_root=str(tmp_path / "blobs")) as r:
        yield r


def pipeline(doc_type: str | None = None, quad=None, **kw) -> RegenCompressor:
    """Tiny random weights; the gate passes `doc_type` (None: the uncalibrated gate, the codec path);
    `quad`: the corners the corner head would find."""
    torch.manual_seed(0)
    rc = RegenCompressor(build_model("regen_tiny"), file_types=load_file_types(kw.pop("lib", TINY_LIB)),
                         ungated=doc_type is not None, steps=1, **kw)
    if doc_type is not None:
        rc.gate = lambda images: [{"passed": True, "type": doc_type, "confidence": 0.99, "calibrated": True,
                                   "reason": None}] * len(images)
    if quad is not None:
        rc.locate = lambda images: np.stack([np.asarray(quad, np.float64)] * len(images))
    return rc


def test_split_mode_stores_the_terminals_file_once_and_refuses_a_wrong_one(rows, repo):
    row = rows[10]  # identity card: second threshold 96x64 px, 2,500 B in TINY_LIB
    rc = pipeline(row["doc_type_name"], np.reshape(row["doc_quad"], (4, 2)))
    out = rc.run(row["image"], mode="split", repo=repo)
    rid, stamp = out["record_id"], out["provenance"]
    fmt = rc.lib.get(row["doc_type_name"]).format
    other = "jpeg" if fmt == "webp" else "webp"
    assert repo.record(rid)["sizes"]["compressed"] is None  # split mode: the server compressed nothing
    processed = Image.open(io.BytesIO(out["processed"])).convert("RGB")
    blobs = len(repo.blobs.keys())

    wrong = {  # each refused with its status and code, nothing stored
        "a larger picture": (encode(processed.resize((128, 85)), fmt, 20, stamp), 422, "over_second_threshold"),
        "too many bytes": (encode(processed, fmt, 100, stamp), 422, "over_second_threshold"),
        "another format": (encode(processed, other, 50, stamp), 415, "wrong_format"),
        "no provenance stamp": (encode(processed, fmt, 50, None), 422, "no_provenance"),
        "another record's stamp": (encode(processed, fmt, 50, {**stamp, "record_id": "f" * 32}), 422, "no_provenance"),
        "another picture": (encode(Image.new("RGB", (96, 64), (20, 20, 20)), fmt, 50, stamp), 422, "not_this_image"),
    }
    assert len(wrong["too many bytes"][0]) > 2500 and Image.open(io.BytesIO(wrong["a larger picture"][0])).width > 96
    for name, (data, status, code) in wrong.items():
        with pytest.raises(UploadRefused) as e:
            rc.accept_compressed(repo, rid, data)
        assert (e.value.status, e.value.code) == (status, code), (name, str(e.value))
    assert repo.record(rid)["sizes"]["compressed"] is None and len(repo.blobs.keys()) == blobs

    terminal = compress_on_terminal(out["processed"], out["type"], TINY_LIB)  # what the client uploads
    assert read_provenance(terminal)["record_id"] == rid  # the stamp travels with the file
    answer = rc.accept_compressed(repo, rid, terminal)
    assert answer["format"] == fmt and answer["sizes"]["compressed"] == len(terminal) <= 2500
    assert repo.get(rid, "compressed", "user") == terminal  # stored as uploaded, byte for byte
    assert repo.record(rid)["meta"]["compressed_by"] == "terminal"
    with pytest.raises(UploadRefused) as e:  # one-to-one: once
        rc.accept_compressed(repo, rid, terminal)
    assert (e.value.status, e.value.code) == (409, "already_compressed")

    server = rc.run(row["image"], mode="server", repo=repo)
    with pytest.raises(UploadRefused) as e:
        rc.accept_compressed(repo, server["record_id"], terminal)
    assert e.value.code == "not_split"
    with pytest.raises(NotFound):
        rc.accept_compressed(repo, "0" * 32, terminal)


def test_a_codec_path_record_takes_the_codec_entry(rows, repo):
    rc = pipeline()  # uncalibrated: every upload takes the codec path
    out = rc.run(rows[1]["image"], mode="split", repo=repo)
    assert out["method"] == "codec" and out["type"] is None and out["attachments"] == []
    data = compress_on_terminal(out["processed"], None, TINY_LIB)  # the codec entry: the strictest type, webp here
    assert sniff_format(data) == rc.lib.codec_entry().format.upper()
    assert rc.accept_compressed(repo, out["record_id"], data)["sizes"]["compressed"] == len(data)


def test_attachments_by_number_and_role(rows, repo):
    row = rows[10]  # an identity card with its portrait and a red seal
    rc = pipeline(row["doc_type_name"], np.reshape(row["doc_quad"], (4, 2)))
    out = rc.run(row["image"], mode="server", repo=repo)
    rid, listed = out["record_id"], out["attachments"]
    assert [(a["n"], a["kind"], a["readable_by"]) for a in listed[:2]] == [(0, "portrait", "admin"), (1, "document", "admin")]
    seals = [a for a in listed if a["kind"] == "seal"]
    assert len(seals) == len(out["seals"]) >= 1 and all(a["readable_by"] == "user" for a in seals)
    assert [a["n"] for a in listed] == list(range(len(listed))) == [a["n"] for a in repo.record(rid)["attachments"]]

    fmt = rc.lib.get(row["doc_type_name"]).format
    for a in seals:  # compressed in the type's format, within the bits per pixel of its second threshold
        data = repo.attachment(rid, a["n"], "user")["data"]
        assert sniff_format(data) == fmt.upper() == a["format"].upper() and len(data) == a["bytes"]
        x0, y0, x1, y1 = a["box"]
        assert len(data) <= max(1024, 2500 * (x1 - x0 + 4) * (y1 - y0 + 4) / (96 * 64))
    for n in (0, 1):  # the original's pixels: admins only
        with pytest.raises(AccessDenied, match="admin"):
            repo.attachment(rid, n, "user")
    document = Image.open(io.BytesIO(repo.attachment(rid, 1, "admin")["data"]))
    capture = Image.open(io.BytesIO(row["image"])).convert("RGB")
    assert document.size == capture.size  # the document without its portrait, at the capture's size
    poly = np.asarray(out["split"]["polygon"])
    inside = np.zeros(capture.size[::-1], np.uint8)
    cv2.fillPoly(inside, [np.round(poly).astype(np.int32)], 1)
    inside = cv2.erode(inside, np.ones((5, 5), np.uint8)) > 0
    changed = np.abs(np.asarray(document.convert("RGB"), int) - np.asarray(capture, int)).max(axis=2) > 30
    assert changed[inside].mean() > 0.3 and changed[~cv2.dilate(inside.astype(np.uint8), np.ones((15, 15))).astype(bool)].mean() == 0
    assert [a["kind"] for a in repo.attachments(rid, "user")] == ["seal"] * len(seals)
    with pytest.raises(NotFound):
        repo.attachment(rid, len(listed), "admin")


def test_the_processed_image_fits_the_first_thresholds_bytes(rows, repo):
    noisy = Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 96, 3), dtype=np.uint8))
    lib = load_file_types({**TINY_LIB, "first": {**TINY_LIB["first"], "bytes": 6000}})
    data, how = fit_first(noisy, lib, {"generator": "docray", "record_id": None})
    assert len(encode_png(noisy)) > 6000 >= len(data) and how.startswith("png-")  # a palette, not lossless
    assert read_provenance(data)["generator"] == "docray"
    with pytest.raises(ThresholdError, match="first threshold"):
        fit_first(noisy, load_file_types({**TINY_LIB, "first": {**TINY_LIB["first"], "bytes": 2600}}))
    with pytest.raises(ThresholdError, match="first threshold"):
        fit_first(noisy.resize((100, 64)), lib)  # wider than the first threshold

    row = rows[10]
    small = {**TINY_LIB, "first": {**TINY_LIB["first"], "bytes": 6000}}
    rc = pipeline(row["doc_type_name"], np.reshape(row["doc_quad"], (4, 2)), lib=small)
    out = rc.run(row["image"], mode="split", repo=repo)
    assert out["sizes"]["processed"] == len(out["processed"]) <= 6000
    assert repo.record(out["record_id"])["meta"]["processed_encoding"] == out["processed_encoding"]


def _skewed_capture(row) -> tuple[bytes, np.ndarray]:
    """The row's flat document photographed at a slant (about 8 degrees and a perspective) over a grey
    table: (PNG bytes, its corners)."""
    clean = np.asarray(Image.open(io.BytesIO(row["clean"])).convert("RGB"))
    src = fields.box_corners(row["clean_doc_box"]).astype(np.float32)
    quad = np.array([[70, 40], [290, 10], [300, 180], [40, 205]], np.float64)
    H = cv2.getPerspectiveTransform(src, quad.astype(np.float32))
    rng = np.random.default_rng(0)
    table = np.repeat(rng.integers(90, 140, (220, 320, 1), dtype=np.uint8), 3, axis=2)
    doc = cv2.warpPerspective(np.ones(clean.shape[:2], np.uint8), H, (320, 220)) > 0
    cap = np.where(doc[..., None], cv2.warpPerspective(clean, H, (320, 220)), table)
    return encode_png(np.clip(cap + rng.normal(0, 3, cap.shape), 0, 255).astype(np.uint8)), quad


def test_the_portrait_of_a_skewed_capture_lands_inside_its_slot(rows):
    row = rows[0]  # a residence permit: portrait slot on the right
    doc_type, size = row["doc_type_name"], (96, 64)
    data, quad = _skewed_capture(row)
    out = pipeline(doc_type, quad).run(data, mode="split")
    slot = layout.slot_box(doc_type, size)
    assert out["split"]["found_by"] == "slot" and out["split"]["pasted_at"] == slot and out["split"]["through"] == "corners"

    x0, y0, x1, y1 = slot  # the processed slot holds the portrait, upright: the flat render's, within a few grey levels
    clean = np.asarray(Image.open(io.BytesIO(row["clean"])).convert("RGB"))
    want = fields.original_in_frame(clean, fields.box_corners(row["clean_doc_box"]), doc_type, size)[y0:y1, x0:x1]
    got = np.asarray(Image.open(io.BytesIO(out["processed"])).convert("RGB"))[y0:y1, x0:x1]
    err = np.abs(got.astype(int) - want.astype(int)).mean()
    capture = Image.open(io.BytesIO(data)).convert("RGB")  # what the template slot on the unstraightened photo held
    old = np.asarray(capture.crop(tuple(layout.slot_box(doc_type, capture.size))).resize((x1 - x0, y1 - y0)))
    assert err < 8 < np.abs(old.astype(int) - want.astype(int)).mean(), err
