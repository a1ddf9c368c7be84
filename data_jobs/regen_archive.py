"""Bulk re-compression of an archive of document photos with regen compression, on Ray Data.

    python -m data_jobs.regen_archive --set input=ARCHIVE out=OUT_DIR
    python -m data_jobs.regen_archive --set input=FOLDER store=true     # an ImageFolder of photos
    ray job submit --working-dir . -- python -m data_jobs.regen_archive --set input=s3://.../archive concurrency=4

Input: Parquet shards with an `image` column (PNG/JPEG bytes; other columns such as `id` are kept),
e.g. `docray synth documents`; or a folder of images (`docray.storage.datasets.read_image_folder`).
read -> map_batches(ArchivePredictor: recognise, generate, compress per type; actors with a fraction
of a CPU, a GPU share when present) -> write Parquet: the input's other columns plus `type`,
`content`, `compressed` (bytes), `quality`, `bytes_in`, `bytes_out`, `record_id` (with store=true,
each document also becomes an image-repository record) and `error` (rows that could not be
compressed say why; the job does not stop). A summary (documents, errors, bytes in/out, ratio)
is printed and written to `<out>/summary.json`. `input` (Parquet) and `out` may be URIs (`s3://...`; the
default `out` is under DOCRAY_HOME, which may be one): Ray Data reads and writes them, the summary and
config go through `docray.storage.blobs`.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from pydantic import Field

from docray import paths
from docray.config import Config, parse_args, save_config
from docray.storage import blobs


class RecompressConfig(Config):
    input: str = Field(..., description="archive: Parquet file/folder with an 'image' column, or a folder of images")
    out: str = Field("", description="output folder ('' -> DOCRAY_HOME/datasets/recompressed-<input name>)")
    model_dir: str = Field("", description="regen model folder ('' -> the registry's latest 'regen')")
    untrained: str = Field("", description="a factory with random weights instead (smoke tests)")
    file_types: str = Field("", description="file-type library YAML ('' -> packaged)")
    fill: str = Field("background", description="portrait hole fill: background | blank")
    store: bool = Field(False, description="also store every document in the image repository")
    repository_url: str = ""
    blob_root: str = ""
    batch_size: int = Field(8, ge=1, description="documents per predictor call")
    concurrency: int = Field(1, ge=1, description="predictor actors")
    limit: int = Field(0, ge=0, description="only the first N documents (0: all)")


def read_archive(cfg: RecompressConfig):
    import ray

    p = Path(cfg.input)
    if not paths.is_uri(cfg.input) and p.is_dir() and not any(p.glob("*.parquet")):
        from docray.storage.datasets import read_image_folder

        ds = ray.data.from_arrow(read_image_folder(str(p)).table)
    else:
        ds = ray.data.read_parquet(cfg.input)
    if "image" not in ds.columns():
        raise ValueError(f"{cfg.input}: needs an 'image' column, has {ds.columns()}")
    keep = [c for c in ds.columns() if c in ("id", "image", "path", "doc_type_name", "split")]
    ds = ds.select_columns(keep)
    return ds.limit(cfg.limit) if cfg.limit else ds


def run(cfg: RecompressConfig) -> dict:
    import pyarrow.parquet as pq

    from cluster.local import actor_resources
    from docray.regen.pipeline import ArchivePredictor

    t0 = time.perf_counter()
    name = Path(cfg.input.rstrip("/").rsplit("/", 1)[-1]).stem
    out = paths.absolute(cfg.out or paths.sub("datasets", f"recompressed-{name}"))  # a local folder or URI
    save_config(cfg, out, "recompress_config.yaml")
    ds = read_archive(cfg).map_batches(
        ArchivePredictor, batch_size=cfg.batch_size, concurrency=cfg.concurrency, batch_format="numpy",
        fn_constructor_kwargs=dict(model_dir=cfg.model_dir, untrained=cfg.untrained, file_types=cfg.file_types,
                                   store=cfg.store, repository_url=cfg.repository_url, blob_root=cfg.blob_root,
                                   fill=cfg.fill),
        **actor_resources(cfg.concurrency))
    parts = paths.join(out, "parts")
    ds.write_parquet(parts)
    fs, folder = blobs.filesystem(parts)
    fs.invalidate_cache()  # written by Ray Data's tasks, not through this (caching) filesystem object
    t = pq.read_table(folder, columns=["bytes_in", "bytes_out", "error"],
                      filesystem=None if blobs.is_local(fs) else fs).to_pydict()
    ok = [i for i, e in enumerate(t["error"]) if e is None]
    b_in, b_out = sum(t["bytes_in"][i] for i in ok), sum(t["bytes_out"][i] for i in ok)
    summary = {"documents": len(t["error"]), "errors": len(t["error"]) - len(ok), "bytes_in": b_in, "bytes_out": b_out,
               "ratio": round(b_in / b_out, 2) if b_out else None, "seconds": round(time.perf_counter() - t0, 1),
               "out": parts}
    blobs.write_file(paths.join(out, "summary.json"), json.dumps(summary, indent=2).encode())
    return summary


def main(argv=None) -> None:
    cfg = parse_args(RecompressConfig, argv, description=__doc__.split("\n\n")[0])
    from cluster.local import init_ray

    init_ray()
    print(json.dumps(run(cfg)))


if __name__ == "__main__":
    main()
