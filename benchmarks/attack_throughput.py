"""Masks/s of the privacy grid's attack check (funnel stage 5): Ray Data actors against a plain loop.

    python -m benchmarks.attack_throughput                     # 12 masks, 16 eval identities, 1 and 2 actors
    python -m benchmarks.attack_throughput --set n_masks=24 actors=[1,2,4]

Stage 5 runs every finalist mask through the attack suite (the attacker's inpainter, Telea,
Navier-Stokes, biharmonic; blur and mosaic; each read by the attacker's recogniser, plus the
defender's recognisers): `data_jobs.privacy_grid.Stage5` streams the masks through `AttackActor`s
on Ray Data. This benchmark runs that same code and, as its baseline, the same evaluator
(`docray.privacy.suite.AttackEvaluator.mask_rows`) in a plain loop in a process of its own, on the
same masks and images: models with random weights (speed does not depend on them; the attacker is
not trained). The plain loop runs once per torch thread count in `plain_threads`; the fastest is
the baseline. Peak memory: the largest actor RSS, measured again with `memory_scale` x the masks
(it must not grow with the masks: they stream through, the eval images sit once in each actor).
Both engines must give the same table. Last line: one JSON object.
"""
from __future__ import annotations

import json
import multiprocessing as mp
import os
import resource
import tempfile
import time

import numpy as np
from pydantic import Field

from docray.config import Config, parse_args


class AttackBenchConfig(Config):
    recognizer: str = Field("recognizer_small", description="every recogniser (defender's and attacker's)")
    inpainter: str = Field("inpaint_unet_small", description="the attacker's inpainter")
    eval_identities: int = Field(16, ge=2, description="enrolled and probed identities")
    samples: int = Field(20, ge=2, description="faces per identity")
    n_masks: int = Field(12, ge=1, description="finalist masks")
    actors: list[int] = Field([1, 2], description="actor counts to measure")
    memory_scale: int = Field(2, ge=2, description="the memory check reruns with this many times the masks")
    plain_threads: list[int] = Field([1, 0], description="torch threads of the plain loop runs (0: torch's default)")


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _plain(args, q):
    """The baseline, in its own process: build the evaluator, then every mask's rows in turn."""
    import torch

    from data_jobs.privacy_grid import _evaluator
    from docray.privacy.masks import decode_mask

    eval_ids, defender, attacker, suite_cfg, masks, size, threads = args
    if threads:
        torch.set_num_threads(threads)
    t0 = time.perf_counter()
    ev = _evaluator(eval_ids, defender, attacker, suite_cfg)
    t1 = time.perf_counter()
    rows = [r for no, png in zip(masks["mask_no"], masks["mask"]) for r in ev.mask_rows(decode_mask(png, size))]
    t2 = time.perf_counter()
    q.put((t2 - t0, t2 - t1, _rss_mb(), rows))


def _models(cfg: AttackBenchConfig, n_classes: int, size: int, folder: str):
    from docray.models import build_model, save_pretrained
    from docray.privacy.suite import Attacker

    defender = {k: str(save_pretrained(build_model(cfg.recognizer, num_classes=n_classes), os.path.join(folder, k)))
                for k in ("original", "masked")}
    attacker = Attacker(build_model(cfg.recognizer, num_classes=n_classes).eval(),
                        build_model(cfg.inpainter, image_size=size).eval(), np.arange(n_classes))
    return defender, attacker


def _ray(stage, finalists):
    t0 = time.perf_counter()
    table = stage(finalists)
    return time.perf_counter() - t0, stage.stats["peak_actor_rss_mb"], table


def _same(plain_rows: list[dict], table) -> bool:
    """The Ray table's mask rows equal the plain loop's (in mask order, every figure, to float noise)."""
    ray_rows = table[table["mask_no"] >= 0].drop(columns=["mask_no", "mask_id", "hole_ratio"]).to_dict("records")
    if len(ray_rows) != len(plain_rows):
        return False
    def close(x, y) -> bool:  # thread counts may change the last bits of a float sum
        if isinstance(x, (int, float, np.number)) and isinstance(y, (int, float, np.number)):
            return bool(np.isclose(x, y, rtol=1e-5, atol=1e-6, equal_nan=True))
        return x == y

    return all(a.keys() == b.keys() and all(close(a[k], b[k]) for k in a) for a, b in zip(plain_rows, ray_rows))


def main(argv=None) -> None:
    cfg = parse_args(AttackBenchConfig, argv, description=__doc__.split("\n\n")[0])
    import pandas as pd
    import ray

    from cluster.local import init_ray
    from data_jobs.privacy_grid import GridEvalConfig, Stage5

    init_ray()
    size = 64
    grid = GridEvalConfig(n_identities=8, samples=cfg.samples, image_size=size, n_masks=cfg.n_masks * cfg.memory_scale,
                          attack={"identities": {"eval": cfg.eval_identities, "attacker": 2},
                                  "attacker": {"recognizer": cfg.recognizer, "inpainter": cfg.inpainter}})
    from data_jobs.privacy_grid import mask_set

    masks = mask_set(grid)
    folder = tempfile.mkdtemp(prefix="attackbench-")
    defender, attacker = _models(cfg, 8, size, folder)
    grid = grid.model_copy(update={"original": defender["original"], "masked": defender["masked"]})
    stage = Stage5(grid, masks)
    stage.trained = {"attacker": attacker, "ref": ray.put(attacker), "whole": []}  # untrained: speed only
    suite_cfg = stage.suite.model_dump()
    small = masks.slice(0, cfg.n_masks)
    n_eval = len(stage.data["eval"].labels)

    plain = []
    for threads in cfg.plain_threads:
        q = mp.get_context("spawn").Queue()
        p = mp.get_context("spawn").Process(target=_plain, args=(
            (stage.data["eval"], defender, attacker, suite_cfg, small.select(["mask_no", "mask"]).to_pydict(), size,
             threads), q))
        p.start()
        sec, run_s, rss, rows = q.get()
        p.join()
        plain.append((f"plain loop, {threads or 'default'} thr", 0, sec, cfg.n_masks / sec, cfg.n_masks / run_s, rss, rows))
    base = max(plain, key=lambda r: r[3])

    ray_rows, same = [], True
    for k in cfg.actors:
        stage.cfg = grid.model_copy(update={"attack": grid.attack.model_copy(update={"concurrency": k})})
        sec, rss, table = _ray(stage, pd.DataFrame({"mask_no": small.column("mask_no").to_pylist()}))
        same &= _same(base[6], table)
        ray_rows.append((f"ray data, {k} actor(s)", k, sec, cfg.n_masks / sec, rss))
    best = max(ray_rows, key=lambda r: r[3])
    stage.cfg = grid.model_copy(update={"attack": grid.attack.model_copy(update={"concurrency": best[1]})})
    _, rss_scaled, _ = _ray(stage, pd.DataFrame({"mask_no": masks.column("mask_no").to_pylist()}))

    print(f"attack check: {cfg.n_masks} masks x {n_eval} eval images, attacks {list(stage.suite.attacker.attacks)}, "
          f"{cfg.recognizer} + {cfg.inpainter}")
    print("seconds: from the call to the last row (Ray: actor start-up included; plain: model load included)")
    print(f"{'engine':<26}{'seconds':>9}{'masks/s':>10}{'peak MB':>10}")
    for name, _, sec, mps, _, rss, _ in plain:
        print(f"{name:<26}{sec:>9.1f}{mps:>10.3f}{rss:>10.0f}")
    for name, _, sec, mps, rss in ray_rows:
        print(f"{name:<26}{sec:>9.1f}{mps:>10.3f}{rss:>10.0f}")
    print(f"memory check: {best[1]} actor(s), {cfg.memory_scale}x masks -> peak actor RSS {rss_scaled:.0f} MB "
          f"(vs {best[4]:.0f} MB at 1x); same table as the plain loop: {same}")
    print(json.dumps({
        "masks": cfg.n_masks, "eval_images": n_eval, "plain_baseline": base[0],
        "plain_masks_per_s": round(base[3], 4), "plain_running_masks_per_s": round(base[4], 4),
        "plain_peak_rss_mb": round(base[5]),
        "plain_masks_per_s_by_threads": {r[0].split(", ")[1]: round(r[3], 4) for r in plain},
        "ray_masks_per_s_by_actors": {str(r[1]): round(r[3], 4) for r in ray_rows},
        "ray_peak_actor_rss_mb_by_actors": {str(r[1]): round(r[4]) for r in ray_rows},
        "ray_best_over_plain": round(best[3] / base[3], 3),
        "ray_peak_actor_rss_mb_at_scaled_masks": round(rss_scaled), "memory_scale": cfg.memory_scale,
        "ray_matches_plain": bool(same)}))


if __name__ == "__main__":
    main()
