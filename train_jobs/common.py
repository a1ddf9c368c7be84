"""What every Ray Train entrypoint shares: worker set-up, checkpoints, the trainer, failure tests.

    start, state = restore(model, opt, sched)          # 0, {} on a fresh run
    for epoch in range(start, epochs):
        ...
        report_epoch(rank, model, opt, epoch, metrics, sched=sched, extra={"history": h})

Checkpoints hold one `state.pt` ({"model", "opt", "epoch"} plus "sched" and any `extra` keys, the
model's weights without DDP's `module.` prefix) and `metrics.json`. Rank 0 writes them in a
TemporaryDirectory; every rank reports (Ray Train's pattern). After a worker failure Ray restarts
the group (`FailureConfig`) and `restore` picks up the latest checkpoint.
"""
from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path

import torch
from torch import nn


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DDP wrapper (prepare_model), or the model itself."""
    return model.module if hasattr(model, "module") else model


def unwrap_state(state: dict) -> dict:
    """A DDP state dict without the `module.` prefix."""
    return {k.removeprefix("module."): v for k, v in state.items()}


def worker_setup(cpus: float):
    """Device and threads of this worker; returns (device, world_rank, world_size)."""
    import ray.train
    import ray.train.torch

    torch.set_num_threads(max(1, int(cpus)))
    ctx = ray.train.get_context()
    return ray.train.torch.get_device(), ctx.get_world_rank(), ctx.get_world_size()


def restore(model: nn.Module, opt, sched=None, checkpoint=None) -> tuple[int, dict]:
    """Load the latest checkpoint (or `checkpoint`) into model, optimiser and scheduler.

    Returns (epoch to start at, the whole saved state); (0, {}) when there is no checkpoint.
    """
    import ray.train

    ckpt = checkpoint or ray.train.get_checkpoint()
    if ckpt is None:
        return 0, {}
    with ckpt.as_directory() as d:
        state = torch.load(Path(d) / "state.pt", map_location="cpu", weights_only=False)
    unwrap(model).load_state_dict(unwrap_state(state["model"]))
    opt.load_state_dict(state["opt"])
    if sched is not None and "sched" in state:
        sched.load_state_dict(state["sched"])
    return int(state["epoch"]) + 1, state


def report_epoch(rank: int, model: nn.Module, opt, epoch: int, metrics: dict, files: dict[str, bytes] | None = None,
                 *, sched=None, extra: dict | None = None) -> None:
    """Rank 0 writes the checkpoint (state.pt, metrics.json, `files`) in a TemporaryDirectory; every rank reports."""
    import ray.train

    metrics = {**metrics, "epoch": epoch}
    if rank != 0:
        ray.train.report(metrics, checkpoint=None)
        return
    state = {"model": unwrap(model).state_dict(), "opt": opt.state_dict(), "epoch": epoch, **(extra or {})}
    if sched is not None:
        state["sched"] = sched.state_dict()
    with tempfile.TemporaryDirectory() as d:
        torch.save(state, Path(d) / "state.pt")
        (Path(d) / "metrics.json").write_text(json.dumps(metrics, default=float))
        for name, data in (files or {}).items():
            (Path(d) / name).write_bytes(data)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))


def load_result_state(result) -> tuple[dict, dict]:
    """(model state dict, metrics) of a finished run's latest checkpoint."""
    state = load_checkpoint_state(result.checkpoint)
    with result.checkpoint.as_directory() as d:
        metrics = json.loads((Path(d) / "metrics.json").read_text())
    return state["model"], metrics


def load_checkpoint_state(checkpoint) -> dict:
    """The whole `state.pt` of a checkpoint (model, opt, epoch and extras)."""
    with checkpoint.as_directory() as d:
        return torch.load(Path(d) / "state.pt", map_location="cpu", weights_only=False)


def warmup_cosine(step: int, warmup: int, total: int, progress: float | None = None) -> float:
    """Learning-rate factor: linear warm-up over `warmup` steps, then cosine decay to 0 at `total`
    (or at `progress` 1, where the share done is known otherwise, as under a time budget)."""
    if progress is None:
        progress = min(step, total) / max(total, 1)
    return min(1.0, (step + 1) / max(warmup, 1)) * 0.5 * (1 + math.cos(math.pi * min(max(progress, 0.0), 1.0)))


def maybe_fail(cfg_fail_at: int, epoch: int, out: str, rank: int) -> None:
    """Testing hook: raise once (a marker file remembers) to exercise FailureConfig + restore."""
    marker = Path(out) / ".failed_once"
    if epoch == cfg_fail_at and rank == 0 and not marker.exists():
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text("1")
        raise RuntimeError(f"injected failure after epoch {epoch} (fail_at_epoch)")


def run_trainer(loop, cfg, name: str):
    """Fit `loop` with TorchTrainer under cfg's scaling and failure settings; returns the Result.

    `cfg` needs: num_workers, cpus_per_worker, use_gpu (None: a GPU when the cluster has one),
    max_failures, out.
    """
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    use_gpu = cfg.use_gpu if cfg.use_gpu is not None else ray.cluster_resources().get("GPU", 0) > 0
    trainer = TorchTrainer(
        loop, train_loop_config=cfg.model_dump(),
        scaling_config=ScalingConfig(num_workers=cfg.num_workers, use_gpu=use_gpu,
                                     resources_per_worker={"CPU": cfg.cpus_per_worker}),
        run_config=RunConfig(name=name, storage_path=str(Path(cfg.out).resolve() / "ray"),
                             failure_config=FailureConfig(max_failures=cfg.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=2)),
    )
    return trainer.fit()
