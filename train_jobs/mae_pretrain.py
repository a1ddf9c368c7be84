"""MAE pre-training of the recognition encoder on Ray Train (DDP over N workers, CPU or GPU).

Patches, random masking (`mask_ratio`), encoder on the visible patches, mask tokens back in order,
decoder reconstruction, normalised-pixel loss: transformers' ViTMAE (docray/models/vit_mae.py).
Each epoch: a checkpoint (model, optimiser, epoch), an original | masked | reconstruction grid
PNG under `<out>/grids/`; after a worker failure Ray restarts the workers (FailureConfig) and
training resumes from the latest checkpoint. At the end the encoder is registered in the model
registry as `register_as` (`$DOCRAY_HOME/models/<register_as>/vNNNN`).

    python -m train_jobs.mae_pretrain --set epochs=2 n_docs=200               # a quick local run
    python -m train_jobs.mae_pretrain --set model=vit_mae_tiny epochs=1 n_docs=40 image_size=32
    ray job submit --working-dir . -- python -m train_jobs.mae_pretrain --set num_workers=2 epochs=20
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import torch
from pydantic import Field
from tqdm import tqdm

from docray import paths
from docray.config import Config, parse_args, save_config
from train_jobs.common import (load_result_state, maybe_fail, report_epoch, restore, run_trainer, unwrap_state,
                               warmup_cosine, worker_setup)


class MAEPretrainConfig(Config):
    model: str = Field("vit_mae_small", description="registered MAE factory (vit_mae_tiny|small|base)")
    image_size: int | None = Field(None, description="override the model's square input size (None: its default)")
    mask_ratio: float = Field(0.75, gt=0, lt=1, description="fraction of patches removed")
    n_docs: int = Field(2000, ge=10, description="synthetic documents generated (the train split is used)")
    seed: int = 0
    use_frames: bool = Field(True, description="flash and angle frames as extra images (more views, same docs)")
    epochs: int = Field(10, ge=1)
    batch_size: int = Field(64, ge=1, description="per worker")
    lr: float = Field(1.5e-3, gt=0, description="AdamW peak learning rate (cosine decay, 1 epoch warm-up)")
    weight_decay: float = 0.05
    num_workers: int = Field(1, ge=1, description="Ray Train workers (DDP)")
    cpus_per_worker: float = Field(1.0, gt=0, description="CPU reserved per worker (fractions fit a small host)")
    use_gpu: bool | None = Field(None, description="None: use a GPU when the cluster has one")
    max_failures: int = Field(2, ge=0, description="worker-group restarts from the latest checkpoint")
    out: str = Field(default_factory=lambda: paths.sub("runs", "mae_pretrain"), description="run folder")
    register_as: str = Field("recognition-encoder", description="model registry name ('' = do not register)")
    fail_at_epoch: int = Field(-1, description="testing: raise once after this epoch's checkpoint (-1 = never)")


# -- MAE ---------------------------------------------------------------------------------------------


def _overrides(c: MAEPretrainConfig) -> dict:
    o = {"mask_ratio": c.mask_ratio}
    if c.image_size:
        o["image_size"] = c.image_size
    return o


def train_loop_per_worker(config: dict) -> None:
    import ray.train.torch

    from docray.models import build_model
    from docray.recognition.data import documents_table, image_grid, load_images, to_float

    c = MAEPretrainConfig.model_validate(config)
    device, rank, world = worker_setup(c.cpus_per_worker)
    torch.manual_seed(c.seed)
    model = build_model(c.model, **_overrides(c))
    size = model.spec.image_size
    images = torch.from_numpy(load_images(documents_table(c.n_docs, c.seed), size, "train", c.use_frames))
    val = to_float(torch.from_numpy(load_images(documents_table(c.n_docs, c.seed), size, "val", False))[:6])
    opt = torch.optim.AdamW(model.parameters(), lr=c.lr, weight_decay=c.weight_decay, betas=(0.9, 0.95))
    start, _ = restore(model, opt)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(images), batch_size=c.batch_size,
                                         shuffle=True, drop_last=len(images) > c.batch_size)
    loader = ray.train.torch.prepare_data_loader(loader)
    net = ray.train.torch.prepare_model(model)
    steps = c.epochs * len(loader)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(s, len(loader), steps))
    for _ in range(start * len(loader)):
        sched.step()  # the schedule resumes where it stopped
    amp = device.type == "cuda"
    noise = torch.rand(len(val), model.spec.grid ** 2, generator=torch.Generator().manual_seed(0))  # a fixed mask
    for epoch in range(start, c.epochs):
        if world > 1:
            loader.sampler.set_epoch(epoch)
        net.train()
        t0, total, n = time.time(), 0.0, 0
        for (x,) in tqdm(loader, desc=f"mae epoch {epoch}", unit="batch", disable=rank != 0):
            with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=amp):
                loss = net(to_float(x.to(device))).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total, n = total + float(loss.detach()), n + 1
        files = {}
        if rank == 0:
            model.eval()
            masked, recon = model.reconstruct(val.to(device), noise.to(device))
            grid = image_grid([[o, m, r] for o, m, r in zip(val, masked.cpu(), recon.cpu())])
            Path(c.out, "grids").mkdir(parents=True, exist_ok=True)
            Path(c.out, "grids", f"epoch_{epoch:03d}.png").write_bytes(grid)
            files["grid.png"] = grid
        report_epoch(rank, model, opt, epoch, {"loss": total / max(n, 1), "epoch_s": time.time() - t0,
                                                    "started_at_epoch": start}, files)
        maybe_fail(c.fail_at_epoch, epoch, c.out, rank)


def register_encoder(c: MAEPretrainConfig, state: dict, metrics: dict) -> str:
    """Save the encoder part of an MAE state dict in the registry; returns the version."""
    from docray.models import build_model
    from docray.models.vit_mae import MAE
    from docray.storage.registry import ModelRegistry

    mae = build_model(c.model, **_overrides(c))
    assert isinstance(mae, MAE)
    mae.load_state_dict(unwrap_state(state))
    enc_name = c.model.replace("vit_mae_", "vit_encoder_")
    config = {"name": enc_name, "overrides": _overrides(c), "pretrain": c.model_dump()}
    return ModelRegistry().save(c.register_as, mae.encoder_state_dict(), config, metrics)


def main(argv=None) -> dict:
    from cluster.local import init_ray

    c = parse_args(MAEPretrainConfig, argv, description=__doc__.split("\n")[0])
    init_ray()
    save_config(c, c.out)
    result = run_trainer(train_loop_per_worker, c, "mae_pretrain")
    state, metrics = load_result_state(result)
    version = register_encoder(c, state, metrics) if c.register_as else ""
    summary = {"loss": metrics["loss"], "epochs": metrics["epoch"] + 1, "resumed_at_epoch": metrics["started_at_epoch"], "registered": f"{c.register_as}/{version}",
               "grids": str(Path(c.out, "grids"))}
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
