"""DOCRAY_HOME=s3://bucket/prefix against a real S3 endpoint (moto in server mode, the `s3` fixture):
the registry, the filesystem helpers, and one trainer whose every artifact lands in the bucket."""
from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import pytest
import torch


@pytest.fixture
def local_home() -> Path:
    """The session's local DOCRAY_HOME (tests/conftest.py), which Ray's workers were started with."""
    return Path(os.environ["DOCRAY_HOME"])


@pytest.fixture
def s3_home(s3, local_home, monkeypatch, tmp_path):
    """DOCRAY_HOME on a fresh prefix of the test bucket; HOME an empty folder (the local default,
    ~/.docray, must stay unused)."""
    home = f"{s3}/home-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("DOCRAY_HOME", home)
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    (tmp_path / "user").mkdir()
    return home


def _s3fs():
    from docray.storage.blobs import filesystem

    return filesystem("s3://docray-test")[0]


def test_the_endpoint_is_a_real_s3_server(s3):
    import boto3
    import pyarrow.fs

    fs = _s3fs()
    fs.pipe_file("docray-test/probe/a.txt", b"hello")
    assert boto3.client("s3").get_object(Bucket="docray-test", Key="probe/a.txt")["Body"].read() == b"hello"
    arrow, path = pyarrow.fs.FileSystem.from_uri("s3://docray-test/probe/a.txt")
    with arrow.open_input_stream(path) as f:
        assert f.read() == b"hello"


def test_paths_and_files_on_s3(s3_home):
    from docray import paths
    from docray.config import Config, save_config
    from docray.storage import blobs

    assert paths.sub("models", "x") == f"{s3_home}/models/x" and paths.join(f"{s3_home}/", "a", "b") == f"{s3_home}/a/b"
    assert paths.absolute(s3_home) == s3_home
    url = blobs.write_file(paths.sub("reports", "r.txt"), b"report")
    assert blobs.read_file(url) == b"report" and blobs.exists(url) and not blobs.exists(paths.sub("reports", "nope"))

    class Job(Config):
        epochs: int = 3

    saved = save_config(Job(epochs=5), paths.sub("runs", "job"))
    assert saved == f"{s3_home}/runs/job/config.yaml" and b"epochs: 5" in blobs.read_file(saved)

    folder = paths.sub("runs", "job", "model")
    with blobs.local_folder(folder) as d:  # a library that saves into a folder (save_pretrained)
        assert not paths.is_uri(d)
        Path(d, "sub").mkdir()
        Path(d, "sub", "w.bin").write_bytes(b"w")
    assert blobs.read_file(f"{folder}/sub/w.bin") == b"w"


def test_model_registry_on_s3(s3_home):
    from docray.storage.registry import ModelRegistry

    reg = ModelRegistry()
    assert reg.root == f"{s3_home}/models" and not reg.local
    v1 = reg.save("tiny", {"w": torch.ones(2, 3)}, {"name": "tiny"}, {"acc": 0.5}, extra_files={"labels.txt": b"a\nb"})
    v2 = reg.save("tiny", {"w": torch.zeros(2, 3)}, {"name": "tiny"})
    assert (v1, v2) == ("v0001", "v0002") and reg.versions("tiny") == ["v0001", "v0002"]
    state, config, metrics = ModelRegistry(s3_home + "/models").load("tiny", "v0001")  # a second reader
    assert torch.equal(state["w"], torch.ones(2, 3)) and config == {"name": "tiny"} and metrics == {"acc": 0.5}
    assert reg.read_file("tiny", "labels.txt", "v0001") == b"a\nb" and reg.card("tiny")["version"] == "v0002"
    assert reg.card("tiny", "v0001")["weights_sha256"] == reg.digest("tiny", "v0001") != reg.digest("tiny")
    keys = _s3fs().find(s3_home.removeprefix("s3://") + "/models/tiny")
    assert any(k.endswith("v0002/model.safetensors") for k in keys)


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()} if root.exists() else set()


def test_a_trainer_keeps_every_artifact_in_object_storage(ray_cluster, s3_home, local_home, tmp_path):
    """pretrain_recognition with DOCRAY_HOME=s3://...: the synthetic dataset cache, the resolved config,
    Ray Train's run storage (checkpoints), the epoch grids and the registered model are in the bucket,
    and nothing is written to a local DOCRAY_HOME (the user's default, or the one the workers know)."""
    from docray.storage.registry import ModelRegistry
    from train_jobs import pretrain_recognition

    before = _files(local_home)
    r = pretrain_recognition.main(["--set", "model=vit_mae_tiny", "image_size=32", "n_train=16", "n_val=8",
                                   "batch_size=8", "epochs=1", "num_workers=1", "cpus_per_worker=1",
                                   "register_as=s3-encoder"])
    assert r["registered"] == "s3-encoder/v0001" and r["train"].startswith(f"{s3_home}/datasets/synth/documents-")
    assert r["grids"] == f"{s3_home}/runs/pretrain_recognition/grids"

    reg = ModelRegistry(f"{s3_home}/models")  # read back from the S3 root by a registry of its own
    assert reg.names() == ["s3-encoder"] and reg.load("s3-encoder")[1]["name"] == "vit_encoder_tiny"
    assert reg.card("s3-encoder")["datasets"]["train"]["rows"] == 16

    bucket = s3_home.removeprefix("s3://")
    keys = [k[len(bucket) + 1:] for k in _s3fs().find(bucket)]
    synth = [k for k in keys if k.startswith("datasets/synth/documents-")]
    assert any(k.endswith("/_SUCCESS") for k in synth) and any("/train/" in k and k.endswith(".parquet") for k in synth)
    run = "runs/pretrain_recognition/"
    assert f"{run}config.yaml" in keys and f"{run}grids/epoch_000.png" in keys
    assert any(k.startswith(f"{run}ray/pretrain_recognition-") and k.endswith("/state.pt") for k in keys)  # checkpoint
    assert any(k.startswith("models/s3-encoder/v0001/") and k.endswith("model.safetensors") for k in keys)

    assert _files(local_home) == before
    assert not (tmp_path / "user" / ".docray").exists() and not any(p.name == ".docray" for p in Path(tmp_path).rglob("*"))


def test_synthetic_corpus_written_and_read_on_s3(ray_cluster, s3_home):
    """Ray Data writes and reads Parquet at s3:// URIs; a rerun replaces the shards; the contact sheet
    goes beside them."""
    import ray

    from data_jobs.synth_corpus import generate_with_ray, save_contact_sheet
    from docray.storage.blobs import exists
    from train_jobs.common import read_datasets

    out = f"{s3_home}/datasets/masks"
    files = generate_with_ray("masks", 30, out, seed=3, rows_per_block=10, rows_per_shard=10)
    assert files and all(f.startswith(f"{out}/") and f.endswith(".parquet") for f in files)
    assert generate_with_ray("masks", 20, out, seed=3, rows_per_block=10, rows_per_shard=10)  # replaces
    assert ray.data.read_parquet(out).count() == 20 and read_datasets(out, cache=False)["train"].count() == 20
    assert exists(save_contact_sheet("masks", out, n=4))


def test_concurrent_saves_to_an_object_store_registry_get_distinct_versions(s3, tmp_path):
    """Two nodes saving one model name: the database's unique (root, name, version) rows give each
    save its own number, and every version is whole (without the database, saves racing for one
    folder overwrite each other: 8 saves left 3 versions when this was written)."""
    import uuid
    from concurrent.futures import ThreadPoolExecutor

    import torch

    from docray.storage.registry import ModelRegistry

    root, db = f"{s3}/registry-{uuid.uuid4().hex[:8]}", f"sqlite:///{tmp_path / 'claims.db'}"

    def save(i: int) -> str:  # a registry object per save, as on two nodes
        return ModelRegistry(root, db_url=db).save("m", {"w": torch.full((2,), float(i))}, {"name": "m"})

    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(save, range(8)))
    reg = ModelRegistry(root, db_url=db)
    assert sorted(got) == reg.versions("m") == [f"v{i:04d}" for i in range(1, 9)]
    assert sorted(float(reg.load("m", v)[0]["w"][0]) for v in got) == [float(i) for i in range(8)]
