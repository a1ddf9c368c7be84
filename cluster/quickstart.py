"""The main job, on embedded local Ray (`make quickstart`), or on a cluster with RAY_ADDRESS set.

    python -m cluster.quickstart                       # defaults: a small corpus of every kind
    python -m cluster.quickstart --set n.documents=2000 --help

Steps: start (or join) Ray -> generate a synthetic corpus of every kind through Ray Data ->
store it (Parquet under DOCRAY_HOME/datasets, a sample of documents in the image repository with
their clean renders as processed images) -> unified recognition: a short MAE pre-training, a short
multi-task training, one POST /v1/recognize through Serve -> regen compression of a few captures,
stored one-to-one with their attachments -> a summary naming the contact sheets to look at.
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
    recognition_docs: int = Field(200, ge=0, description="documents for the short recognition training (0: skip)")
    recognition_epochs: int = Field(2, ge=1, description="epochs of MAE pre-training and of multi-task training")
    compress_documents: int = Field(5, ge=0, description="captures regen-compressed and stored (0: skip)")


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


def recognition_step(docs: int, epochs: int) -> dict:
    """A short MAE pre-training, a short multi-task training, then one POST /v1/recognize through Serve."""
    import httpx
    from ray import serve

    from docray.recognition.data import documents_table
    from serve_apps.recognition import build_app
    from train_jobs import mae_pretrain, unified_train

    mae = mae_pretrain.main(["--set", f"n_docs={docs}", f"epochs={epochs}"])
    uni = unified_train.main(["--set", f"n_docs={docs}", f"epochs={epochs}"])
    serve.run(build_app({}), name="recognition", route_prefix="/recognition")
    try:
        row = documents_table(docs).slice(0, 1).to_pylist()[0]
        r = httpx.post("http://127.0.0.1:8000/recognition/v1/recognize", timeout=120,
                       files=[("image", ("doc.png", row["image"], "image/png")),
                              ("frames[]", ("flash.png", row["flash"], "image/png"))])
    finally:
        serve.delete("recognition")
    body = r.json()
    for res in body.get("results", {}).values():
        if "mask_png" in res:
            res["mask_png"] = res["mask_png"][:24] + "..."
    return {"pretrain": mae, "train": uni, "recognize_status": r.status_code, "response": body,
            "truth": {"doc_type": row["doc_type_name"], "recapture": row["recapture"], "quality": round(row["quality"], 3)}}


def compress_step(documents_dir: str, k: int) -> tuple[int, str]:
    """Regen-compress k captures end to end and store them (the trained 'regen' model if registered)."""
    from docray.compression.pipeline import RegenCompressor
    from docray.storage.blobs import NotFound

    try:
        rc, which = RegenCompressor.from_source(), "registry 'regen'"
    except NotFound:  # not trained yet: the flow runs, the recognised content is noise
        rc, which = RegenCompressor.from_source(untrained="regen_small"), "untrained regen_small (train_jobs.train_regen trains it)"
    repo = ImageRepository()
    for row in read_table(documents_dir, columns=["image"]).slice(0, k).to_pylist():
        rc.run(row["image"], mode="server", repo=repo)
    return k, which


def main(argv=None) -> None:
    cfg = parse_args(QuickstartConfig, argv, description=__doc__.split("\n\n")[0])
    from cluster.local import init_ray

    t0 = time.perf_counter()
    resources = init_ray()
    print(f"Ray up: {resources.get('CPU', 0):g} CPUs, {resources.get('GPU', 0):g} GPUs; DOCRAY_HOME={paths.home()}")
    out = paths.sub("datasets", "quickstart")
    save_config(cfg, out, "quickstart.yaml")
    summary = synth_run(SynthCorpusConfig(out=out, seed=cfg.seed, n=cfg.n))
    _, repo_dir = store_sample(str(Path(out, "documents")), cfg.store_documents)
    recog = recognition_step(cfg.recognition_docs, cfg.recognition_epochs) if cfg.recognition_docs else None
    regen = compress_step(str(Path(out, "documents")), cfg.compress_documents) if cfg.compress_documents else None

    print("\n== docray quickstart summary ==")
    print(f"{'kind':10s} {'rows':>7s} {'shards':>6s} {'seconds':>8s}  contact sheet")
    for row in summary:
        print(f"{row['kind']:10s} {row['rows']:7d} {row['shards']:6d} {row['seconds']:8.1f}  {row['contact_sheet']}")
    print(f"datasets:   {out}/<kind>/*.parquet  (ray.data.read_parquet)")
    if recog:
        answers = {t: r.get("label", r.get("value", r.get("type"))) for t, r in recog["response"].get("results", {}).items()}
        print(f"recognition: encoder {recog['pretrain']['registered']}, model {recog['train']['registered']}; "
              f"/v1/recognize -> HTTP {recog['recognize_status']}")
        print(f"            answers {answers}\n            truth   {recog['truth']}")
    if regen:
        print(f"regen:      {regen[0]} captures compressed and stored with {regen[1]}")
    repo_count = ImageRepository().count()
    print(f"repository: {repo_dir}  ({repo_count} records; originals readable by the admin role only)")
    print(f"config:     {out}/quickstart.yaml")
    print(f"total:      {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
