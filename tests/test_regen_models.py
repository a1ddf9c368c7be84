"""Regen compression with the tiny models: the models, the pipeline, the repository, the client."""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from docray.regen.convergence import Convergence, LossRule, converged, loss_converged
from docray.regen.file_types import ThresholdError, load_file_types
from docray.regen.pipeline import ArchivePredictor, RegenCompressor
from docray.models import build_model, from_pretrained, save_pretrained
from docray.storage.repository import AccessDenied, ImageRepository
from docray.synth import generate

TYPES = ("identity_card", "passport_page", "driving_licence", "residence_permit", "property_certificate", "business_licence")
TINY_LIB = {"first": {"width": 96, "height": 64, "bytes": 30000},
            "types": {t: {"base": 80, "format": "jpeg" if i % 2 else "webp", "second": {"width": 96, "height": 64, "bytes": 2500}}
                      for i, t in enumerate(TYPES)}}


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return build_model("regen_tiny").eval()


@pytest.fixture(scope="module")
def docs():
    return generate("documents", 0, 3, seed=0, n_angles=0).to_pylist()  # 256x160 captures


def test_tokenizer_round_trip(tiny):
    tok = tiny.tokenizer
    text = "JENSEN|UN1262405|P<NLD<<CLARA"
    ids = tok.encode(text, 40)
    assert len(ids) == 40 and ids[0] == 1 and tok.decode(ids[1:]) == text
    assert tok.decode(tok.encode("é", 8)[1:]) == "?"  # outside the synthetic world's characters


def test_three_losses_backprop_and_save_load(tiny, tmp_path):
    c = tiny.cfg
    torch.manual_seed(0)
    px, tgt, cond = torch.rand(2, 3, *c.content_size), torch.rand(2, 3, *c.gen_size) * 2 - 1, torch.rand(2, 5, *c.gen_size) * 2 - 1
    ids, ty = tiny.tokenizer.batch(["AB|12", "x|y z"], c.max_len), torch.tensor([0, 3])
    corner_px, quad = torch.rand(2, 3, *c.corner_size), torch.rand(2, 8)
    lines, line_ids = torch.rand(4, 3, *c.line_size), tiny.tokenizer.batch(["AB", "12", "x", "y z"], c.field_len)
    tiny.train()
    losses = tiny(px, ids, ty, tgt, cond, corner_px, quad, lines, line_ids)
    assert set(losses) == {"content", "type", "generation", "lines", "ctc", "corners"}
    assert all(torch.isfinite(v) for v in losses.values()) and losses["ctc"] > 0
    parts = losses["lines"] + c.ctc_weight * losses["ctc"] + c.corner_weight * losses["corners"]
    assert torch.allclose(losses["content"], parts)
    sum(losses[k] for k in ("content", "type", "generation")).backward()
    for part in (tiny.content, tiny.ctc_head, tiny.corners, tiny.type_model, tiny.unet):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in part.parameters())
    tiny.zero_grad()
    tiny.eval()
    out = tiny.generate(ty, ids, cond, steps=2)
    assert out.shape == (2, 3, *c.gen_size) and out.abs().max() <= 1
    save_pretrained(tiny, tmp_path / "m")
    again = from_pretrained(tmp_path / "m").eval()
    assert torch.equal(again.generate(ty, ids, cond, steps=2), out)  # same weights, same seeded sampling


def test_line_stem_gives_one_row_of_columns():
    from docray.models.regen import conv_stem

    for patch, size in (((24, 4), (24, 320)), ((16, 4), (16, 64)), ((32, 8), (32, 128))):
        out = conv_stem(3, 16, patch)(torch.rand(2, 3, *size))
        assert out.shape == (2, 16, size[0] // patch[0], size[1] // patch[1])
    with pytest.raises(ValueError, match="power-of-2"):
        conv_stem(3, 16, (24, 6))


def test_reader_step_trains_only_the_reader(tiny):
    c = tiny.cfg
    lines, line_ids = torch.rand(3, 3, *c.line_size), tiny.tokenizer.batch(["AB", "12", "x"], c.field_len)
    tiny.train()
    out = tiny(lines=lines, line_ids=line_ids)
    assert set(out) == {"content", "lines", "ctc"}
    assert torch.allclose(out["content"], out["lines"] + c.ctc_weight * out["ctc"])
    out["content"].backward()
    assert all(p.grad is None for part in (tiny.corners, tiny.type_model, tiny.unet) for p in part.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in tiny.content.encoder.parameters())
    tiny.zero_grad()
    tiny.eval()


def test_type_step_trains_only_the_type_model(tiny):
    c = tiny.cfg
    tiny.train()
    out = tiny(pixels=torch.rand(4, 3, *c.content_size), types=torch.tensor([0, 1, 2, 0]))
    assert set(out) == {"type"} and out["type"].ndim == 0
    out["type"].backward()
    assert all(p.grad is None for part in (tiny.corners, tiny.content, tiny.unet) for p in part.parameters())
    assert all(p.grad is not None for p in tiny.type_model.parameters())
    tiny.zero_grad()
    tiny.eval()


def test_read_lines_decoders(tiny, monkeypatch):
    c = tiny.cfg
    lines = torch.rand(4, 3, *c.line_size)
    att, ctc, joint = (tiny.read_lines(lines, decode=d) for d in ("attention", "ctc", "joint"))
    assert all(j in (a, b) for a, b, j in zip(att, ctc, joint))  # joint picks one of the two readings
    with pytest.raises(ValueError, match="decode"):
        tiny.read_lines(lines, decode="beam")
    # best path: repeats collapse, blanks (PAD) separate them and vanish
    tok, cols = tiny.tokenizer, c.line_size[1] // c.line_patch[1]
    path = [tok.index["A"], tok.index["A"], 0, tok.index["A"], tok.index["7"]] + [0] * (cols - 5)
    logp = torch.full((cols, 1, tok.vocab_size), -20.0)
    logp[torch.arange(cols), 0, torch.tensor(path)] = 0.0
    monkeypatch.setattr(tiny, "ctc_log_probs", lambda enc: logp.expand(-1, len(enc), -1))
    assert tiny.read_lines(lines[:1], decode="ctc") == ["AA7"]
    # joint rescoring: the CTC head is sure of "AA7", so it outweighs an unsure decoder's reading
    assert tiny.read_lines(lines[:1], decode="joint") == ["AA7"]


def test_content_is_read_field_by_field(tiny, docs):
    from docray.regen import layout

    rc = RegenCompressor(tiny, file_types=load_file_types(TINY_LIB))
    imgs = [Image.open(io.BytesIO(r["image"])) for r in docs]
    quads = rc.locate(imgs)
    assert quads.shape == (3, 4, 2) and (quads >= 0).all() and (quads[..., 0] <= 256).all() and (quads[..., 1] <= 160).all()
    types = [TYPES[r["doc_type"]] for r in docs]
    contents = rc.read_contents(imgs, types)  # one line per field of each document's own template
    assert [c.count("|") + 1 for c in contents] == [len(layout.field_names(t)) for t in types]
    assert len(rc.read_contents(imgs[:1])) == 1  # the type model picks the template when none is given


def test_convergence_rule():
    rule = LossRule(target=0.1, patience=2, min_rel_improvement=0.05)
    assert loss_converged([0.5, 0.09], rule)  # reached the target
    assert not loss_converged([1.0, 0.8, 0.6], rule)  # still improving
    assert loss_converged([1.0, 0.8, 0.79, 0.78], rule)  # plateau: < 5% better than 0.8 over 2 epochs
    hist = {"content": [1.0, 0.2], "type": [0.01], "generation": [0.5, 0.4]}
    rules = Convergence(content=LossRule(target=0.3), type=LossRule(target=0.05), generation=LossRule(target=0.01))
    assert converged(hist, rules) == {"content": True, "type": True, "generation": False}


def test_pipeline_stores_one_record_with_attachments_and_split(tiny, docs, tmp_path):
    rc = RegenCompressor(tiny, file_types=load_file_types(TINY_LIB), fill="blank", ungated=True)  # uncalibrated
    repo = ImageRepository(url=f"sqlite:///{tmp_path}/r.db", blob_root=str(tmp_path / "blobs"))
    row = docs[0]  # a document with a portrait slot
    out = rc.run(row["image"], mode="server", repo=repo)
    assert out["type"] in TYPES and out["quality"] is not None and out["method"] == "regen"
    assert out["gate"]["calibrated"] is False and "ungated" in out["gate"]["reason"]
    comp = Image.open(io.BytesIO(out["compressed"]))
    assert len(out["compressed"]) <= 2500 and comp.size[0] <= 96 and comp.size[1] <= 64
    assert Image.open(io.BytesIO(out["processed"])).size == (96, 64)  # the first size threshold
    rec = repo.record(out["record_id"])
    assert rec["sizes"] == {"original": len(row["image"]), "processed": len(out["processed"]), "compressed": len(out["compressed"])}
    assert repo.get(out["record_id"], "original", "admin") == row["image"]
    assert repo.get(out["record_id"], "compressed", "user") == out["compressed"]
    with pytest.raises(AccessDenied):
        repo.get(out["record_id"], "original", "user")
    if out["split"] is not None:  # the portrait: split recorded, attachment linked
        assert rec["split"]["fill"] == "blank" and len(rec["split"]["position"]) == 4
        assert rec["attachments"][0]["kind"] == "portrait"
    assert [a["kind"] for a in rec["attachments"]].count("seal") == len(out["seals"])
    split_mode = rc.run(row["image"], mode="split", repo=repo)
    assert split_mode["compressed"] is None and repo.count() == 2


def test_terminal_compression_meets_the_limit(tiny, docs):
    from docray.client import compress_on_terminal

    rc = RegenCompressor(tiny, file_types=load_file_types(TINY_LIB), ungated=True)
    out = rc.run(docs[1]["image"], mode="split")
    data = compress_on_terminal(out["processed"], out["type"], TINY_LIB)
    assert len(data) <= 2500 and Image.open(io.BytesIO(data)).size[0] <= 96


def test_pipeline_refuses_bad_inputs(tiny, docs):
    rc = RegenCompressor(tiny, file_types=load_file_types(TINY_LIB))
    small = io.BytesIO()
    Image.new("RGB", (80, 50), (200, 200, 200)).save(small, format="PNG")
    with pytest.raises(ThresholdError, match="first threshold"):
        rc.run(small.getvalue())
    with pytest.raises(ValueError, match="mode"):
        rc.run(docs[0]["image"], mode="terminal")
    with pytest.raises(ValueError, match="first size"):
        RegenCompressor(tiny)  # the packaged library's first threshold (256x160) is not this model's size


def test_batch_predictor_reports_errors_per_row(tiny, docs, tmp_path):
    lib_path = tmp_path / "lib.yaml"
    lib_path.write_text(yaml.safe_dump(TINY_LIB))
    p = ArchivePredictor(untrained="regen_tiny", file_types=str(lib_path))
    out = p({"id": np.array(["a", "b"]), "image": np.array([docs[2]["image"], b"not an image"], dtype=object)})
    assert out["error"][0] is None and out["bytes_out"][0] <= 2500 and out["bytes_in"][0] == len(docs[2]["image"])
    assert "ImageDecodeError" in out["error"][1] and out["compressed"][1] is None
    assert list(out["id"]) == ["a", "b"]


def test_from_source_loads_the_registry_version(home, tiny, tmp_path):
    from docray.storage.registry import ModelRegistry

    ModelRegistry().save("regen", tiny, config=tiny.docray_spec, metrics={})
    (tmp_path / "lib.yaml").write_text(yaml.safe_dump(TINY_LIB))
    rc = RegenCompressor.from_source(file_types=str(tmp_path / "lib.yaml"))  # no folder: the registry's latest
    for a, b in zip(rc.model.state_dict().values(), tiny.state_dict().values()):
        assert torch.equal(a, b)


def test_from_source_explains_an_outdated_registry_model(home, tiny, tmp_path):
    from docray.storage.registry import ModelRegistry

    old = build_model("regen_tiny", line_size=(16, 48))  # another architecture under the same name
    ModelRegistry().save("regen", old, config=tiny.docray_spec, metrics={})
    (tmp_path / "lib.yaml").write_text(yaml.safe_dump(TINY_LIB))
    with pytest.raises(ValueError, match="retrain it"):
        RegenCompressor.from_source(file_types=str(tmp_path / "lib.yaml"))
