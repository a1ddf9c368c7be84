"""Issue 17, item 2: a second, independent reader (PP-OCR's recogniser, shipped inside rapidocr) whose
agreement with regen's reader joins the field confidence."""
from __future__ import annotations

import numpy as np

from docray.imageio import decode_image
from docray.regen import crossread, gate as G, layout
from docray.regen.pipeline import RegenCompressor
from docray.synth import generate


def _flat_documents(n: int):
    """(clean render RGB, type, corners, values in template order) of held-out synthetic documents."""
    out = []
    for r in generate("documents", 100_000, 100_000 + n, seed=0, size=(384, 240), n_angles=0).to_pylist():
        x0, y0, x1, y1 = r["clean_doc_box"]
        texts = {f["name"]: f["text"] for f in r["clean_fields"]}
        out.append((np.asarray(decode_image(r["clean"]).convert("RGB")), r["doc_type_name"],
                    np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], np.float64),
                    [texts.get(k, "") for k in layout.field_names(r["doc_type_name"])]))
    return out


def test_the_second_reader_agrees_with_right_readings_and_not_with_wrong_ones():
    agree_right, agree_wrong = [], []
    for img, doc_type, quad, values in _flat_documents(4):
        agree_right += list(crossread.cross_read(img, quad, doc_type, values))
        wrong = [v[::-1] + "7" for v in values]  # every value misread
        agree_wrong += list(crossread.cross_read(img, quad, doc_type, wrong))
    assert np.mean(agree_right) >= 0.6, agree_right
    assert sum(agree_wrong) == 0


def test_agreement_is_case_and_space_blind():
    assert crossread.normalise(" 64 Spring  Pl") == crossread.normalise("64SPRINGPL")
    assert crossread.normalise("1998") != crossread.normalise("1938")


def test_the_field_confidence_takes_the_agreement_where_calibrated_with_it(monkeypatch):
    """A calibration fitted with the second reader: the agreement column reaches the confidence;
    one fitted without it ignores the column."""
    from docray.models import build_model
    from tests.test_regen_models import TINY_LIB
    from docray.regen.file_types import load_file_types

    rc = RegenCompressor(build_model("regen_tiny"), file_types=load_file_types(TINY_LIB), device="cpu")
    img, doc_type, quad, values = _flat_documents(1)[0]
    from PIL import Image

    pil = Image.fromarray(img)
    rc.calibration = G.Calibration(1.0, "msp", 0.0, 0.0, [], [], [], [0, 0, 0, 0, 6.0, -3.0], [0.0] * 5, [1.0] * 5,
                                   0.5, cross_read=True)
    assert rc.cross_read
    for agree, sure in ((1.0, True), (0.0, False)):
        monkeypatch.setattr(crossread, "cross_read", lambda im, q, t, texts, a=agree: np.full(len(texts), a))
        reading = rc.read_fields([pil], [doc_type], [quad])[0]
        assert reading["scores"].shape == (len(values), 5) and (reading["scores"][:, 4] == agree).all()
        assert all((f["confidence"] >= rc.field_threshold) == sure for f in reading["fields"])
    # read without the second reader (recalibrating with --no-cross-read): the scores, no confidence
    reading = rc.read_fields([pil], [doc_type], [quad], cross_read=False)[0]
    assert reading["scores"].shape == (len(values), 4) and all(f["confidence"] is None for f in reading["fields"])
    rc.calibration = G.Calibration(1.0, "msp", 0.0, 0.0, [], [], [], [1.0, 0, 0, 0, 0.0], [0.0] * 4, [1.0] * 4, 0.5)
    assert not rc.cross_read  # fitted on the reader's scores alone (as before the second reader): 4 scores
    monkeypatch.setattr(crossread, "cross_read", lambda *a: (_ for _ in ()).throw(AssertionError("not called")))
    assert rc.read_fields([pil], [doc_type], [quad])[0]["scores"].shape == (len(values), 4)
