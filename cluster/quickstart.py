"""The main job, on embedded local Ray (`make quickstart`), or on a cluster with RAY_ADDRESS set.

    python -m cluster.quickstart                       # defaults: a small corpus of every kind
    python -m cluster.quickstart --set n.documents=2000 --help

Steps: start (or join) Ray -> generate a synthetic corpus of every kind through Ray Data ->
store it (Parquet under DOCRAY_HOME/datasets, a sample of documents in the image repository with
their clean renders as processed images) -> print a summary naming the contact sheets to look at.
"""
from __future__ import annotations

import time
from pathlib import Path

from pydantic import Field

from docray import paths
from docray.config import Config, parse_args, save_config
from docray.storage.datasets import read_table
from docray.storage.repository import ImageRepository
from data_jobs.synth_corpus import Counts, SynthCorpusConfig, run as synth_run


class QuickstartConfig(Config):
    seed: int = Field(0, description="seed of the synthetic world")
    n: Counts = Counts(documents=300, faces=512, targets=120, masks=120)
    store_documents: int = Field(20, ge=0, description="documents put into the image repository")


def store_sample(documents_dir: str, k: int) -> tuple[int, str]:
    """Put the first k documents (capture as original, clean render as processed) in the repository."""
    repo = ImageRepository()
    if k == 0:
        return repo.count(), paths.sub("repository")
    table = read_table(documents_dir, columns=["id", "image", "clean", "doc_type_name"]).slice(0, k)
    for row in table.to_pylist():
        repo.add(original=row["image"], processed=row["clean"], doc_type=row["doc_type_name"],
                 meta={"synth_id": row["id"]})
    return repo.count(), paths.sub("repository")


def main(argv=None) -> None:
    cfg = parse_args(QuickstartConfig, argv, description=__doc__.split("\n\n")[0])
    from cluster.local import init_ray

    t0 = time.perf_counter()
    resources = init_ray()
    print(f"Ray up: {resources.get('CPU', 0):g} CPUs, {resources.get('GPU', 0):g} GPUs; DOCRAY_HOME={paths.home()}")
    out = paths.sub("datasets", "quickstart")
    save_config(cfg, out, "quickstart.yaml")
    summary = synth_run(SynthCorpusConfig(out=out, seed=cfg.seed, n=cfg.n))
    n_records, repo_dir = store_sample(str(Path(out, "documents")), cfg.store_documents)

    print("\n== docray quickstart summary ==")
    print(f"{'kind':10s} {'rows':>7s} {'shards':>6s} {'seconds':>8s}  contact sheet")
    for row in summary:
        print(f"{row['kind']:10s} {row['rows']:7d} {row['shards']:6d} {row['seconds']:8.1f}  {row['contact_sheet']}")
    print(f"datasets:   {out}/<kind>/*.parquet  (ray.data.read_parquet)")
    print(f"repository: {repo_dir}  ({n_records} records; originals readable by the admin role only)")
    print(f"config:     {out}/quickstart.yaml")
    print(f"total:      {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
