"""Train the tile descriptor (copy detection, SSCD-style) on tiles of synthetic targets, on Ray Train.

    python -m train_jobs.train_descriptor                                  # descriptor_small, CPU ok
    python -m train_jobs.train_descriptor --set model=descriptor_tiny steps_per_epoch=5 epochs=1
    ray job submit --working-dir . -- python -m train_jobs.train_descriptor --set num_workers=2

Each step draws B tiles (every template's tiles of the training pictures, flat ones left out) and
two views of each: the library view (clean, or lightly edited) and an edited copy (crop, rescale,
recolour, text overlay, JPEG) as a region finder crops it from an upload (a few pixels in or out).
A share of the items (`distractor_rate`) are fresh whole pictures of random size instead, the
pictures an upload carries beside a tile. Loss: InfoNCE over the 2B views (each view's positive is its pair)
plus a KoLeo entropy term that spreads descriptors over the sphere (as SSCD). The result goes to
the model registry as `descriptor` (and `out/`), with held-out metrics (top-1 retrieval of edited
val tiles among all clean val tiles, the mean positive / hardest negative similarity) and its
background bank (`background.npy`: descriptors of held-out ordinary content, for matching's score
normalisation).
"""
from __future__ import annotations

import os
import time
from contextlib import nullcontext

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field

from docray.config import Config, parse_args, save_config
from train_jobs.common import load_checkpoint_state, report_epoch, restore, run_trainer, unwrap, warmup_cosine


class DescriptorTrainConfig(Config):
    model: str = Field("descriptor_small", description="registered descriptor factory")
    image_size: int = Field(0, ge=0, description="tile input size of the model (0: the factory's default)")
    init_from: str = Field("", description="start from the weights of a saved descriptor folder (fine-tune / continue)")
    seed: int = 0
    n_pictures: int = Field(1200, description="synthetic target pictures (train split used; every template cut)")
    val_pictures: int = Field(200, description="pictures after the training ones, for held-out metrics")
    epochs: int = Field(10, ge=1)
    steps_per_epoch: int = Field(100, ge=1)
    batch_size: int = Field(128, ge=2, description="tiles per step (2 views each)")
    distractor_rate: float = Field(0.2, ge=0, lt=1, description="share of items that are fresh whole pictures, not tiles")
    grey_rate: float = Field(0.2, ge=0, le=1, description="share of edited copies turned grey (recolouring to grey is "
                                                          "the edit the descriptor missed most)")
    lr: float = 2e-3
    weight_decay: float = 0.05
    temperature: float = Field(0.05, description="InfoNCE temperature (SSCD uses 0.05)")
    koleo: float = Field(0.5, description="weight of the KoLeo entropy regulariser")
    num_workers: int = Field(1, ge=1, description="Ray Train workers")
    use_gpu: bool | None = Field(None, description="None: when the Ray cluster has a GPU")
    cpus_per_worker: float = Field(1.0, gt=0)
    max_failures: int = 1
    out: str = Field("", description="output folder ('' -> DOCRAY_HOME/models/descriptor-run)")
    background_pictures: int = Field(200, ge=0, description="held-out pictures whose tiles form the background bank")
    background_distractors: int = Field(1000, ge=0, description="whole-picture distractors added to the background bank")
    to_registry: bool = Field(True, description="save the result in the model registry as 'descriptor'")


def info_nce(za: torch.Tensor, zb: torch.Tensor, keys: torch.Tensor, t: float) -> torch.Tensor:
    """Symmetric InfoNCE over 2B views; views of the same tile (same key) are never negatives."""
    z = torch.cat([za, zb])  # (2B, d)
    k = torch.cat([keys, keys])
    sim = z @ z.T / t  # (2B, 2B)
    same = k[:, None] == k[None, :]
    eye = torch.eye(len(z), dtype=torch.bool, device=z.device)
    b = len(za)
    pos = torch.cat([torch.arange(b, 2 * b), torch.arange(0, b)]).to(z.device)
    sim = sim.masked_fill(same & ~eye & (torch.arange(len(z), device=z.device)[None, :] != pos[:, None]), -1e4)
    sim = sim.masked_fill(eye, -1e4)
    return F.cross_entropy(sim, pos)


def koleo(z: torch.Tensor) -> torch.Tensor:
    """Kozachenko-Leonenko entropy estimate (up to constants): -mean log nearest-neighbour distance."""
    with torch.no_grad():
        d = z @ z.T
        d.fill_diagonal_(-2)
        nn_idx = d.argmax(1)
    return -torch.log((z - z[nn_idx]).norm(dim=1) + 1e-6).mean()


@torch.inference_mode()
def evaluate(model, tiles, image_size: int, seed: int = 1, device="cpu") -> dict:
    """Edited copies of held-out tiles retrieved among all clean held-out tiles."""
    from docray.screening.augment import copy_edit, to_tensor

    model.eval()
    rng = np.random.default_rng(seed)
    embed = lambda ims: torch.cat([model(to_tensor(ims[i:i + 256], image_size).to(device)) for i in range(0, len(ims), 256)])
    clean = embed(tiles)
    edited = embed([copy_edit(t, rng) for t in tiles])
    sim = edited @ clean.T  # (n, n)
    pos = sim.diag()
    neg = sim.masked_fill(torch.eye(len(sim), dtype=torch.bool, device=sim.device), -2).max(1).values
    model.train()
    return {"val_top1": float((sim.argmax(1) == torch.arange(len(sim), device=sim.device)).float().mean()),
            "val_pos_sim": float(pos.mean()), "val_hard_neg_sim": float(neg.mean()), "val_tiles": len(tiles)}


def train_loop_per_worker(config: dict) -> None:
    import ray.train
    import ray.train.torch

    from docray.models import build_model
    from docray.screening.data import CopyPairs, raw_tiles, synth_pictures

    cfg = DescriptorTrainConfig(**config)
    torch.manual_seed(cfg.seed)
    pics, _ = synth_pictures(0, cfg.n_pictures, cfg.seed, split="train")
    val_pics, _ = synth_pictures(cfg.n_pictures, cfg.n_pictures + cfg.val_pictures, cfg.seed)
    tiles, val_tiles = raw_tiles(pics), raw_tiles(val_pics)
    if cfg.init_from:
        from docray.models import from_pretrained

        model = from_pretrained(cfg.init_from)
    else:
        model = build_model(cfg.model, **({"image_size": cfg.image_size} if cfg.image_size else {}))
    size = model.cfg.image_size
    ds = CopyPairs(tiles, size, cfg.steps_per_epoch * cfg.batch_size, cfg.seed, cfg.distractor_rate, cfg.grey_rate)
    loader = torch.utils.data.DataLoader(ds, batch_size=cfg.batch_size // ray.train.get_context().get_world_size(),
                                         shuffle=False, drop_last=True)
    loader = ray.train.torch.prepare_data_loader(loader)
    model = ray.train.torch.prepare_model(model)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    total = cfg.epochs * cfg.steps_per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(s, 20, total))
    start, _ = restore(model, opt, sched)
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if torch.cuda.is_available() else nullcontext()
    device = ray.train.torch.get_device()
    for epoch in range(start, cfg.epochs):
        ds.epoch = epoch
        if hasattr(loader, "sampler") and hasattr(loader.sampler, "set_epoch"):
            loader.sampler.set_epoch(epoch)
        t0, losses = time.perf_counter(), []
        for xa, xb, keys in loader:
            with amp:
                za, zb = model(xa), model(xb)
            za, zb = za.float(), zb.float()
            loss = info_nce(za, zb, keys, cfg.temperature) + cfg.koleo * koleo(za)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(float(loss))
        metrics = {"epoch": epoch, "loss": float(np.mean(losses)), "epoch_s": time.perf_counter() - t0}
        metrics.update(evaluate(unwrap(model), val_tiles, size, device=device))
        report_epoch(ray.train.get_context().get_world_rank(), model, opt, epoch, metrics, sched=sched,
                     extra={"spec": unwrap(model).docray_spec})


def run(cfg: DescriptorTrainConfig) -> dict:
    """Train on Ray (already initialised), save the model; returns the final metrics and paths."""
    from docray import paths
    from docray.models import build_model

    out = cfg.out or paths.sub("models", "descriptor-run")
    save_config(cfg, out)
    result = run_trainer(train_loop_per_worker, cfg.model_copy(update={"out": out}), "descriptor")
    state = load_checkpoint_state(result.checkpoint)
    model = build_model(state["spec"]["name"], **state["spec"]["overrides"])
    model.load_state_dict(state["model"])
    metrics = {k: v for k, v in result.metrics.items() if isinstance(v, (int, float))}
    return save_descriptor(model, state["spec"], metrics, cfg, out)


def save_descriptor(model, spec: dict, metrics: dict, cfg: DescriptorTrainConfig, out: str) -> dict:
    """Compute the background bank (held-out synthetic pictures after the training and validation
    rows, and whole-picture distractors), then save model + bank to `out/model` and, if asked, to
    the registry as `descriptor`."""
    from docray.models import save_pretrained
    from docray.screening.data import background_bank, synth_pictures
    from docray.screening.embed import BACKGROUND, Embedder, npy_bytes
    from docray.storage.registry import ModelRegistry

    first = cfg.n_pictures + cfg.val_pictures
    pics, _ = synth_pictures(first, first + cfg.background_pictures, cfg.seed)
    bank = npy_bytes(background_bank(Embedder(model.eval()), pics, cfg.background_distractors, cfg.seed))
    model_dir = str(save_pretrained(model, os.path.join(out, "model")))
    with open(os.path.join(model_dir, BACKGROUND), "wb") as f:
        f.write(bank)
    version = None
    if cfg.to_registry:
        version = ModelRegistry().save("descriptor", model, config=spec, metrics=metrics, extra_files={BACKGROUND: bank})
    return {"metrics": metrics, "model_dir": model_dir, "registry_version": version}


def main(argv=None) -> None:
    cfg = parse_args(DescriptorTrainConfig, argv, description=__doc__.split("\n\n")[0])
    from cluster.local import init_ray

    init_ray()
    res = run(cfg)
    print({k: round(v, 4) if isinstance(v, float) else v for k, v in res["metrics"].items()})
    print(f"model: {res['model_dir']}  registry: descriptor {res['registry_version']}")


if __name__ == "__main__":
    main()
