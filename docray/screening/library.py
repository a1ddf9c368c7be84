"""The cut-out library: tiles with attributes (Parquet) + their vectors (a `TileIndex`), versioned.

Layout under `root` (default `$DOCRAY_HOME/indexes/screening`):

    manifest.json              the current version (a copy of manifests/vNNNN.json, replaced atomically)
    manifests/v0001.json       one per version: shards, tile count, index folder, descriptor, tile size
    tiles/tiles-v0001.parquet  tiles added by version 1 (tile_id, tile PNG, attributes, hashes)
    index/v0001/               the TileIndex after version 1 (index.faiss, attrs.npz, index.json)
    features/features-v0001.parquet   local features of the targets version 1 added (target_id,
                               keypoints + descriptors: `docray.screening.verify`), for verification

A library created before local features were stored has no `features` in its manifest: matching
then cannot verify (the verdict says so) until it is rebuilt (`fresh=true`).

Tile ids are row numbers of the shards in order, and the index's ids: inside one version they
ascend with release day (`docray.screening.index`, "Id layout").

`append` never rewrites old shards: it de-duplicates the new tiles (exact hash or descriptor
similarity, with equal attributes, within the batch and against the library), adds them to the index (no rebuild), writes
one new shard and index folder, then the manifest. Readers (`Library.open`, the Serve app) only
follow `manifest.json`, so they see a version whole or not at all. One writer at a time.
Release times are integer DAYS since 1970-01-01 (`to_day` converts dates, timestamps, strings).
"""
from __future__ import annotations

import datetime as dt
import io
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from docray import paths
from docray.screening.dedup import dedup, detail, exact_hash, phash
from docray.screening.index import TileIndex
from docray.screening.templates import DEFAULT_TEMPLATES, WILD, cut, cut_code, scale_tile
from docray.screening.verify import Features, FeatureSpec, extract, pack, unpack

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


@contextmanager
def write_lock(root: str | Path):
    """An exclusive lock on the library folder (one writer at a time across processes on one host/NFS)."""
    import fcntl

    Path(root).mkdir(parents=True, exist_ok=True)
    with open(Path(root) / ".lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


class Library:
    def __init__(self, root: str | Path, manifest: dict, meta: pa.Table, index: TileIndex):
        self.root, self.manifest, self.meta, self.index = Path(root), manifest, meta, index
        self._feature_shard: dict[str, str] = {}  # target_id -> features shard (read on demand)
        self._feature_cache: dict[str, dict[str, bytes]] = {}
        for shard in (manifest.get("features") or {}).get("shards", []):
            ids = pq.read_table(self.root / shard, columns=["target_id"]).column("target_id").to_pylist()
            self._feature_shard.update((t, shard) for t in ids)
        self._keys = {f"{h}:{c}:{d}" for h, c, d in zip(meta.column("hash").to_pylist(), meta.column("cut_code").to_pylist(),
                                                         meta.column("release_day").to_pylist())}

    # -- open / create ------------------------------------------------------------------------
    @staticmethod
    def default_root() -> Path:
        return Path(paths.sub("indexes", "screening"))

    @staticmethod
    def current_version(root: str | Path) -> int:
        """The version `manifest.json` names (0 when there is no library yet); cheap, for reload checks."""
        p = Path(root) / "manifest.json"
        return json.loads(p.read_text())["version"] if p.exists() else 0

    @classmethod
    def create(cls, root: str | Path, *, dim: int, tile_size: int, descriptor: str, index_opts: dict | None = None,
               templates=DEFAULT_TEMPLATES, features: FeatureSpec | None = FeatureSpec()) -> "Library":
        """An empty library; `features` (None: none) is how its targets' local features are described."""
        root = Path(root)
        if (root / "manifest.json").exists():
            raise FileExistsError(f"{root} already holds a library (open it, or choose another root)")
        manifest = dict(version=0, n_tiles=0, dim=int(dim), tile_size=int(tile_size), descriptor=descriptor,
                        templates=list(templates), index_opts=index_opts or {}, shards=[], index=None,
                        features=None if features is None else dict(spec=features.model_dump(), shards=[]))
        return cls(root, manifest, TILE_SCHEMA.empty_table().select(META_COLUMNS), TileIndex(dim, **(index_opts or {})))

    @classmethod
    def open(cls, root: str | Path | None = None) -> "Library":
        root = Path(root or cls.default_root())
        if not (root / "manifest.json").exists():
            raise FileNotFoundError(f"no screening library at {root} (build one: python -m data_jobs.screening_library)")
        manifest = json.loads((root / "manifest.json").read_text())
        metas = [pq.read_table(root / s, columns=META_COLUMNS) for s in manifest["shards"]]
        meta = pa.concat_tables(metas) if metas else TILE_SCHEMA.empty_table().select(META_COLUMNS)
        index = TileIndex.load(root / manifest["index"]) if manifest["index"] else TileIndex(manifest["dim"], **manifest["index_opts"])
        if index.ntotal != meta.num_rows:
            raise ValueError(f"{root}: index has {index.ntotal} vectors but the tile shards {meta.num_rows} rows")
        return cls(root, manifest, meta, index)

    @property
    def version(self) -> int:
        return int(self.manifest["version"])

    def __len__(self) -> int:
        return self.meta.num_rows

    # -- update -------------------------------------------------------------------------------
    def append(self, batch: TileBatch, vectors: np.ndarray, *, min_similarity: float = 0.95,
               keep_index_versions: int = 2) -> dict:
        """De-duplicate, add to the index, write a shard + index + manifest. Returns counts and version."""
        vectors = np.asarray(vectors, np.float32)
        if len(vectors) != len(batch.rows):
            raise ValueError(f"{len(batch.rows)} tiles but {len(vectors)} vectors")
        hashes = [exact_hash(t) for t in batch.tiles]
        keep = self._new_tiles(batch, hashes, vectors, min_similarity)
        if len(keep) == 0:
            return {"added": 0, "skipped": len(batch.rows), "version": self.version, "n_tiles": len(self)}
        version = self.version + 1
        start = len(self)
        # tile ids = index ids, which ascend with release day inside a version (the index's id layout:
        # a release window is a few id ranges); ordering the rows here keeps row number = tile id
        keep = keep[np.argsort([batch.rows[i]["release_day"] for i in keep], kind="stable")]
        rows = [dict(batch.rows[i], tile_id=start + j, tile=png(batch.tiles[i]), hash=hashes[i],
                     phash=phash(batch.tiles[i]), version=version) for j, i in enumerate(keep)]
        table = pa.Table.from_pylist(rows, schema=TILE_SCHEMA)
        ids = self.index.add(vectors[keep], table.column("release_day").to_numpy(), table.column("cut_code").to_numpy())
        assert (ids == table.column("tile_id").to_numpy()).all(), "tile ids and index ids disagree"
        shard = f"tiles/tiles-v{version:04d}.parquet"
        (self.root / "tiles").mkdir(parents=True, exist_ok=True)
        tmp = self.root / "tiles" / f".{version}.tmp"
        pq.write_table(table, tmp)
        os.replace(tmp, self.root / shard)
        index_dir = f"index/v{version:04d}"
        self.index.save(self.root / index_dir)
        manifest = dict(self.manifest, version=version, n_tiles=start + len(rows), shards=self.manifest["shards"] + [shard],
                        index=index_dir, updated=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"))
        new_features = {t: f for t, f in batch.features.items() if t not in self._feature_shard}
        if self.feature_spec is not None and new_features:
            fshard = f"features/features-v{version:04d}.parquet"
            (self.root / "features").mkdir(parents=True, exist_ok=True)
            ftmp = self.root / "features" / f".{version}.tmp"
            pq.write_table(pa.Table.from_pylist([dict(target_id=t, features=f, version=version) for t, f in new_features.items()],
                                                schema=FEATURE_SCHEMA), ftmp)
            os.replace(ftmp, self.root / fshard)
            manifest["features"] = dict(manifest["features"], shards=manifest["features"]["shards"] + [fshard])
            self._feature_shard.update((t, fshard) for t in new_features)
        self._write_manifest(manifest)
        self.manifest = manifest
        self.meta = pa.concat_tables([self.meta, table.select(META_COLUMNS)])
        self._keys.update(f"{hashes[i]}:{batch.rows[i]['cut_code']}:{batch.rows[i]['release_day']}" for i in keep)
        self._prune(keep_index_versions)
        return {"added": len(rows), "skipped": len(batch.rows) - len(rows), "version": version, "n_tiles": len(self)}

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

    def _write_manifest(self, manifest: dict) -> None:
        (self.root / "manifests").mkdir(parents=True, exist_ok=True)
        text = json.dumps(manifest, indent=2)
        (self.root / "manifests" / f"v{manifest['version']:04d}.json").write_text(text)
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".manifest.")
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, self.root / "manifest.json")

    def _prune(self, keep: int) -> None:
        """Delete index folders older than the last `keep` versions (a reader may still load the previous one)."""
        folders = sorted((self.root / "index").glob("v*"))
        for old in folders[:-keep]:
            shutil.rmtree(old, ignore_errors=True)

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
            t = pq.read_table(self.root / shard, columns=["target_id", "features"])
            self._feature_cache[shard] = dict(zip(t.column("target_id").to_pylist(), t.column("features").to_pylist()))
        return unpack(self._feature_cache[shard][target_id])

    def rows(self, ids) -> list[dict]:
        """Attribute rows of tile ids (no PNG)."""
        ids = [int(i) for i in ids]
        return self.meta.take(pa.array(ids, pa.int64())).to_pylist() if ids else []

    def tile_image(self, tile_id: int) -> Image.Image:
        version = int(self.meta.column("version")[int(tile_id)].as_py())
        t = pq.read_table(self.root / f"tiles/tiles-v{version:04d}.parquet", columns=["tile_id", "tile"])
        ids = t.column("tile_id").to_numpy()
        return Image.open(io.BytesIO(t.column("tile")[int(np.flatnonzero(ids == tile_id)[0])].as_py())).convert("RGB")
