"""Build or extend the cut-out library with Ray Data: targets -> tiles -> dedup -> features -> Parquet + index.

    python -m data_jobs.screening_library --set input=DIR_OR_PARQUET         # targets as Parquet
    python -m data_jobs.screening_library --set input=FOLDER                 # pictures + metadata.csv
    python -m data_jobs.screening_library --set synth_n=400                  # synthetic targets (default)
    ray job submit --working-dir . -- python -m data_jobs.screening_library --set input=s3://bucket/targets

Input: Parquet with `image` (bytes), `id`, `source_id`, `release_time` (timestamp, date, ISO string
or day number), optional `is_target` (only True rows are used); or an image folder whose sidecar
`metadata.csv`/`metadata.jsonl` gives `file`, `release_time`, `source_id`. Pipeline: read -> cut by
every template and scale (Ray tasks) -> descriptor (actors, GPU when present) -> the driver
de-duplicates and appends one versioned shard + index (`docray.screening.library`). Targets already
in the library (by id) are skipped, so a rerun or a grown input only adds what is new.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
from pydantic import Field
from tqdm import tqdm

from docray.config import Config, parse_args, save_config
from docray.imageio import decode_image
from docray.screening.library import Library, TileBatch
from docray.screening.templates import DEFAULT_TEMPLATES
from docray.screening.verify import FeatureSpec


class BuildConfig(Config):
    input: str = Field("", description="Parquet file/folder of targets, or an image folder with metadata; '' -> synthetic")
    synth_n: int = Field(400, ge=0, description="synthetic pictures to draw when input is '' (targets among them are used)")
    seed: int = 0
    root: str = Field("", description="library folder or s3:// URI ('' -> DOCRAY_HOME/indexes/screening); its versions "
                      "are ordered by DOCRAY_DB_URL (required for a URI), else <root>/versions.db")
    descriptor: str = Field("registry:descriptor", description="folder, registry:NAME[@VERSION], or build:<factory>")
    templates: list[str] = Field(list(DEFAULT_TEMPLATES), description="cut templates RxC")
    tile_size: int = Field(64, description="tiles are stored at tile_size x tile_size")
    min_detail: float = Field(12.0, description="tiles whose grey std is lower are flat and dropped")
    dedup_similarity: float = Field(0.95, description="near-duplicate cosine (same attributes)")
    ann_threshold: int = Field(20_000, description="the index turns from exact to IVF at this many tiles")
    nprobe: int = Field(16, description="IVF lists searched")
    batch_size: int = Field(64, description="pictures per cut task; tiles per descriptor batch is 4x")
    concurrency: int = Field(1, ge=1, description="descriptor actors")
    local_features: Literal["sift", "orb", "none"] = Field("sift", description="local features of each whole target "
                                                          "stored with a NEW library, for verification ('none': no "
                                                          "verification); an existing library keeps what it was built with")
    fresh: bool = Field(False, description="start a new library at root; an existing one (files and database rows) "
                        "is moved aside to <root>.replaced-<UTC time> (nothing is deleted)")


def pinned(descriptor: str) -> str:
    """`registry:NAME` -> `registry:NAME@vNNNN` (its latest version now): a library's vectors must all
    come from one model, so its manifest names the version, not 'whatever is latest'."""
    from docray.storage.registry import ModelRegistry, parse_ref, ref

    found = parse_ref(descriptor)
    if found is None or found[1] != "latest":
        return descriptor
    return ref(found[0], ModelRegistry().latest(found[0]))


def read_targets(cfg: BuildConfig):
    import ray.data

    if not cfg.input:
        from docray.synth import generate

        t = generate("targets", 0, cfg.synth_n, seed=cfg.seed)
        return ray.data.from_arrow(t.filter(t.column("is_target")))
    p = Path(cfg.input)
    if p.is_dir() and not any(p.glob("*.parquet")):
        from docray.storage.datasets import read_image_folder

        folder = read_image_folder(str(p))
        t = folder.table
        missing = {"release_time", "source_id"} - set(t.column_names)
        if missing:
            raise ValueError(f"{p}: metadata.csv/jsonl must give {sorted(missing)} for every picture")
        if "id" not in t.column_names:
            t = t.append_column("id", t.column("path"))
        return ray.data.from_arrow(t)
    ds = ray.data.read_parquet(cfg.input, file_extensions=["parquet"])
    if "is_target" in ds.schema().names:
        from ray.data.expressions import col

        ds = ds.filter(expr=col("is_target") == True)  # noqa: E712 (an expression, not a comparison)
    return ds


def run(cfg: BuildConfig) -> dict:
    """Build/extend the library (Ray already initialised). Returns counts, version and timing."""
    from cluster.local import actor_resources
    from docray.screening.embed import load_descriptor
    from docray.screening.predictors import TileEmbedder, cut_targets

    t0 = time.perf_counter()
    root = cfg.root or Library.default_root()  # a local folder or an s3:// URI
    descriptor = pinned(cfg.descriptor)
    if cfg.fresh and (aside := Library.set_aside(root)):
        print(f"fresh=true: the library that was at {root} is now {aside}")
    if Library.exists(root):
        lib = Library.open(root)
        if lib.manifest["descriptor"] not in (cfg.descriptor, descriptor):
            raise ValueError(f"{root} was built with descriptor {lib.manifest['descriptor']!r}, not {descriptor!r}: "
                             "its vectors would not compare; build a new library (fresh=true, or another root)")
    else:
        model = load_descriptor(descriptor, device="cpu")
        lib = Library.create(root, dim=model.cfg.dim, tile_size=cfg.tile_size, descriptor=descriptor,
                             index_opts={"ann_threshold": cfg.ann_threshold, "nprobe": cfg.nprobe}, templates=cfg.templates,
                             features=None if cfg.local_features == "none" else FeatureSpec(kind=cfg.local_features))
    save_config(cfg, root, "build_config.yaml")
    known = set(lib.meta.column("target_id").to_pylist())
    ds = read_targets(cfg)
    tiles = ds.map_batches(cut_targets, fn_kwargs=dict(tile_size=lib.manifest["tile_size"], templates=cfg.templates,
                                                       min_detail=cfg.min_detail, skip_ids=frozenset(known),
                                                       features=None if lib.feature_spec is None else lib.feature_spec.model_dump()),
                           batch_size=cfg.batch_size, num_cpus=0.5)  # tasks; targets already in the library skipped
    feats = tiles.map_batches(TileEmbedder, fn_constructor_args=(lib.manifest["descriptor"],), batch_size=4 * cfg.batch_size,
                              concurrency=cfg.concurrency, **actor_resources(cfg.concurrency))
    batch, vectors, n_targets = TileBatch(), [], set()
    for b in tqdm(feats.iter_batches(batch_size=1024, batch_format="numpy"), desc="tiles", unit="batch"):
        for k in range(len(b["tile"])):
            batch.tiles.append(decode_image(bytes(b["tile"][k])))
            batch.rows.append({c: (b[c][k].item() if hasattr(b[c][k], "item") else b[c][k])
                               for c in ("target_id", "source_id", "cut_type", "cut_code", "position", "release_day")})
            n_targets.add(str(b["target_id"][k]))
            if len(b["features"][k]):
                batch.features[str(b["target_id"][k])] = bytes(b["features"][k])
        vectors.append(b["vector"])
    if not batch.rows:
        return {"targets": 0, "tiles": 0, "added": 0, "skipped": 0, "version": lib.version, "n_tiles": len(lib),
                "root": str(root), "seconds": time.perf_counter() - t0}
    for r in batch.rows:
        r["origin"] = "template"
    res = lib.append(batch, np.concatenate(vectors), min_similarity=cfg.dedup_similarity)
    return {"targets": len(n_targets), "tiles": len(batch.rows), **res, "root": str(root), "seconds": time.perf_counter() - t0}


def main(argv=None) -> None:
    cfg = parse_args(BuildConfig, argv, description=__doc__.split("\n\n")[0])
    from cluster.local import init_ray

    init_ray()
    res = run(cfg)
    print(f"library {res['root']}: version {res['version']}, {res['n_tiles']} tiles "
          f"(+{res['added']} from {res['targets']} targets, {res['skipped']} duplicates skipped) in {res['seconds']:.1f}s")


if __name__ == "__main__":
    main()
