"""The cut-out library: tiles with attributes (Parquet) + their vectors (a `TileIndex`), versioned.

The root (default `$DOCRAY_HOME/indexes/screening`) is a local folder or an `s3://` URI; every file
is written and read through `docray.storage.blobs` (fsspec). Layout:

    tiles/tiles-v0002-<tag>.parquet   tiles added by version 2 (tile_id, tile PNG, attributes, hashes);
                                      a compacted version's: the tiles of every version before it
    index/v0002-<tag>/                the TileIndex after version 2 (index.faiss, attrs.npz, index.json)
    features/features-v0002-<tag>.parquet   local features of the targets version 2 added (target_id,
                                      keypoints + descriptors: `docray.screening.verify`), for verification
    manifests/v0002.json              version 2: its shards, tile count, index folder, descriptor, tile size
    manifest.json                     a copy of the newest manifest (for tools and readers without a database)
    versions.db                       a local library's default database (below)

`<tag>` is drawn by each writer, so two writers staging the same version never share a file; a
library built before this (`tiles-v0001.parquet`, `index/v0001`) opens as it is.

Versions are ordered by a database (`docray.screening.versions`: the table `library_versions`, one row
per version holding its manifest; `DOCRAY_DB_URL`, Postgres in production, else `<root>/versions.db`
for a local folder). `append` de-duplicates the new tiles (exact hash or descriptor similarity, with
equal attributes, within the batch and against the library), adds them to a COPY of the index (no
rebuild; readers go on searching the original), writes one new tile shard, features shard and index
folder, then publishes the version by INSERTing its row. Another writer that published that version
first makes the INSERT fail: the loser deletes its files, loads the newest version and appends again
on top of it (optimistic concurrency; why not a lease: `docray.screening.versions`). So versions are
1, 2, 3, ... with no gap and no duplicate, and every append lands whole in exactly one of them.
Nothing is locked while an append works; old shards are never rewritten. Readers (`Library.open`,
`refresh`, the Serve app) follow the database's newest row (a library without rows: its
`manifest.json`), so they see a version whole or not at all. One `Library` object serialises its own
appends and refreshes (a thread lock, taken in worker threads, never on an event loop).

Compaction (`compact`; `docray screening compact`): every version adds a tile shard and a features
shard, and its manifest (a database row) lists them all. `compact` merges the shards into one of each
(rows in tile-id order, small row groups so one tile is read without the rest; the index saved again
unchanged, so ids and scores stay) as a new version, published by the same INSERT race as an append,
then forgets versions older than the newest `keep_versions` (2): their rows, `manifests/` copies and
the files only they named (`docray.screening.versions` says why rows are pruned whole manifests and
not deltas). A reader that lags further than that finds a tile shard gone: `tile_image` and
`target_features` then follow the newest version (tile ids never change) and read again.

In object storage, faiss reads an index folder from a local copy: `Library.open(cache_dir=...)`
(default `$DOCRAY_LIBRARY_CACHE`, else `<temp>/docray-library-cache`) holds the folders of the two
newest versions, keyed by the folder's name (version and tag, never reused), each renamed into place
whole; the bucket stays the source of truth.

A library created before local features were stored has no `features` in its manifest: matching
then cannot verify (the verdict says so) until it is rebuilt (`fresh=true`).

Tile ids are row numbers of the shards in order, and the index's ids: inside one version they
ascend by cut type, then release day (`docray.screening.index`, "Id layout").
Release times are integer DAYS since 1970-01-01 (`to_day` converts dates, timestamps, strings).
"""
from __future__ import annotations

import bisect
import copy
import datetime as dt
import hashlib
import io
import json
import os
import random
import re
import secrets
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from docray import paths
from docray.screening.dedup import dedup, detail, exact_hash, phash
from docray.screening.index import TileIndex
from docray.screening.templates import DEFAULT_TEMPLATES, WILD, cut, cut_code, scale_tile
from docray.screening.verify import Features, FeatureSpec, extract, pack, unpack
from docray.screening.versions import DB_FILE, VersionStore, VersionTaken, normalise_root
from docray.storage import blobs

TILE_SCHEMA = pa.schema([
    ("tile_id", pa.int64()), ("tile", pa.binary()), ("target_id", pa.string()), ("source_id", pa.string()),
    ("cut_type", pa.string()), ("cut_code", pa.int8()), ("position", pa.int16()), ("release_day", pa.int32()),
    ("hash", pa.string()), ("phash", pa.uint64()), ("origin", pa.string()), ("version", pa.int32()),
])
META_COLUMNS = [f.name for f in TILE_SCHEMA if f.name != "tile"]
FEATURE_SCHEMA = pa.schema([("target_id", pa.string()), ("features", pa.binary()), ("version", pa.int32())])


FIRST_DAY, LAST_DAY = (dt.date(1, 1, 1) - dt.date(1970, 1, 1)).days, (dt.date(9999, 12, 31) - dt.date(1970, 1, 1)).days


def to_day(value) -> int:
    """Release time -> integer day number: int (already days), date/datetime, numpy/pandas time, ISO string.
    Days lie in years 1-9999 (the library stores them as int32)."""
    day = _to_day(value)
    if not FIRST_DAY <= day <= LAST_DAY:
        raise ValueError(f"release time {value!r}: day {day} is outside the years 1-9999 ({FIRST_DAY}..{LAST_DAY})")
    return day


def _to_day(value) -> int:
    if value is None:
        raise ValueError("release time is missing")
    if isinstance(value, (bool, np.bool_)):
        raise ValueError(f"release time must be a day number or a date, got {value!r}")
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, str):
        try:
            value = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(f"release time {value!r}: expected an ISO date (2024-05-01) or a day number") from None
    if isinstance(value, np.datetime64):
        return int(value.astype("datetime64[D]").astype(np.int64))
    if hasattr(value, "to_pydatetime"):
        value = value.to_pydatetime()
    if isinstance(value, dt.datetime):
        if value.tzinfo is not None:
            value = value.astimezone(dt.timezone.utc).replace(tzinfo=None)
        return (value.date() - dt.date(1970, 1, 1)).days
    if isinstance(value, dt.date):
        return (value - dt.date(1970, 1, 1)).days
    raise ValueError(f"release time of type {type(value).__name__} is not supported")


def png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


@dataclass
class TileBatch:
    """Tiles ready to append: scaled PIL tiles and one attribute row each."""

    tiles: list[Image.Image] = field(default_factory=list)
    rows: list[dict] = field(default_factory=list)
    features: dict[str, bytes] = field(default_factory=dict)  # target_id -> packed local features of the whole target

    def extend(self, other: "TileBatch") -> "TileBatch":
        self.tiles += other.tiles
        self.rows += other.rows
        self.features.update(other.features)
        return self


def cut_target(img: Image.Image, target_id: str, source_id: str, release_day: int, tile_size: int,
               templates=DEFAULT_TEMPLATES, min_detail: float = 12.0, features: FeatureSpec | dict | None = None) -> TileBatch:
    """Every template's tiles of one target, scaled to tile_size; flat tiles (nothing to match) dropped.
    With `features` (the library's `FeatureSpec`), the whole target's local features too, for verification."""
    out = TileBatch()
    if features is not None:
        spec = FeatureSpec.model_validate(features)
        out.features[target_id] = pack(extract(img, spec.kind, spec.keypoints, spec.side))
    for tpl in templates:
        for t in cut(img, tpl, tile_size):
            if detail(t.image) < min_detail:
                continue
            out.tiles.append(t.image)
            out.rows.append(dict(target_id=target_id, source_id=source_id, cut_type=tpl, cut_code=cut_code(tpl),
                                 position=t.position, release_day=int(release_day), origin="template"))
    return out


def wild_tile(img: Image.Image, source_id: str, release_day: int, tile_size: int, cut_type: str = "wild",
              target_id: str = "") -> TileBatch:
    """A tile seen in the wild, added as is (scaled), with the cut type it was found under."""
    return TileBatch([scale_tile(img, tile_size)], [dict(target_id=target_id, source_id=source_id, cut_type=cut_type,
                                                         cut_code=cut_code(cut_type), position=-1,
                                                         release_day=int(release_day), origin="wild")])


def default_cache_dir() -> str:
    """Where local copies of index folders of libraries in object storage go: `$DOCRAY_LIBRARY_CACHE`,
    else `<temp>/docray-library-cache` (a node's temporary files; never the source of truth)."""
    return os.environ.get("DOCRAY_LIBRARY_CACHE") or os.path.join(tempfile.gettempdir(), "docray-library-cache")


def _version_of(name: str) -> int | None:
    """The version in a shard or index folder name (`tiles-v0003-ab12cd34.parquet`, `v0003`), else None."""
    m = _VERSION.search(name.rsplit("/", 1)[-1])
    return int(m.group(1)) if m else None


_VERSION = re.compile(r"(?:^|-)v(\d+)")


def _parquet(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return sink.getvalue().to_pybytes()


def _read_parquet(url: str, columns: list[str], filters=None) -> pa.Table:
    fs, path = blobs.filesystem(url)
    if blobs.is_local(fs):
        return pq.read_table(url, columns=columns, filters=filters)
    return pq.read_table(path, columns=columns, filesystem=fs, filters=filters)


def _clone(index: TileIndex) -> TileIndex:
    """A copy to add to while readers search the original (faiss is not safe to add to under a search)."""
    new = copy.copy(index)
    new.index = faiss.clone_index(index.index)
    new._gpu = new._segments = None
    return new


@dataclass
class _Staged:
    """One append's new version, its files written under names no other writer uses, not yet published."""

    manifest: dict
    table: pa.Table                   # the new tile rows
    index: TileIndex                  # the index with them added (a copy)
    files: list[str]                  # the new files' URLs (tile shard, features shard, index folder)
    local_index: str | None           # object storage: the saved index folder, to become the cache entry
    features: dict[str, str]          # target_id -> features shard of the targets it adds
    keys: set[str]                    # the dedup keys of the new rows


class Library:
    """A version of the library at `root` (a local folder or an `s3://` URI), in memory; see the module docstring."""

    def __init__(self, root: str | Path, *, db_url: str | None = None, cache_dir: str | None = None):
        self.root = normalise_root(root)
        self.versions = VersionStore(self.root, db_url)
        self.cache_dir = cache_dir or default_cache_dir()
        self._mutex = threading.RLock()  # one append or refresh at a time in this process (worker threads, never an event loop)
        self.manifest: dict = {}
        self.meta = TILE_SCHEMA.empty_table().select(META_COLUMNS)
        self.index: TileIndex | None = None
        self._keys: set[str] = set()  # hash:cut_code:release_day of every tile (exact duplicates)
        self._feature_shard: dict[str, str] = {}  # target_id -> features shard (read on demand)
        self._shards: tuple[list[int], list[str]] = ([], [])  # the shards and the version in each one's name
        self._feature_cache: dict[str, dict[str, bytes]] = {}

    # -- open / create ------------------------------------------------------------------------
    @staticmethod
    def default_root() -> str:
        return paths.sub("indexes", "screening")

    @staticmethod
    def current_version(root: str | Path, db_url: str | None = None) -> int:
        """The newest version (0 when there is no library yet): the database's, else `manifest.json`'s; cheap, for reload checks."""
        return VersionStore(root, db_url).newest()

    @staticmethod
    def exists(root: str | Path, db_url: str | None = None) -> bool:
        return Library.current_version(root, db_url) > 0

    @classmethod
    def create(cls, root: str | Path, *, dim: int, tile_size: int, descriptor: str, index_opts: dict | None = None,
               templates=DEFAULT_TEMPLATES, features: FeatureSpec | None = FeatureSpec(), db_url: str | None = None,
               cache_dir: str | None = None) -> "Library":
        """An empty library (version 0, nothing written until the first append); `features` (None: none) is
        how its targets' local features are described."""
        lib = cls(root, db_url=db_url, cache_dir=cache_dir)
        if lib.versions.newest() > 0:
            raise FileExistsError(f"{lib.root} already holds a library (open it, or choose another root)")
        lib.manifest = dict(version=0, n_tiles=0, dim=int(dim), tile_size=int(tile_size), descriptor=descriptor,
                            templates=list(templates), index_opts=index_opts or {}, shards=[], index=None,
                            features=None if features is None else dict(spec=features.model_dump(), shards=[]))
        lib.index = TileIndex(dim, **(index_opts or {}))
        return lib

    @classmethod
    def open(cls, root: str | Path | None = None, *, db_url: str | None = None, cache_dir: str | None = None) -> "Library":
        """The newest version of the library at `root` (default `$DOCRAY_HOME/indexes/screening`)."""
        lib = cls(root or cls.default_root(), db_url=db_url, cache_dir=cache_dir)
        manifest = lib.versions.manifest()
        if manifest is None:
            raise FileNotFoundError(f"no screening library at {lib.root} (build one: python -m data_jobs.screening_library)")
        lib._load_version(manifest)
        return lib

    @staticmethod
    def set_aside(root: str | Path, db_url: str | None = None) -> str | None:
        """Move the library at `root` (its files and its database rows) to `<root>.replaced-<UTC time>`;
        returns that root, or None when there was nothing at `root`. Nothing is deleted."""
        store = VersionStore(root, db_url)
        fs, path = blobs.filesystem(store.root)
        has_files = fs.exists(path)
        if not has_files and not store.db_version():
            return None
        aside = f"{store.root}.replaced-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
        in_folder = store.url == f"sqlite:///{paths.join(store.root, DB_FILE)}"  # the default database moves with the files
        if has_files:
            fs.mv(path, blobs.filesystem(aside)[1], recursive=True)
        (VersionStore(store.root, f"sqlite:///{paths.join(aside, DB_FILE)}") if in_folder else store).rename(aside)
        return aside

    @property
    def version(self) -> int:
        return int(self.manifest["version"])

    def __len__(self) -> int:
        return self.meta.num_rows

    # -- loading a version (beside the one in use, then swapped in) ------------------------------
    def refresh(self) -> bool:
        """Load the newest version if the library moved on (another writer, another node); True if it did.
        Readers keep searching the old one meanwhile; see `_set_state` for the swap."""
        with self._mutex:
            manifest = self.versions.manifest() if self.versions.newest() > self.version else None
            if manifest is None or int(manifest["version"]) <= self.version:
                return False
            self._check_same_library(manifest)
            self._load_version(manifest)
            return True

    def _check_same_library(self, manifest: dict) -> None:
        """A newer version must describe tiles the way this one does (a racing `create` of another kind)."""
        if not self.manifest:
            return
        for key in ("dim", "tile_size", "descriptor"):
            if manifest[key] != self.manifest[key]:
                raise ValueError(f"{self.root}: version {manifest['version']} has {key} {manifest[key]!r}, this library "
                                 f"{self.manifest[key]!r}: another library was written at this root")
        if (manifest.get("features") or {}).get("spec") != (self.manifest.get("features") or {}).get("spec"):
            raise ValueError(f"{self.root}: version {manifest['version']} stores other local features than this library")

    def _load_version(self, manifest: dict) -> None:
        """Make `manifest`'s version the current one: reads only the shards this object does not hold yet."""
        old = self.manifest.get("shards", []) if self.index is not None else []
        grows = manifest["shards"][:len(old)] == old
        new_shards = manifest["shards"][len(old):] if grows else manifest["shards"]
        base = self.meta if grows else TILE_SCHEMA.empty_table().select(META_COLUMNS)
        added = [_read_parquet(self._url(s), META_COLUMNS) for s in new_shards]
        meta = pa.concat_tables([base, *added]) if added else base
        keys = (set(self._keys) if grows else set()) | (_keys(pa.concat_tables(added)) if added else set())
        feature_shard = dict(self._feature_shard) if grows else {}
        known = set(feature_shard.values())
        for shard in (manifest.get("features") or {}).get("shards", []):
            if shard not in known:
                ids = _read_parquet(self._url(shard), ["target_id"]).column("target_id").to_pylist()
                feature_shard.update((t, shard) for t in ids)
        index = self._load_index(manifest["index"]) if manifest["index"] else TileIndex(manifest["dim"], **manifest["index_opts"])
        if index.ntotal != meta.num_rows:
            raise ValueError(f"{self.root}: index has {index.ntotal} vectors but the tile shards {meta.num_rows} rows")
        self._set_state(manifest, meta, index, feature_shard, keys)
        self._prune_cache()

    def _set_state(self, manifest: dict, meta: pa.Table, index: TileIndex, feature_shard: dict, keys: set) -> None:
        """Swap a version in, one reference at a time, the index last: a reader between two assignments
        meets rows and features at least as new as the index it searches (versions only add tiles, so
        the ids an older index returns are rows of a newer version too)."""
        self._keys = keys
        self._shards = ([_version_of(s) for s in manifest["shards"]], list(manifest["shards"]))
        self._feature_shard = feature_shard
        self.meta = meta
        self.manifest = manifest
        self.index = index

    def _url(self, rel: str) -> str:
        return paths.join(self.root, *rel.split("/"))

    # -- index folders: on local disk as they are, from object storage through a local cache --
    def _cache_root(self) -> str:
        return os.path.join(self.cache_dir, hashlib.sha1(self.root.encode()).hexdigest()[:16])

    def _cache_entry(self, index_dir: str) -> str:
        return os.path.join(self._cache_root(), index_dir.replace("/", "__"))

    def _load_index(self, index_dir: str) -> TileIndex:
        if not paths.is_uri(self.root):
            return TileIndex.load(self._url(index_dir))
        entry = self._cache_entry(index_dir)
        for attempt in range(2):
            if not os.path.isdir(entry):  # a cache entry appears whole (renamed from a finished download) or not at all
                os.makedirs(self._cache_root(), exist_ok=True)
                tmp = tempfile.mkdtemp(dir=self._cache_root(), prefix=".download-")
                fs, path = blobs.filesystem(self._url(index_dir))
                for name in ("index.json", "index.faiss", "attrs.npz"):
                    fs.get_file(f"{path}/{name}", os.path.join(tmp, name))
                self._into_cache(tmp, entry)
            try:
                return TileIndex.load(entry)
            except (FileNotFoundError, RuntimeError):  # pruned by another process on this node meanwhile: fetch again
                if attempt:
                    raise
                shutil.rmtree(entry, ignore_errors=True)

    @staticmethod
    def _into_cache(folder: str, entry: str) -> None:
        try:
            os.rename(folder, entry)
        except OSError:  # another process of this node cached the same version first
            shutil.rmtree(folder, ignore_errors=True)

    def _prune_cache(self, keep: int = 2) -> None:
        """Cached index folders of this library older than the newest `keep` versions go."""
        if not paths.is_uri(self.root) or not os.path.isdir(self._cache_root()):
            return
        for name in os.listdir(self._cache_root()):
            v = _version_of(name.split("__")[-1])
            if not name.startswith(".") and v is not None and v <= self.version - keep:
                shutil.rmtree(os.path.join(self._cache_root(), name), ignore_errors=True)

    # -- update -------------------------------------------------------------------------------
    def append(self, batch: TileBatch, vectors: np.ndarray, *, min_similarity: float = 0.95,
               keep_index_versions: int = 2, max_tries: int = 8) -> dict:
        """De-duplicate against the newest version, add to (a copy of) the index, write a shard + index,
        publish the version. Another writer publishing first: load its version and do it again on top
        (`max_tries` times). Returns counts and version."""
        vectors = np.asarray(vectors, np.float32)
        if len(vectors) != len(batch.rows):
            raise ValueError(f"{len(batch.rows)} tiles but {len(vectors)} vectors")
        hashes = [exact_hash(t) for t in batch.tiles]
        with self._mutex:
            self.versions.check_writable()
            for attempt in range(max_tries):
                self.refresh()
                staged = self._stage(batch, hashes, vectors, min_similarity)
                if staged is None:
                    return {"added": 0, "skipped": len(batch.rows), "version": self.version, "n_tiles": len(self)}
                try:
                    self.versions.publish(staged.manifest)
                    break
                except VersionTaken:
                    self._discard(staged)
                    time.sleep(random.uniform(0, 0.05 * (attempt + 1)))  # let the winner's manifest land
            else:
                raise RuntimeError(f"{self.root}: other writers published {max_tries} times while this append "
                                   "was staged; nothing of it was stored, try again")
            meta = pa.concat_tables([self.meta, staged.table.select(META_COLUMNS)])
            if staged.local_index is not None:
                self._into_cache(staged.local_index, self._cache_entry(staged.manifest["index"]))
            self._set_state(staged.manifest, meta, staged.index, {**self._feature_shard, **staged.features},
                            self._keys | staged.keys)
            self._write_manifest_files(staged.manifest)
            self._prune(keep_index_versions)
            self._prune_cache()
            added = staged.table.num_rows
            return {"added": added, "skipped": len(batch.rows) - added, "version": self.version, "n_tiles": len(self)}

    def _stage(self, batch: TileBatch, hashes: list[str], vectors: np.ndarray, min_similarity: float) -> _Staged | None:
        """The next version's rows, index and files (written under this writer's own names); None when
        every tile is a duplicate."""
        keep = self._new_tiles(batch, hashes, vectors, min_similarity)
        if len(keep) == 0:
            return None
        version, start = self.version + 1, len(self)
        # tile ids = index ids, which ascend by cut type, then release day inside a version (the index's
        # id layout: a release window of some cut types is a few id ranges); ordering the rows here
        # keeps row number = tile id
        keep = keep[np.lexsort(([batch.rows[i]["release_day"] for i in keep], [batch.rows[i]["cut_code"] for i in keep]))]
        rows = [dict(batch.rows[i], tile_id=start + j, tile=png(batch.tiles[i]), hash=hashes[i],
                     phash=phash(batch.tiles[i]), version=version) for j, i in enumerate(keep)]
        table = pa.Table.from_pylist(rows, schema=TILE_SCHEMA)
        index = _clone(self.index)  # readers go on searching self.index
        ids = index.add(vectors[keep], table.column("release_day").to_numpy(), table.column("cut_code").to_numpy())
        assert (ids == table.column("tile_id").to_numpy()).all(), "tile ids and index ids disagree"
        tag = f"v{version:04d}-{secrets.token_hex(4)}"  # racing writers of one version never share a file
        shard, index_dir = f"tiles/tiles-{tag}.parquet", f"index/{tag}"
        staged = _Staged(dict(self.manifest, version=version, n_tiles=start + len(rows), shards=self.manifest["shards"] + [shard],
                              index=index_dir, updated=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")),
                         table, index, [self._url(shard), self._url(index_dir)], None, {},
                         {f"{hashes[i]}:{batch.rows[i]['cut_code']}:{batch.rows[i]['release_day']}" for i in keep})
        try:
            blobs.write_file(self._url(shard), _parquet(table))
            staged.local_index = self._save_index(index, index_dir)
            new_features = {t: f for t, f in batch.features.items() if t not in self._feature_shard}
            if self.feature_spec is not None and new_features:
                fshard = f"features/features-{tag}.parquet"
                staged.files.append(self._url(fshard))
                blobs.write_file(self._url(fshard), _parquet(pa.Table.from_pylist(
                    [dict(target_id=t, features=f, version=version) for t, f in new_features.items()], schema=FEATURE_SCHEMA)))
                staged.manifest["features"] = dict(self.manifest["features"], shards=self.manifest["features"]["shards"] + [fshard])
                staged.features = {t: fshard for t in new_features}
        except BaseException:
            self._discard(staged)
            raise
        return staged

    def _save_index(self, index: TileIndex, index_dir: str) -> str | None:
        """Write the index folder; in object storage, from a local folder kept (returned) as the cache entry."""
        if not paths.is_uri(self.root):
            index.save(self._url(index_dir))
            return None
        os.makedirs(self._cache_root(), exist_ok=True)
        tmp = tempfile.mkdtemp(dir=self._cache_root(), prefix=".staging-")
        index.save(tmp)
        fs, path = blobs.filesystem(self._url(index_dir))
        for name in sorted(os.listdir(tmp)):
            fs.put_file(os.path.join(tmp, name), f"{path}/{name}")
        return tmp

    def _discard(self, staged: _Staged) -> None:
        """Delete a version that was not published (best effort: nothing refers to these files)."""
        if staged.local_index is not None:
            shutil.rmtree(staged.local_index, ignore_errors=True)
        for url in staged.files:
            fs, path = blobs.filesystem(url)
            try:
                fs.rm(path, recursive=True)
            except (FileNotFoundError, OSError):
                pass

    def _write_manifest_files(self, manifest: dict) -> None:
        """`manifests/vNNNN.json` and `manifest.json`: copies of the published row, for tools without the
        database and for libraries read without one. A writer that lands after a newer version's rewrites
        `manifest.json` with the newest (it may lag for a moment; it never stays behind)."""
        text = json.dumps(manifest, indent=2).encode()
        blobs.write_file(self._url(f"manifests/v{manifest['version']:04d}.json"), text)
        blobs.write_file(self._url("manifest.json"), text)
        newer = self.versions.manifest() if self.versions.db_version() > manifest["version"] else None
        if newer is not None:
            blobs.write_file(self._url("manifest.json"), json.dumps(newer, indent=2).encode())

    def _prune(self, keep: int) -> None:
        """Delete index folders older than the last `keep` versions (a reader may still load the previous one)."""
        fs, path = blobs.filesystem(self._url("index"))
        try:
            folders = fs.ls(path, detail=False, refresh=True)
        except FileNotFoundError:
            return
        for folder in folders:
            v = _version_of(folder.rstrip("/"))
            if v is not None and v <= self.version - keep:
                try:
                    fs.rm(folder, recursive=True)
                except (FileNotFoundError, OSError):
                    pass

    # -- compaction ---------------------------------------------------------------------------
    def compact(self, *, keep_versions: int = 2, max_tries: int = 8) -> dict:
        """Merge the tile shards into one and the features shards into one, as a new version published
        like an append (a racing append either lands first and is merged, or loses and appends again on
        top); then forget the versions older than the newest `keep_versions`: their database rows,
        `manifests/` copies, and the files only they named. Tiles, ids, vectors and the index are
        unchanged, so searches return the same ids and scores. A library already in one shard publishes
        nothing and only forgets. Returns the version, shard counts and files removed."""
        if keep_versions < 1:
            raise ValueError("keep_versions must be at least 1 (the newest version)")
        with self._mutex:
            self.versions.check_writable()
            for attempt in range(max_tries):
                self.refresh()
                before = len(self.manifest.get("shards", []))
                if before <= 1 and len((self.manifest.get("features") or {}).get("shards", [])) <= 1:
                    staged = None
                    break
                try:
                    staged = self._stage_compaction()
                except OSError:  # another writer's compaction removed a shard of this (stale) version: follow it
                    if attempt + 1 < max_tries and self.refresh():
                        continue
                    raise
                try:
                    self.versions.publish(staged.manifest)
                    break
                except VersionTaken:
                    self._discard(staged)
                    time.sleep(random.uniform(0, 0.05 * (attempt + 1)))
            else:
                raise RuntimeError(f"{self.root}: other writers published {max_tries} times while the compaction was "
                                   "staged; nothing of it was stored, try again")
            if staged is not None:
                if staged.local_index is not None:
                    self._into_cache(staged.local_index, self._cache_entry(staged.manifest["index"]))
                fshards = (staged.manifest.get("features") or {}).get("shards", [])
                features = {t: fshards[0] for t in self._feature_shard} if len(fshards) == 1 else self._feature_shard
                self._set_state(staged.manifest, self.meta, self.index, features, self._keys)
                self._feature_cache.clear()
                self._write_manifest_files(staged.manifest)
            self._prune(keep_versions)
            removed = self._forget(keep_versions)
            self._prune_cache()
            return {"version": self.version, "compacted": staged is not None, "shards_before": before,
                    "shards": len(self.manifest.get("shards", [])), "n_tiles": len(self), "files_removed": removed}

    def _stage_compaction(self) -> _Staged:
        """The next version: every tile shard merged into one (rows in tile-id order), every features shard
        into one, the index saved again as it is; written under this writer's own names, not published."""
        version = self.version + 1
        tag = f"v{version:04d}-{secrets.token_hex(4)}"
        shard, index_dir = f"tiles/tiles-{tag}.parquet", f"index/{tag}"
        manifest = dict(self.manifest, version=version, shards=[shard], index=index_dir,
                        updated=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"))
        staged = _Staged(manifest, TILE_SCHEMA.empty_table(), self.index, [self._url(shard), self._url(index_dir)],
                         None, {}, set())
        try:
            sink, n = pa.BufferOutputStream(), 0
            with pq.ParquetWriter(sink, TILE_SCHEMA) as w:  # one shard in memory at a time
                for s in self.manifest["shards"]:
                    t = _read_parquet(self._url(s), TILE_SCHEMA.names).select(TILE_SCHEMA.names).cast(TILE_SCHEMA)
                    if not np.array_equal(t.column("tile_id").to_numpy(), np.arange(n, n + t.num_rows)):
                        raise ValueError(f"{self.root}: {s} does not hold tiles {n}.. in order; not compacted")
                    w.write_table(t, row_group_size=1024)  # small row groups: `tile_image` reads one of them
                    n += t.num_rows
            if n != len(self) or n != self.index.ntotal:
                raise ValueError(f"{self.root}: the shards hold {n} tiles, the version {len(self)}; not compacted")
            blobs.write_file(self._url(shard), sink.getvalue().to_pybytes())
            staged.local_index = self._save_index(self.index, index_dir)
            fshards = (self.manifest.get("features") or {}).get("shards", [])
            if len(fshards) > 1:
                fshard = f"features/features-{tag}.parquet"
                staged.files.append(self._url(fshard))
                t = pa.concat_tables([_read_parquet(self._url(s), FEATURE_SCHEMA.names).select(FEATURE_SCHEMA.names)
                                      .cast(FEATURE_SCHEMA) for s in fshards])
                blobs.write_file(self._url(fshard), _parquet(t))
                manifest["features"] = dict(self.manifest["features"], shards=[fshard])
        except BaseException:
            self._discard(staged)
            raise
        return staged

    def _forget(self, keep: int) -> int:
        """Delete what only versions older than the newest `keep` name (tile and features shards, index
        folders), then their `manifests/` copies, then their database rows; returns the files deleted.
        Only files some published version named are ever deleted: a racing writer's staged files are in no
        manifest yet. Old versions are the database's rows and the `manifests/vNNNN.json` copies (a library
        from before the database has only those)."""
        last = self.version - keep
        if last < 1:
            return 0
        fs, folder = blobs.filesystem(self._url("manifests"))
        try:
            copies = {int(m.group(1)): p for p in fs.ls(folder, detail=False, refresh=True)
                      if (m := re.fullmatch(r"v(\d+)\.json", p.rstrip("/").rsplit("/", 1)[-1]))}
        except FileNotFoundError:
            copies = {}
        old = self.versions.manifests(1, last)
        kept = self.versions.manifests(last + 1)
        kept[self.version] = self.manifest
        for v, p in copies.items():  # versions without a row: their copies say what they name
            record = old if v <= last else kept
            if v not in record:
                try:
                    record[v] = json.loads(fs.cat_file(p))
                except FileNotFoundError:
                    pass

        def files(m: dict) -> set[str]:
            return {*m.get("shards", []), *(m.get("features") or {}).get("shards", []), *([m["index"]] if m.get("index") else [])}

        keep_files = set().union(*map(files, kept.values()))
        removed = 0
        for rel in sorted(set().union(*map(files, old.values())) - keep_files):
            f, path = blobs.filesystem(self._url(rel))
            try:
                f.rm(path, recursive=True)
                removed += 1
            except (FileNotFoundError, OSError):
                pass
        for v, p in copies.items():
            if v <= last:
                try:
                    fs.rm(p)
                except (FileNotFoundError, OSError):
                    pass
        self.versions.prune(last)
        return removed

    def _new_tiles(self, batch: TileBatch, hashes: list[str], vectors: np.ndarray, min_similarity: float) -> np.ndarray:
        """Rows that are not duplicates: same content (exact hash, or cosine >= min_similarity) AND the same
        attributes (cut code, release day) as an earlier row or a library tile. Equal content under other
        attributes is new information (the extension rule's wild tiles) and is kept."""
        attrs = [(r["cut_code"], r["release_day"]) for r in batch.rows]
        keep = []
        for key in sorted(set(attrs)):
            rows = np.array([i for i, a in enumerate(attrs) if a == key])
            keys = [f"{hashes[i]}:{key[0]}:{key[1]}" for i in rows]
            keep += list(rows[dedup(keys, None, vectors[rows], min_similarity=min_similarity, seen_hashes=self._keys)])
        keep = np.array(sorted(keep), np.int64)
        if len(keep) and len(self):
            k = min(16, len(self))
            sims, ids = self.index.search(vectors[keep], k)
            same = (self.index.cuts[ids] == np.array([attrs[i][0] for i in keep])[:, None]) & \
                   (self.index.times[ids] == np.array([attrs[i][1] for i in keep])[:, None])
            dup = ((sims >= min_similarity) & (ids >= 0) & same).any(1)
            keep = keep[~dup]
        return keep

    # -- reading ------------------------------------------------------------------------------
    @property
    def feature_spec(self) -> FeatureSpec | None:
        """How the targets' local features are described; None for a library built before they were stored."""
        f = self.manifest.get("features")
        return None if f is None else FeatureSpec(**f["spec"])

    def feature_targets(self) -> list[str]:
        """The targets whose local features the library holds."""
        return list(self._feature_shard)

    def target_features(self, target_id: str) -> Features | None:
        """The stored local features of a target (None when the library has none for it)."""
        shard = self._feature_shard.get(target_id)
        if shard is None:
            return None
        if shard not in self._feature_cache:
            if len(self._feature_cache) >= 8:  # a few shards in memory
                self._feature_cache.pop(next(iter(self._feature_cache)))
            try:
                t = _read_parquet(self._url(shard), ["target_id", "features"])
            except OSError:  # a compaction removed the shard of an old version: follow the library
                if not self.refresh():
                    raise
                return self.target_features(target_id)
            self._feature_cache[shard] = dict(zip(t.column("target_id").to_pylist(), t.column("features").to_pylist()))
        return unpack(self._feature_cache[shard][target_id])

    def rows(self, ids) -> list[dict]:
        """Attribute rows of tile ids (no PNG)."""
        ids = [int(i) for i in ids]
        return self.meta.take(pa.array(ids, pa.int64())).to_pylist() if ids else []

    def tile_image(self, tile_id: int) -> Image.Image:
        return self.tile_images([tile_id])[int(tile_id)]

    def tile_images(self, ids) -> dict[int, Image.Image]:
        """Tile id -> its picture, each shard read once for all the ids it holds."""
        ids = sorted({int(i) for i in ids})
        try:
            return self._read_tiles(ids)
        except OSError:  # a compaction removed the shard of an old version: follow the library (ids stay)
            if not self.refresh():
                raise
            return self._read_tiles(ids)

    def _read_tiles(self, ids: list[int]) -> dict[int, Image.Image]:
        by_shard: dict[str, list[int]] = {}
        for i in ids:
            by_shard.setdefault(self._shard_of(i), []).append(i)
        out = {}
        for shard, want in by_shard.items():
            t = _read_parquet(self._url(shard), ["tile_id", "tile"], [("tile_id", "in", want)])
            for i, data in zip(t.column("tile_id").to_pylist(), t.column("tile").to_pylist()):
                out[int(i)] = Image.open(io.BytesIO(data)).convert("RGB")
        return out

    def _shard_of(self, tile_id: int) -> str:
        """The tile shard holding a tile: the first whose name's version is at least the tile's version (a
        shard `vN` holds the tiles of version N, a compacted one those of every version before N)."""
        version = int(self.meta.column("version")[tile_id].as_py())
        versions, shards = self._shards
        return shards[bisect.bisect_left(versions, version)]


def _keys(meta: pa.Table) -> set[str]:
    return {f"{h}:{c}:{d}" for h, c, d in zip(meta.column("hash").to_pylist(), meta.column("cut_code").to_pylist(),
                                               meta.column("release_day").to_pylist())}
