"""Rescan an archive of documents against the cut-out library; a Parquet report of the abnormal ones.

    python -m data_jobs.screening_archive --set input=ARCHIVE out=REPORT_DIR
    python -m data_jobs.screening_archive --set input=FOLDER                # <doc_id>/<pictures> + metadata.csv
    ray job submit --working-dir . -- python -m data_jobs.screening_archive --set input=s3://.../archive concurrency=4

`input` (Parquet) and `out` may be URIs (`s3://...`; the default `out` is under DOCRAY_HOME, which may be
one): every file is read and written through `docray.storage.blobs` / fsspec. A folder input is local.

Input: Parquet shards with `id`, `pictures` (list of image bytes) or `image` (one picture), and
optional `release_time`, `cut_type`; or a folder with one sub-folder per document (its pictures)
and an optional `metadata.csv`/`metadata.jsonl` (`file`, `release_time`). Each input shard is one
unit of work: actors (descriptor on GPU when present) screen its documents and write
`<out>/part-<shard>.parquet` (`id`, `abnormal`, `stage`, `n_matches`, `evidence` JSON, `error`,
`library_version`) atomically (on local disk a temporary file renamed into place; on an object store
one PUT). Progress is shown per shard. `<out>/abnormal.parquet` gathers the
abnormal documents at the end.

Faults: every document is reported exactly once, whatever dies.
- An actor that dies (killed, out of memory, its node lost) is restarted and its shard screened
  again from the start (`max_restarts` / `max_task_retries`: `retries`); the shard's report is
  written only whole (a temporary file renamed into place), so a shard is never reported twice or
  in part.
- A driver that dies leaves the finished shards' reports; the rerun skips them and screens the rest
  (resumable). `<out>/shards.json` names the input shard of each report (its path, size and mtime):
  a report is kept only for the same shard, so an archive that gained or changed shards between the
  runs is never reported by stale reports (on an object store: its size and ETag). A folder input's shards (`<out>/input/`) are rewritten
  only when their documents change.
"""
from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import Field
from tqdm import tqdm

from docray import paths
from docray.config import Config, parse_args, save_config
from docray.screening.library import Library
from docray.storage import blobs


class RescanConfig(Config):
    input: str = Field(..., description="archive: Parquet file/folder, or a folder of document folders")
    out: str = Field("", description="report folder ('' -> DOCRAY_HOME/reports/rescan-<input name>)")
    library: str = Field("", description="library folder or s3:// URI ('' -> DOCRAY_HOME/indexes/screening; its database: DOCRAY_DB_URL)")
    descriptor: str = Field("", description="'' -> the descriptor the library was built with")
    screen: dict = Field(default_factory=dict, description="ScreenConfig overrides, e.g. {threshold: 0.8, learn: false}")
    rows_per_shard: int = Field(200, description="documents per shard when the input is a folder")
    batch_size: int = Field(16, description="documents per predictor call")
    concurrency: int = Field(1, ge=1, description="screening actors")
    retries: int = Field(3, ge=0, description="times a shard is screened again after its actor died (the actor is "
                                              "restarted as often)")


def _name(url: str) -> str:
    """The last part of a local path or URI."""
    return str(url).rstrip("/").rsplit("/", 1)[-1] if paths.is_uri(url) else Path(url).name


def _glob(folder: str, pattern: str) -> list[str]:
    """The files matching `pattern` in `folder` (a local folder or URI), as local paths or URIs."""
    fs, path = blobs.filesystem(folder)
    fs.invalidate_cache()  # reports are written by actors (other processes): never a stale listing
    found = fs.glob(f"{path.rstrip('/')}/{pattern}")
    return sorted(f if blobs.is_local(fs) else fs.unstrip_protocol(f) for f in found)


def _remove(url: str) -> None:
    fs, path = blobs.filesystem(url)
    try:
        fs.rm_file(path)
    except FileNotFoundError:
        pass


def read_parquet(url: str) -> pa.Table:
    """A Parquet file at a local path or URI."""
    if not paths.is_uri(url):
        return pq.read_table(url)
    return pq.read_table(pa.BufferReader(blobs.read_file(url)))


def folder_to_shards(root: Path, out: str, rows_per_shard: int) -> list[str]:
    """A (local) folder of document folders -> Parquet shards (id, pictures, release_time) under out/input/
    (`out` a local folder or URI). A shard whose documents are already there as they are is left untouched
    (a rerun keeps its report)."""
    from docray.storage.datasets import read_image_folder

    t = read_image_folder(str(root)).table.sort_by("path")
    docs: dict[str, dict] = {}
    has_time = "release_time" in t.column_names
    for row in t.to_pylist():
        d = docs.setdefault(row["label"], {"id": row["label"], "pictures": [], "release_time": None})
        d["pictures"].append(row["image"])
        if has_time and row["release_time"] is not None:
            d["release_time"] = str(row["release_time"])
    table = pa.Table.from_pylist(list(docs.values()), schema=pa.schema(
        [("id", pa.string()), ("pictures", pa.list_(pa.binary())), ("release_time", pa.string())]))
    folder = paths.join(str(out), "input")
    shards = []
    for i, start in enumerate(range(0, max(table.num_rows, 1), rows_per_shard)):
        part, path = table.slice(start, rows_per_shard), paths.join(folder, f"part-{i:05d}.parquet")
        if not (blobs.exists(path) and read_parquet(path).equals(part)):
            write_atomic(part, path)
        shards.append(path)
    keep = {_name(p) for p in shards}
    for stale in _glob(folder, "part-*.parquet"):
        if _name(stale) not in keep:
            _remove(stale)
    return shards


def write_atomic(table: pa.Table, path: str | Path) -> None:
    """Write a Parquet file (a local path or URI) whole or not at all: on local disk a temporary file of this
    writer's own, renamed into place (two writers of the same file, e.g. a dying driver's actor and the
    rerun's, never mix their bytes); on an object store one PUT (`blobs.write_file`)."""
    buf = pa.BufferOutputStream()
    pq.write_table(table, buf)
    blobs.write_file(str(path), buf.getvalue().to_pybytes())


def shard_identity(shard: str) -> dict:
    """What a report is kept for: its input shard's path, size and modification time (on an object
    store: size and ETag, which changes with every PUT)."""
    if not paths.is_uri(shard):
        st = os.stat(shard)
        return {"shard": str(shard), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    fs, path = blobs.filesystem(shard)
    info = fs.info(path)
    stamp = info.get("ETag") or info.get("LastModified") or info.get("mtime")
    return {"shard": str(shard), "size": int(info["size"]), "etag": str(stamp)}


def plan(out: str, shards: list[str]) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(every (shard, report) pair, those still to screen). A report is kept only when `shards.json`
    says it was written for this very shard; the others, and reports of shards the input no longer has,
    are deleted before the new `shards.json` is written (so a report on disk always matches it).
    `out`: a local folder or URI."""
    out = str(out)
    todo = [(s, paths.join(out, f"part-{i:05d}.parquet")) for i, s in enumerate(shards)]
    manifest = paths.join(out, "shards.json")
    old = json.loads(blobs.read_file(manifest)) if blobs.exists(manifest) else {}
    new = {_name(r): shard_identity(s) for s, r in todo}
    have = {_name(f) for f in _glob(out, "part-*.parquet")}
    pending = [(s, r) for s, r in todo if not (_name(r) in have and old.get(_name(r)) == new[_name(r)])]
    for _, r in pending:
        if _name(r) in have:
            _remove(r)
    for stale in _glob(out, "part-*.parquet"):
        if _name(stale) not in new:
            _remove(stale)
    blobs.write_file(manifest, json.dumps(new, indent=1).encode())  # atomic locally, one PUT on a store
    return todo, pending


def input_shards(cfg: RescanConfig, out: str) -> list[str]:
    if paths.is_uri(cfg.input):  # Parquet on object storage: one file, or the files of a folder
        fs, path = blobs.filesystem(cfg.input)
        if fs.isfile(path):
            return [cfg.input]
        files = [f for f in _glob(cfg.input, "*.parquet") if not _name(f).startswith((".", "_"))]
        if files:
            return files
        raise FileNotFoundError(f"archive not found: {cfg.input} (no Parquet files)")
    p = Path(cfg.input)
    if p.is_file():
        return [str(p)]
    if p.is_dir() and any(p.glob("*.parquet")):
        return sorted(str(f) for f in p.glob("*.parquet") if not f.name.startswith((".", "_")))
    if p.is_dir():
        return folder_to_shards(p, out, cfg.rows_per_shard)
    raise FileNotFoundError(f"archive not found: {cfg.input}")


def screen_shard(predictor, shard: str, report: str, batch_size: int) -> dict:
    """Screen one input shard and write its report atomically (temp file + rename; one PUT on a store)."""
    t = read_parquet(shard)
    if "pictures" not in t.column_names:
        if "image" not in t.column_names:
            raise ValueError(f"{shard}: needs a 'pictures' (list of images) or an 'image' column")
        t = t.append_column("pictures", pa.array([[b] for b in t.column("image").to_pylist()], pa.list_(pa.binary())))
    cols = [c for c in ("id", "pictures", "release_time", "cut_type") if c in t.column_names]
    parts = []
    for s in range(0, t.num_rows, batch_size):
        b = t.slice(s, batch_size).select(cols).to_pydict()
        if "release_time" in b:
            b["release_time"] = [None if v is None else (v if isinstance(v, (int, str)) else v.isoformat()) for v in b["release_time"]]
        parts.append(pa.table(predictor(b)))
    res = pa.concat_tables(parts) if parts else pa.table({"id": pa.array([], pa.string())})
    write_atomic(res, report)
    return {"shard": shard, "documents": res.num_rows, "abnormal": int(sum(res.column("abnormal").to_pylist())) if res.num_rows else 0}


def run(cfg: RescanConfig, progress: bool = True) -> dict:
    import ray
    from ray.util import ActorPool

    from cluster.local import actor_resources
    from docray.screening.predictors import DocumentScreener

    t0 = time.perf_counter()
    out = paths.absolute(cfg.out or paths.sub("reports", f"rescan-{_name(cfg.input)}"))  # a local folder or URI
    save_config(cfg, out, "rescan_config.yaml")
    root = cfg.library or str(Library.default_root())
    todo, pending = plan(out, input_shards(cfg, out))

    @ray.remote
    class ScreeningArchiveWorker:
        def __init__(self):
            self.p = DocumentScreener(root, cfg.descriptor or None, cfg.screen)

        def run(self, shard, report):
            return screen_shard(self.p, shard, report, cfg.batch_size)

    done = []
    if pending:
        n, run_id = min(cfg.concurrency, len(pending)), uuid.uuid4().hex[:8]
        pool = ActorPool([ScreeningArchiveWorker.options(  # a dead actor comes back and its shard is screened again
            name=f"screening-archive:{run_id}:{i}", max_restarts=cfg.retries, max_task_retries=cfg.retries,
            **actor_resources(n)).remote() for i in range(n)])
        it = pool.map_unordered(lambda a, sr: a.run.remote(*sr), pending)
        for r in tqdm(it, total=len(pending), desc="shards", unit="shard", disable=not progress):
            done.append(r)
    reports = None
    if todo:
        fs, _ = blobs.filesystem(out)
        fs.invalidate_cache()  # the reports were written by the actors
        reports = pq.read_table([blobs.filesystem(r)[1] for _, r in todo], filesystem=None if blobs.is_local(fs) else fs)
    abnormal = reports.filter(reports.column("abnormal")) if reports is not None and reports.num_rows else None
    if abnormal is not None:
        write_atomic(abnormal, paths.join(out, "abnormal.parquet"))
    return {"shards": len(todo), "skipped_shards": len(todo) - len(pending), "documents": reports.num_rows if reports else 0,
            "abnormal": abnormal.num_rows if abnormal is not None else 0, "out": str(out), "seconds": time.perf_counter() - t0}


def main(argv=None) -> None:
    cfg = parse_args(RescanConfig, argv, description=__doc__.split("\n\n")[0])
    from cluster.local import init_ray

    init_ray()
    res = run(cfg)
    print(f"rescan: {res['documents']} documents in {res['shards']} shards ({res['skipped_shards']} already done), "
          f"{res['abnormal']} abnormal; report {res['out']}/abnormal.parquet ({res['seconds']:.1f}s)")


if __name__ == "__main__":
    main()
