"""Screening through Ray: the library build job (incremental), the archive rescan (resumable), the Serve app."""
from __future__ import annotations

import io
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from docray.screening.library import Library

DESC = "build:descriptor_tiny"  # random weights, same in every process (seeded): enough for plumbing
EXACT = {"text_finder": "none", "threshold": 0.9999, "learn": False,  # only identical tiles match ...
         "verify": {"enabled": True, "decide": "either", "propose": "descriptor+local"}}  # ... or verified ones


def png_bytes(img) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def library(ray_cluster, tmp_path_factory):
    from data_jobs.screening_library import BuildConfig, run

    root = tmp_path_factory.mktemp("screen") / "lib"
    first = run(BuildConfig(root=str(root), descriptor=DESC, synth_n=12, templates=["2x2", "1x3"], batch_size=4))
    assert first["version"] == 1 and first["added"] > 0 and first["targets"] > 0
    again = run(BuildConfig(root=str(root), descriptor=DESC, synth_n=12, templates=["2x2", "1x3"], batch_size=4))
    assert again["targets"] == 0 and again["version"] == 1  # nothing new: no new version
    more = run(BuildConfig(root=str(root), descriptor=DESC, synth_n=24, templates=["2x2", "1x3"], batch_size=4))
    assert more["version"] == 2 and more["n_tiles"] == first["n_tiles"] + more["added"]  # appended, not rebuilt
    lib = Library.open(root)
    assert len(lib) == more["n_tiles"] and set(lib.meta.column("cut_type").to_pylist()) <= {"2x2", "1x3"}
    assert (root / "build_config.yaml").exists() and (root / "manifests" / "v0002.json").exists()
    targets = set(lib.meta.column("target_id").to_pylist())  # each target's local features, for verification
    assert lib.feature_spec is not None and set(lib.feature_targets()) == targets
    assert all(len(lib.target_features(t)) > 0 for t in targets)
    return root


def archive(lib_root, folder, n_docs=6):
    """Documents 0, 3 carry a library tile; the others benign synthetic pictures."""
    from docray.synth import generate

    lib = Library.open(lib_root)
    benign = generate("targets", 500, 520, seed=3, target_rate=0.0).column("image").to_pylist()
    rows = []
    for i in range(n_docs):
        pics = [benign[2 * i], benign[2 * i + 1]]
        if i % 3 == 0:
            pics.append(png_bytes(lib.tile_image(i)))
        rows.append({"id": f"doc-{i}", "pictures": pics, "release_time": None})
    rows.append({"id": "doc-bad", "pictures": [b"not an image"], "release_time": None})
    t = pa.Table.from_pylist(rows, schema=pa.schema([("id", pa.string()), ("pictures", pa.list_(pa.binary())),
                                                     ("release_time", pa.string())]))
    folder.mkdir()
    pq.write_table(t.slice(0, 4), folder / "part-00000.parquet")
    pq.write_table(t.slice(4), folder / "part-00001.parquet")
    return folder


def test_archive_rescan_reports_and_resumes(library, tmp_path):
    from data_jobs.screening_archive import RescanConfig, run

    src = archive(library, tmp_path / "archive")
    cfg = RescanConfig(input=str(src), out=str(tmp_path / "report"), library=str(library), screen=EXACT)
    res = run(cfg, progress=False)
    assert res["shards"] == 2 and res["skipped_shards"] == 0 and res["documents"] == 7
    rep = pq.read_table(tmp_path / "report").to_pylist() if False else pq.read_table(
        [str(tmp_path / "report" / f"part-0000{i}.parquet") for i in (0, 1)]).to_pylist()
    by_id = {r["id"]: r for r in rep}
    assert [d for d, r in sorted(by_id.items()) if r["abnormal"]] == ["doc-0", "doc-3"]
    ev = json.loads(by_id["doc-0"]["evidence"])
    assert ev[0]["picture"] == 2 and ev[0]["tile_id"] == 0 and ev[0]["stage"] == "primary" and ev[0]["similarity"] >= 0.9999
    assert by_id["doc-bad"]["error"] and not by_id["doc-bad"]["abnormal"]
    assert pq.read_table(tmp_path / "report" / "abnormal.parquet").num_rows == 2
    # resume: a finished shard is skipped, a missing one redone
    (tmp_path / "report" / "part-00001.parquet").unlink()
    mtime = (tmp_path / "report" / "part-00000.parquet").stat().st_mtime_ns
    res = run(cfg, progress=False)
    assert res["skipped_shards"] == 1 and res["documents"] == 7 and res["abnormal"] == 2
    assert (tmp_path / "report" / "part-00000.parquet").stat().st_mtime_ns == mtime


def test_serve_screen_and_targets(library, serve_port):
    import httpx
    from ray import serve

    from docray.synth import generate
    from serve_apps.gateway import build_app

    serve.run(build_app({"screening": {"library": str(library), "screen": EXACT, "reload_interval_s": 0}}),
              name="screening-test", route_prefix="/screening-test")
    url = f"http://127.0.0.1:{serve_port}/screening-test"
    try:
        lib = Library.open(library)
        tile = png_bytes(lib.tile_image(1))
        benign = generate("targets", 600, 601, seed=3, target_rate=0.0).column("image")[0].as_py()
        with httpx.Client(timeout=60) as c:
            r = c.post(f"{url}/v1/screen", files=[("pictures", ("a.png", benign)), ("pictures", ("b.png", tile))])
            assert r.status_code == 200, r.text
            v = r.json()
            assert v["abnormal"] and v["matches"][0]["picture"] == 1 and v["matches"][0]["tile_id"] == 1
            assert v["verification"] == "on" and "inliers" in v["matches"][0]
            assert (v["threshold"], v["threshold_source"]) == (0.9999, "config")  # EXACT sets it
            health = c.get(f"{url}/healthz").json()["apps"]["screening"]
            assert health["ok"] and (health["threshold"], health["threshold_source"]) == (0.9999, "config")
            r = c.post(f"{url}/v1/screen", files=[("pictures", ("a.png", benign))], data={"release_time": "2024-03-01"})
            assert r.status_code == 200 and not r.json()["abnormal"]
            # errors: JSON error model, nothing stored
            r = c.post(f"{url}/v1/screen", files=[("pictures", ("x.png", b"not an image"))])
            assert r.status_code == 415 and r.json()["error"]["code"] == "unsupported_format"
            r = c.post(f"{url}/v1/screen", data={"release_time": "2024-03-01"})
            assert r.status_code == 400 and r.json()["error"]["code"] == "missing_field"
            r = c.post(f"{url}/v1/screen", files=[("pictures", ("b.png", tile))], data={"cut_type": "5x5"})
            assert r.status_code == 400 and r.json()["error"]["code"] == "bad_cut_type"
            r = c.post(f"{url}/v1/screen", files=[("pictures", ("b.png", tile))], data={"release_time": "soon"})
            assert r.status_code == 400 and r.json()["error"]["code"] == "bad_release_time"
            r = c.post(f"{url}/v1/screen/targets", files=[("image", ("t.png", benign))], data={"source_id": "s"})
            assert r.status_code == 400 and "release_time" in r.json()["error"]["message"]
            version = Library.current_version(library)
            n_featured = len(Library.open(library).feature_targets())
            # a new target: tiles added, a new library version that the app (and a fresh open) sees
            poster = generate("targets", 700, 720, seed=4, target_rate=1.0).column("image")[0].as_py()
            r = c.post(f"{url}/v1/screen/targets", files=[("image", ("t.png", poster))],
                       data={"release_time": "2024-06-01", "source_id": "src-new"})
            assert r.status_code == 200, r.text
            assert r.json()["library_version"] == version + 1 and r.json()["tiles_added"] > 0
            assert Library.current_version(library) == version + 1
            assert len(Library.open(library).feature_targets()) == n_featured + 1  # the new target's local features
            info = c.get(f"{url}/v1/screen/library").json()
            assert info["version"] == version + 1 and info["tiles"] == len(Library.open(library))
    finally:
        serve.delete("screening-test")


def test_rescan_plan_reads_and_writes_object_storage(s3):
    """The rescan's input shards, reports and shards.json at s3:// URIs (no Ray): a report is kept for the
    same shard, redone when its shard is rewritten (a new ETag), and a stale one is removed."""
    import uuid

    from data_jobs.screening_archive import RescanConfig, input_shards, plan, read_parquet, write_atomic
    from docray.storage import blobs

    base = f"{s3}/rescan-{uuid.uuid4().hex[:8]}"
    t = pa.table({"id": ["a", "b"], "pictures": [[b"x"], [b"y"]]})
    for i in range(3):
        write_atomic(t, f"{base}/archive/s{i}.parquet")
    cfg = RescanConfig(input=f"{base}/archive", out=f"{base}/report")
    shards = input_shards(cfg, cfg.out)
    assert shards == [f"{base}/archive/s{i}.parquet" for i in range(3)] and read_parquet(shards[1]).equals(t)
    todo, pending = plan(cfg.out, shards)
    assert len(todo) == len(pending) == 3 and todo[0][1] == f"{base}/report/part-00000.parquet"
    for _, report in pending[:2]:
        write_atomic(pa.table({"id": ["a"], "abnormal": [True]}), report)
    write_atomic(pa.table({"id": ["z"], "abnormal": [True]}), f"{base}/report/part-00009.parquet")  # no shard of it
    assert [r for _, r in plan(cfg.out, shards)[1]] == [f"{base}/report/part-00002.parquet"]
    assert not blobs.exists(f"{base}/report/part-00009.parquet")
    write_atomic(t.slice(0, 1), shards[0])  # the shard changed: its report is redone
    assert [r for _, r in plan(cfg.out, shards)[1]] == [f"{base}/report/part-0000{i}.parquet" for i in (0, 2)]
    assert json.loads(blobs.read_file(f"{base}/report/shards.json"))["part-00001.parquet"]["shard"] == shards[1]
