"""Multi-task training of the unified recognition model on Ray Train, from the MAE encoder.

Mixed-task batches (every single-frame task + a cycled multi-frame task per batch), one loss per
task type (docray/recognition/engine.py). Each epoch: a checkpoint, held-out metrics per task
(accuracy / MAE / mIoU / mAP@0.5), resume after a failure (FailureConfig). At the end the model
(weights, catalogue and query-text vectors inside) is registered as `register_as`; the Serve app
and the Data job load the latest version.

    python -m train_jobs.unified_train --set epochs=2 n_docs=200
    python -m train_jobs.unified_train --set model=unified_tiny encoder_from='' text_encoder=hash n_docs=40
    ray job submit --working-dir . -- python -m train_jobs.unified_train --set num_workers=2 epochs=20
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


class UnifiedTrainConfig(Config):
    model: str = Field("unified_small", description="registered unified factory (unified_tiny|small|base)")
    model_overrides: dict = Field(default_factory=dict, description="e.g. {decoder_layers: 3}")
    catalogue: str | None = Field(None, description="task catalogue YAML (None: the packaged tasks.yaml)")
    tasks: list[str] | None = Field(None, description="train only these tasks (single-task baselines)")
    text_encoder: str = Field("minilm", description="query-text encoder: minilm (packaged, frozen) | hash (tests)")
    encoder_from: str = Field("recognition-encoder", description="registry name of the MAE encoder ('' = scratch)")
    encoder_version: str = "latest"
    n_docs: int = Field(2000, ge=10, description="synthetic documents (80/10/10 train/val/test)")
    seed: int = 0
    epochs: int = Field(8, ge=1)
    batch_size: int = Field(32, ge=1, description="documents per batch per worker")
    lr: float = Field(1e-3, gt=0, description="AdamW peak rate for the new parts (cosine, 1 epoch warm-up)")
    encoder_lr: float = Field(5e-4, gt=0, description="peak rate for the pre-trained encoder")
    weight_decay: float = 0.05
    frame_tasks_per_batch: int = Field(1, ge=1, description="multi-frame tasks per batch (each costs encoder passes)")
    eval_split: str = Field("test", description="held-out split for the metrics")
    num_workers: int = Field(1, ge=1)
    cpus_per_worker: float = Field(1.0, gt=0)
    use_gpu: bool | None = None
    max_failures: int = Field(2, ge=0)
    out: str = Field(default_factory=lambda: paths.sub("runs", "unified_train"), description="run folder")
    register_as: str = Field("recognition-unified", description="model registry name ('' = do not register)")
    fail_at_epoch: int = Field(-1, description="testing: raise once after this epoch's checkpoint")


def catalogue_of(c: UnifiedTrainConfig):
    from docray.recognition.tasks import load_catalogue, subset

    cat = load_catalogue(c.catalogue)
    return subset(cat, c.tasks) if c.tasks else cat


def build(c: UnifiedTrainConfig, query_text=None):
    """The model of config `c`, with query-text vectors set and the registered encoder loaded."""
    from docray.models import build_model
    from docray.recognition.text import embed_texts

    cat = catalogue_of(c)
    model = build_model(c.model, catalogue=cat.model_dump(), **c.model_overrides)
    model.set_query_text(query_text if query_text is not None else embed_texts([t.query for t in cat.tasks], c.text_encoder))
    if c.encoder_from:
        from docray.storage.registry import ModelRegistry

        state, config, _ = ModelRegistry().load(c.encoder_from, c.encoder_version)
        want = model.cfg.encoder
        if config.get("name") != want:
            raise ValueError(f"registered encoder {c.encoder_from!r} is a {config.get('name')!r}; {c.model} needs {want!r}")
        model.encoder.load_state_dict(state)
    return model, cat


def make_optimizer(model, c: UnifiedTrainConfig) -> torch.optim.Optimizer:
    enc = [p for n, p in model.named_parameters() if n.startswith("encoder.") and p.requires_grad]
    rest = [p for n, p in model.named_parameters() if not n.startswith("encoder.") and p.requires_grad]
    return torch.optim.AdamW([{"params": enc, "lr": c.encoder_lr}, {"params": rest, "lr": c.lr}],
                             weight_decay=c.weight_decay)


def train_loop_per_worker(config: dict) -> None:
    import ray.train.torch

    from docray.recognition.data import DocumentSet, documents_table, prepare
    from docray.recognition.engine import evaluate, train_epoch

    c = UnifiedTrainConfig.model_validate({k: v for k, v in config.items() if k != "query_text"})
    device, rank, world = worker_setup(c.cpus_per_worker)
    torch.manual_seed(c.seed)
    model, cat = build(c, config["query_text"])
    arrays = prepare(documents_table(c.n_docs, c.seed), cat, model.image_size)
    opt = make_optimizer(model, c)
    start, _ = restore(model, opt)
    train = DocumentSet(arrays, "train")
    loader = torch.utils.data.DataLoader(train, batch_size=c.batch_size, shuffle=True, drop_last=len(train) > c.batch_size)
    held_out = torch.utils.data.DataLoader(DocumentSet(arrays, c.eval_split), batch_size=64)
    loader = ray.train.torch.prepare_data_loader(loader)
    net = ray.train.torch.prepare_model(model, parallel_strategy_kwargs={"find_unused_parameters": True})
    steps = c.epochs * len(loader)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(s, len(loader), steps))
    for _ in range(start * len(loader)):
        sched.step()
    amp = device.type == "cuda"
    step = start * len(loader)
    for epoch in range(start, c.epochs):
        if world > 1:
            loader.sampler.set_epoch(epoch)
        t0 = time.time()
        with tqdm(total=len(loader), desc=f"unified epoch {epoch}", unit="batch", disable=rank != 0) as bar:
            losses, step = train_epoch(net, loader, opt, cat, device, step, scheduler=sched, progress=bar,
                                       frame_tasks_per_batch=c.frame_tasks_per_batch, amp=amp)
        metrics = {f"loss/{k}": v for k, v in losses.items()}
        if rank == 0:
            metrics.update({f"{c.eval_split}/{k}": v for k, v in evaluate(model, held_out, cat, device).items()})
        metrics.update(epoch_s=time.time() - t0, started_at_epoch=start)
        report_epoch(rank, model, opt, epoch, metrics)
        maybe_fail(c.fail_at_epoch, epoch, c.out, rank)


def main(argv=None) -> dict:
    from cluster.local import init_ray
    from docray.recognition.text import embed_texts

    c = parse_args(UnifiedTrainConfig, argv, description=__doc__.split("\n")[0])
    cat = catalogue_of(c)
    query_text = embed_texts([t.query for t in cat.tasks], c.text_encoder).tolist()  # once, here
    build(c, query_text)  # fail fast (bad catalogue, task list, missing or mismatched encoder) in the driver
    init_ray()
    save_config(c, c.out)
    result = run_trainer(train_loop_per_worker, _WithText(c, query_text), "unified_train")
    state, metrics = load_result_state(result)
    version = ""
    if c.register_as:
        from docray.storage.registry import ModelRegistry

        model, _ = build(c.model_copy(update={"encoder_from": ""}), query_text)
        model.load_state_dict(unwrap_state(state))
        config = {"name": model.docray_spec["name"], "overrides": model.docray_spec["overrides"], "train": c.model_dump()}
        version = ModelRegistry().save(c.register_as, model, config, metrics)
    summary = {k: v for k, v in metrics.items() if k.startswith(f"{c.eval_split}/")}
    summary.update(epochs=metrics["epoch"] + 1, resumed_at_epoch=metrics["started_at_epoch"],
                   registered=f"{c.register_as}/{version}")
    Path(c.out).mkdir(parents=True, exist_ok=True)
    Path(c.out, "metrics.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary))
    return summary


class _WithText:
    """The config plus the precomputed query-text vectors, as the train loop config."""

    def __init__(self, c: UnifiedTrainConfig, query_text: list):
        self.c, self.query_text = c, query_text
        self.num_workers, self.cpus_per_worker, self.use_gpu = c.num_workers, c.cpus_per_worker, c.use_gpu
        self.max_failures, self.out = c.max_failures, c.out

    def model_dump(self) -> dict:
        return {**self.c.model_dump(), "query_text": self.query_text}


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
