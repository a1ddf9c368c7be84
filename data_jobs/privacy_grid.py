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

Stage 5 (`attack.enabled`, on by default), within the threat model of docs/privacy.md: the open-set
protocol's identities (`docray.privacy.openset`) are the `attack.identities.train` identities the
defender's models learnt (skipped: for the synthetic faces the first `n_identities`, what
train_privacy trains on), `eval` people nobody trained on (enrolled and probed) and the `attacker`'s
own. A Ray task trains the attacker's ordinary recogniser and its own inpainter on its people only
(`docray.privacy.suite.train_attacker`), then the finalists' masks stream through `attack.concurrency`
actors that hold the eval images and every model (`AttackActor`: the attacker table per mask).
Both stage-2 rules run side by side (`docray.privacy.funnel.run_rules`, the attack and the attacker
once each on the union); `funnel.stage2` picks the one whose targets are served.

Outputs in `out` (default DOCRAY_HOME/reports/privacy/grid): per_mask.parquet (one row per mask:
both accuracies, per-run counts, bin), bins.csv (Table 1, the no-mask row first), candidates.parquet
(Table 2: every rule's candidates, `rule_top_k` / `rule_similar` say which nominated each, with the
stage-5 verdict), targets.parquet (the chosen rule's targets with their verdict and mask PNG, read by
serve_apps.privacy), finalists.parquet (every finalist with its verdict and mask PNG, met or not),
attacks.parquet (the attacker table: finalists and whole images),
strips.parquet (sample strips: original, masked, each attack's reconstruction, blur, mosaic, for a
few probe faces), funnel.json (stages per rule, timings, masks/s, peak RSS), sample_face.png,
config.yaml. `docray privacy report` turns them into Markdown with plots. `out` may be a URI (`s3://...`,
as under an s3:// DOCRAY_HOME): every file is written through `docray.storage.blobs`.
"""
from __future__ import annotations

import json
import resource
import time

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import Field

from docray.config import Config, parse_args, save_config
from docray.privacy.attacks import PROTECTIONS
from docray.privacy.funnel import FunnelConfig
from docray.privacy.masks import BIN_EDGES
from docray.privacy.suite import REFERENCES, AttackerConfig


def _rss_mb() -> float:
    """This process's peak resident set size, MB (Linux: ru_maxrss is in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class GridIdentities(Config):
    train: int | None = Field(None, description="the identities the defender's models learnt, skipped by the split "
                                                "(sorted order); None: n_identities (synthetic faces only)")
    eval: int = Field(32, ge=2, description="enrolled and probed identities: nobody trains on them")
    attacker: int = Field(32, ge=2, description="the attacker's own identities (its recogniser and inpainter)")


class GridAttackConfig(Config):
    enabled: bool = Field(True, description="funnel stage 5: the attack suite on the finalists (open-set protocol)")
    source: str = Field("", description="identities of the open set: '' -> `data` ('synth'); else an ImageFolder "
                                        "(LFW layout) or a faces dataset, with identities.train set")
    identities: GridIdentities = GridIdentities()
    samples: int | None = Field(None, ge=2, description="synthetic faces per identity; None: `samples`")
    n_enrol: int = Field(1, ge=1, description="gallery images per eval identity (the first ones); the rest probe")
    attacker: AttackerConfig = AttackerConfig()
    batch_size: int = Field(64, ge=2, description="the attacker's training batch")
    lr: float = Field(2e-3, description="the attacker's training learning rate")
    protections: list[str] = Field(list(PROTECTIONS), description="the mask and the baselines (blur, mosaic)")
    references: list[str] = Field(list(REFERENCES), description="the attacker matches against whole photos / the same treatment")
    blur_sigma: float = Field(0.0625, gt=0, description="blur baseline: sigma, fraction of the side")
    mosaic_block: float = Field(0.125, gt=0, description="mosaic baseline: cell side, fraction of the side")
    max_impostor: int = Field(2_000_000, ge=1000, description="impostor pairs kept at most")
    defender_inpainter: bool = Field(False, description="add the defender's inpainter row (the method's drop on the open "
                                                        "set; stage 3 measures it on the test images): ~20% more time")
    concurrency: int | None = Field(None, ge=1, description="stage-5 actors; None: `concurrency`")
    strips: int = Field(3, ge=0, description="masks with sample strips (targets first, else the best trade-offs)")
    strip_faces: int = Field(4, ge=1, description="probe faces per sample strip")


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
    attack: GridAttackConfig = GridAttackConfig()
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
        return {**self.pred(batch), "rss_mb": np.full(len(batch["mask_no"]), _rss_mb())}


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
    out = pd.concat(rows, ignore_index=True).sort_values("mask_no").reset_index(drop=True)
    rss = float(out.pop("rss_mb").max())
    out.attrs["peak_actor_rss_mb"] = rss  # the largest grid actor's peak RSS
    return out


# -- stage 5: the attack suite on the finalists ---------------------------------------------------------

def suite_config(cfg: GridEvalConfig):
    """The attack suite's config (docray.privacy.suite) for this grid run's stage 5."""
    from docray.privacy.suite import AttackSuiteConfig

    a = cfg.attack
    train = a.identities.train
    if train is None:
        if (a.source or cfg.data) != "synth":
            raise ValueError("stage 5 on your own identities: set attack.identities.train to the number of identities "
                             "the defender's models learnt (the first ones in sorted order, skipped by the split), and "
                             "attack.source to identities beyond them, or attack.enabled=false")
        train = cfg.n_identities
    return AttackSuiteConfig(source=a.source or cfg.data, identities={"train": train, "eval": a.identities.eval,
                                                                      "attacker": a.identities.attacker},
                             samples=a.samples or cfg.samples, seed=cfg.seed, image_size=cfg.image_size,
                             n_enrol=a.n_enrol, batch_size=a.batch_size, lr=a.lr, attacker=a.attacker,
                             protections=a.protections, references=a.references, blur_sigma=a.blur_sigma,
                             mosaic_block=a.mosaic_block, max_impostor=a.max_impostor)


def _evaluator(eval_ids, defender: dict, attacker, suite_cfg: dict):
    from docray.privacy.models import load_model
    from docray.privacy.suite import AttackEvaluator, AttackSuiteConfig

    models = {k: load_model(v) for k, v in defender.items()}
    return AttackEvaluator.build(eval_ids, models, attacker, AttackSuiteConfig(**suite_cfg))


def train_attacker_task(roles: list, defender: dict, suite_cfg: dict, num_threads: int) -> dict:
    """The Ray task: the attacker's models on its own identities, and the whole images' rows (each
    recogniser on the unmasked eval images, mask_no -1)."""
    import ray
    import torch

    from docray.privacy.suite import AttackSuiteConfig, train_attacker

    torch.set_num_threads(num_threads)
    data = ray.get(roles[0])
    t0 = time.perf_counter()
    attacker = train_attacker(data, AttackSuiteConfig(**suite_cfg), log=lambda *_: None)
    train_s = time.perf_counter() - t0
    whole = _evaluator(data["eval"], defender, attacker, suite_cfg).whole_rows()
    return {"attacker": attacker, "whole": [{"mask_no": -1, "mask_id": "", "hole_ratio": 0.0, **r} for r in whole],
            "train_s": train_s, "rss_mb": _rss_mb()}


class AttackActor:
    """Stage 5 on Ray Data: holds the eval images, the defender's and the attacker's models; a batch
    of masks in, their attacker table out (docray.privacy.suite.AttackEvaluator.mask_rows)."""

    def __init__(self, data: list, defender: dict, attacker: list, suite_cfg: dict, num_threads: int):
        import ray
        import torch

        torch.set_num_threads(num_threads)
        self.ev = _evaluator(ray.get(data[0]), defender, ray.get(attacker[0]), suite_cfg)

    def __call__(self, batch: dict) -> pd.DataFrame:
        from docray.privacy.masks import decode_mask

        size, rows = self.ev.images.shape[-1], []
        for no, mask_id, png, ratio in zip(batch["mask_no"], batch["mask_id"], batch["mask"], batch["hole_ratio"]):
            rows += [{"mask_no": int(no), "mask_id": str(mask_id), "hole_ratio": float(ratio), **r}
                     for r in self.ev.mask_rows(decode_mask(png, size))]
        return pd.DataFrame(rows).assign(rss_mb=_rss_mb())


class Stage5:
    """The funnel's attacker (`run_funnel(..., attacker=stage5)`): trains the attacker on first call,
    then streams the finalists' masks through AttackActors. Keeps timings and peak RSS in `stats`."""

    def __init__(self, cfg: GridEvalConfig, masks: pa.Table):
        import ray

        from docray.privacy.openset import ROLES, load_openset

        self.cfg, self.masks, self.suite = cfg, masks, suite_config(cfg)
        s = self.suite
        self.data = load_openset(s.source, s.identities.model_dump(), samples=s.samples, seed=s.seed,
                                 size=s.image_size, min_images=s.min_images)
        self.identities = {r: [int(i) for i in self.data.identities[r]] for r in ROLES}
        self.defender = {"original": cfg.original, "masked": cfg.masked}
        if cfg.attack.defender_inpainter:
            self.defender["inpaint"] = cfg.inpainter
        self.eval_ref = ray.put(self.data["eval"])
        self.trained = None
        self.stats: dict = {}

    def train(self) -> dict:
        import ray

        from cluster.local import actor_resources

        if self.trained is None:
            res = actor_resources(1, use_gpu=self.cfg.use_gpu)
            task = ray.remote(train_attacker_task).options(**res)
            t0 = time.perf_counter()
            out = ray.get(task.remote([ray.put(self.data)], self.defender, self.suite.model_dump(),
                                      max(1, int(res["num_cpus"] + 0.5))))
            self.trained = {**out, "ref": ray.put(out["attacker"])}
            self.stats.update(attacker_train_s=out["train_s"], attacker_task_s=time.perf_counter() - t0,
                              attacker_task_rss_mb=out["rss_mb"])
        return self.trained

    def __call__(self, finalists: pd.DataFrame) -> pd.DataFrame:
        import ray

        from cluster.local import actor_resources

        trained = self.train()
        sub = self.masks.take(pa.array(finalists["mask_no"].to_numpy())).select(["mask_no", "mask_id", "mask", "hole_ratio"])
        k = min(self.cfg.attack.concurrency or self.cfg.concurrency, sub.num_rows)
        res = actor_resources(k, use_gpu=self.cfg.use_gpu)
        t0 = time.perf_counter()
        ds = ray.data.from_arrow([sub.slice(i, 1) for i in range(sub.num_rows)])  # a mask per block: all actors busy
        ds = ds.map_batches(AttackActor, batch_size=1, concurrency=k, batch_format="numpy",
                            fn_constructor_kwargs=dict(data=[self.eval_ref], defender=self.defender,
                                                       attacker=[trained["ref"]], suite_cfg=self.suite.model_dump(),
                                                       num_threads=max(1, int(res["num_cpus"] + 0.5))), **res)
        table = pd.concat(list(ds.iter_batches(batch_size=None, batch_format="pandas")), ignore_index=True)
        eval_s = time.perf_counter() - t0
        self.stats.update(finalists=sub.num_rows, eval_s=eval_s, finalists_per_s=sub.num_rows / eval_s,
                          actors=k, peak_actor_rss_mb=float(table.pop("rss_mb").max()))
        table = table.sort_values("mask_no", kind="stable")
        return pd.concat([pd.DataFrame(trained["whole"]), table], ignore_index=True)

    def strips(self, mask_nos: list[int]) -> pd.DataFrame:
        """Sample strips of the masks (rows: mask_no, mask_id, panel, face, image PNG), on the driver."""
        from docray.imageio import encode_png
        from docray.privacy.masks import decode_mask

        if not mask_nos:
            return pd.DataFrame(columns=["mask_no", "mask_id", "panel", "face", "image"])
        ev = _evaluator(self.data["eval"], {}, self.train()["attacker"], self.suite.model_dump())
        rows_idx = ev.probe_rows(self.cfg.attack.strip_faces)
        by_no = self.masks.to_pandas().set_index("mask_no")
        rows = []
        for no in mask_nos:
            for panel, images in ev.strip(decode_mask(by_no.loc[no, "mask"], self.cfg.image_size), rows_idx):
                pixels = (images.clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).numpy()  # (k, h, w, 3)
                rows += [{"mask_no": int(no), "mask_id": by_no.loc[no, "mask_id"], "panel": panel, "face": j,
                          "image": encode_png(p)} for j, p in enumerate(pixels)]
        return pd.DataFrame(rows)


def _parquet(df: pd.DataFrame, path: str) -> None:
    """`df` as a Parquet file at a local path or URI (whole or not at all: `blobs.write_file`)."""
    from docray.storage.blobs import write_file

    buf = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_pandas(df, preserve_index=False), buf)
    write_file(path, buf.getvalue().to_pybytes())


def run(cfg: GridEvalConfig) -> dict:
    """Grid + funnel on Ray (already initialised); writes the outputs and returns a summary."""
    import ray

    from docray import paths
    from docray.imageio import encode_png
    from docray.privacy.funnel import run_rules
    from docray.privacy.grid import with_no_mask
    from docray.privacy.masks import decode_mask, masks_table
    from docray.storage.blobs import write_file

    out = paths.absolute(cfg.out or paths.sub("reports", "privacy", "grid"))  # a local folder or URI
    save_config(cfg, out)
    t_start = time.perf_counter()
    test, masks = test_set(cfg), mask_set(cfg)
    stage5 = Stage5(cfg, masks) if cfg.attack.enabled else None  # its config errors before the grid runs
    data_ref = ray.put((test.images, test.labels))
    models = {"original": cfg.original, "masked": cfg.masked}
    t0 = time.perf_counter()
    per_mask = ray_grid(masks, data_ref, models, cfg)
    grid_s = time.perf_counter() - t0
    grid_rss = per_mask.attrs.get("peak_actor_rss_mb")
    whole = ray_grid(masks_table([np.ones((cfg.image_size,) * 2, np.float32)], ["no-mask"]), data_ref, models, cfg,
                     concurrency=1)  # Table 1's no-mask row: a mask that hides nothing
    no_mask = {m: float(whole[f"acc_{m}"].iloc[0]) for m in models}
    _parquet(per_mask, paths.join(out, "per_mask.parquet"))
    by_no = masks.to_pandas().set_index("mask_no")
    timing = {}

    def attack(cands: pd.DataFrame) -> pd.DataFrame:
        t = time.perf_counter()
        sub = masks.take(pa.array(cands["mask_no"].to_numpy()))
        res = ray_grid(sub, data_ref, {"masked": cfg.masked, "original": cfg.original}, cfg, inpainter=cfg.inpainter,
                       concurrency=min(cfg.concurrency, len(cands)))
        timing.update(stage3_masks=len(cands), stage3_s=time.perf_counter() - t)
        return res.rename(columns={"acc_masked": "acc_before", "acc_masked_inpainted": "acc_after"})[
            ["mask_no", "acc_before", "acc_after", "acc_original_inpainted"]]

    edges = tuple(cfg.bin_edges)
    mask_px = {int(n): decode_mask(b, cfg.image_size) for n, b in zip(by_no.index, by_no["mask"])}
    results = run_rules(per_mask, attack, cfg.funnel, edges, stage5, mask_px)
    result = results[cfg.funnel.stage2]
    result.bins = with_no_mask(result.bins, no_mask)
    write_file(paths.join(out, "bins.csv"), result.bins.to_csv(index=False).encode())
    cands = pd.concat([r.candidates.assign(rule=rule) for rule, r in results.items()], ignore_index=True)
    if len(cands):  # one row per mask, flags for the rules that nominated it
        flags = pd.crosstab(cands["mask_no"], cands["rule"]).gt(0).add_prefix("rule_").reset_index()
        if "similarity" in cands.columns:  # the similar rule's score, also on the rows the top-k rule nominated
            cands["similarity"] = cands.groupby("mask_no")["similarity"].transform("max")
        cands = cands.drop(columns=["rule"]).drop_duplicates("mask_no").merge(
            flags, on="mask_no").sort_values(["bin", "acc_masked"], ascending=[True, False])
        for rule in results:
            cands[f"rule_{rule}"] = cands.get(f"rule_{rule}", False)
    cands = cands.drop(columns=[c for c in cands.columns if c.startswith("correct_")] + ["rule"], errors="ignore")
    _parquet(cands, paths.join(out, "candidates.parquet"))
    targets = result.targets.drop(columns=[c for c in result.targets.columns if c.startswith("correct_")])
    targets = targets.assign(mask=[by_no.loc[n, "mask"] for n in targets["mask_no"]])
    _parquet(targets, paths.join(out, "targets.parquet"))
    attacks = next((r.attacks for r in results.values() if r.attacks is not None), None)
    if "worst_attacker_tar" in cands.columns:  # every rule's finalists with their verdict and mask, met or not
        fin = cands[cands["worst_attacker_tar"].notna()]
        _parquet(fin.assign(mask=[by_no.loc[n, "mask"] for n in fin["mask_no"]]), paths.join(out, "finalists.parquet"))
    if attacks is not None:
        _parquet(attacks.drop(columns=["support_ok"], errors="ignore").assign(
            support_ok=attacks["support_ok"].astype(bool)), paths.join(out, "attacks.parquet"))
    if stage5 is not None and attacks is not None and cfg.attack.strips:
        t = time.perf_counter()
        _parquet(stage5.strips(strip_masks(result, cfg.attack.strips)), paths.join(out, "strips.parquet"))
        timing["strips_s"] = time.perf_counter() - t
    write_file(paths.join(out, "sample_face.png"), encode_png(test.images[0]))
    pairs = masks.num_rows * len(test) * cfg.runs
    stats = {"grid_s": grid_s, "masks_per_s": masks.num_rows / grid_s, "pairs_per_s": pairs / grid_s,
             "grid_peak_actor_rss_mb": grid_rss, **timing}
    if stage5 is not None:
        stats.update({f"stage5_{k}": v for k, v in stage5.stats.items()})
    stats.update(total_s=time.perf_counter() - t_start, driver_peak_rss_mb=_rss_mb())
    summary = {"n_masks": masks.num_rows, "n_test_images": len(test), "runs": cfg.runs, "pairs": pairs,
               "grid_s": grid_s, "pairs_per_s": pairs / grid_s, "no_mask": no_mask, "stage2": cfg.funnel.stage2,
               **result.summary(), "rules": {rule: {**r.summary(), "targets": r.targets["mask_id"].tolist()}
                                             for rule, r in results.items()},
               "stage5": None if stage5 is None else {"identities": stage5.identities,
                                                      "n_eval_images": len(stage5.data["eval"])},
               "throughput": stats}
    write_file(paths.join(out, "funnel.json"), json.dumps(summary, indent=2, default=str).encode())
    return {"out": out, "summary": summary, "bins": result.bins, "targets": targets}


def strip_masks(result, n: int) -> list[int]:
    """The masks that get sample strips: the targets (best first), else the finalists by trade-off."""
    if len(result.targets):
        return [int(v) for v in result.targets["mask_no"].head(n)]
    c = result.candidates
    if "worst_attacker_tar" not in c.columns:
        return []
    fin = c[c["worst_attacker_tar"].notna()].sort_values(["worst_attacker_tar", "masked_tar"], ascending=[True, False])
    return [int(v) for v in fin["mask_no"].head(n)]


def main(argv=None) -> None:
    cfg = parse_args(GridEvalConfig, argv, description=__doc__.split("\n\n")[0])
    from cluster.local import init_ray

    init_ray()
    res = run(cfg)
    pd.set_option("display.width", 160)
    print(res["bins"].to_string(index=False))
    print(json.dumps({k: v for k, v in res["summary"].items() if k not in ("stages", "rules", "stage5")}, default=str))
    print(f"outputs: {res['out']}  (docray privacy report --run {res['out']})")


if __name__ == "__main__":
    main()
