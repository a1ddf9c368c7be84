"""Generate a synthetic corpus with Ray Data: index ranges -> `docray.synth.generate` -> Parquet.

Each row depends only on (seed, kind, index), so the corpus is the same however Ray splits the
work. Output: `<out>/<kind>/*.parquet` (read back with `ray.data.read_parquet`) and a contact
sheet `<out>/<kind>/contact_sheet.png` with the labels drawn.

    python -m data_jobs.synth_corpus --set n.documents=5000 n.faces=0
    ray job submit --working-dir . -- python -m data_jobs.synth_corpus --set n.documents=100000
"""
from __future__ import annotations

import io
import math
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
from pydantic import Field
from tqdm import tqdm

from docray import paths, synth
from docray.config import Config, parse_args, save_config
from docray.storage.blobs import filesystem, is_local, write_file
from docray.storage.datasets import read_table, write_shards


class Counts(Config):
    documents: int = Field(500, ge=0, description="identity documents and certificates, with captures and labels")
    faces: int = Field(1024, ge=0, description="procedural portraits (identity = index % n_identities)")
    targets: int = Field(200, ge=0, description="sensitive posters and benign distractors")
    masks: int = Field(240, ge=0, description="irregular occlusion masks, spread over the six area bins")


class SynthCorpusConfig(Config):
    out: str = Field(default_factory=lambda: paths.sub("datasets"), description="root folder; one sub-folder per kind")
    seed: int = Field(0, description="rows depend only on (seed, kind, index)")
    n: Counts = Counts()
    rows_per_block: int = Field(100, ge=1, description="rows per Ray task (one generate() call)")
    rows_per_shard: int = Field(1000, ge=1, description="rows per Parquet file")
    options: dict[str, dict] = Field(default_factory=dict, description="generator options per kind, e.g. {documents: {size: [256, 160]}}")


def _shards(out: str) -> list[str]:
    """The Parquet shards in `out` (a local folder or a URI), sorted, as paths or URIs like `out`."""
    fs, root = filesystem(out)
    found = sorted(fs.glob(f"{root.rstrip('/')}/*.parquet"))
    return found if is_local(fs) else [paths.join(out, f.rsplit("/", 1)[-1]) for f in found]


def _clear_shards(out: str) -> None:
    fs, _ = filesystem(out)
    for old in _shards(out):
        fs.rm_file(filesystem(old)[1])


def _generate_batch(batch: dict[str, np.ndarray], kind: str, seed: int, options: dict) -> pa.Table:
    ids = batch["id"]
    lo, hi = int(ids[0]), int(ids[-1]) + 1
    if hi - lo == len(ids) and np.all(np.diff(ids) == 1):  # Ray hands out contiguous ranges
        return synth.generate(kind, lo, hi, seed=seed, **options)
    return pa.concat_tables([synth.generate(kind, int(i), int(i) + 1, seed=seed, **options) for i in ids])


def generate_with_ray(kind: str, n: int, out: str, *, seed: int = 0, start: int = 0, rows_per_block: int = 100,
                      rows_per_shard: int = 1000, **options) -> list[str]:
    """Generate rows [start, start+n) of `kind` through Ray Data into `out` (existing shards replaced)."""
    import ray

    synth.generate(kind, start, start + 1, seed=seed, **options)  # fail fast on a bad kind/option, in the driver
    ds = ray.data.range(n, override_num_blocks=max(1, math.ceil(n / rows_per_block)))
    if start:
        ds = ds.map_batches(lambda b: {"id": b["id"] + start}, batch_format="numpy")
    ds = ds.map_batches(_generate_batch, batch_size=rows_per_block, batch_format="numpy",
                        fn_kwargs={"kind": kind, "seed": seed, "options": options})
    if not paths.is_uri(out):
        Path(out).mkdir(parents=True, exist_ok=True)
    _clear_shards(out)
    ds.write_parquet(out, min_rows_per_file=min(rows_per_shard, n))  # a folder or an s3:// URI
    return _shards(out)


def generate_local(kind: str, n: int, out: str, *, seed: int = 0, start: int = 0, rows_per_shard: int = 1000,
                   **options) -> list[str]:
    """The same rows as `generate_with_ray`, in this process, with a progress bar."""
    _clear_shards(out)
    step = min(rows_per_shard, 100)

    def tables():
        with tqdm(total=n, desc=f"synth {kind}", unit="row") as bar:
            for lo in range(start, start + n, step):
                hi = min(lo + step, start + n)
                yield synth.generate(kind, lo, hi, seed=seed, **options)
                bar.update(hi - lo)

    return write_shards(tables(), out, rows_per_shard=rows_per_shard)


def save_contact_sheet(kind: str, out: str, *, seed: int = 0, start: int = 0, n: int = 24, **options) -> str:
    """Draw the first `n` rows of the folder `out` (as written) with their labels; returns the PNG path."""
    files = _shards(out)
    table = read_table(out) if files else synth.generate(kind, start, start + n, seed=seed, **options)
    if "id" in table.column_names and table.num_rows > n:  # Ray may write rows in any order
        table = table.take(np.argsort(np.array(table.column("id").to_pylist(), dtype=object))[:n])
    png = io.BytesIO()
    synth.contact_sheet(table.slice(0, n), kind, n=n).save(png, format="PNG")
    return write_file(paths.join(out, "contact_sheet.png"), png.getvalue())


def run(cfg: SynthCorpusConfig) -> list[dict]:
    """Generate every kind with a non-zero count; returns one summary row per kind."""
    summary = []
    save_config(cfg, cfg.out, "synth_corpus.yaml")
    for kind in synth.KINDS:
        n = getattr(cfg.n, kind)
        if n == 0:
            continue
        out, options, t0 = paths.join(cfg.out, kind), cfg.options.get(kind, {}), time.perf_counter()
        files = generate_with_ray(kind, n, out, seed=cfg.seed, rows_per_block=cfg.rows_per_block,
                                  rows_per_shard=cfg.rows_per_shard, **options)
        sheet = save_contact_sheet(kind, out, seed=cfg.seed, **options)
        summary.append({"kind": kind, "rows": n, "shards": len(files), "seconds": time.perf_counter() - t0,
                        "folder": out, "contact_sheet": sheet})
    return summary


def main(argv=None) -> list[dict]:
    cfg = parse_args(SynthCorpusConfig, argv, description=__doc__.split("\n\n")[0])
    from cluster.local import init_ray

    init_ray()
    summary = run(cfg)
    for row in summary:
        print(f"{row['kind']:10s} {row['rows']:7d} rows {row['shards']:3d} shards {row['seconds']:6.1f} s  {row['contact_sheet']}")
    return summary


if __name__ == "__main__":
    main()
