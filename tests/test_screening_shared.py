"""The cut-out library as shared, versioned state (issue 19 item 4), without Ray: a library under
s3:// (the `s3` fixture, moto in server mode) whose versions a database orders (a SQLite file, and
Postgres: DOCRAY_TEST_POSTGRES_URL or a server of the module's own, tests/pg.py); two writers racing; a second "node" (its own local
cache folder) following; a library built before any of this still opening; the Serve deployment's
class reloading by version and keeping its event loop free."""
from __future__ import annotations

import asyncio
import json
import os
import threading
import time
import uuid

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from docray.screening.index import TileIndex
from docray.screening.library import TILE_SCHEMA, Library, cut_target, png
from docray.screening.dedup import exact_hash, phash
from docray.screening.versions import VersionStore, VersionTaken
from docray.storage.blobs import filesystem, read_file
from tests.pg import postgres_server, unavailable
from tests.test_screening import FakeEmbed, poster

EMBED = FakeEmbed()


@pytest.fixture(scope="module")
def postgres_url():
    """DOCRAY_TEST_POSTGRES_URL, else a Postgres server of this module's own (tests/pg.py), else skip."""
    if url := os.environ.get("DOCRAY_TEST_POSTGRES_URL"):
        yield url
        return

    if reason := unavailable():
        pytest.skip(reason)
    with postgres_server() as server:
        yield server.url


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request, tmp_path):
    """The database that orders the versions: a SQLite file both writers reach, or Postgres (as in production)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'versions.db'}"
    return request.getfixturevalue("postgres_url")  # every test's library has its own root: no rows to clear


@pytest.fixture
def s3_root(s3) -> str:
    return f"{s3}/libraries/{uuid.uuid4().hex[:8]}"


def target(i: int, features=None, day: int = 100):
    b = cut_target(poster(i), f"t{i}", f"src-{i}", day + i, 32, min_detail=0, features=features)
    return b, EMBED(b.tiles)


def new_library(root, db_url, tmp_path, name="a") -> Library:
    lib = Library.create(root, dim=FakeEmbed.dim, tile_size=32, descriptor="build:fake", db_url=db_url,
                         cache_dir=str(tmp_path / f"cache-{name}"))
    lib.append(*target(0, lib.feature_spec))
    return lib


def s3_names(url: str) -> list[str]:
    fs, path = filesystem(url)
    try:
        return sorted(p.rsplit("/", 1)[-1] for p in fs.ls(path, detail=False, refresh=True))
    except FileNotFoundError:
        return []


def check_whole(lib: Library, targets: set[str]) -> None:
    """Every tile row has its vector and its id; the given targets are all there, each with features."""
    assert lib.index.ntotal == len(lib) == lib.manifest["n_tiles"]
    assert lib.meta.column("tile_id").to_pylist() == list(range(len(lib)))
    assert set(lib.meta.column("target_id").to_pylist()) == targets
    assert set(lib.feature_targets()) == targets


def test_two_writers_race_on_s3_both_batches_land(s3_root, db_url, tmp_path, monkeypatch):
    lib = new_library(s3_root, db_url, tmp_path)
    assert lib.version == 1 and VersionStore(s3_root, db_url).versions() == [1]
    # two writers (each its own Library, as two replicas would be) both stage version 2 before either publishes
    writers = [Library.open(s3_root, db_url=db_url, cache_dir=str(tmp_path / f"cache-w{k}")) for k in range(2)]
    assert [w.version for w in writers] == [1, 1]
    barrier, lost = threading.Barrier(2, timeout=30), []
    publish = VersionStore.publish

    def racing_publish(store, manifest):
        if manifest["version"] == 2:
            barrier.wait()  # both hold a staged version 2
        try:
            publish(store, manifest)
        except VersionTaken:
            lost.append(manifest["version"])
            raise

    monkeypatch.setattr(VersionStore, "publish", racing_publish)
    results = [None, None]

    def write(k):
        w = writers[k]
        results[k] = w.append(*target(10 + k, w.feature_spec))

    threads = [threading.Thread(target=write, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert lost == [2]  # exactly one lost the INSERT ...
    assert sorted(r["version"] for r in results) == [2, 3] and all(r["added"] > 0 for r in results)  # ... and appended again
    assert VersionStore(s3_root, db_url).versions() == [1, 2, 3]
    # the loser's files of its lost version 2 were deleted: one tile shard and one features shard per version
    assert len(s3_names(f"{s3_root}/tiles")) == 3 and len(s3_names(f"{s3_root}/features")) == 3
    assert len(s3_names(f"{s3_root}/index")) == 2  # the two newest index folders are kept
    back = Library.open(s3_root, db_url=db_url, cache_dir=str(tmp_path / "cache-reader"))
    assert back.version == 3
    check_whole(back, {"t0", "t10", "t11"})
    assert json.loads(read_file(f"{s3_root}/manifest.json"))["version"] == 3
    assert json.loads(read_file(f"{s3_root}/manifests/v0002.json"))["shards"] == back.manifest["shards"][:2]
    for t in ("t10", "t11"):  # the tiles and the features of both batches read back from the bucket
        i = back.meta.column("target_id").to_pylist().index(t)
        assert back.tile_image(i).size == (32, 32) and len(back.target_features(t)) > 0
        sims, ids = back.index.search(EMBED([back.tile_image(i)]), 1)
        assert ids[0, 0] == i and sims[0, 0] > 0.999


def test_writers_in_threads_give_versions_without_gap_or_duplicate(s3_root, db_url, tmp_path):
    new_library(s3_root, db_url, tmp_path)
    writers = [Library.open(s3_root, db_url=db_url, cache_dir=str(tmp_path / f"cache-w{k}")) for k in range(2)]
    errors = []

    def write(k):
        try:
            for j in range(3):
                writers[k].append(*target(20 + 10 * k + j))
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=write, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors
    assert VersionStore(s3_root, db_url).versions() == list(range(1, 8))  # 1 + 2 x 3 appends
    back = Library.open(s3_root, db_url=db_url, cache_dir=str(tmp_path / "cache-reader"))
    assert back.version == 7
    assert set(back.meta.column("target_id").to_pylist()) == {"t0", "t20", "t21", "t22", "t30", "t31", "t32"}
    assert back.index.ntotal == len(back) and back.meta.column("tile_id").to_pylist() == list(range(len(back)))
    assert sorted(back.meta.column("version").unique().to_pylist()) == list(range(1, 8))


def test_another_node_sees_the_new_version(s3_root, db_url, tmp_path, monkeypatch):
    node_a = new_library(s3_root, db_url, tmp_path, "node-a")
    node_b = Library.open(s3_root, db_url=db_url, cache_dir=str(tmp_path / "cache-node-b"))
    assert node_b.version == 1 and Library.current_version(s3_root, db_url) == 1
    assert not node_b.refresh()  # nothing new
    node_a.append(*target(5, node_a.feature_spec))
    assert Library.current_version(s3_root, db_url) == 2
    assert node_b.refresh() and node_b.version == 2  # loaded from the bucket, through B's own cache
    check_whole(node_b, {"t0", "t5"})
    assert os.listdir(tmp_path / "cache-node-b") and all(  # the cache holds index folders of versions, nothing else
        name.startswith("index__v") for d in os.listdir(tmp_path / "cache-node-b")
        for name in os.listdir(tmp_path / "cache-node-b" / d))
    i = node_b.meta.column("target_id").to_pylist().index("t5")
    assert node_b.index.search(EMBED([node_b.tile_image(i)]), 1)[1][0, 0] == i
    # without a database: the bucket's manifest.json is read, and a write is refused with the reason
    monkeypatch.delenv("DOCRAY_DB_URL", raising=False)
    plain = Library.open(s3_root, cache_dir=str(tmp_path / "cache-plain"))
    assert plain.version == 2 and len(plain) == len(node_b)
    with pytest.raises(ValueError, match="needs a database"):
        plain.append(*target(6))
    assert Library.current_version(s3_root, db_url) == 2


def old_layout_library(root, day=100) -> int:
    """What the library wrote before versions were ordered by a database: manifest.json, manifests/,
    tiles/tiles-v0001.parquet, index/v0001/, no versions.db, no features. Returns its tile count."""
    b, vectors = target(3, day=day)
    rows = [dict(r, tile_id=j, tile=png(t), hash=exact_hash(t), phash=phash(t), version=1)
            for j, (r, t) in enumerate(zip(b.rows, b.tiles))]
    (root / "tiles").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=TILE_SCHEMA), root / "tiles" / "tiles-v0001.parquet")
    index = TileIndex(FakeEmbed.dim)
    index.add(vectors, [r["release_day"] for r in rows], [r["cut_code"] for r in rows])
    index.save(root / "index" / "v0001")
    manifest = dict(version=1, n_tiles=len(rows), dim=FakeEmbed.dim, tile_size=32, descriptor="build:fake",
                    templates=["1x3", "2x2"], index_opts={}, shards=["tiles/tiles-v0001.parquet"], index="index/v0001",
                    features=None, updated="2026-01-01T00:00:00+00:00")
    (root / "manifests").mkdir()
    (root / "manifests" / "v0001.json").write_text(json.dumps(manifest))
    (root / "manifest.json").write_text(json.dumps(manifest))
    (root / ".lock").write_text("")
    return len(rows)


def test_a_library_built_before_still_opens_and_grows(tmp_path, monkeypatch):
    monkeypatch.delenv("DOCRAY_DB_URL", raising=False)
    root = tmp_path / "old"
    n = old_layout_library(root)
    lib = Library.open(root)
    assert lib.version == 1 and len(lib) == n == lib.index.ntotal and lib.feature_spec is None
    assert lib.tile_image(0).size == (32, 32) and Library.current_version(root) == 1
    assert not (root / "versions.db").exists()  # reading writes nothing
    res = lib.append(*target(4))
    assert res["version"] == 2 and res["added"] > 0
    assert (root / "versions.db").exists() and VersionStore(root).versions() == [2]  # the first row: version 2
    back = Library.open(root)
    assert back.version == 2 and back.manifest["shards"][0] == "tiles/tiles-v0001.parquet"
    assert back.tile_image(0).size == (32, 32) and back.tile_image(len(back) - 1).size == (32, 32)
    assert json.loads((root / "manifest.json").read_text())["version"] == 2
    with pytest.raises(FileExistsError):
        Library.create(root, dim=4, tile_size=32, descriptor="x")


def test_set_aside_moves_files_and_rows(tmp_path, monkeypatch):
    monkeypatch.delenv("DOCRAY_DB_URL", raising=False)
    root = tmp_path / "lib"
    new_library(root, None, tmp_path)
    aside = Library.set_aside(root)
    assert not root.exists() and not Library.exists(root)
    assert Library.open(aside).version == 1 and VersionStore(aside).versions() == [1]
    assert Library.set_aside(root) is None
    again = new_library(root, None, tmp_path)  # a new library at the same root: its own versions from 1
    assert again.version == 1 and VersionStore(root).versions() == [1] and Library.open(aside).version == 1


# -- the Serve deployment's class, without Ray ------------------------------------------------------
class FakeDescriptor:
    """Stands in for the `Descriptor` deployment handle: `embed_batch.remote(tile)` is awaitable."""

    class _Method:
        async def _one(self, tile):
            from PIL import Image

            return EMBED([Image.fromarray(tile)])[0]

        def remote(self, tile):
            return self._one(tile)

    embed_batch = _Method()


def screening_replica(root, db_url, cache_dir, **cfg):
    from serve_apps.screening import Screening

    return Screening.func_or_class(FakeDescriptor(), {
        "library": root, "db_url": db_url, "cache_dir": str(cache_dir), "reload_interval_s": 0.2,
        "screen": {"text_finder": "none", "learn": False, "threshold": 0.99}, **cfg})


def test_replicas_on_two_nodes_see_a_new_target(s3_root, db_url, tmp_path, monkeypatch):
    new_library(s3_root, db_url, tmp_path)
    a, b = (screening_replica(s3_root, db_url, tmp_path / f"cache-{n}") for n in ("a", "b"))
    publish = VersionStore.publish

    def slow_publish(store, manifest):
        time.sleep(0.5)  # a slow database: the replica's event loop must go on meanwhile
        publish(store, manifest)

    monkeypatch.setattr(VersionStore, "publish", slow_publish)

    async def scenario():
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        tick = asyncio.ensure_future(ticker())
        res = await a.add_target(poster(8), 108, "src-8", "t8")
        tick.cancel()
        assert res["library_version"] == 2 and res["tiles_added"] > 0
        assert ticks >= 10  # the loop ran through the append and its 0.5 s INSERT
        deadline = time.monotonic() + 10
        while (await b.library_info())["version"] < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        info = await b.library_info()
        lib = b.screener.library
        tile = lib.tile_image(lib.meta.column("target_id").to_pylist().index("t8"))
        verdict = await b.screen([tile], None, None)
        return info, verdict

    info, verdict = asyncio.run(scenario())
    assert info["version"] == 2 and info["tiles"] == len(Library.open(s3_root, db_url=db_url, cache_dir=str(tmp_path / "c")))
    assert verdict["abnormal"] and verdict["matches"][0]["target_id"] == "t8"


def test_replica_refuses_an_s3_library_without_a_database(s3_root, db_url, tmp_path, monkeypatch):
    new_library(s3_root, db_url, tmp_path)
    monkeypatch.delenv("DOCRAY_DB_URL", raising=False)
    with pytest.raises(ValueError, match="DOCRAY_DB_URL"):
        screening_replica(s3_root, "", tmp_path / "cache-x")
