"""Unified recognition through Ray: a 2-worker Ray Train run on the synthetic default that fails
once and resumes, the encoder hand-off from MAE pre-training, `serve.run` of /v1/recognize, and the
archive Data job. (Datasets by URI, missing labels, a killed worker: test_train_recognition_data.py.)"""
from __future__ import annotations

import io
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from docray.recognition.data import documents_table

TINY = ["model=unified_tiny", "text_encoder=hash", "n_train=32", "n_val=8", "batch_size=8"]


@pytest.fixture(scope="module")
def trained(ray_cluster, tmp_path_factory):
    """A registered tiny encoder -> unified training on 2 workers that fails after epoch 0 and
    resumes from its checkpoint -> a registered unified model (used by Serve and Data below)."""
    from docray.models import build_model
    from train_jobs import pretrain_recognition, train_recognition

    out = tmp_path_factory.mktemp("runs")
    mcfg = pretrain_recognition.RecognitionPretrainConfig(model="vit_mae_tiny", register_as="test-encoder")
    pretrain_recognition.register_encoder(mcfg, build_model("vit_mae_tiny").state_dict(), {"loss": 1.0})
    uni = train_recognition.main(["--set", *TINY, "epochs=2", "num_workers=2", "cpus_per_worker=0.5", "fail_at_epoch=0",
                              "encoder_from=test-encoder", "register_as=test-unified", f"out={out / 'uni'}"])
    return uni, out


@pytest.mark.slow
def test_mae_pretrain_job_registers_encoder_and_writes_grids(ray_cluster, tmp_path):
    from docray.storage.registry import ModelRegistry
    from train_jobs import pretrain_recognition

    mae = pretrain_recognition.main(["--set", "model=vit_mae_tiny", "n_train=32", "n_val=8", "epochs=2", "batch_size=8", "num_workers=2",
                             "cpus_per_worker=0.5", "fail_at_epoch=0", "register_as=test-encoder-job",
                             f"out={tmp_path / 'mae'}"])
    assert mae["registered"].startswith("test-encoder-job/v") and mae["resumed_at_epoch"] == 1
    assert mae["worker_imported_synth"] is False  # the synthetic default was made on the driver
    state, config, metrics = ModelRegistry().load("test-encoder-job")
    assert config["name"] == "vit_encoder_tiny" and "loss" in metrics
    assert metrics["train_samples_per_s"] > 0  # what `docray models build` prints per step
    assert all(k.startswith("vit.") for k in state)
    for epoch in (0, 1):
        w, h = Image.open(tmp_path / "mae" / "grids" / f"epoch_{epoch:03d}.png").size
        assert w % 3 == 0 and h % (w // 3) == 0  # original | masked | reconstruction, a row per image
    assert (tmp_path / "mae" / "config.yaml").exists()


def test_two_worker_training_resumed_from_checkpoint(trained):
    uni, out = trained
    assert uni["epochs"] == 2
    assert uni["resumed_at_epoch"] == 1  # the injected failure after epoch 0; the restart loaded its checkpoint
    assert (out / "uni" / ".failed_once").exists()
    assert uni["registered"].startswith("test-unified/v")
    assert 0 <= uni["val/doc_type"] <= 1 and "val/layout_detection" in uni
    assert uni["worker_imported_synth"] is False and uni["steps"] == 2 * (32 // 2 // 8)
    from docray.storage.registry import ModelRegistry

    card = ModelRegistry().card("test-unified", uni["registered"].split("/")[1])  # its model card
    assert card["job"] == "train_jobs.train_recognition" and card["commit"] and card["wall_time_s"] > 0
    assert card["datasets"]["train"]["uri"] == uni["train"] and card["datasets"]["val"]["rows"] > 0
    assert card["hardware"]["num_workers"] == 2 and card["job_config"]["epochs"] == 2
    assert card["key_metric"] == "val/doc_type" and card["metrics"]["val/doc_type"] == uni["val/doc_type"]
    assert card["metrics"]["train_samples_per_s"] > 0


def test_serve_recognize(trained, serve_port):
    import httpx
    from ray import serve

    from serve_apps.gateway import build_app

    serve.run(build_app({"recognition": {"model": "test-unified", "select": "all"}}), name="recognition", route_prefix="/recognition")
    row = documents_table(20, seed=0).slice(0, 1).to_pylist()[0]
    url = f"http://127.0.0.1:{serve_port}/recognition/v1/recognize"
    try:
        r = httpx.post(url, files={"image": ("d.png", row["image"], "image/png")},
                       data={"tasks": json.dumps(["doc_type", "layout_detection", "layout_segmentation"])}, timeout=60)
        assert r.status_code == 200, r.text
        body = r.json()
        assert set(body["results"]) == {"doc_type", "layout_detection", "layout_segmentation"}
        assert body["models"] == {"test-unified": trained[0]["registered"].split("/")[1]}  # the version that answered
        # every answer comes from its unit, or says the (barely trained) gate sent it elsewhere
        for name, res in body["results"].items():
            assert "error" in res or res["type"] == {"doc_type": "cls", "layout_detection": "det",
                                                     "layout_segmentation": "seg"}[name]
        r = httpx.post(url, files=[("image", ("d.png", row["image"], "image/png")),
                                   ("frames[]", ("f.png", row["flash"], "image/png"))],
                       data={"tasks": json.dumps(["screen_recapture"])}, timeout=60)
        assert r.status_code == 200 and "screen_recapture" in r.json()["results"], r.text
        bad = [
            ({"image": ("x.png", b"not an image", "image/png")}, {}, 415),
            ({"image": ("d.png", row["image"], "image/png")}, {"tasks": '["nope"]'}, 400),
            ({"image": ("d.png", row["image"], "image/png")}, {"tasks": "[not json"}, 400),
            ({"image": ("d.png", row["image"], "image/png")}, {"tasks": '["screen_recapture"]'}, 400),
            ({}, {}, 400),
        ]
        for files, data, status in bad:
            r = httpx.post(url, files=files or {"other": ("a", b"a")}, data=data, timeout=60)
            assert r.status_code == status, (data, r.text)
            assert set(r.json()["error"]) == {"code", "message"}
        r = httpx.post(url, files={"image": ("d.png", row["image"], "image/png")}, data={"tasks": '["nope"]'}, timeout=60)
        assert "nope" in r.json()["error"]["message"] and r.json()["error"]["code"] == "unknown_task"
    finally:
        serve.delete("recognition")


def test_recognize_archive_job(trained, tmp_path):
    from data_jobs.recognition_archive import RecognizeArchiveConfig, run

    rows = documents_table(20, seed=0).slice(0, 6)
    src = tmp_path / "archive"
    src.mkdir()
    pq.write_table(rows.select(["id", "image", "flash", "angles"]), src / "part-0.parquet")
    out = tmp_path / "out"
    cfg = RecognizeArchiveConfig(input=str(src), out=str(out), model="test-unified",
                                 tasks=["doc_type", "capture_quality", "screen_recapture"], batch_size=4)
    summary = run(cfg)
    table = pa.concat_tables([pq.read_table(f) for f in sorted(out.glob("*.parquet"))])
    assert summary["files"] >= 1 and table.num_rows == 6
    assert sorted(table.column("id").to_pylist()) == sorted(rows.column("id").to_pylist())
    first = json.loads(table.column("results")[0].as_py())
    assert set(first) == {"doc_type", "capture_quality", "screen_recapture"}
    # an ImageFolder archive (images only): frame tasks cannot be asked there
    folder = tmp_path / "folder" / "docs"
    folder.mkdir(parents=True)
    for r in rows.slice(0, 2).to_pylist():
        Image.open(io.BytesIO(r["image"])).save(folder / f"{r['id']}.png")
    cfg2 = cfg.model_copy(update={"input": str(tmp_path / "folder"), "out": str(tmp_path / "out2"),
                                  "tasks": ["doc_type"]})
    run(cfg2)
    t2 = pa.concat_tables([pq.read_table(f) for f in sorted((tmp_path / "out2").glob("*.parquet"))])
    assert t2.num_rows == 2 and "doc_type_label" in t2.column_names
    assert np.isin(t2.column("doc_type_label").to_pylist() + [None], [None, *_doc_types()]).all()


def _doc_types():
    from docray.recognition.tasks import load_catalogue

    return load_catalogue().get("doc_type").classes
