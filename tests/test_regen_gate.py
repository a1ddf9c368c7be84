"""Issue 17, item 1: the document gate. A tiny type model trained for seconds, calibrated on its own
split of documents and generated non-documents; known documents pass, the rest take the codec path."""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from docray.regen import gate as G, provenance as P
from docray.regen.file_types import load_file_types
from docray.regen.nondocs import FAMILIES, family_names, non_document, non_documents
from docray.regen.pipeline import UNCALIBRATED, RegenCompressor
from docray.regen.provenance import read_provenance
from docray.models import build_model, save_pretrained
from tests.test_regen_models import TINY_LIB

SIZE = (256, 160)  # captures; the tiny models' first threshold is 96x64
LIB = {**TINY_LIB, "default": {"base": 70, "format": "webp", "second": {"width": 96, "height": 64, "bytes": 2000}}}


def examples(start: int, n: int, flat_every: int = 4) -> list[tuple]:
    """(image, type, field values) of synthetic documents rows start.., plus every flat_every-th clean render."""
    from docray.synth import generate

    return G.documents(generate("documents", start, start + n, seed=0, size=SIZE, n_angles=0).to_pylist(), flat_every)


def png(img: Image.Image) -> bytes:
    """Stored, not deflated: above the first threshold's bytes even for a smooth image."""
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=0)
    return buf.getvalue()


@pytest.fixture(scope="module")
def rc():
    """regen_tiny whose type model trained 300 steps on 200 documents (~15 s), calibrated on rows
    200000.. and 250 calibration-split non-documents (the reader is untrained: no field is trusted)."""
    from docray.regen import layout
    from docray.regen.data import content_input

    torch.manual_seed(0)
    model = build_model("regen_tiny")
    train = examples(0, 160)
    x = torch.stack([content_input(im, model.cfg.content_size) for im, *_ in train])
    y = torch.tensor([layout.type_index(t) for _, t, *_ in train])
    opt, g = torch.optim.AdamW(model.type_model.parameters(), lr=3e-3), torch.Generator().manual_seed(0)
    model.train()
    for _ in range(300):
        idx = torch.randint(len(x), (32,), generator=g)
        loss = torch.nn.functional.cross_entropy(model.type_model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    rc = RegenCompressor(model, file_types=load_file_types(LIB))
    negs = non_documents(250, "calibration", SIZE)
    rc.report = rc.calibrate(examples(200_000, 160), negs, families=family_names(250), search_others=0)
    return rc


def test_calibration_chooses_an_ood_score_by_measurement_and_is_saved_with_the_model(rc, tmp_path):
    rep = rc.report
    assert set(rep["ood_auroc_heldout_half"]) == set(G.OOD_SCORES)
    assert rep["ood_chosen"] == max(rep["ood_auroc_heldout_half"], key=rep["ood_auroc_heldout_half"].get)
    assert rep["non_documents_passing"] == 0 and rep["documents_passing"] > 0
    assert rep["type_ece_calibrated"] <= rep["type_ece_raw"] + 0.02 and rep["temperature"] > 0
    assert rep["n_fields"] > 100 and rep["fields_read_right"] == 0  # the untrained reader
    assert rep["cross_read"] and rc.calibration.cross_read and len(rc.calibration.field_mean) == 5
    assert 0 <= rep["second_reader_agrees"] < 0.2  # it rarely agrees with an untrained reader's garbage
    assert np.isinf(rc.calibration.field_threshold)  # so no field would be retyped
    save_pretrained(rc.model, tmp_path / "m")
    rc.calibration.save(tmp_path / "m")
    again = RegenCompressor.load(tmp_path / "m", file_types=load_file_types(LIB))
    assert again.calibration == rc.calibration
    imgs = [non_document("noise", 0, "evaluation", SIZE)]
    assert again.gate(imgs) == rc.gate(imgs)


def test_calibration_runs_the_models_in_chunks(rc, monkeypatch):
    """1,500 calibration documents read at once held 20 GB: the models see CHUNK images at a time."""
    sizes = []
    for name in ("type_outputs", "read_fields"):
        f = getattr(rc, name)
        monkeypatch.setattr(rc, name, lambda images, *a, _f=f, **k: sizes.append(len(images)) or _f(images, *a, **k))
    monkeypatch.setattr(G, "CHUNK", 7)
    docs = examples(200_000, 24)
    _, rep = G.calibrate(rc, docs, non_documents(12, "calibration", SIZE), search_others=0)
    assert max(sizes) <= 7 and sum(sizes) >= len(docs) + 12 and rep["n_documents"] == len(docs)


def test_the_field_confidence_is_fitted_on_captures_not_flat_renders(rc, monkeypatch):
    """Flat renders pass the gate's calibration but not the field fit: read right far more often,
    they would dilute the wrong rate the field threshold bounds."""
    docs = examples(200_000, 16, flat_every=1)
    flats = {id(d[0]) for d in docs if len(d) > 3 and d[3]}
    read, f = [], rc.read_fields
    monkeypatch.setattr(rc, "read_fields", lambda images, *a, **k: read.extend(images) or f(images, *a, **k))
    _, rep = G.calibrate(rc, docs, non_documents(12, "calibration", SIZE), search_others=0)
    assert len(flats) == 16 and rep["flat_documents"] == 16 and rep["n_documents"] == 32
    assert read and not flats & {id(im) for im in read}
    assert rep["field_documents"] == len(read) and rep["n_fields"] > 0


def test_known_documents_pass_and_are_regenerated(rc):
    held = examples(100_000, 12, flat_every=10**9)  # held-out rows, never trained or calibrated on
    decisions = rc.gate([im for im, *_ in held])
    passed = [(d, h) for d, h in zip(decisions, held) if d["passed"]]
    assert passed, [(d["ood_score"], d["confidence"]) for d in decisions]
    d, (img, doc_type, *_) = passed[0]
    assert d["type"] == doc_type and d["calibrated"] and d["reason"] is None
    out = rc.run(png(img), mode="server")
    assert out["method"] == "regen" and out["reason"] is None and out["type"] == doc_type
    assert all(f["source"] == "pixels" for f in out["fields"])  # the untrained reader: kept as the original's pixels
    assert read_provenance(out["compressed"])["image"] == "regenerated-hybrid"


def _sklearn_samples() -> list[Image.Image]:
    from sklearn.datasets import load_sample_images  # never calibrated on: independent non-documents

    return [Image.fromarray(a) for a in load_sample_images().images]


def _skimage_samples() -> list[Image.Image]:
    from skimage import data  # a dev dependency: its sample photos are never trained or calibrated on
    return [Image.fromarray(f()).convert("RGB") for f in (data.astronaut, data.coffee, data.chelsea, data.camera)]


@pytest.mark.parametrize("source", ["noise", "texture", "shapes", "sklearn", "skimage"])
def test_non_documents_take_the_codec_path(rc, source):
    if source == "sklearn":
        imgs = _sklearn_samples()
    elif source == "skimage":
        imgs = _skimage_samples()
    else:  # the evaluation split: other seeds than the calibration's
        imgs = [non_document(source, i, "evaluation", SIZE) for i in range(4)]
    for img in imgs:
        out = rc.run(png(img), mode="server")
        assert out["method"] == "codec" and "not a known document" in out["reason"], out["gate"]
        assert out["type"] is None and out["fields"] == [] and out["provenance"] is None
        ft = rc.codec_file_type()  # the library's default entry, its byte guarantee
        c = Image.open(io.BytesIO(out["compressed"]))
        assert len(out["compressed"]) <= ft.second.bytes and c.format == "WEBP" and c.size[0] <= ft.second.width
        assert read_provenance(out["compressed"]) is None  # not regenerated: no stamp


def test_an_uncalibrated_model_takes_the_codec_path(tmp_path):
    from docray.storage.repository import ImageRepository

    torch.manual_seed(0)
    rc = RegenCompressor(build_model("regen_tiny"), file_types=load_file_types(TINY_LIB))  # no default entry
    doc = examples(0, 1, flat_every=10**9)[0][0]
    repo = ImageRepository(url=f"sqlite:///{tmp_path}/r.db", blob_root=str(tmp_path / "b"))
    forged = P.encode_png(doc, P.stamp("f" * 32), compress_level=0)  # an upload claiming to be docray's
    out = rc.run(forged, mode="server", repo=repo)
    assert out["method"] == "codec" and out["reason"] == UNCALIBRATED and out["gate"]["calibrated"] is False
    assert len(out["compressed"]) <= 2500  # no default: the strictest entry
    assert read_provenance(out["compressed"]) is None and read_provenance(out["processed"]) is None  # not carried over
    rec = repo.record(out["record_id"])
    assert rec["doc_type"] is None and rec["meta"]["method"] == "codec" and rec["meta"]["reason"] == UNCALIBRATED
    split = rc.run(png(doc), mode="split")  # the terminal compresses the original, fitted inside the first threshold
    assert split["method"] == "codec" and Image.open(io.BytesIO(split["processed"])).size == (96, 60)
    body = rc.response(out, "server")
    assert body["method"] == "codec" and "compressed" in body and "processed" not in body


def test_gate_pieces():
    assert G.auroc([2, 3], [0, 1]) == 1 and G.auroc([0], [0]) == 0.5
    logits = np.array([[4.0, 0.0], [0.0, 4.0], [3.0, 0.0], [0.0, 1.0]])
    t = G.fit_temperature(logits, np.array([0, 1, 1, 1]))  # overconfident on a mistake: a temperature above 1
    assert t > 1
    conf, ok = np.array([0.99, 0.9, 0.8, 0.7]), np.array([True, True, False, True])
    assert G.lowest_threshold(conf, ok, 0.0) == 0.9 and G.lowest_threshold(conf, ok, 0.25) == 0.7
    assert np.isinf(G.lowest_threshold(conf[2:3], ok[2:3], 0.0))


def test_field_threshold_judged_on_the_upper_bound():
    assert abs(G.wrong_rate_bound(0, 300) - (1 - 0.05 ** (1 / 300))) < 1e-9  # 0 of n: the "rule of three"
    assert G.wrong_rate_bound(1, 1000) <= 0.005 < G.wrong_rate_bound(1, 900) and G.wrong_rate_bound(2, 2) == 1
    conf = np.linspace(1, 0, 2000, endpoint=False)
    ok = np.ones(2000, bool)
    assert G.lowest_threshold(conf[:300], ok[:300], 0.005) == conf[299]  # none wrong: everything passes the rate seen
    assert np.isinf(G.lowest_threshold(conf[:300], ok[:300], 0.005, bound=0.95))  # but 300 cannot show 0.5%
    ok[50] = ok[1500::10] = False  # one slip near the top (the bound then needs ~950 items), a tenth below 1,500
    th = G.lowest_threshold(conf, ok, 0.005, bound=0.95)
    n = int((conf >= th).sum())
    assert 1000 <= n < 1600 and G.wrong_rate_bound((~ok[conf >= th]).sum(), n) <= 0.005


def test_calibrate_command_writes_beside_the_weights(tmp_path):
    import json

    import yaml
    from click.testing import CliRunner

    from docray.calibration import calibrate

    torch.manual_seed(0)
    save_pretrained(build_model("regen_tiny"), tmp_path / "m")
    (tmp_path / "lib.yaml").write_text(yaml.safe_dump(LIB))
    args = ["regen", str(tmp_path / "m"), "--n-docs", "12", "--non-docs", "20", "--size", "256x160",
            "--file-types", str(tmp_path / "lib.yaml"), "--json"]
    res = CliRunner().invoke(calibrate, args)
    assert res.exit_code == 0, res.output
    rep = json.loads(res.output.strip().splitlines()[-1])
    assert rep["n_non_documents"] == 20 and rep["ood_chosen"] in G.OOD_SCORES and rep["non_documents_passing"] == 0
    assert RegenCompressor.load(tmp_path / "m", file_types=load_file_types(LIB)).calibration.report == \
        {k: v for k, v in rep.items() if k not in ("method", "model")}


def test_the_registry_version_keeps_its_calibration(rc, home, tmp_path):
    import yaml

    from docray.storage.registry import ModelRegistry

    ModelRegistry().save("regen", rc.model, config=rc.model.docray_spec,
                         extra_files={G.FILE: rc.calibration.to_json().encode()})
    (tmp_path / "lib.yaml").write_text(yaml.safe_dump(LIB))
    assert RegenCompressor.from_source(file_types=str(tmp_path / "lib.yaml")).calibration == rc.calibration
    folder = ModelRegistry().path("regen")  # the version's folder is a model folder too (docray calibrate regen FOLDER)
    again = RegenCompressor.load(folder, file_types=load_file_types(LIB))
    assert again.calibration == rc.calibration
    assert all(torch.equal(a, b) for a, b in zip(again.model.state_dict().values(), rc.model.state_dict().values()))


@pytest.mark.parametrize("family", FAMILIES)
def test_non_document_families_are_seeded_per_split(family):
    a, b = non_document(family, 3, "calibration", SIZE), non_document(family, 3, "calibration", SIZE)
    other = non_document(family, 3, "evaluation", SIZE)
    assert a.size == SIZE and a.mode == "RGB"
    assert np.array_equal(np.asarray(a), np.asarray(b))  # the same seed, the same image
    assert not np.array_equal(np.asarray(a), np.asarray(other))  # the splits never share an image


def test_the_layout_check_knows_a_template_from_another(rc):
    """A straight render of each type scores high against its own template, low against every other
    (a document of a type the registry lacks, read as a known one); a calibrated threshold turns a
    passed gate into the codec path with the reason, and a calibration without one checks nothing."""
    from docray.regen import fields, layout

    size = G.LAYOUT_SIZE
    white = np.full((size[1], size[0], 3), 255, np.uint8)
    scores, flat = {}, {}
    for t in rc.doc_types:
        values = ["A1B2C3 DEF" for _ in layout.field_names(t)]
        img = Image.fromarray(layout.composite(layout.render_layer(t, values, size), white))
        scores[t] = {u: G.layout_score(img, u, fields.frame_quad(u, size)) for u in rc.doc_types}
        flat[t] = img
    for t, s in scores.items():
        assert s[t] > 0.8 and max(v for u, v in s.items() if u != t) < 0.6, (t, s)
        others = [G.align_layout(flat[t], u, fields.frame_quad(u, size))[1] for u in rc.doc_types if u != t]
        assert max(others) < 0.6, (t, others)  # aligning on another type's captions does not make them fit

    t, u = rc.doc_types[:2]
    img = Image.fromarray(layout.composite(layout.render_layer(t, ["X"] * len(layout.field_names(t)), size), white))
    passed = {"passed": True, "type": u, "confidence": 0.99, "reason": None}
    quad = fields.frame_quad(u, size)
    cal = rc.calibration
    try:
        rc.calibration = G.Calibration(**{**G.asdict(cal), "layout_threshold": 0.6, "retype_threshold": None})
        [g], [q] = rc.check_layout([img], [passed], [quad])  # no retype: refused (the retype has its own test)
        assert not g["passed"] and "not the layout of a" in g["reason"] and g["layout_score"] < 0.6
        [g], _ = rc.check_layout([img], [{**passed, "type": t}], [fields.frame_quad(t, size)])
        assert g["passed"] and g["layout_score"] > 0.8
        rc.calibration = G.Calibration(**{**G.asdict(cal), "layout_threshold": None})
        assert rc.check_layout([img], [passed], [quad]) == ([passed], [quad])
    finally:
        rc.calibration = cal
    assert cal.layout_threshold is not None and rc.report["layout_threshold"] == round(cal.layout_threshold, 4)


def test_aligning_on_the_captions_recovers_corners_a_few_px_off(rc):
    """A document whose corners are read a few px off scores low; `align_layout` moves them back onto
    the template's captions: exactly where the error is affine (a shift, a scale), and scoring nearly
    as with the true corners where each corner is off its own way."""
    from docray.regen import fields, layout

    size, t = G.LAYOUT_SIZE, rc.doc_types[0]
    white = np.full((size[1], size[0], 3), 255, np.uint8)
    img = Image.fromarray(layout.composite(layout.render_layer(t, ["A1B2C3 DEF"] * len(layout.field_names(t)), size), white))
    true = fields.frame_quad(t, size)
    shifted = (true - true.mean(0)) * 1.02 + true.mean(0) + [4, -3]
    quad, score = G.align_layout(img, t, shifted)
    assert np.abs(quad - true).max() < 1.5 < np.abs(shifted - true).max()
    off = true + np.array([[4, -3], [-3, 4], [3, 3], [-4, -2]], np.float64)
    quad, score = G.align_layout(img, t, off)
    assert G.layout_score(img, t, off) + 0.1 < score and score > G.layout_score(img, t, true) - 0.05
    far = true + [30, 0]  # a fit that far is not a corner error: the corners stay
    assert np.array_equal(G.align_layout(img, t, far)[0], far)


def test_the_corner_search_finds_corners_too_far_off_for_ecc_and_has_its_own_threshold(rc):
    """A corner 28 px off is past what `align_layout` may move; `search_layout` finds it, and
    `check_layout` passes the capture on the searched corners when the calibration has a search
    threshold (and not without one). Another type's template searched so scores below its own."""
    from docray.regen import fields, layout

    size, (t, u) = G.LAYOUT_SIZE, rc.doc_types[:2]
    white = np.full((size[1], size[0], 3), 255, np.uint8)
    img = Image.fromarray(layout.composite(layout.render_layer(t, ["A1B2C3 DEF"] * len(layout.field_names(t)), size), white))
    true = fields.frame_quad(t, size)
    off = true + np.array([[28, -20], [0, 0], [0, 0], [0, 0]], np.float64)
    assert G.align_layout(img, t, off)[1] < G.layout_score(img, t, true) - 0.1  # ECC may not move that far
    quad, score = G.search_layout(img, t, off)
    assert np.abs(quad - true).max() < 3 and score > G.layout_score(img, t, true) - 0.05
    other = G.search_layout(img, u, fields.frame_quad(u, size))[1]
    assert other < score - 0.2, (other, score)

    passed = {"passed": True, "type": t, "confidence": 0.99, "reason": None, "ood": "msp", "ood_score": 0.99}
    cal = rc.calibration
    try:
        rc.calibration = G.Calibration(**{**G.asdict(cal), "layout_threshold": 0.9, "search_threshold": None,
                                                   "retype_threshold": None})
        [g], [q] = rc.check_layout([img], [passed], [off])
        assert not g["passed"] and "layout_search_score" not in g
        rc.calibration = G.Calibration(**{**G.asdict(cal), "layout_threshold": 0.9, "search_threshold": (other + score) / 2,
                                                   "retype_threshold": None})
        [g], [q] = rc.check_layout([img], [passed], [off])
        assert g["passed"] and g["layout_search_score"] >= g["search_threshold"] and np.abs(q - true).max() < 3
        rc.calibration = G.Calibration(**{**G.asdict(rc.calibration), "search_ood_threshold": 0.995})
        [unsure], _ = rc.check_layout([img], [passed], [off])  # the type gate alone would not pass it: no search
        assert not unsure["passed"] and "too unsure" in unsure["reason"] and "layout_search_score" not in unsure
        rc.calibration = G.Calibration(**{**G.asdict(rc.calibration), "search_ood_threshold": 0.98})
        assert rc.check_layout([img], [passed], [off])[0][0]["passed"]
        reading = {"fields": [{"name": "sex", "text": "M", "confidence": 0.99}]}
        rc.calibration = G.Calibration(**{**G.asdict(rc.calibration), "field_threshold": 0.5})
        assert rc.plan_fields(reading, passed)[0]["source"] == "regenerated"
        [kept] = rc.plan_fields(reading, g)  # through searched corners no field is retyped
        assert kept["source"] == "pixels" and "layout search" in kept["reason"]
        [g], _ = rc.check_layout([img], [{**passed, "type": u}], [fields.frame_quad(u, size)])
        assert not g["passed"] and "searched corners" in g["reason"]
    finally:
        rc.calibration = cal
    assert cal.search_threshold is None and rc.report["search_threshold"] is None  # calibrated with search_others=0


def test_calibration_sets_the_search_threshold_above_every_searched_wrong_layout(rc):
    """With `search_others`, calibration searches documents against the other types' templates (and
    the documents read as another type, the non-documents reaching the check) and puts the search's
    threshold above all of them, never below the layout threshold."""
    cal, rep = G.calibrate(rc, examples(200_000, 12, flat_every=1), non_documents(20, "calibration", SIZE), search_others=2)
    assert rep["search_wrong_layouts"] >= 1  # something was searched (the tiny model's corners fit few layouts)
    assert cal.search_threshold > rep["search_wrong_layouts_max"] and cal.search_threshold >= cal.layout_threshold
    assert cal.search_ood_threshold == pytest.approx(rep["ood_threshold_type_gate_alone"], rel=1e-3)  # searched: only the sure
    assert rep["settings"]["search_others"] == 2 and rep["non_documents_passing"] == 0
    # the retype's threshold: above every aligned score of a template that is not the capture's
    assert rep["retype_wrong_layouts"] >= len(rc.doc_types) - 1
    assert cal.retype_threshold > rep["retype_wrong_layouts_max"] - 5e-5  # the report rounds to 4 places
    assert rep["documents_retyped_wrong"] == 0


def test_a_document_the_type_model_misread_takes_the_type_its_layout_shows(rc):
    """The type model reads type u, the captions are where t's template has them: with a retype
    threshold below t's aligned score `check_layout` passes it as t, its confidence None (the type
    is the layout's, not the model's) and no field retyped; without one it is refused."""
    from docray.regen import fields, layout

    size, (t, u) = G.LAYOUT_SIZE, rc.doc_types[:2]
    white = np.full((size[1], size[0], 3), 255, np.uint8)
    img = Image.fromarray(layout.composite(layout.render_layer(t, ["A1B2C3 DEF"] * len(layout.field_names(t)), size), white))
    corners = fields.frame_quad(t, size)
    own, read_as = G.align_layout(img, t, corners)[1], G.align_layout(img, u, corners)[1]
    assert read_as < own - 0.2, (read_as, own)
    misread = {"passed": True, "type": u, "confidence": 0.99, "reason": None}
    cal = rc.calibration
    try:
        base = {**G.asdict(cal), "layout_threshold": own - 0.1, "search_threshold": None, "field_threshold": 0.5}
        rc.calibration = G.Calibration(**{**base, "retype_threshold": own - 0.05})
        [g], [q] = rc.check_layout([img], [misread], [fields.frame_quad(t, size)])
        assert g["passed"] and g["type"] == t and g["retyped_from"] == u and g["confidence"] is None
        assert np.abs(q - fields.frame_quad(t, size)).max() < 3 and g["layout_score"] >= g["retype_threshold"]
        [kept] = rc.plan_fields({"fields": [{"name": "sex", "text": "M", "confidence": 0.99}]}, g)
        assert kept["source"] == "pixels" and "type model" in kept["reason"]
        rc.calibration = G.Calibration(**{**base, "retype_threshold": own + 0.05})  # above it: refused
        [g], _ = rc.check_layout([img], [misread], [fields.frame_quad(t, size)])
        assert not g["passed"] and g["type"] == u and "retyped_from" not in g
    finally:
        rc.calibration = cal


def test_the_whole_gate_refuses_every_calibration_non_document(rc):
    """The type gate's OOD threshold need only sit above the non-documents the layout check lets
    through; together they refuse every calibration non-document."""
    assert not any(g["passed"] for g in rc.admit(non_documents(250, "calibration", SIZE))[0])
    r = rc.report
    assert r["non_documents_passing"] == 0 and r["ood_threshold"] <= r["ood_threshold_type_gate_alone"]


def test_other_type_documents_are_of_templates_no_registry_holds():
    """The gate's hardest negatives: documents drawn by the synthetic world's own code from random
    templates (valid DocTypes, English or Chinese, of no registered name or layout)."""
    from docray.doctypes import registry
    from docray.synth.documents import random_doctype

    ts = [random_doctype(np.random.default_rng(i)) for i in range(60)]
    assert all(t.name not in registry().names and 3 <= len(t.fields) <= 7 for t in ts)
    assert {t.language for t in ts} == {"en", "zh"}
    assert len({(t.portrait is None, t.seal is None, t.captions) for t in ts}) >= 6  # the slots vary
