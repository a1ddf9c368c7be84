"""Dataset I/O: Parquet shards, and ImageFolder trees of user data.

Shards (`write_shards`):

    <out_dir>/part-00000.parquet   plain Parquet files of `rows_per_shard` rows (the last may be short):
    <out_dir>/part-00001.parquet   image bytes (PNG/JPEG) plus typed label columns
    ...

Nothing else is written into the folder: each shard is written as a hidden temp file
(`.part-00000.parquet.<random>.tmp`) and renamed into place, so a crash leaves at most a hidden
file without the `.parquet` extension. Read the folder with Ray as

    ray.data.read_parquet(out_dir, file_extensions=["parquet"])

(`["parquet"]` is Ray's default since 2.x; passing it explicitly keeps foreign files such as a
README or a leftover temp file out of the read on any version), or with `read_table` /
`iter_batches` here. Paths may be local or fsspec URIs (`s3://...`, `memory://...`).

ImageFolder (`read_image_folder`), the layout a user brings real data in:

    <root>/<label>/<file>.png|jpg|jpeg|bmp|gif|tif|tiff|webp   (nested folders inside a label are walked)
    <root>/metadata.csv or <root>/metadata.jsonl                 optional, a `file` column (path relative
                                                                 to root, e.g. `cat/001.png`) and any others
"""
from __future__ import annotations

import io
import json
import logging
import os
from typing import Iterable, Iterator, NamedTuple

import pyarrow as pa
import pyarrow.csv
import pyarrow.dataset
import pyarrow.json
import pyarrow.parquet as pq

from docray.imageio import MAX_BYTES, MAX_PIXELS, ImageDecodeError, decode_image
from docray.storage.blobs import atomic_write, filesystem, is_local

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
LABELS_KEY = b"docray.labels"  # schema metadata of read_image_folder: JSON list, label_id -> label


# -- Parquet shards ----------------------------------------------------------------------------


def _write_one(fs, path: str, table: pa.Table) -> None:
    """One Parquet file, atomically: temp + fsync + rename locally, a single PUT remotely."""
    buf = pa.BufferOutputStream()
    pq.write_table(table, buf)
    data = buf.getvalue().to_pybytes()
    if is_local(fs):
        atomic_write(path, data)
    else:
        fs.pipe_file(path, data)


def _rechunk(tables: Iterable[pa.Table], rows: int) -> Iterator[pa.Table]:
    """Tables of exactly `rows` rows (the last may be shorter; one empty table if there are no rows)."""
    pending: list[pa.Table] = []
    n, schema, emitted = 0, None, 0
    for t in tables:
        if not isinstance(t, pa.Table):
            raise TypeError(f"write_shards expects pyarrow Tables, got {type(t).__name__}")
        if schema is None:
            schema = t.schema
        elif not t.schema.equals(schema):
            raise ValueError(f"table schema changed between inputs:\n{t.schema}\n!=\n{schema}")
        pending.append(t)
        n += t.num_rows
        while n >= rows:
            merged = pa.concat_tables(pending)
            yield merged.slice(0, rows)
            emitted += 1
            rest = merged.slice(rows)
            pending, n = [rest], rest.num_rows
    if schema is None:
        raise ValueError("write_shards got no tables")
    if n or not emitted:  # the short tail; an input without rows still gets one (empty) shard
        yield pa.concat_tables(pending)


def _shard_files(fs, folder: str, prefix: str | None = None) -> list[str]:
    """Sorted visible `.parquet` files directly in `folder` (optionally `<prefix>-*`)."""
    try:
        entries = fs.ls(folder, detail=True)
    except FileNotFoundError:
        return []
    out = []
    for e in entries:
        name = e["name"].rstrip("/").rsplit("/", 1)[-1]
        if e["type"] != "file" or not name.endswith(".parquet") or name.startswith((".", "_")):
            continue
        if prefix is None or name.startswith(f"{prefix}-"):
            out.append(e["name"])
    return sorted(out)


def write_shards(
    table: pa.Table | Iterable[pa.Table],
    out_dir: str,
    rows_per_shard: int = 1000,
    prefix: str = "part",
    overwrite: bool = False,
) -> list[str]:
    """Write one table, or a stream of tables with one schema, as `<prefix>-NNNNN.parquet` shards.

    Returns the shard paths (local paths, or URIs when `out_dir` is a URI). An existing
    `<prefix>-*.parquet` in `out_dir` is an error unless `overwrite`, which replaces them all
    (stale shards beyond the new count are deleted last).
    """
    if rows_per_shard < 1:
        raise ValueError(f"rows_per_shard must be >= 1, got {rows_per_shard}")
    if not prefix or "/" in prefix or prefix.startswith((".", "_")):
        raise ValueError(f"shard prefix {prefix!r}: a plain name, not starting with '.' or '_'")
    fs, folder = filesystem(out_dir)
    folder = folder.rstrip("/")
    old = _shard_files(fs, folder, prefix)
    if old and not overwrite:
        raise FileExistsError(f"{out_dir} already holds {len(old)} {prefix}-*.parquet shard(s); pass overwrite=True")
    fs.makedirs(folder, exist_ok=True)
    tables = [table] if isinstance(table, pa.Table) else table
    written = []
    for i, shard in enumerate(_rechunk(tables, rows_per_shard)):
        path = f"{folder}/{prefix}-{i:05d}.parquet"
        _write_one(fs, path, shard)
        written.append(path)
    for path in set(old) - set(written):
        fs.rm_file(path)
    return [_as_user_path(out_dir, folder, p) for p in written]


def _as_user_path(user_root: str, fs_root: str, path: str) -> str:
    """`path` (as the filesystem names it) expressed under the root the user passed (keeps `s3://`)."""
    return user_root.rstrip("/") + path[len(fs_root):]


def _dataset(path_or_dir: str) -> pyarrow.dataset.Dataset:
    fs, path = filesystem(path_or_dir)
    if fs.isdir(path):
        files = _shard_files(fs, path.rstrip("/"))
        if not files:
            raise FileNotFoundError(f"no .parquet files in {path_or_dir}")
    elif fs.isfile(path):
        files = [path]
    else:
        raise FileNotFoundError(f"no such file or folder: {path_or_dir}")
    return pyarrow.dataset.dataset(files, format="parquet", filesystem=None if is_local(fs) else fs)


def read_table(path_or_dir: str, columns: list[str] | None = None) -> pa.Table:
    """A Parquet file, or all visible `.parquet` files of a folder in name order, as one table."""
    return _dataset(path_or_dir).to_table(columns=columns)


def iter_batches(path_or_dir: str, batch_size: int, columns: list[str] | None = None) -> Iterator[pa.RecordBatch]:
    """Record batches of exactly `batch_size` rows across shard boundaries (the last may be shorter)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    ds = _dataset(path_or_dir)
    pending: list[pa.RecordBatch] = []
    n, schema = 0, None
    for b in ds.to_batches(columns=columns, batch_size=batch_size):
        schema = b.schema
        pending.append(b)
        n += b.num_rows
        while n >= batch_size:
            t = pa.Table.from_batches(pending, schema)
            yield t.slice(0, batch_size).combine_chunks().to_batches()[0]
            rest = t.slice(batch_size)
            pending, n = rest.to_batches(), rest.num_rows
    if n:
        yield pa.Table.from_batches(pending, schema).combine_chunks().to_batches()[0]


# -- ImageFolder -------------------------------------------------------------------------------


class ImageFolder(NamedTuple):
    """What `read_image_folder` returns: the readable images, and `(path, reason)` for each skipped one."""

    table: pa.Table
    skipped: list[tuple[str, str]]


def _read_metadata(fs, root: str) -> pa.Table | None:
    found = [n for n in ("metadata.csv", "metadata.jsonl") if fs.isfile(f"{root}/{n}")]
    if len(found) > 1:
        raise ValueError(f"{root}: both metadata.csv and metadata.jsonl exist; keep one")
    if not found:
        return None
    data = fs.cat_file(f"{root}/{found[0]}")
    if found[0].endswith(".csv"):
        meta = pyarrow.csv.read_csv(io.BytesIO(data))
    else:
        meta = pyarrow.json.read_json(io.BytesIO(data))
    if "file" not in meta.column_names:
        raise ValueError(f"{root}/{found[0]}: needs a 'file' column (path relative to the root, e.g. 'cat/001.png')")
    return meta


def _join_metadata(table: pa.Table, meta: pa.Table, where: str) -> pa.Table:
    """Left-join `meta`'s columns onto `table` by `path == file`, keeping `table`'s row order."""
    files = [str(f) for f in meta.column("file").to_pylist()]
    if len(set(files)) != len(files):
        raise ValueError(f"{where}: the 'file' column has duplicate entries")
    clash = set(meta.column_names) & set(table.column_names)
    if clash:
        raise ValueError(f"{where}: metadata columns {sorted(clash)} clash with the image columns")
    row = {f: i for i, f in enumerate(files)}
    take = pa.array([row.get(p) for p in table.column("path").to_pylist()], type=pa.int64())
    picked = meta.drop_columns(["file"]).take(take)  # null index -> null row
    for name in picked.column_names:
        table = table.append_column(picked.schema.field(name), picked.column(name))
    return table


def read_image_folder(
    root: str,
    max_bytes: int = MAX_BYTES,
    max_pixels: int = MAX_PIXELS,
    extensions: tuple[str, ...] = IMAGE_EXTENSIONS,
) -> ImageFolder:
    """Read `root/<label>/<file>` images into a table: `image` (bytes), `label`, `label_id`, `path`.

    `label_id` (int32) indexes the sorted list of label folders, stored in the schema metadata
    under `docray.labels`; `path` is relative to `root` (`label/file.png`). Every file with an
    image extension is fully decoded with `docray.imageio.decode_image`; corrupt, truncated or
    oversized ones are left out and returned in `skipped` (and logged). Files with other
    extensions, hidden files and folders, and top-level folders starting with '_' (`__MACOSX`)
    are ignored. A `metadata.csv`/`.jsonl` sidecar is joined in by
    its `file` column (files it does not name get nulls). Rows are sorted by path. All images
    are held in memory: for archives larger than RAM, use a Ray Data job.
    """
    fs, base = filesystem(root)
    base = base.rstrip("/")
    if not fs.isdir(base):
        raise FileNotFoundError(f"no such folder: {root}")
    labels = sorted(
        e["name"].rstrip("/").rsplit("/", 1)[-1]
        for e in fs.ls(base, detail=True)
        if e["type"] == "directory" and not e["name"].rstrip("/").rsplit("/", 1)[-1].startswith((".", "_"))
    )
    if not labels:
        raise ValueError(f"{root}: no label folders (expected root/<label>/<image files>)")
    rows: dict[str, list] = {"image": [], "label": [], "label_id": [], "path": []}
    skipped: list[tuple[str, str]] = []
    for label_id, label in enumerate(labels):
        for path, info in sorted(fs.find(f"{base}/{label}", detail=True).items()):
            rel = path[len(base) + 1:]
            if any(part.startswith(".") for part in rel.split("/")) or not rel.lower().endswith(extensions):
                continue
            if info.get("size") is not None and info["size"] > max_bytes:
                reason = f"{info['size']:,} bytes is over the limit of {max_bytes:,} bytes"
            else:
                data = fs.cat_file(path)
                try:
                    decode_image(data, mode=None, max_bytes=max_bytes, max_pixels=max_pixels, name=rel)
                    reason = None
                except ImageDecodeError as e:
                    reason = str(e)
            if reason is not None:
                skipped.append((rel, reason))
                log.warning("skipped %s: %s", rel, reason)
                continue
            for k, v in zip(rows, (data, label, label_id, rel)):
                rows[k].append(v)
    schema = pa.schema(
        [("image", pa.binary()), ("label", pa.string()), ("label_id", pa.int32()), ("path", pa.string())],
        metadata={LABELS_KEY: json.dumps(labels).encode()},
    )
    table = pa.Table.from_pydict(rows, schema=schema)
    meta = _read_metadata(fs, base)
    if meta is not None:
        table = _join_metadata(table, meta, f"{root}/metadata")
        table = table.replace_schema_metadata({LABELS_KEY: json.dumps(labels).encode()})
    return ImageFolder(table, skipped)


def labels_of(table: pa.Table) -> list[str]:
    """The label list (`label_id` -> label) stored by `read_image_folder`."""
    raw = (table.schema.metadata or {}).get(LABELS_KEY)
    if raw is None:
        raise KeyError(f"table has no {LABELS_KEY.decode()!r} schema metadata")
    return json.loads(raw)
