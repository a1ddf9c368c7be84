"""Train the regen compression models jointly (content, type, generation) on Ray Train.

    python -m train_jobs.train_regen                                         # regen_small, CPU ok
    python -m train_jobs.train_regen --set model=regen_tiny n_train=32 n_val=8 max_epochs=2
    python -m train_jobs.train_regen --set init_from=~/.docray/models/regen/v0001   # warm start
    ray job submit --working-dir . -- python -m train_jobs.train_regen --set num_workers=2

One model holds the three (`docray.models.regen`); each step computes three losses on a batch of
synthetic documents: content (token cross-entropy of each field's value read from its line crop,
plus a CTC loss on the reader's encoder and the L1 error of the document corners the crops are cut
by; `val_lines`, `val_ctc` and `val_corners` log the parts, `val_line_exact` the share of validation
lines read exactly), type
(cross-entropy), generation (MSE between the generator's predicted clean image and the original's
clean render, the generator conditioned on the LABELLED type and content and their glyph layer).
Their weighted sum is minimised. After every epoch the validation losses are checked against the
convergence rule (`docray.compression.convergence`, configurable per loss); training stops when
all three have converged (or at `max_epochs`). Every epoch: a checkpoint (resumable: worker
restarts via `FailureConfig`; rerunning with the same `out` continues the run (Ray Train restores
it from its storage path); `resume_from=<checkpoint folder>` continues another run's) and a sample grid PNG in
`<out>/samples/epoch_XXX.png` (capture | glyph layer | generated | target). The result is saved to
`<out>/model` (`from_pretrained`) and the model registry as `regen`.
"""
from __future__ import annotations

import os
import time
from typing import Literal

import numpy as np
import torch
from pydantic import Field

from docray.compression.convergence import LOSSES, Convergence, converged
from docray.config import Config, parse_args, save_config
from train_jobs.common import load_checkpoint_state, report_epoch, restore, run_trainer, unwrap, warmup_cosine


class RegenTrainConfig(Config):
    model: str = Field("regen_small", description="registered regen factory (regen_small | regen_tiny)")
    model_overrides: dict = Field(default_factory=dict, description="overrides for the factory")
    seed: int = 0
    n_train: int = Field(512, ge=1, description="synthetic documents to train on (rows 0..n_train)")
    n_val: int = Field(32, ge=1, description="held-out documents after the training rows")
    flat_rate: float = Field(0.15, ge=0, le=1, description="share of examples whose content input is the flat "
                             "clean render instead of a photo (so the content model reads processed images too)")
    init_from: str = Field("", description="a regen model folder (model.safetensors) or a checkpoint folder "
                           "(state.pt) to start from: weights whose names and shapes match are loaded, the rest start fresh")
    original_size: tuple[int, int] = Field((384, 240), description="(w, h) of the captures (the originals)")
    max_epochs: int = Field(30, ge=1)
    time_budget_s: float = Field(0, ge=0, description="also stop after this many seconds of training (0: no limit)")
    batch_size: int = Field(16, ge=1, description="global batch (split across workers)")
    reader_steps: int = Field(0, ge=0, description="reader-only steps after each joint step, each on `line_batch` "
                              "random training lines: the reader needs many more steps than the type model and "
                              "the UNet (see the README's regen section)")
    line_batch: int = Field(64, ge=1, description="field lines per reader step (per worker)")
    lr: float = Field(5e-4, gt=0, description="AdamW peak rate")
    schedule: Literal["cosine", "constant"] = Field("cosine", description="cosine: warm-up over `warmup_steps`, then "
                                                    "cosine decay to 0 at max_epochs or the time budget, whichever comes first")
    warmup_steps: int = Field(100, ge=0)
    weight_decay: float = 0.01
    weights: dict[str, float] = Field(default_factory=lambda: {"content": 1.0, "type": 1.0, "generation": 4.0},
                                      description="loss weights of the sum minimised")
    convergence: Convergence = Convergence()
    n_samples: int = Field(4, ge=1, description="val documents in the per-epoch sample grid")
    num_workers: int = Field(1, ge=1)
    use_gpu: bool | None = Field(None, description="None: when the Ray cluster has a GPU")
    cpus_per_worker: float = Field(1.0, gt=0)
    max_failures: int = 1
    resume_from: str = Field("", description="a checkpoint folder of an earlier run to continue from")
    out: str = Field("", description="output folder ('' -> DOCRAY_HOME/models/regen-run)")
    to_registry: bool = Field(True, description="save the result in the model registry as 'regen'")


def _examples(cfg: RegenTrainConfig, model, start: int, stop: int) -> dict:
    from docray.compression.data import synth_examples

    return synth_examples(start, stop, cfg.seed, cfg.original_size, model.cfg, model.tokenizer, cfg.flat_rate)


def _batches(ex: dict, bs: int, shuffle: bool, gen: torch.Generator | None = None):
    """Batches of `bs` documents, each with its documents' field lines."""
    n = len(ex["types"])
    order = torch.randperm(n, generator=gen) if shuffle else torch.arange(n)
    for i in range(0, n, bs):
        idx = order[i:i + bs]
        b = {k: ex[k][idx] for k in ("pixels", "corner_px", "quad", "content_ids", "types", "target", "cond")}
        rows = torch.isin(ex["line_doc"], idx)
        b["lines"], b["line_ids"] = ex["lines"][rows].float() / 255, ex["line_ids"][rows]
        yield b


@torch.no_grad()
def evaluate(model, val: dict, bs: int, device, read_lines: int = 128) -> dict:
    """Validation losses with fixed diffusion noise (seeded), so epochs compare fairly, and
    `line_exact`: the share of the first `read_lines` field lines the content model reads exactly."""
    model.eval()
    state = torch.get_rng_state()
    torch.manual_seed(1234)
    sums, n = {}, 0
    for b in _batches(val, bs, shuffle=False):
        b = {k: v.to(device) for k, v in b.items()}
        out = model(**b)
        for k, v in out.items():  # the three losses and the content loss's parts
            sums[k] = sums.get(k, 0.0) + float(v) * len(b["types"])
        n += len(b["types"])
    torch.set_rng_state(state)
    out = {k: v / n for k, v in sums.items()}
    k = min(len(val["line_texts"]), read_lines)  # reads of the first lines, exactly right or not
    if k:
        for decode, reads in model.readings(val["lines"][:k].float().div(255).to(device)).items():
            key = "line_exact" if decode == "joint" else f"line_exact_{decode}"
            out[key] = sum(r == t for r, t in zip(reads, val["line_texts"][:k])) / k
    model.train()
    return out


@torch.no_grad()
def sample_grid(model, val: dict, n: int, path: str, device) -> None:
    """Rows: capture | glyph layer | generated (composited, few-step DDIM) | target."""
    from PIL import Image

    from docray.compression import layout
    from docray.compression.data import to_image

    model.eval()
    k = min(n, len(val["types"]))
    types, ids, cond = val["types"][:k].to(device), val["content_ids"][:k].to(device), val["cond"][:k].to(device)
    gen = model.generate(types, ids, cond)
    rows = []
    H, W = model.cfg.gen_size
    for i in range(k):
        cap = np.asarray(Image.fromarray((val["pixels"][i].permute(1, 2, 0).numpy() * 255).astype(np.uint8)).resize((W, H)))
        layer = ((val["cond"][i, :4].permute(1, 2, 0).numpy() + 1) * 127.5).round().astype(np.uint8)
        grey = np.full((H, W, 3), 160, np.uint8)
        rows.append(np.concatenate([cap, layout.composite(layer, grey), layout.composite(layer, to_image(gen[i])),
                                    to_image(val["target"][i])], axis=1))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(np.concatenate(rows, axis=0)).save(path)
    model.train()


def _init_from(model, folder: str) -> None:
    """Load the weights of `folder` (a saved model's model.safetensors, or a checkpoint's state.pt)
    whose names and shapes match `model`'s: a warm start, also from an earlier architecture."""
    import ray.train
    from safetensors.torch import load_file

    folder = os.path.expanduser(folder)
    if os.path.exists(os.path.join(folder, "state.pt")):
        src = load_checkpoint_state(ray.train.Checkpoint(folder))["model"]
    else:
        src = load_file(os.path.join(folder, "model.safetensors"))
    own = model.state_dict()
    keep = {k: v for k, v in src.items() if k in own and own[k].shape == v.shape}
    model.load_state_dict(keep, strict=False)
    print(f"init_from {folder}: {len(keep)} of {len(own)} tensors loaded")


def train_loop_per_worker(config: dict) -> None:
    import ray.train
    import ray.train.torch

    from docray.models import build_model

    from train_jobs.common import worker_setup

    cfg = RegenTrainConfig(**config)
    device, rank, world = worker_setup(cfg.cpus_per_worker)  # torch threads = the worker's CPUs
    torch.manual_seed(cfg.seed + rank)
    model = build_model(cfg.model, **cfg.model_overrides)
    if cfg.init_from:
        _init_from(model, cfg.init_from)
    # each worker renders its own contiguous share of the training rows
    train = _examples(cfg, model, rank * cfg.n_train // world, (rank + 1) * cfg.n_train // world)
    val = _examples(cfg, model, cfg.n_train, cfg.n_train + cfg.n_val)
    # reader steps leave the other parts' weights without gradients: DDP must be told
    model = ray.train.torch.prepare_model(model, parallel_strategy_kwargs={"find_unused_parameters": cfg.reader_steps > 0})
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    ckpt = ray.train.get_checkpoint()  # a restarted worker group (FailureConfig) or a rerun of this run
    if ckpt is None and cfg.resume_from:  # an earlier run's checkpoint folder
        ckpt = ray.train.Checkpoint(cfg.resume_from)
    start, state = restore(model, opt, checkpoint=ckpt)
    history = state.get("history") or {k: [] for k in LOSSES}
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)
    out_dir = cfg.out
    gen = torch.Generator().manual_seed(cfg.seed)
    t_start = time.perf_counter()
    per_epoch = -(-len(train["types"]) // max(1, cfg.batch_size // world)) * (1 + cfg.reader_steps)  # optimiser steps
    step, total = start * per_epoch, cfg.max_epochs * per_epoch  # a resumed run does not redo the warm-up
    warmup = min(cfg.warmup_steps, total // 10)  # short runs: 10%

    def opt_step(loss) -> None:
        nonlocal step
        if cfg.schedule == "cosine":
            by_time = (time.perf_counter() - t_start) / cfg.time_budget_s if cfg.time_budget_s else 0.0
            for g in opt.param_groups:
                g["lr"] = cfg.lr * warmup_cosine(step, warmup, total, progress=max(by_time, step / total))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1

    for epoch in range(start, cfg.max_epochs):
        gen.manual_seed(cfg.seed * 1000 + epoch)
        t0, sums, steps = time.perf_counter(), dict.fromkeys(LOSSES, 0.0), 0
        for b in _batches(train, max(1, cfg.batch_size // world), shuffle=True, gen=gen):
            if cfg.time_budget_s and time.perf_counter() - t_start > cfg.time_budget_s:
                break  # the budget is spent (and the cosine at 0): evaluate, checkpoint and stop
            b = {k: v.to(device) for k, v in b.items()}
            with amp:
                losses = model(**b)
            opt_step(sum(cfg.weights.get(k, 1.0) * losses[k].float() for k in LOSSES))
            for k in LOSSES:
                sums[k] += float(losses[k])
            steps += 1
            for _ in range(cfg.reader_steps):  # the reader alone, on random training lines
                idx = torch.randint(len(train["lines"]), (cfg.line_batch,), generator=gen)
                with amp:
                    read = model(lines=train["lines"][idx].to(device).float() / 255, line_ids=train["line_ids"][idx].to(device))
                opt_step(cfg.weights.get("content", 1.0) * read["content"].float())
        val_losses = evaluate(unwrap(model), val, cfg.batch_size, device)
        for k in LOSSES:
            history[k].append(val_losses[k])
        done = converged(history, cfg.convergence)
        metrics = {"epoch": epoch, "epoch_s": time.perf_counter() - t0, "lr": opt.param_groups[0]["lr"],
                   **{f"train_{k}": sums[k] / max(1, steps) for k in LOSSES},
                   **{f"val_{k}": v for k, v in val_losses.items()},
                   **{f"converged_{k}": bool(v) for k, v in done.items()}, "converged": all(done.values())}
        if rank == 0:
            sample_grid(unwrap(model), val, cfg.n_samples, os.path.join(out_dir, "samples", f"epoch_{epoch:03d}.png"), device)
        report_epoch(rank, model, opt, epoch, metrics, extra={"history": history, "spec": unwrap(model).docray_spec})
        if metrics["converged"] or (cfg.time_budget_s and time.perf_counter() - t_start > cfg.time_budget_s):
            break


def run(cfg: RegenTrainConfig) -> dict:
    """Train on Ray (already initialised), save the model; returns the final metrics and paths."""
    from docray import paths
    from docray.models import build_model, save_pretrained
    from docray.storage.registry import ModelRegistry

    out = os.path.abspath(cfg.out or paths.sub("models", "regen-run"))
    cfg = cfg.model_copy(update={"out": out})
    save_config(cfg, out)
    result = run_trainer(train_loop_per_worker, cfg, "regen")
    state = load_checkpoint_state(result.checkpoint)
    model = build_model(state["spec"]["name"], **state["spec"]["overrides"])
    model.load_state_dict(state["model"])
    model_dir = os.path.join(out, "model")
    save_pretrained(model, model_dir)
    metrics = {k: v for k, v in result.metrics.items() if isinstance(v, (int, float))}
    version = None
    if cfg.to_registry:
        version = ModelRegistry().save("regen", model, config=state["spec"], metrics=metrics)
    return {"metrics": metrics, "model_dir": model_dir, "registry_version": version,
            "checkpoint": result.checkpoint.path, "history": state["history"]}


def main(argv=None) -> None:
    cfg = parse_args(RegenTrainConfig, argv, description=__doc__.split("\n\n")[0])
    from cluster.local import init_ray

    init_ray()
    res = run(cfg)
    print({k: round(v, 4) if isinstance(v, float) else v for k, v in res["metrics"].items()})
    print(f"model: {res['model_dir']}  registry: regen {res['registry_version']}  checkpoint: {res['checkpoint']}")


if __name__ == "__main__":
    main()
