"""DOCRAY_HOME=s3://bucket/prefix against a real S3 endpoint (moto in server mode, the `s3` fixture):
the registry, the filesystem helpers, and one trainer whose every artifact lands in the bucket."""
from __future__ import annotations

import json
import uuid

import pytest
import torch


@pytest.fixture
def s3_home(s3, monkeypatch, tmp_path):
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
    keys = _s3fs().find(s3_home.removeprefix("s3://") + "/models/tiny")
    assert any(k.endswith("v0002/model.safetensors") for k in keys)
