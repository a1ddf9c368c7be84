"""Storage: blobs, model registry, image repository (SQLite and Postgres), Parquet shards, ImageFolder.

Fast and Ray-free. The Postgres variant runs when DOCRAY_TEST_POSTGRES_URL is set, e.g.
`postgresql+psycopg://docray:docray@127.0.0.1:5432/docray`.
"""
from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pytest
import torch
from sqlalchemy import delete, event

from docray.imageio import encode_png
from docray.storage import datasets
from docray.storage.blobs import BlobStore
from docray.storage.registry import ModelRegistry
from docray.storage.repository import AccessDenied, Attachment, ImageRepository


def png(seed: int, size: int = 8) -> bytes:
    rng = np.random.default_rng(seed)
    return encode_png(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))


# -- blobs -------------------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["local", "memory"])
def test_blob_round_trip(tmp_path, where):
    root = str(tmp_path / "blobs") if where == "local" else f"memory://blobs-{tmp_path.name}"
    store = BlobStore(root)
    assert store.put("a/b/c.bin", b"hello") == "a/b/c.bin"
    store.put("a/d.bin", b"x")
    assert store.get("a/b/c.bin") == b"hello"
    assert store.exists("a/d.bin") and not store.exists("a/nope")
    assert store.keys() == ["a/b/c.bin", "a/d.bin"]
    assert store.keys("a/b") == ["a/b/c.bin"]
    store.put("a/d.bin", b"y")  # overwrite
    assert store.get("a/d.bin") == b"y"
    key = store.put_content(b"same", "img")
    assert key.startswith("img/") and store.put_content(b"same", "img") == key
    assert store.get(key) == b"same"
    assert store.delete("a/d.bin") and not store.delete("a/d.bin")
    with pytest.raises(KeyError, match="a/d.bin"):
        store.get("a/d.bin")


BAD_KEYS = ["../x", "a/../../x", "/etc/passwd", "a//b", "", "a/./b", "a\\b", ".hidden", "s3://b/k"]


@pytest.mark.parametrize("key", BAD_KEYS)
def test_blob_key_validation(tmp_path, key):
    store = BlobStore(str(tmp_path))
    with pytest.raises(ValueError):
        store.put(key, b"x")


def test_blob_put_is_atomic(tmp_path, monkeypatch):
    store = BlobStore(str(tmp_path))
    store.put("k", b"old")

    def crash(src, dst):
        raise OSError("simulated crash before the rename")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="simulated"):
        store.put("k", b"new")
    with pytest.raises(OSError, match="simulated"):
        store.put("fresh", b"new")
    monkeypatch.undo()
    assert store.get("k") == b"old"  # the old blob is intact
    assert not store.exists("fresh")
    assert store.keys() == ["k"]
    assert sorted(os.listdir(tmp_path)) == ["k"]  # no temp file left behind


def test_blob_keys_hide_leftover_temp_files(tmp_path):
    store = BlobStore(str(tmp_path))
    store.put("d/k", b"v")
    (tmp_path / "d" / ".k.abc123.tmp").write_bytes(b"partial")  # a crash mid-write (no cleanup)
    assert store.keys() == ["d/k"]


# -- model registry ----------------------------------------------------------------------------


def tiny_model(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))


@pytest.mark.parametrize("where", ["local", "memory"])
def test_registry_round_trip(tmp_path, where):
    root = str(tmp_path / "models") if where == "local" else f"memory://models-{tmp_path.name}"
    reg = ModelRegistry(root)
    m1, m2 = tiny_model(1), tiny_model(2)
    assert reg.save("mlp", m1, {"hidden": 8}, {"acc": 0.5}) == "v0001"
    assert reg.save("mlp", m2.state_dict(), {"hidden": 8}, extra_files={"labels.txt": b"a\nb"}) == "v0002"
    assert reg.versions("mlp") == ["v0001", "v0002"] and reg.latest("mlp") == "v0002"
    assert reg.names() == ["mlp"]

    state, config, metrics = reg.load("mlp")
    assert config == {"hidden": 8} and metrics == {}
    m = tiny_model(0)
    m.load_state_dict(state)
    x = torch.randn(3, 4)
    assert torch.equal(m(x), m2(x))

    state1, _, metrics1 = reg.load("mlp", "v0001")
    assert metrics1 == {"acc": 0.5} and torch.equal(state1["0.weight"], m1[0].weight)
    assert reg.read_file("mlp", "labels.txt") == b"a\nb"
    assert reg.path("mlp").endswith("mlp/v0002")
    if where == "local":
        assert sorted(os.listdir(reg.path("mlp", 1))) == ["card.json", "config.json", "metrics.json", "model.safetensors"]


def test_registry_unknown_names_list_what_exists(tmp_path):
    reg = ModelRegistry(str(tmp_path))
    reg.save("a", tiny_model(0), {})
    with pytest.raises(KeyError, match=r"no model named 'b'.*\['a'\]"):
        reg.load("b")
    with pytest.raises(KeyError, match=r"no version 'v0009'.*\['v0001'\]"):
        reg.load("a", "v0009")
    with pytest.raises(ValueError):
        reg.save("../evil", tiny_model(0), {})


def test_registry_default_root_is_under_docray_home(tmp_path, monkeypatch):
    monkeypatch.setenv("DOCRAY_HOME", str(tmp_path))
    reg = ModelRegistry()
    reg.save("m", tiny_model(0), {})
    assert os.path.isfile(tmp_path / "models" / "m" / "v0001" / "model.safetensors")


def test_registry_crash_mid_save_leaves_no_version(tmp_path, monkeypatch):
    reg = ModelRegistry(str(tmp_path))
    reg.save("m", tiny_model(0), {"n": 1})

    def crash(src, dst):
        raise OSError("simulated crash before the rename")

    monkeypatch.setattr(os, "rename", crash)
    with pytest.raises(OSError, match="simulated"):
        reg.save("m", tiny_model(1), {"n": 2})
    monkeypatch.undo()
    assert reg.versions("m") == ["v0001"] and reg.load("m")[1] == {"n": 1}
    assert sorted(os.listdir(tmp_path / "m")) == ["v0001"]  # the temp folder was removed

    (tmp_path / "m" / ".tmp-dead").mkdir()  # a hard crash (no cleanup) leaves a hidden temp folder
    (tmp_path / "m" / ".tmp-dead" / "model.safetensors").write_bytes(b"partial")
    assert reg.versions("m") == ["v0001"]
    assert reg.save("m", tiny_model(2), {"n": 3}) == "v0002"


# -- image repository (SQLite, and Postgres when configured) -----------------------------------


def test_repository_one_to_one_and_roles(repo):
    orig, proc, comp, portrait, seal = png(0, 32), png(1, 16), png(2, 8), png(3), png(4)
    split = {"position": [2, 3, 10, 12], "fill": "background", "scale": 0.5}
    rid = repo.add(
        orig, proc, comp,
        attachments=[("portrait", portrait, {"box": [2, 3, 10, 12]}), ("seal", seal, {"colour": "red"})],
        doc_type="passport", meta={"source": "test"}, split=split,
    )
    other = repo.add(png(5))
    assert repo.count() == 2 and [r["id"] for r in repo.list()] == [rid, other]
    assert [r["id"] for r in repo.list(limit=1, offset=1)] == [other]

    assert repo.get(rid, "original", "admin") == orig
    assert repo.get(rid, "processed", "user") == proc
    assert repo.get(rid, "compressed", "user") == comp
    with pytest.raises(AccessDenied, match="admin"):
        repo.get(rid, "original", "user")
    assert issubclass(AccessDenied, PermissionError)
    with pytest.raises(ValueError, match="unknown role"):
        repo.get(rid, "processed", "root")
    with pytest.raises(KeyError):
        repo.get("0" * 32, "processed", "user")
    with pytest.raises(KeyError, match="no processed"):
        repo.get(other, "processed", "user")

    rec = repo.record(rid)
    assert rec["doc_type"] == "passport" and rec["meta"] == {"source": "test"} and rec["split"] == split
    assert rec["sizes"] == {"original": len(orig), "processed": len(proc), "compressed": len(comp)}
    assert [a["kind"] for a in rec["attachments"]] == ["portrait", "seal"]
    atts = repo.attachments(rid, "admin")
    assert [(a["kind"], a["data"], a["meta"]) for a in atts] == [
        ("portrait", portrait, {"box": [2, 3, 10, 12]}), ("seal", seal, {"colour": "red"})
    ]
    assert [a["kind"] for a in repo.attachments(rid, "user")] == ["seal"]  # the portrait: pieces of the original
    assert repo.attachments(other, "user") == []

    with pytest.raises(ValueError, match="fill"):
        repo.add(orig, split={"fill": "glue"})


def test_repository_update(repo):
    rid = repo.add(png(0), png(1))
    repo.update(rid, processed=png(2), compressed=png(3), attachments=[("seal", png(4), {})], meta={"v": 2})
    assert repo.get(rid, "processed", "user") == png(2)
    assert repo.get(rid, "compressed", "user") == png(3)
    assert repo.record(rid)["meta"] == {"v": 2} and len(repo.attachments(rid, "admin")) == 1
    assert repo.get(rid, "original", "admin") == png(0)
    removed = repo.gc(min_age_s=0)  # only the replaced processed image, png(1), is unreferenced
    assert len(removed) == 1 and removed[0].startswith("processed/")
    assert repo.get(rid, "processed", "user") == png(2)
    with pytest.raises(KeyError):
        repo.update("f" * 32, processed=png(5))


def test_repository_failed_add_leaves_no_record_and_gc_cleans(repo):
    keep = repo.add(png(0), png(1))

    def boom(*args):
        raise RuntimeError("simulated failure inside the transaction")

    event.listen(Attachment, "before_insert", boom)  # fires after the record row is inserted
    try:
        with pytest.raises(RuntimeError, match="simulated"):
            repo.add(png(10), png(11), png(12), attachments=[("portrait", png(13), {})])
    finally:
        event.remove(Attachment, "before_insert", boom)
    assert repo.count() == 1 and [r["id"] for r in repo.list()] == [keep]
    assert len(repo.blobs.keys()) == 6  # 2 kept + 4 orphans, invisible to readers

    assert repo.gc() == []  # orphans younger than the grace period are kept (an add may be in flight)
    removed = repo.gc(min_age_s=0)
    assert len(removed) == 4 and len(repo.blobs.keys()) == 2
    assert repo.get(keep, "processed", "user") == png(1)
    rid = repo.add(png(10), attachments=[("portrait", png(13), {})])  # works again afterwards
    assert repo.attachments(rid, "admin")[0]["data"] == png(13)


def test_repository_default_location(tmp_path, monkeypatch):
    monkeypatch.setenv("DOCRAY_HOME", str(tmp_path))
    with ImageRepository() as repo:
        rid = repo.add(png(0))
        assert repo.get(rid, "original", "admin") == png(0)
    assert (tmp_path / "repository" / "repository.db").is_file()
    assert len(list((tmp_path / "repository" / "blobs" / "original").rglob("*"))) == 2  # fan-out dir + blob


# -- Parquet shards ----------------------------------------------------------------------------


def test_shards_round_trip(tmp_path):
    table = pa.table({"image": [png(i) for i in range(25)], "label": pa.array(range(25), pa.int32())})
    out = tmp_path / "ds"
    files = datasets.write_shards(table, str(out), rows_per_shard=10)
    assert [os.path.basename(f) for f in files] == ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    assert sorted(os.listdir(out)) == [os.path.basename(f) for f in files]  # nothing else in the folder
    assert datasets.read_table(str(out)).equals(table)
    assert datasets.read_table(str(out), columns=["label"]).column("label").to_pylist() == list(range(25))
    assert [b.num_rows for b in datasets.iter_batches(str(out), 7)] == [7, 7, 7, 4]
    assert pa.Table.from_batches(list(datasets.iter_batches(str(out), 7))).equals(table)

    with pytest.raises(FileExistsError):
        datasets.write_shards(table, str(out))
    stream = (table.slice(i, 5) for i in range(0, 25, 5))  # a stream of tables, rechunked
    files = datasets.write_shards(stream, str(out), rows_per_shard=20, overwrite=True)
    assert len(files) == 2 and sorted(os.listdir(out)) == ["part-00000.parquet", "part-00001.parquet"]
    assert datasets.read_table(str(out)).equals(table)


def test_shard_write_is_atomic(tmp_path, monkeypatch):
    table = pa.table({"x": [1, 2, 3]})

    def crash(src, dst):
        raise OSError("simulated crash before the rename")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="simulated"):
        datasets.write_shards(table, str(tmp_path / "ds"))
    monkeypatch.undo()
    assert os.listdir(tmp_path / "ds") == []


def test_shards_on_memory_fs(tmp_path):
    url = f"memory://shards-{tmp_path.name}"
    table = pa.table({"x": list(range(5))})
    files = datasets.write_shards(table, url, rows_per_shard=2)
    assert files[0] == f"{url}/part-00000.parquet" and len(files) == 3
    assert datasets.read_table(url).equals(table)


# -- ImageFolder -------------------------------------------------------------------------------


def test_read_image_folder(tmp_path):
    for label, seeds in {"dog": [0, 1], "cat": [2]}.items():
        (tmp_path / label).mkdir()
        for s in seeds:
            (tmp_path / label / f"{s:03d}.png").write_bytes(png(s))
    (tmp_path / "dog" / "broken.png").write_bytes(png(9)[:40])  # truncated
    (tmp_path / "dog" / "notes.txt").write_text("ignored")
    (tmp_path / "metadata.csv").write_text(
        "file,source_id,release_time\ncat/002.png,s2,2024-01-02\ndog/000.png,s0,2024-01-01\n"
    )

    table, skipped = datasets.read_image_folder(str(tmp_path))
    assert table.column("path").to_pylist() == ["cat/002.png", "dog/000.png", "dog/001.png"]
    assert table.column("label").to_pylist() == ["cat", "dog", "dog"]
    assert table.column("label_id").to_pylist() == [0, 1, 1] and table.schema.field("label_id").type == pa.int32()
    assert table.column("image").to_pylist()[0] == png(2)
    assert datasets.labels_of(table) == ["cat", "dog"]
    assert [p for p, _ in skipped] == ["dog/broken.png"] and "corrupt" in skipped[0][1]
    assert table.column("source_id").to_pylist() == ["s2", "s0", None]

    _, skipped = datasets.read_image_folder(str(tmp_path), max_bytes=50)
    assert len(skipped) == 4  # every image is over 50 bytes


def test_registry_references_read_one_way():
    from docray.storage.registry import parse_ref, ref

    assert parse_ref("registry:descriptor") == ("descriptor", "latest")
    assert parse_ref("registry:descriptor@v0002") == parse_ref("registry:descriptor:v0002") == ("descriptor", "v0002")
    assert parse_ref("/models/descriptor") is None and parse_ref("build:descriptor_tiny") is None and parse_ref(None) is None
    assert ref("regen") == "registry:regen" and ref("regen", "v0003") == "registry:regen@v0003"
    assert parse_ref(ref("mask_recognizer_masked", "v0001")) == ("mask_recognizer_masked", "v0001")
    with pytest.raises(ValueError, match="model name"):
        parse_ref("registry:../etc@v0001")
