"""Import a user's files as a contract dataset (`docray data import KIND SRC OUT`).

    result = import_dataset("faces", "lfw/", "s3://bucket/faces", split=True)
    result.ok, result.report.problems, result.files, result.counts     # counts: {"train": 1190, "val": 130}

Two layouts (docs/datasets.md shows an example of each):
  Parquet      SRC is a .parquet file or a folder of them, in (or castable to) the contract: it is
               validated as it is, then conformed (`contracts.conform`) and written.
  a folder     SRC holds image files (nested folders allowed), optionally with ONE sidecar,
               SRC/labels.jsonl or SRC/labels.csv. For masks, the images are the masks.
Rows of a folder:
  - with a sidecar, one per sidecar row: `file` names the image (the `image` column; `mask` for
    masks), relative to SRC; any other sidecar column is the contract column of that name. Other
    image columns (`clean`, `seg`, `flash`; `angles`, a list) hold file paths relative to SRC; list
    and struct columns (boxes, `fields`, `doc_quad`) are JSON (in a CSV cell too); timestamps ISO
    8601 or epoch seconds; an empty CSV cell is null. Image files under SRC that no row names are
    not imported (`result.unused` counts them).
  - without a sidecar, one per image file under SRC, in path order (not for documents: their
    `doc_type_name` needs one).
Derived columns (`derive`, also for Parquet):
  - id: the sidecar's, else the file's path relative to SRC (`alice/001.jpg`).
  - faces: identity = the index of the file's top folder among the sorted folder names (the LFW
    layout SRC/<person>/<file>), unless the sidecar gives it.
  - masks: each mask is re-encoded as a binary 'L' PNG (>= 128 kept, 255; `invert` for sets that
    store holes white); hole_ratio and bin computed from it where null.
  - split: where null, 'val' when a stable hash of the id falls below `val_fraction`, else 'train'.
Nothing reaches OUT unless every row is good: a folder's rows are built into a temporary folder,
validated there (`docray.datasets.validate`, the same checks as `docray data validate`), and only
then written to OUT with `docray.storage.datasets.write_shards` (OUT, or OUT/train, OUT/val,
OUT/test with `split=True`). Existing shards there are an error unless `overwrite`.
"""
from __future__ import annotations

import csv
import hashlib
import io
import itertools
import json
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timezone

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from docray.datasets.contracts import SPLITS, conform, contract
from docray.datasets.validate import Problem, Report, sort_problems, validate
from docray.imageio import ImageDecodeError, decode_image, encode_png
from docray.privacy.bins import area_bin
from docray.storage.blobs import filesystem
from docray.storage.datasets import IMAGE_EXTENSIONS, iter_batches, write_shards

SIDECARS = ("labels.jsonl", "labels.csv")
CHUNK_ROWS = 256  # rows built (files read) at a time


@dataclass
class ImportResult:
    """What `import_dataset` did: `files` written (none when the report has problems), rows per split."""

    report: Report
    files: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    unused: int = 0  # image files under SRC that no sidecar row names

    @property
    def ok(self) -> bool:
        return self.report.ok


def split_of_id(id_: str, val_fraction: float) -> str:
    """'val' for a stable `val_fraction` of ids (by SHA-256 of the id), 'train' for the rest."""
    h = int.from_bytes(hashlib.sha256(id_.encode()).digest()[:8], "big") / 2.0**64
    return "val" if h < val_fraction else "train"


def derive(kind: str, table: pa.Table, val_fraction: float) -> pa.Table:
    """A conformed table with its derivable nulls filled: split, and a mask's hole_ratio and bin."""
    def put(t: pa.Table, name: str, values: list) -> pa.Table:
        f = t.schema.field(name)
        return t.set_column(t.schema.get_field_index(name), f, pa.array(values, f.type))

    ids, splits = table.column("id").to_pylist(), table.column("split").to_pylist()
    table = put(table, "split", [s if s is not None else split_of_id(i, val_fraction) for s, i in zip(splits, ids)])
    if kind == "masks":
        ratios, bins = table.column("hole_ratio").to_pylist(), table.column("bin").to_pylist()
        for i, data in enumerate(table.column("mask").to_pylist()):
            if ratios[i] is None:
                ratios[i] = 1.0 - float((np.asarray(decode_image(data, mode="L", name="mask")) >= 128).mean())
            if bins[i] is None:
                bins[i] = area_bin(ratios[i])
        table = put(put(table, "hole_ratio", ratios), "bin", bins)
    return table


# -- a folder with a sidecar ------------------------------------------------------------------


def _image_files(fs, base: str) -> list[str]:
    """Image files under `base`, relative and sorted; hidden parts and top folders starting '_' skipped."""
    out = []
    for path in fs.find(base):
        rel = path[len(base) + 1:]
        parts = rel.split("/")
        hidden = any(p.startswith(".") for p in parts) or parts[0].startswith("_")
        if not hidden and rel.lower().endswith(IMAGE_EXTENSIONS):
            out.append(rel)
    return sorted(out)


def _read_sidecar(fs, base: str) -> tuple[str, list[dict]] | None:
    """(name, rows) of SRC's labels.jsonl / labels.csv; None without one."""
    found = [n for n in SIDECARS if fs.isfile(f"{base}/{n}")]
    if len(found) > 1:
        raise ValueError(f"{base}: both labels.jsonl and labels.csv exist; keep one")
    if not found:
        return None
    text = fs.cat_file(f"{base}/{found[0]}").decode("utf-8-sig")
    if found[0].endswith(".csv"):
        rows = [{k: (v if v != "" else None) for k, v in r.items()} for r in csv.DictReader(io.StringIO(text))]
    else:
        rows = []
        for k, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{found[0]} line {k}: not JSON ({e})") from None
                if not isinstance(rows[-1], dict):
                    raise ValueError(f"{found[0]} line {k}: expected a JSON object, got {line[:60]!r}")
    return found[0], rows


def _scalar(value, typ: pa.DataType):
    """A sidecar cell as the Python value pyarrow builds `typ` from (CSV cells arrive as strings)."""
    if value is None or pa.types.is_string(typ):
        return value
    if pa.types.is_timestamp(typ):
        if isinstance(value, str) and not value.lstrip("-").isdigit():
            t = datetime.fromisoformat(value)
            return t if t.tzinfo else t.replace(tzinfo=timezone.utc)
        return datetime.fromtimestamp(int(value), timezone.utc)
    if isinstance(value, str):
        if pa.types.is_boolean(typ) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        return json.loads(value)
    return value


class _Folder:
    """Builds contract tables from an image folder and its optional sidecar, collecting build problems."""

    def __init__(self, kind: str, src: str, invert: bool):
        self.kind, self.src, self.invert = kind, src, invert
        self.c = contract(kind)
        self.main = self.c.image_columns[0]  # the column `file` fills: image, or mask
        self.fs, base = filesystem(src)
        self.base = base.rstrip("/")
        if not self.fs.isdir(self.base):
            raise FileNotFoundError(f"no such folder: {src}")
        files = _image_files(self.fs, self.base)
        sidecar = _read_sidecar(self.fs, self.base)
        self.problems: list[Problem] = []
        if sidecar is None:
            if "doc_type_name" in self.c.required:
                raise ValueError(f"{src}: {kind} need a labels.jsonl or labels.csv sidecar (doc_type_name per file)")
            if not files:
                raise ValueError(f"{src}: no image files ({', '.join(IMAGE_EXTENSIONS)})")
            self.rows = [{"file": f} for f in files]
        else:
            name, self.rows = sidecar
            keys = dict.fromkeys(k for r in self.rows for k in r)
            if "file" not in keys:
                raise ValueError(f"{src}/{name}: needs a 'file' column (the {self.main} path relative to {src})")
            for k in keys:
                if k != "file" and (k not in self.c.schema.names or k == self.main):
                    why = f"use 'file' for the {self.main}" if k == self.main else \
                        f"not a {kind} column; the contract has {', '.join(self.c.schema.names)}"
                    self.problems.append(Problem(None, None, k, "unknown_column", f"{name}: {why}"))
        self.columns = [f.name for f in self.c.schema if f.name != self.main and any(f.name in r for r in self.rows)]
        self.identities = sorted({r["file"].split("/")[0] for r in self.rows if isinstance(r.get("file"), str)
                                  and "/" in r["file"]})
        named = set()
        for r in self.rows:
            named.add(r.get("file"))
            named.update(r[n] for n in ("clean", "seg", "flash") if isinstance(r.get(n), str))
        self.unused = len(set(files) - named)

    def _read(self, rel, row: int, id_: str | None, column: str) -> bytes | None:
        if not isinstance(rel, str) or rel.startswith("/") or ".." in rel.split("/"):
            self.problems.append(Problem(row, id_, column, "bad_path", f"{rel!r} is not a path relative to {self.src}"))
            return None
        try:
            return self.fs.cat_file(f"{self.base}/{rel}")
        except (FileNotFoundError, IsADirectoryError):
            self.problems.append(Problem(row, id_, column, "missing_file", f"no file {rel!r} under {self.src}"))
            return None

    def _mask(self, data: bytes) -> bytes:
        """The mask as a binary 'L' PNG, 255 kept; left as it is when it does not decode (validation names it)."""
        try:
            kept = np.asarray(decode_image(data, mode="L", name="mask")) >= 128
        except ImageDecodeError:
            return data
        return encode_png(((~kept if self.invert else kept) * 255).astype(np.uint8))

    def _column(self, name: str, values: list, rows: range, ids: list) -> pa.Array:
        typ = self.c.type_of(name)
        cells = []
        for v, row, id_ in zip(values, rows, ids):
            try:
                if name == "angles":
                    v = json.loads(v) if isinstance(v, str) else v
                    v = None if v is None else [self._read(p, row, id_, name) for p in v]
                elif name in self.c.image_columns:
                    v = None if v is None else self._read(v, row, id_, name)
                else:
                    v = _scalar(v, typ)
                pa.array([v], typ)
            except (ValueError, TypeError, pa.ArrowInvalid, pa.ArrowTypeError) as e:
                why = f": {e}" if isinstance(e, (pa.ArrowInvalid, pa.ArrowTypeError)) else ""
                self.problems.append(Problem(row, id_, name, "bad_value", f"cannot read {v!r} as {typ}{why}"))
                v = None
            cells.append(v)
        return pa.array(cells, typ)

    def tables(self, progress: bool):
        """Conformed contract tables of CHUNK_ROWS rows, in row order."""
        from tqdm import tqdm

        bar = tqdm(total=len(self.rows), unit="file", desc=f"import {self.kind}", disable=None if progress else True)
        for start in range(0, len(self.rows), CHUNK_ROWS):
            chunk = self.rows[start:start + CHUNK_ROWS]
            rows = range(start, start + len(chunk))
            ids = [r.get("id") if r.get("id") is not None else r.get("file") for r in chunk]
            ids = [None if i is None else str(i) for i in ids]
            data = [self._read(r.get("file"), row, id_, "file") for r, row, id_ in zip(chunk, rows, ids)]
            if self.kind == "masks":
                data = [None if d is None else self._mask(d) for d in data]
            cols = {"id": pa.array(ids, pa.string()), self.main: pa.array(data, pa.binary())}
            for name in self.columns:
                if name != "id":
                    cols[name] = self._column(name, [r.get(name) for r in chunk], rows, ids)
            if self.kind == "faces" and "identity" not in self.columns:
                cols["identity"] = pa.array([self._identity(r, row, id_) for r, row, id_ in zip(chunk, rows, ids)],
                                            pa.int32())
            bar.update(len(chunk))
            yield conform(self.kind, pa.table(cols))
        bar.close()

    def _identity(self, r: dict, row: int, id_: str | None) -> int | None:
        top = r["file"].split("/")[0] if isinstance(r.get("file"), str) and "/" in r["file"] else None
        if top is None:
            where = f"{self.src}/<identity>/<file>"
            self.problems.append(Problem(row, id_, "identity", "missing_value",
                                         f"{r.get('file')!r} is not in an identity folder ({where})"))
            return None
        return self.identities.index(top)


# -- import -----------------------------------------------------------------------------------


def _is_parquet(fs, path: str) -> bool:
    if fs.isfile(path):
        return path.endswith(".parquet")
    return fs.isdir(path) and any(p.rsplit("/", 1)[-1].endswith(".parquet") for p in fs.ls(path, detail=False))


def _shards(out: str) -> dict[str, list[str]]:
    """Existing part-*.parquet shards of an import target: OUT and OUT/<split>, by folder."""
    fs, base = filesystem(out)
    base = base.rstrip("/")
    found = {}
    for folder in [base] + [f"{base}/{s}" for s in SPLITS]:
        files = fs.glob(f"{folder}/part-*.parquet")
        if files:
            found[folder] = files
    return found


def _write(kind: str, src: str, out: str, split: bool, val_fraction: float, overwrite: bool,
           rows_per_shard: int) -> tuple[list[str], dict[str, int]]:
    """Conform, derive and write the (validated) Parquet at `src` to OUT, or OUT/<split> for each split.

    Returns the files written and the rows written per destination ('all', or the split)."""
    counts: dict[str, int] = {}

    def tables(keep: str | None):
        for b in iter_batches(src, min(rows_per_shard, CHUNK_ROWS)):
            t = derive(kind, conform(kind, pa.Table.from_batches([b])), val_fraction)
            if keep is not None:
                t = t.filter(pc.equal(t.column("split"), keep))
            if t.num_rows:
                counts[keep or "all"] = counts.get(keep or "all", 0) + t.num_rows
                yield t

    files = []
    for keep in SPLITS if split else (None,):
        stream = tables(keep)
        first = next(stream, None)
        if first is not None:
            dest = f"{out.rstrip('/')}/{keep}" if keep else out
            files += write_shards(itertools.chain([first], stream), dest, rows_per_shard, overwrite=overwrite)
    return files, counts


def import_dataset(kind: str, src: str, out: str, *, split: bool = False, val_fraction: float = 0.1,
                   overwrite: bool = False, invert: bool = False, rows_per_shard: int = 1000,
                   progress: bool = False) -> ImportResult:
    """Import `src` (Parquet, or an image folder with an optional sidecar) as a `kind` dataset at `out`.

    Returns an ImportResult whose report lists every problem; with any, nothing is written. Raises
    FileExistsError when `out` already holds shards (unless `overwrite`), FileNotFoundError for a
    missing `src`, ValueError for a layout it cannot read (e.g. documents without a sidecar).
    """
    contract(kind)
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    old = _shards(out)
    if old and not overwrite:
        raise FileExistsError(f"{out} already holds shards ({', '.join(old)}); pass overwrite to replace them")
    fs, path = filesystem(src)
    if not fs.exists(path):
        raise FileNotFoundError(f"no such file or folder: {src}")
    with tempfile.TemporaryDirectory(prefix="docray-import-") as stage:
        if _is_parquet(fs, path):
            source, report, unused = src, validate(kind, src, progress=progress), 0
        else:
            folder = _Folder(kind, src, invert)
            write_shards(folder.tables(progress), stage, rows_per_shard)
            source, report, unused = stage, validate(kind, stage, progress=progress), folder.unused
            report.path = src
            built = {(p.row, p.column) for p in folder.problems}  # a staged problem they explain is left out
            report.problems = sort_problems(folder.problems + [
                p for p in report.problems
                if (p.row, p.column) not in built and not (p.column == folder.main and (p.row, "file") in built)])
        if not report.ok:
            return ImportResult(report, unused=unused)
        files, counts = _write(kind, source, out, split, val_fraction, overwrite, rows_per_shard)
    fs_out, base = filesystem(out)
    written = {base.rstrip("/") + (f"/{k}" if k != "all" else "") for k in counts}
    for folder_path, shards in old.items():  # an earlier import's shards where this one wrote none
        if folder_path not in written:
            for f in shards:
                fs_out.rm_file(f)
    return ImportResult(report, files, counts, unused)
