"""Bulk recognition of an archive with Ray Data: read -> RecognitionPredictor -> Parquet.

The archive is Parquet with an `image` column of image bytes (optional `flash` bytes and
`angles` list<bytes> columns feed multi-frame tasks; other columns pass through, e.g. `id`), or an
ImageFolder (`root/<label>/<file>`; images only). Results: `results` (JSON per row) and flat
columns per task (`<task>_label`, `<task>_score`, `<task>_value`, `<task>_mask_png`, `<task>_boxes`).

    python -m data_jobs.recognition_archive --set input=~/.docray/datasets/documents tasks='[doc_type, capture_quality]'
    ray job submit --working-dir . -- python -m data_jobs.recognition_archive --set input=s3://bucket/archive concurrency=4
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from pydantic import Field

from docray import paths
from docray.config import Config, parse_args, save_config
from docray.storage.blobs import filesystem


class RecognizeArchiveConfig(Config):
    input: str = Field(..., description="Parquet file/folder (column `image`) or an ImageFolder root")
    format: str = Field("auto", description="parquet | imagefolder | auto (parquet when .parquet files are there)")
    out: str = Field(default_factory=lambda: paths.sub("reports", "recognition_archive"), description="output folder")
    model: str = Field("recognition-unified", description="model registry name")
    version: str = "latest"
    folder: str | None = Field(None, description="a save_pretrained folder instead of the registry")
    tasks: list[str] | None = Field(None, description="tasks to answer (None: chosen per image, see select)")
    select: str = Field("doc_type", description="doc_type | classifier | all (when tasks is None)")
    columns: list[str] = Field(["id", "image", "flash", "angles"], description="Parquet columns read (missing ones skipped)")
    batch_size: int = Field(16, ge=1)
    concurrency: int = Field(1, ge=1, description="predictor actors")
    limit: int | None = Field(None, ge=1, description="only the first N rows (a quick look)")


def _format(cfg: RecognizeArchiveConfig) -> str:
    if cfg.format != "auto":
        return cfg.format
    p = Path(os.path.expanduser(cfg.input))
    return "parquet" if "://" in cfg.input or p.suffix == ".parquet" or any(p.rglob("*.parquet")) else "imagefolder"


def _parquet_files(url: str) -> tuple[object, list[str]]:
    """(fsspec filesystem, its paths of the Parquet files at `url`: the file itself or every one below
    the folder), a local path or a URI alike."""
    fs, path = filesystem(url)
    if path.endswith(".parquet"):
        return fs, [path]
    return fs, sorted(fs.glob(f"{path.rstrip('/')}/**/*.parquet"))


def read_archive(cfg: RecognizeArchiveConfig):
    import pyarrow.parquet as pq
    import ray

    src = os.path.expanduser(cfg.input)
    if _format(cfg) == "imagefolder":
        from docray.storage.datasets import read_image_folder

        folder = read_image_folder(src)  # decodes every file once; bad ones are listed, not fatal
        if folder.skipped:
            print(f"skipped {len(folder.skipped)} unreadable file(s), e.g. {folder.skipped[0]}")
        ds = ray.data.from_arrow(folder.table.rename_columns(
            ["id" if c == "path" else c for c in folder.table.column_names]))
    else:
        fs, files = _parquet_files(src)
        if not files:
            raise FileNotFoundError(f"{cfg.input}: no Parquet files")
        with fs.open(files[0], "rb") as f:
            have = set(pq.read_schema(f).names)
        if "image" not in have:
            raise ValueError(f"{cfg.input}: no `image` column (columns: {sorted(have)})")
        ds = ray.data.read_parquet(src, columns=[c for c in cfg.columns if c in have])
    return ds.limit(cfg.limit) if cfg.limit else ds


def run(cfg: RecognizeArchiveConfig) -> dict:
    from cluster.local import actor_resources
    from docray.recognition.predictor import RecognitionPredictor

    ds = read_archive(cfg)
    kwargs = dict(model=cfg.model, version=cfg.version, folder=cfg.folder, tasks=cfg.tasks, select=cfg.select)
    out = ds.map_batches(RecognitionPredictor, fn_constructor_kwargs=kwargs, batch_size=cfg.batch_size,
                         batch_format="numpy", concurrency=cfg.concurrency, **actor_resources(cfg.concurrency))
    fs, folder = filesystem(cfg.out)  # a local folder or object storage (an s3:// DOCRAY_HOME's reports)
    fs.makedirs(folder, exist_ok=True)
    for old in fs.glob(f"{folder.rstrip('/')}/*.parquet"):
        fs.rm_file(old)
    out.write_parquet(cfg.out)
    fs.invalidate_cache(folder)  # written by Ray Data's tasks, not through this (caching) filesystem object
    return {"out": cfg.out, "files": len(fs.glob(f"{folder.rstrip('/')}/*.parquet"))}


def main(argv=None) -> dict:
    from cluster.local import init_ray

    cfg = parse_args(RecognizeArchiveConfig, argv, description=__doc__.split("\n")[0])
    init_ray()
    save_config(cfg, cfg.out, "config.yaml")
    summary = run(cfg)
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
