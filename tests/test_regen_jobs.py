"""The regen training job and the archive re-compression job (tiny configs)."""
from __future__ import annotations

import json

import pytest
import torch
import yaml
from PIL import Image

from tests.test_regen_models import TINY_LIB


def test_training_pieces_without_ray(tmp_path):
    """Dataset rows -> RegenBatch, one optimisation step of the three losses, validation losses, the sample grid."""
    from docray.regen.data import RegenBatch
    from docray.models import build_model
    from docray.synth import generate
    from train_jobs.train_regen import evaluate, sample_grid

    torch.manual_seed(0)
    model = build_model("regen_tiny")
    table = generate("documents", 0, 4, seed=0, size=(256, 160), n_angles=0)
    rows = {c: table.column(c).to_numpy(zero_copy_only=False) for c in table.column_names}  # as Ray Data gives them
    b = RegenBatch(model.cfg, model.tokenizer, flat_rate=0.5)(rows)
    c = model.cfg
    assert b["pixels"].shape == (4, 3, *c.content_size) and b["target"].shape == (4, 3, *c.gen_size)
    assert b["cond"].shape == (4, 5, *c.gen_size) and b["content_ids"].shape == (4, c.max_len)
    assert b["target"].min() >= -1 and b["target"].max() <= 1
    n_lines = sum(len(f) for f in rows["clean_fields"])  # one line crop per field
    assert b["lines"].shape == (n_lines, 3, *c.line_size) and 0 <= b["lines"].min() and b["lines"].max() <= 1
    assert b["line_ids"].shape == (n_lines, c.field_len)
    assert model.tokenizer.decode(b["line_ids"][0, 1:]) == rows["clean_fields"][0][0]["text"][: c.field_len - 2]
    assert b["corner_px"].shape == (4, 3, *c.corner_size) and ((b["quad"] >= 0) & (b["quad"] <= 1)).all()
    assert b["types"].tolist() == rows["doc_type"].tolist()
    again = RegenBatch(model.cfg, model.tokenizer, flat_rate=0.5)(rows)  # a row's random choices repeat
    assert all(torch.equal(b[k], again[k]) for k in b)
    before, first = evaluate(model, [b], "cpu")
    assert before == evaluate(model, [b], "cpu")[0]  # seeded noise: comparable across epochs
    assert 0 <= before["line_exact"] <= 1 and {"lines", "corners", "line_exact_attention", "line_exact_ctc"} <= set(before)
    with_drawn = RegenBatch(model.cfg, model.tokenizer, flat_rate=0.5, processed_lines=True)(rows)
    assert 0 <= evaluate(model, [with_drawn], "cpu", processed=True)[0]["line_exact_processed"] <= 1
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(3):
        out = model(**b)
        loss = out["content"] + out["type"] + out["generation"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = evaluate(model, [b], "cpu")[0]
    assert after["type"] < before["type"] and after["content"] < before["content"]
    sample_grid(model, first, 2, str(tmp_path / "s" / "epoch_000.png"), "cpu")
    grid = Image.open(tmp_path / "s" / "epoch_000.png")
    assert grid.size == (4 * c.gen_size[1], 2 * c.gen_size[0])


def test_outlier_exposure_draws_fresh_non_documents_and_pushes_them_to_uniform():
    """The type steps' non-documents come from nondocs' training split, the families in turn, each rank
    its own images; their loss is the cross-entropy to the uniform type distribution (at least
    log(n_types), reached only at uniform), and its steps bring it down."""
    import math

    from docray.models import build_model
    from docray.regen.data import content_input
    from docray.regen.nondocs import FAMILIES, non_document
    from train_jobs.train_regen import Outliers, RegenTrainConfig, draw_driver_outliers

    torch.manual_seed(0)
    model = build_model("regen_tiny")
    cfg = RegenTrainConfig(outliers=6, outlier_pool=8, original_size=(256, 160))
    mine, theirs = Outliers(cfg, model.cfg, rank=0), Outliers(cfg, model.cfg, rank=1)
    gen = torch.Generator().manual_seed(0)
    negs = mine.sample(gen)
    assert negs.shape == (6, 3, *model.cfg.content_size) and negs.dtype == torch.uint8 and len(mine.pool) == 6
    want = [(content_input(non_document(f, 0, "training", (256, 160)), model.cfg.content_size) * 255).round()
            .to(torch.uint8) for f in FAMILIES]
    assert all(torch.equal(a, b) for a, b in zip(mine.pool, want))  # image 0 of every family, in turn
    theirs.sample(gen)
    assert not any(torch.equal(a, b) for a, b in zip(mine.pool, theirs.pool))
    mine.sample(gen)
    assert len(mine.pool) == 8  # 4 fresh a step, the oldest dropped
    assert Outliers(cfg.model_copy(update={"outliers": 0}), model.cfg, 0).sample(gen) is None
    drawn = draw_driver_outliers(cfg, model.cfg.content_size)  # other_type, drawn on the driver: no worker imports docray.synth
    assert drawn.shape == (8, 3, *model.cfg.content_size) and FAMILIES[6] == "other_type"
    with_drawn = Outliers(cfg.model_copy(update={"outliers": 7}), model.cfg, rank=0, drawn=drawn)
    with_drawn.sample(gen)
    assert all(torch.equal(a, b) for a, b in zip(with_drawn.pool, want[:6])) and torch.equal(with_drawn.pool[6], torch.from_numpy(drawn[0]))

    docs = torch.rand(4, 3, *model.cfg.content_size)
    types, negs = torch.tensor([0, 1, 2, 3]), negs.float() / 255
    opt = torch.optim.AdamW(model.type_model.parameters(), lr=1e-2)
    first = None
    for _ in range(6):
        out = model(pixels=docs, types=types, outliers=negs)
        assert set(out) == {"type", "outlier"} and out["outlier"] >= math.log(model.cfg.n_types) - 1e-5
        first = first or out["outlier"].item()
        opt.zero_grad()
        out["outlier"].backward()
        opt.step()
    assert out["outlier"].item() < first
    assert set(model(pixels=docs, types=types)) == {"type"}


def test_processed_lines_are_the_fields_as_regen_draws_them():
    """processed_lines: each field cut, as the round trip cuts it, from the glyph layer composited onto
    the target (the generator's image); the batch's other tensors are as without them."""
    import numpy as np

    from docray.regen import fields, layout
    from docray.regen.data import RegenBatch, cond_input, line_input, resize
    from docray.imageio import decode_image
    from docray.models import build_model
    from docray.synth import generate

    model = build_model("regen_tiny")
    c = model.cfg
    table = generate("documents", 0, 3, seed=0, size=(256, 160), n_angles=0)
    rows = {k: table.column(k).to_numpy(zero_copy_only=False) for k in table.column_names}
    plain = RegenBatch(c, model.tokenizer, flat_rate=0.5)(rows)
    b = RegenBatch(c, model.tokenizer, flat_rate=0.5, processed_lines=True)(rows)
    assert set(b) == set(plain) | {"processed_lines"} and all(torch.equal(b[k], plain[k]) for k in plain)
    assert b["processed_lines"].shape == b["lines"].shape and not torch.equal(b["processed_lines"], b["lines"])
    exact = RegenBatch(c, model.tokenizer, quad_jitter=0, processed_lines=True)(rows)["processed_lines"]
    want = []
    for t, clean, fs in zip(rows["doc_type_name"], rows["clean"], rows["clean_fields"]):
        values = [{f["name"]: f["text"] for f in fs}.get(n, "") for n in layout.field_names(t)]
        target = resize(decode_image(clean), tuple(c.gen_size))
        drawn = layout.composite(cond_input(t, values, tuple(c.gen_size))[1], np.asarray(target.convert("RGB")))
        want.append(fields.crop_lines(drawn, fields.frame_quad(t, target.size), t, c.line_size))
    assert torch.equal(exact, line_input(np.concatenate(want)))


def test_regen_batch_rejects_a_field_the_template_lacks():
    from docray.regen.data import RegenBatch
    from docray.models import build_model
    from docray.synth import generate

    model = build_model("regen_tiny")
    table = generate("documents", 0, 1, seed=0, size=(256, 160), n_angles=0)
    rows = {c: table.column(c).to_numpy(zero_copy_only=False) for c in table.column_names}
    rows["clean_fields"][0][0]["name"] = "shoe_size"
    with pytest.raises(ValueError, match="shoe_size.*are not fields of"):
        RegenBatch(model.cfg, model.tokenizer)(rows)


def test_warmup_cosine_by_steps_or_by_progress():
    from train_jobs.common import warmup_cosine

    assert warmup_cosine(0, 10, 100) == pytest.approx(0.1) and warmup_cosine(50, 10, 100) == pytest.approx(0.5)
    assert warmup_cosine(100, 10, 100) == pytest.approx(0) and warmup_cosine(500, 10, 100) == pytest.approx(0)
    # under a time budget the share done decides, not the steps
    assert warmup_cosine(50, 10, 100, progress=0.0) == 1 and warmup_cosine(50, 10, 100, progress=1.5) == pytest.approx(0)
    assert warmup_cosine(2, 10, 0, progress=0.5) == pytest.approx(0.3 * 0.5)


@pytest.mark.slow
def test_train_job_checkpoints_and_resumes(ray_cluster, tmp_path):
    from train_jobs.train_regen import RegenTrainConfig, run

    cfg = RegenTrainConfig(model="regen_tiny", n_train=8, n_val=4, original_size=(256, 160), max_epochs=1, calibrate_search_others=0,
                           batch_size=4, reader_steps=1, line_batch=8, out=str(tmp_path / "a"), to_registry=False,
                           cpus_per_worker=0.5)
    first = run(cfg)
    assert (tmp_path / "a" / "samples" / "epoch_000.png").exists() and (tmp_path / "a" / "model" / "config.json").exists()
    assert (tmp_path / "a" / "model" / "calibration.json").exists()  # the gate, fitted on the val documents
    again = run(cfg.model_copy(update={"max_epochs": 2, "resume_from": first["checkpoint"], "out": str(tmp_path / "b")}))
    assert again["metrics"]["epoch"] == 1 and len(again["history"]["content"]) == 2  # continued, not restarted


@pytest.mark.slow
def test_recompress_archive_job(ray_cluster, tmp_path):
    import pyarrow.parquet as pq

    from data_jobs.regen_archive import RecompressConfig, run
    from docray.synth import generate

    (tmp_path / "in").mkdir()
    pq.write_table(generate("documents", 0, 3, seed=0, n_angles=0).select(["id", "image"]), tmp_path / "in" / "p.parquet")
    (tmp_path / "lib.yaml").write_text(yaml.safe_dump(TINY_LIB))
    summary = run(RecompressConfig(input=str(tmp_path / "in"), out=str(tmp_path / "out"), untrained="regen_tiny",
                                   file_types=str(tmp_path / "lib.yaml"), batch_size=2))
    assert summary["documents"] == 3 and summary["errors"] == 0 and summary["ratio"] > 10
    t = pq.read_table(summary["out"]).to_pydict()
    assert sorted(t["id"]) == [f"doc-0-{i:07d}" for i in range(3)] and max(t["bytes_out"]) <= 2500
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["documents"] == 3


@pytest.mark.slow
def test_recompress_archive_job_on_object_storage(ray_cluster, s3, tmp_path):
    """The same job with its input and output at s3:// URIs: the parts, the summary and the config in the bucket."""
    import uuid

    import pyarrow as pa
    import pyarrow.parquet as pq

    from data_jobs.regen_archive import RecompressConfig, run
    from docray.storage import blobs
    from docray.synth import generate

    base = f"{s3}/recompress-{uuid.uuid4().hex[:8]}"
    buf = pa.BufferOutputStream()
    pq.write_table(generate("documents", 0, 2, seed=0, n_angles=0).select(["id", "image"]), buf)
    blobs.write_file(f"{base}/in/p.parquet", buf.getvalue().to_pybytes())
    (tmp_path / "lib.yaml").write_text(yaml.safe_dump(TINY_LIB))
    summary = run(RecompressConfig(input=f"{base}/in", untrained="regen_tiny", out=f"{base}/out",
                                   file_types=str(tmp_path / "lib.yaml"), batch_size=2))
    assert summary["documents"] == 2 and summary["errors"] == 0 and summary["out"] == f"{base}/out/parts"
    assert json.loads(blobs.read_file(f"{base}/out/summary.json"))["documents"] == 2
    assert blobs.exists(f"{base}/out/recompress_config.yaml")
