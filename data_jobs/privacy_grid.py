"""The mask x image grid on Ray Data, then the selection funnel: Table 1, Table 2, target masks.

    python -m data_jobs.privacy_grid                        # models from the registry (train_privacy)
    python -m data_jobs.privacy_grid --set n_masks=600 runs=5 concurrency=2
    python -m data_jobs.privacy_grid --set masks=/data/nvidia_masks invert_masks=true
    ray job submit --working-dir . -- python -m data_jobs.privacy_grid --set concurrency=8

The masks are the dataset (streamed in batches); the test images are put once in the object store
and held by each actor with both recognisers (`docray.privacy.grid.GridPredictor`), which overlays
every mask on every image inside the actor: the m x n grid is never materialised. Each of the
`runs` repeats places the mask differently (run 0 as drawn, then random flips and cyclic shifts;
see docray.privacy.masks). The funnel's inpainting attack runs the same actor with the inpainter.

Outputs in `out` (default DOCRAY_HOME/reports/privacy/grid): per_mask.parquet (one row per mask:
both accuracies, per-run counts, bin), bins.csv (Table 1, the no-mask row first), candidates.parquet and targets.parquet
(Table 2; targets carry the mask PNG, read by serve_apps.privacy), funnel.json,
sample_face.png, config.yaml. `docray privacy report` turns them into Markdown with plots.
"""
from __future__ import annotations

import json
import os
import time

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import Field

from docray.config import Config, parse_args, save_config
from docray.privacy.funnel import FunnelConfig
from docray.privacy.masks import BIN_EDGES


class GridEvalConfig(Config):
    data: str = Field("synth", description="identities: 'synth' or the folder/Parquet the models were trained on")
    n_identities: int = Field(64, description="synth: as in train_privacy")
    samples: int = Field(40, description="synth: as in train_privacy")
    seed: int = 0
    image_size: int = 64
    n_test: int | None = Field(None, description="use only the first n test images (None: all)")
    masks: str = Field("synth", description="'synth' or a folder of mask PNGs (NVIDIA's irregular masks)")
    n_masks: int = Field(120, ge=1, description="synth: masks in the grid (row i aims at bin i % 6)")
    mask_seed: int = Field(7, description="synth: grid masks seed (training used another)")
    invert_masks: bool = Field(False, description="PNG folder stores holes as white (NVIDIA's set)")
    bin_edges: list[float] = Field(list(BIN_EDGES), description="area-bin edges: bins (e[i], e[i+1]]")
    runs: int = Field(5, ge=1, description="repeated runs averaged (mask placement varies)")
    max_shift: float = Field(0.125, description="runs > 0 roll the mask up to this fraction of its side")
    original: str = "registry:mask_recognizer_original"
    masked: str = "registry:mask_recognizer_masked"
    inpainter: str = "registry:mask_inpainter"
    funnel: FunnelConfig = FunnelConfig()
    concurrency: int = Field(2, ge=1, description="grid actors")
    batch_size: int = Field(4, ge=1, description="masks per actor batch")
    chunk: int = Field(256, ge=1, description="test images per model call")
    use_gpu: bool | None = Field(None, description="None: GPU actors when the cluster has GPUs")
    out: str = Field("", description="output folder ('' -> DOCRAY_HOME/reports/privacy/grid)")


def test_set(cfg: GridEvalConfig):
    from docray.privacy.data import load_identities

    test = load_identities(cfg.data, n_identities=cfg.n_identities, samples=cfg.samples, seed=cfg.seed,
                           size=cfg.image_size)["test"].take(cfg.n_test)
    if len(test) == 0:
        raise ValueError(f"no test images in {cfg.data!r}")
    return test


def mask_set(cfg: GridEvalConfig) -> pa.Table:
    from docray.privacy.masks import load_mask_folder, synthetic_masks

    edges = tuple(cfg.bin_edges)
    if cfg.masks == "synth":
        return synthetic_masks(cfg.n_masks, seed=cfg.mask_seed, size=cfg.image_size, edges=edges)
    return load_mask_folder(cfg.masks, size=cfg.image_size, invert=cfg.invert_masks, edges=edges)


class GridActor:
    """The Ray side of GridPredictor: test images come from the object store (one copy per node)."""

    def __init__(self, data: list, models: dict, inpainter: str | None, num_threads: int, **kw):
        import ray

        from docray.privacy.grid import GridPredictor

        images, labels = ray.get(data[0])  # a list, so Ray hands us the ref rather than resolving it
        self.pred = GridPredictor(images, labels, models, inpainter=inpainter, num_threads=num_threads, **kw)

    def __call__(self, batch: dict) -> dict:
        return self.pred(batch)


def ray_grid(masks: pa.Table, data_ref, models: dict, cfg: GridEvalConfig, inpainter: str | None = None,
             concurrency: int | None = None) -> pd.DataFrame:
    """Stream `masks` through `concurrency` GridActors; one row per mask, in mask_no order."""
    import ray

    from cluster.local import actor_resources
    from docray.privacy.grid import to_frame

    k = concurrency or cfg.concurrency
    res = actor_resources(k, use_gpu=cfg.use_gpu)
    threads = max(1, int(res["num_cpus"] + 0.5))
    side = masks.select(["mask_no", "mask_id", "mask", "bin", "hole_ratio"])
    blocks = [side.slice(i, cfg.batch_size) for i in range(0, side.num_rows, cfg.batch_size)]  # one batch per block:
    ds = ray.data.from_arrow(blocks)  # every actor gets work, and masks stream through in order
    ds = ds.map_batches(GridActor, batch_size=cfg.batch_size, concurrency=k, batch_format="numpy",
                        fn_constructor_kwargs=dict(data=[data_ref], models=models, inpainter=inpainter,
                                                   num_threads=threads, runs=cfg.runs, seed=cfg.seed,
                                                   max_shift=cfg.max_shift, chunk=cfg.chunk), **res)
    rows = [to_frame(b) for b in ds.iter_batches(batch_size=None, batch_format="numpy")]
    return pd.concat(rows, ignore_index=True).sort_values("mask_no").reset_index(drop=True)


def _parquet(df: pd.DataFrame, path: str) -> None:
    pq.write_table(pa.Table.from_pandas(df, preserve_index=False), path)


def run(cfg: GridEvalConfig) -> dict:
    """Grid + funnel on Ray (already initialised); writes the outputs and returns a summary."""
    import ray

    from docray import paths
    from docray.imageio import encode_png
    from docray.privacy.funnel import run_funnel
    from docray.privacy.grid import with_no_mask
    from docray.privacy.masks import masks_table

    out = cfg.out or paths.sub("reports", "privacy", "grid")
    os.makedirs(out, exist_ok=True)
    save_config(cfg, out)
    test, masks = test_set(cfg), mask_set(cfg)
    data_ref = ray.put((test.images, test.labels))
    models = {"original": cfg.original, "masked": cfg.masked}
    t0 = time.perf_counter()
    per_mask = ray_grid(masks, data_ref, models, cfg)
    grid_s = time.perf_counter() - t0
    whole = ray_grid(masks_table([np.ones((cfg.image_size,) * 2, np.float32)], ["no-mask"]), data_ref, models, cfg,
                     concurrency=1)  # Table 1's no-mask row: a mask that hides nothing
    no_mask = {m: float(whole[f"acc_{m}"].iloc[0]) for m in models}
    _parquet(per_mask, os.path.join(out, "per_mask.parquet"))
    by_no = masks.to_pandas().set_index("mask_no")

    def attack(cands: pd.DataFrame) -> pd.DataFrame:
        sub = masks.take(pa.array(cands["mask_no"].to_numpy()))
        res = ray_grid(sub, data_ref, {"masked": cfg.masked, "original": cfg.original}, cfg, inpainter=cfg.inpainter,
                       concurrency=min(cfg.concurrency, len(cands)))
        return res.rename(columns={"acc_masked": "acc_before", "acc_masked_inpainted": "acc_after"})[
            ["mask_no", "acc_before", "acc_after", "acc_original_inpainted"]]

    edges = tuple(cfg.bin_edges)
    result = run_funnel(per_mask, attack, cfg.funnel, edges)
    result.bins = with_no_mask(result.bins, no_mask)
    result.bins.to_csv(os.path.join(out, "bins.csv"), index=False)
    cands = result.candidates.drop(columns=[c for c in result.candidates.columns if c.startswith("correct_")])
    _parquet(cands, os.path.join(out, "candidates.parquet"))
    targets = result.targets.drop(columns=[c for c in result.targets.columns if c.startswith("correct_")])
    targets = targets.assign(mask=[by_no.loc[n, "mask"] for n in targets["mask_no"]])
    _parquet(targets, os.path.join(out, "targets.parquet"))
    with open(os.path.join(out, "sample_face.png"), "wb") as f:
        f.write(encode_png(test.images[0]))
    summary = {"n_masks": masks.num_rows, "n_test_images": len(test), "runs": cfg.runs,
               "pairs": masks.num_rows * len(test) * cfg.runs, "grid_s": grid_s,
               "pairs_per_s": masks.num_rows * len(test) * cfg.runs / grid_s, "no_mask": no_mask, **result.summary()}
    with open(os.path.join(out, "funnel.json"), "w") as f:
        json.dump(summary, f, indent=2, default=str)
    return {"out": out, "summary": summary, "bins": result.bins, "targets": targets}


def main(argv=None) -> None:
    cfg = parse_args(GridEvalConfig, argv, description=__doc__.split("\n\n")[0])
    from cluster.local import init_ray

    init_ray()
    res = run(cfg)
    pd.set_option("display.width", 160)
    print(res["bins"].to_string(index=False))
    print(json.dumps({k: v for k, v in res["summary"].items() if k != "stages"}, default=str))
    print(f"outputs: {res['out']}  (docray privacy report --run {res['out']})")


if __name__ == "__main__":
    main()
