"""Train the three mask-privacy models on Ray Train: original recogniser, masked recogniser, inpainter.

    python -m train_jobs.train_mask_models                                   # recognizer_small, CPU ok
    python -m train_jobs.train_mask_models --set recognizer=recognizer_tiny inpainter=inpaint_unet_tiny \
        n_identities=8 samples=20 train.epochs=1 inpaint_epochs=1            # smoke run
    python -m train_jobs.train_mask_models --set data=/data/lfw              # an ImageFolder of identities
    ray job submit --working-dir . -- python -m train_jobs.train_mask_models --set num_workers=2

The original and the masked recogniser are the same factory, the same `train` parameters and the
same epochs; the masked one sees every training image overlaid with a mask drawn at random from a
bank of synthetic masks (seed `mask_seed`, never the grid's masks) with a random placement. The
inpainter learns masked -> whole on the same images and masks. Each model goes to the registry
(`mask_recognizer_original`, `mask_recognizer_masked`, `mask_inpainter`) with its val metrics.
"""
from __future__ import annotations

import os
import time

import numpy as np
import torch
from pydantic import Field

from docray.config import Config, parse_args, save_config
from train_jobs.common import load_checkpoint_state, report_epoch, restore, unwrap


class TrainParams(Config):
    """Shared by both recognisers (the method: same parameters, same epochs)."""
    epochs: int = Field(10, ge=1)
    batch_size: int = Field(64, ge=2)
    lr: float = Field(2e-3, description="AdamW, cosine decay")
    weight_decay: float = 5e-4


class MaskModelsConfig(Config):
    data: str = Field("synth", description="'synth' faces, or an ImageFolder / Parquet dir of identities")
    n_identities: int = Field(64, ge=2, description="synth: identities (harder with more)")
    samples: int = Field(40, ge=10, description="synth: samples per identity (8 of 10 train, 1 val, 1 test)")
    image_size: int = 64
    seed: int = 0
    recognizer: str = Field("recognizer_small", description="registered recogniser factory (both recognisers)")
    inpainter: str = Field("inpaint_unet_small", description="registered inpainting factory")
    train: TrainParams = TrainParams()
    inpaint_epochs: int = Field(10, ge=1)
    inpaint_lr: float = 2e-3
    mask_bank: int = Field(600, ge=6, description="synthetic training masks (bins evenly)")
    mask_seed: int = Field(100, description="seed of the training masks; the grid uses other seeds")
    max_shift: float = Field(0.125, description="random mask placement: roll up to this fraction of the side")
    models: list[str] = Field(["original", "masked", "inpaint"], description="which models to train")
    num_workers: int = Field(1, ge=1)
    cpus_per_worker: float = Field(1.0, gt=0)
    use_gpu: bool | None = Field(None, description="None: when torch sees a GPU on this host")
    max_failures: int = 1
    out: str = Field("", description="run folder ('' -> DOCRAY_HOME/reports/masking/train)")
    run_name: str = Field("", description="Ray Train run name prefix; '' -> a fresh one per call. Reuse an earlier "
                                          "name (with the same out) to resume that run from its checkpoints")


def _data(ctx: dict):
    import ray

    return ray.get(ctx["data_ref"]), ray.get(ctx["bank_ref"])


def train_loop_per_worker(ctx: dict) -> None:
    import ray.train
    import ray.train.torch

    from docray.masking import training as T
    from docray.models import build_model

    cfg, kind = MaskModelsConfig(**ctx["cfg"]), ctx["kind"]
    (train, val), bank = _data(ctx)
    rank = ray.train.get_context().get_world_rank()
    torch.manual_seed(cfg.seed + rank)
    rng = np.random.default_rng([cfg.seed, rank, {"original": 0, "masked": 1, "inpaint": 2}[kind]])
    device = ray.train.torch.get_device()
    if kind == "inpaint":
        model, epochs, lr, wd = build_model(cfg.inpainter, image_size=cfg.image_size), cfg.inpaint_epochs, cfg.inpaint_lr, 0.0
    else:
        model = build_model(cfg.recognizer, num_classes=int(ctx["num_classes"]))
        epochs, lr, wd = cfg.train.epochs, cfg.train.lr, cfg.train.weight_decay
    spec = model.docray_spec
    x, y = train.tensors()
    ds = torch.utils.data.TensorDataset(x, y)
    loader = ray.train.torch.prepare_data_loader(torch.utils.data.DataLoader(
        ds, batch_size=cfg.train.batch_size, shuffle=True, drop_last=True))
    model = ray.train.torch.prepare_model(model)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=wd)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs * len(loader))
    start, _ = restore(model, opt, sched)
    vx, vy = val.tensors(device)
    vm = torch.from_numpy(np.stack([bank[i % len(bank)] for i in range(len(vy))])).to(device)[:, None]  # fixed val masks
    use_bank = bank if kind != "original" else None
    for epoch in range(start, epochs):
        model.train()
        if hasattr(loader, "sampler") and hasattr(loader.sampler, "set_epoch"):
            loader.sampler.set_epoch(epoch)
        t0, losses = time.perf_counter(), []
        for xb, yb in loader:
            masks = T.batch_masks(use_bank, len(xb), rng, xb.device, cfg.max_shift)
            loss = T.inpaint_step(model, xb, masks) if kind == "inpaint" else T.recognizer_step(model, xb, yb, masks)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(float(loss))
        m = unwrap(model)
        metrics = {"epoch": epoch, "loss": float(np.mean(losses)), "epoch_s": time.perf_counter() - t0}
        if kind == "inpaint":
            metrics["val_hole_l1"] = T.inpaint_l1(m, vx, vm)
        else:
            metrics.update(val_acc_whole=T.accuracy(m, vx, vy), val_acc_masked=T.accuracy(m, vx, vy, vm))
        report_epoch(rank, model, opt, epoch, metrics, sched=sched, extra={"spec": spec})


def fit_one(cfg: MaskModelsConfig, kind: str, ctx: dict, out: str, run_name: str):
    """One TorchTrainer run; returns (model, metrics)."""
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from docray.models import build_model

    use_gpu = torch.cuda.is_available() if cfg.use_gpu is None else cfg.use_gpu
    trainer = TorchTrainer(
        train_loop_per_worker, train_loop_config={**ctx, "kind": kind},
        scaling_config=ScalingConfig(num_workers=cfg.num_workers, use_gpu=use_gpu,
                                     resources_per_worker={"CPU": cfg.cpus_per_worker}),
        run_config=RunConfig(name=f"{run_name}-{kind}", storage_path=os.path.join(out, "ray"),
                             failure_config=FailureConfig(max_failures=cfg.max_failures)))
    result = trainer.fit()
    state = load_checkpoint_state(result.checkpoint)
    model = build_model(state["spec"]["name"], **state["spec"]["overrides"])
    model.load_state_dict(state["model"])
    return model, {k: v for k, v in result.metrics.items() if isinstance(v, (int, float))}


def run(cfg: MaskModelsConfig) -> dict:
    """Train the chosen models on Ray (already initialised); returns {kind: (registry version, metrics)}."""
    import ray

    from docray import paths
    from docray.masking.data import load_identities
    from docray.masking.masks import mask_stack, synthetic_masks
    from docray.masking.models import NAMES, save_to_registry

    unknown = set(cfg.models) - set(NAMES)
    if unknown:
        raise ValueError(f"unknown model kind(s) {sorted(unknown)}; choose from {sorted(NAMES)}")
    out = cfg.out or paths.sub("reports", "masking", "train")
    save_config(cfg, out)
    splits = load_identities(cfg.data, n_identities=cfg.n_identities, samples=cfg.samples, seed=cfg.seed, size=cfg.image_size)
    bank = mask_stack(synthetic_masks(cfg.mask_bank, seed=cfg.mask_seed, size=cfg.image_size))
    num_classes = int(max(s.labels.max() for s in splits.values() if len(s)) + 1)
    ctx = {"cfg": cfg.model_dump(), "num_classes": num_classes,
           "data_ref": ray.put((splits["train"], splits["val"])), "bank_ref": ray.put(bank)}
    results = {}
    run_name = cfg.run_name or time.strftime("mask-%Y%m%d-%H%M%S")
    for kind in cfg.models:
        model, metrics = fit_one(cfg, kind, ctx, out, run_name)
        version = save_to_registry(NAMES[kind], model, metrics)
        results[kind] = (version, metrics)
        print(f"{NAMES[kind]} {version}: " + ", ".join(f"{k}={v:.4g}" for k, v in metrics.items()), flush=True)
    return results


def main(argv=None) -> None:
    cfg = parse_args(MaskModelsConfig, argv, description=__doc__.split("\n\n")[0])
    from cluster.local import init_ray

    init_ray()
    run(cfg)


if __name__ == "__main__":
    main()
