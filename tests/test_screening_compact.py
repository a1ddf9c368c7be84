"""Compaction of the cut-out library (issue 19): `Library.compact` merges the shards into one as a new
version, published by the same INSERT race as an append, and forgets versions older than the newest
`keep_versions` (rows, manifests/ copies, files only they named). Each case runs on SQLite and on
Postgres (tests/test_screening_shared.py's fixtures), without Ray."""
from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest
from click.testing import CliRunner

from docray.screening.library import Library
from docray.screening.rules import AttrFilter
from docray.screening.templates import cut_code
from docray.screening.versions import VersionStore, VersionTaken
from tests.test_screening_shared import (EMBED, check_whole, db_url, new_library, old_layout_library,  # noqa: F401
                                         postgres_url, s3_names, s3_root, target)


def searches(lib: Library, queries: np.ndarray) -> list:
    """Ids and scores of the same queries unfiltered, in a release window, and for one cut type."""
    out = []
    for filt in (None, AttrFilter(t_lo=101, t_hi=103), AttrFilter(cuts=frozenset({cut_code("2x2")}))):
        sims, ids = lib.index.search(queries, 10, filt)
        out.append((ids.tolist(), np.round(sims, 6).tolist()))
    return out


def queries(lib: Library) -> np.ndarray:
    """Tiles of the library (every 7th) and tiles of posters not in it."""
    own = [lib.tile_image(i) for i in range(0, len(lib), 7)]
    return np.vstack([EMBED(own), target(50)[1][:8]])


def referenced(root, db_url) -> set[str]:
    """Every file the database's rows name (tile and features shards)."""
    out = set()
    for m in VersionStore(root, db_url).manifests().values():
        out |= {s.rsplit("/", 1)[-1] for s in m["shards"] + (m.get("features") or {}).get("shards", [])}
    return out


def test_compaction_keeps_every_tile_and_gives_the_same_results(s3_root, db_url, tmp_path):
    lib = new_library(s3_root, db_url, tmp_path)
    for i in range(1, 5):
        lib.append(*target(i, lib.feature_spec))
    targets = {f"t{i}" for i in range(5)}
    q = queries(lib)
    before = searches(lib, q)
    images = {i: lib.tile_image(i).tobytes() for i in range(0, len(lib), 11)}
    features = {t: lib.target_features(t) for t in targets}
    stale = Library.open(s3_root, db_url=db_url, cache_dir=str(tmp_path / "cache-stale"))  # a reader at version 5

    res = lib.compact(keep_versions=1)
    assert res["compacted"] and res["version"] == 6 and res["shards_before"] == 5 and res["shards"] == 1
    assert res["files_removed"] == 5 + 5  # version 5's tile and features shards (its index folder: pruned by name)
    assert VersionStore(s3_root, db_url).versions() == [6]
    assert len(s3_names(f"{s3_root}/tiles")) == len(s3_names(f"{s3_root}/features")) == 1
    assert s3_names(f"{s3_root}/index") == [lib.manifest["index"].split("/")[-1]]
    assert s3_names(f"{s3_root}/manifests") == ["v0006.json"]
    assert VersionStore(s3_root).manifest_file()["version"] == 6  # manifest.json: the compacted version

    for reader in (lib, Library.open(s3_root, db_url=db_url, cache_dir=str(tmp_path / "cache-reader"))):
        assert reader.version == 6 and reader.manifest["shards"] == lib.manifest["shards"]
        check_whole(reader, targets)
        assert sorted(reader.meta.column("version").unique().to_pylist()) == [1, 2, 3, 4, 5]  # tiles keep their version
        assert searches(reader, q) == before
        assert {i: reader.tile_image(i).tobytes() for i in images} == images
        assert all(np.array_equal(reader.target_features(t).desc, features[t].desc) for t in targets)
    # the reader still at version 5: its shards are gone, it follows the library and reads the same tile
    assert stale.tile_image(len(stale) - 1).tobytes() == lib.tile_image(len(lib) - 1).tobytes() and stale.version == 6
    assert lib.compact()["compacted"] is False  # one shard: nothing to merge


@pytest.mark.parametrize("first", ["append", "compaction"])
def test_an_append_racing_the_compaction_is_not_lost(first, db_url, tmp_path, monkeypatch):
    root = tmp_path / "lib"  # a local folder: the race is the database's (test 1 runs in the bucket)
    lib = new_library(root, db_url, tmp_path)
    for i in range(1, 3):
        lib.append(*target(i, lib.feature_spec))
    writer = Library.open(root, db_url=db_url)
    barrier, lost = threading.Barrier(2, timeout=30), []
    publish = VersionStore.publish

    def racing_publish(store, manifest):
        who = "compaction" if len(manifest["shards"]) == 1 else "append"
        if manifest["version"] == 4:
            barrier.wait()  # the compaction and the append both hold a staged version 4 ...
            if who != first:
                time.sleep(0.3)  # ... and `first` INSERTs it first
        try:
            publish(store, manifest)
        except VersionTaken:
            lost.append(who)
            raise

    monkeypatch.setattr(VersionStore, "publish", racing_publish)
    results = {}
    threads = [threading.Thread(target=lambda: results.update(compact=lib.compact(keep_versions=2))),
               threading.Thread(target=lambda: results.update(append=writer.append(*target(9, writer.feature_spec))))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert lost == [{"append": "compaction", "compaction": "append"}[first]] and results["append"]["added"] > 0
    assert results["compact" if first == "compaction" else "append"]["version"] == 4
    assert results["append" if first == "compaction" else "compact"]["version"] == 5
    back = Library.open(root, db_url=db_url)
    assert back.version == 5
    check_whole(back, {"t0", "t1", "t2", "t9"})
    # the compaction lost: it merged the append's shard too; the append lost: it landed on the compacted version
    assert len(back.manifest["shards"]) == (1 if lost == ["compaction"] else 2)
    i = back.meta.column("target_id").to_pylist().index("t9")
    assert back.index.search(EMBED([back.tile_image(i)]), 1)[1][0, 0] == i
    # the loser's staged files were deleted; what is left, some kept version names
    assert {p.name for d in ("tiles", "features") for p in (root / d).iterdir()} <= referenced(root, db_url)


def test_rows_and_files_stay_bounded(tmp_path, db_url):
    root = tmp_path / "lib"
    lib = new_library(root, db_url, tmp_path)
    store = VersionStore(root, db_url)
    for round_ in range(3):
        for j in range(3):
            lib.append(*target(10 * round_ + j + 1, lib.feature_spec))
        assert len(lib.manifest["shards"]) == 4  # the compacted shard (the first one) + 3 appends
        res = lib.compact(keep_versions=2)
        assert res["shards"] == 1 and res["version"] == 4 * round_ + 5
        rows = store.manifests()
        assert sorted(rows) == [res["version"] - 1, res["version"]]  # two rows ...
        assert max(len(m["shards"]) for m in rows.values()) == 4  # ... of at most 4 shards, every round
        assert len(list((root / "features").iterdir())) == len(list((root / "tiles").iterdir())) <= 5
        assert len(list((root / "manifests").iterdir())) == 2
    assert len(lib) == len(Library.open(root, db_url=db_url)) and lib.index.ntotal == len(lib)
    res = lib.compact(keep_versions=1)  # nothing to merge: only forgets
    assert not res["compacted"] and store.versions() == [13]
    assert [len(list((root / d).iterdir())) for d in ("tiles", "features", "index", "manifests")] == [1, 1, 1, 1]


def test_a_stale_writer_cannot_publish_a_pruned_version(tmp_path, db_url):
    root = tmp_path / "lib"
    lib = new_library(root, db_url, tmp_path)
    stale = Library.open(root, db_url=db_url)  # at version 1
    lib.append(*target(1, lib.feature_spec))
    lib.append(*target(2, lib.feature_spec))
    lib.compact(keep_versions=1)  # version 4; the rows of 1-3 are deleted
    assert VersionStore(root, db_url).versions() == [4]
    with pytest.raises(VersionTaken):  # version 2's row is gone, but version 4's says 2 is taken
        stale.versions.publish(dict(stale.manifest, version=2))
    assert VersionStore(root, db_url).versions() == [4]
    res = stale.append(*target(3, stale.feature_spec))  # the append follows the library and lands on top
    assert res["version"] == 5
    check_whole(Library.open(root, db_url=db_url), {"t0", "t1", "t2", "t3"})


def test_an_old_library_still_opens_and_compacts(tmp_path, monkeypatch):
    monkeypatch.delenv("DOCRAY_DB_URL", raising=False)
    only_file = tmp_path / "only-manifest"  # manifest.json and one shard, no database: nothing to merge
    old_layout_library(only_file)
    res = Library.open(only_file).compact()
    assert not res["compacted"] and res["version"] == 1 and not (only_file / "versions.db").exists()

    root = tmp_path / "old"
    n = old_layout_library(root)
    lib = Library.open(root)
    lib.append(*target(4))  # versions 2 and 3: rows (with whole manifests) beside a version without one
    lib.append(*target(5))
    assert VersionStore(root).versions() == [2, 3] and len(lib.manifest["shards"]) == 3
    q = queries(lib)
    before = searches(lib, q)
    out = CliRunner().invoke(__import__("docray.screening.cli", fromlist=["screening"]).screening,
                             ["compact", "--library", str(root), "--keep", "1"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.output)["version"] == 4 and json.loads(out.output)["files_removed"] > 0
    back = Library.open(root)
    assert back.version == 4 and back.manifest["shards"] == [f for f in back.manifest["shards"] if "v0004" in f]
    assert searches(back, q) == before and len(back) == n + (len(lib) - n) and back.feature_spec is None
    assert not (root / "tiles" / "tiles-v0001.parquet").exists()  # named only by manifests/v0001.json: forgotten
    assert VersionStore(root).versions() == [4] and sorted(p.name for p in (root / "manifests").iterdir()) == ["v0004.json"]
    assert back.tile_image(0).size == (32, 32) and back.tile_image(len(back) - 1).size == (32, 32)
