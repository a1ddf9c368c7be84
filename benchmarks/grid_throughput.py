"""Pairs/s of the mask x image grid: Ray Data actors against a plain single-process PyTorch loop.

    python -m benchmarks.grid_throughput                            # recognizer_small x2, 48 masks x 128 faces x 2 runs
    python -m benchmarks.grid_throughput --set actors=[1,2,4] n_masks=96

Same models (two recognisers of `model`, random weights: speed does not depend on them), same
masks, same test images, same machine, one run. The plain loop runs in its own process, once per
torch thread count in `plain_threads` (on a small or busy host one thread is often faster than
all cores); the fastest is the baseline Ray is compared with. Its peak RSS is that process's. Ray runs the grid at each actor count in `actors`;
peak memory is the largest actor RSS, measured again with 2x the masks (it must not grow with
m x n: masks stream through, the n images sit once in each actor). Last line: one JSON object.
"""
from __future__ import annotations

import json
import multiprocessing as mp
import os
import resource
import tempfile
import time

from pydantic import Field

from docray.config import Config, parse_args


class GridBenchConfig(Config):
    model: str = Field("recognizer_small", description="recogniser factory (both recognisers)")
    n_identities: int = 32
    n_masks: int = 48
    n_test: int = 128
    runs: int = 2
    batch_size: int = Field(4, description="masks per actor batch")
    chunk: int = Field(128, description="images per model call")
    actors: list[int] = Field([1, 2], description="actor counts to measure")
    memory_scale: int = Field(2, description="the memory check reruns with this many times the masks")
    plain_threads: list[int] = Field([1, 0], description="torch threads for the plain loop runs (0: torch's default)")


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _plain(args, q):
    from docray.privacy.grid import GridPredictor, plain_grid

    images, labels, models, masks, cfg, threads = args
    if threads:
        import torch

        torch.set_num_threads(threads)
    t0 = time.perf_counter()
    pred = GridPredictor(images, labels, models, runs=cfg["runs"], chunk=cfg["chunk"])
    t1 = time.perf_counter()
    df = plain_grid(masks, pred, batch_size=cfg["batch_size"])
    t2 = time.perf_counter()
    q.put((t2 - t0, t2 - t1, _rss_mb(), df["correct_masked"].map(list).tolist()))


class _MeasuredActor:
    """GridActor plus the actor's peak RSS in every output batch."""

    def __init__(self, **kw):
        from data_jobs.privacy_grid import GridActor

        self.inner = GridActor(**kw)

    def __call__(self, batch):
        t0 = time.time()
        out = self.inner(batch)
        n = len(out["mask_no"])
        out.update(peak_rss_mb=[_rss_mb()] * n, t_start=[t0] * n, t_end=[time.time()] * n)
        return out


def _ray_grid(masks, data_ref, models, cfg: GridBenchConfig, k: int):
    import data_jobs.privacy_grid as job

    gcfg = job.GridEvalConfig(runs=cfg.runs, batch_size=cfg.batch_size, chunk=cfg.chunk, concurrency=k)
    original, job.GridActor = job.GridActor, _MeasuredActor
    try:
        t0 = time.perf_counter()
        df = job.ray_grid(masks, data_ref, models, gcfg)
        total = time.perf_counter() - t0
        return total, float(df["t_end"].max() - df["t_start"].min()), float(df["peak_rss_mb"].max()), df
    finally:
        job.GridActor = original


def main(argv=None) -> None:
    cfg = parse_args(GridBenchConfig, argv, description=__doc__.split("\n\n")[0])
    import ray

    from cluster.local import init_ray
    from docray.privacy.data import synth_identities
    from docray.privacy.masks import synthetic_masks
    from docray.models import build_model, save_pretrained

    init_ray()
    test = synth_identities(cfg.n_identities, 30, seed=0)["test"]
    while len(test) < cfg.n_test:  # repeat the test faces to reach n_test (speed only)
        test.images, test.labels = test.images.repeat(2, 0), test.labels.repeat(2, 0)
    test = test.take(cfg.n_test)
    masks = synthetic_masks(cfg.n_masks * cfg.memory_scale, seed=7)
    small = masks.slice(0, cfg.n_masks)
    tmp = tempfile.mkdtemp(prefix="gridbench-")
    models = {}
    for name in ("original", "masked"):
        models[name] = str(save_pretrained(build_model(cfg.model, num_classes=cfg.n_identities), os.path.join(tmp, name)))
    pairs = cfg.n_masks * len(test) * cfg.runs
    rows = []

    plain = []
    for threads in cfg.plain_threads:
        q = mp.get_context("spawn").Queue()
        p = mp.get_context("spawn").Process(
            target=_plain, args=((test.images, test.labels, models, small, cfg.model_dump(), threads), q))
        p.start()
        plain_s, plain_run_s, plain_rss, plain_counts = q.get()
        p.join()
        label = f"plain loop, {threads or 'default'} thr"
        plain.append((label, 0, plain_s, pairs / plain_s, pairs / plain_run_s, plain_rss))
    rows.append(max(plain, key=lambda r: r[3]))  # the baseline: the fastest plain run
    plain_s, plain_rss = rows[0][2], rows[0][5]
    data_ref = ray.put((test.images, test.labels))
    same = True
    for k in cfg.actors:
        sec, run_s, rss, df = _ray_grid(small, data_ref, models, cfg, k)
        same &= df["correct_masked"].map(list).tolist() == plain_counts
        rows.append((f"ray data, {k} actor(s)", k, sec, pairs / sec, pairs / run_s, rss))
    k_best = max(rows[1:], key=lambda r: r[3])[1]
    _, _, rss2, _ = _ray_grid(masks, data_ref, models, cfg, k_best)

    print(f"grid: {cfg.n_masks} masks x {len(test)} images x {cfg.runs} runs = {pairs:,} pairs, 2 x {cfg.model}")
    print("end to end: from the call to the last row (Ray: actor start-up included; plain: model load included);")
    print("running: from the first batch started to the last finished (start-up excluded)")
    print(f"{'engine':<26}{'seconds':>9}{'pairs/s e2e':>13}{'pairs/s running':>17}{'peak MB':>10}")
    for name, _, sec, pps, run_pps, rss in plain + rows[1:]:
        print(f"{name:<26}{sec:>9.1f}{pps:>13.0f}{run_pps:>17.0f}{rss:>10.0f}")
    print(f"memory check: {k_best} actor(s), {cfg.memory_scale}x masks -> peak actor RSS {rss2:.0f} MB "
          f"(vs {rows[[r[1] for r in rows].index(k_best)][5]:.0f} MB); same numbers as the plain loop: {same}")
    best = max(rows[1:], key=lambda r: r[3])
    best_run = max(rows[1:], key=lambda r: r[4])
    print(json.dumps({
        "pairs": pairs, "plain_pairs_per_s": round(pairs / plain_s, 1), "plain_running_pairs_per_s": round(rows[0][4], 1),
        "plain_peak_rss_mb": round(plain_rss), "plain_baseline": rows[0][0],
        "plain_pairs_per_s_by_threads": {r[0].split(", ")[1]: round(r[3], 1) for r in plain},
        "ray_pairs_per_s_by_actors": {str(r[1]): round(r[3], 1) for r in rows[1:]},
        "ray_running_pairs_per_s_by_actors": {str(r[1]): round(r[4], 1) for r in rows[1:]},
        "ray_peak_actor_rss_mb_by_actors": {str(r[1]): round(r[5]) for r in rows[1:]},
        "ray_best_over_plain": round(best[3] / (pairs / plain_s), 3),
        "ray_running_best_over_plain": round(best_run[4] / rows[0][4], 3),
        "ray_peak_actor_rss_mb_at_scaled_masks": round(rss2), "memory_scale": cfg.memory_scale,
        "ray_matches_plain": bool(same)}))


if __name__ == "__main__":
    main()
