"""Multi-task training of the unified recognition model on Ray Train, from the MAE encoder.

Data: `train=` and `val=` documents datasets (Parquet, local or s3://, the `documents` contract:
`id`, `image`, `doc_type_name` and, per task, the label columns of the catalogue), or neither: the
synthetic default (`n_train` + `n_val` documents), made once on the driver through Ray Data. The
driver checks that every task trained has labelled rows (`check_labels`; `tasks=[...]` trains those
a dataset labels) and fixes the steps per epoch; each worker reads its equal shard through
`DocumentBatch` (the per-image code inference uses). A document missing a task's label or frames
is not asked that task. Mixed-task batches (every single-frame task + a cycled multi-frame task per
batch), one loss per task type (docray/recognition/engine.py). Each epoch: held-out metrics per task
(accuracy / MAE / mIoU / mAP@0.5) over every worker's val shard, a checkpoint, resume after a failure
(FailureConfig). At the end the model (weights, catalogue and query-text vectors inside) is
registered as `register_as`; the Serve app and the Data job load the latest version.

    python -m train_jobs.train_recognition --set epochs=2 n_train=200 n_val=40
    python -m train_jobs.train_recognition --set model=unified_tiny encoder_from='' text_encoder=hash n_train=40 n_val=10
    python -m train_jobs.train_recognition --set train=data/docs/train val=data/docs/val init_from=registry:recognition-unified
    ray job submit --working-dir . -- python -m train_jobs.train_recognition --set num_workers=2 epochs=20
"""
from __future__ import annotations

import json
import os
import sys
import time

import numpy as np
import torch
from pydantic import Field
from tqdm import tqdm

from docray import paths
from docray.config import parse_args, save_config
from docray.storage.blobs import write_file
from train_jobs.common import (agree, all_gather, all_sum, epoch_batches, load_result_state, maybe_exit, maybe_fail,
                               report_epoch, restore, run_trainer, samples_per_s, steps_per_epoch, unwrap_state, warmup_cosine,
                               worker_setup)
from train_jobs.pretrain_recognition import DocumentsJobConfig, documents_datasets, saved_state, shuffle_plan, shuffled


class RecognitionTrainConfig(DocumentsJobConfig):
    model: str = Field("unified_small", description="registered unified factory (unified_tiny|small|base)")
    model_overrides: dict = Field(default_factory=dict, description="e.g. {decoder_layers: 3}")
    catalogue: str | None = Field(None, description="task catalogue YAML (None: the packaged tasks.yaml)")
    tasks: list[str] | None = Field(None, description="train only these tasks (single-task baselines, or the "
                                                      "tasks a dataset labels)")
    text_encoder: str = Field("minilm", description="query-text encoder: minilm (packaged, frozen) | hash (tests)")
    init_from: str = Field("", description="fine-tune a unified model: 'registry:<name>[@<version>]' or a saved "
                                           "folder; its tensors that fit this model are loaded ('' = encoder_from)")
    encoder_from: str = Field("recognition-encoder", description="registry name of the MAE encoder ('' = scratch; "
                                                                 "unused with init_from)")
    encoder_version: str = "latest"
    epochs: int = Field(8, ge=1)
    batch_size: int = Field(32, ge=1, description="documents per batch per worker")
    lr: float = Field(1e-3, gt=0, description="AdamW peak rate for the new parts (cosine, 1 epoch warm-up)")
    encoder_lr: float = Field(5e-4, gt=0, description="peak rate for the pre-trained encoder")
    frame_tasks_per_batch: int = Field(1, ge=1, description="multi-frame tasks per batch (each costs encoder passes)")
    out: str = Field(default_factory=lambda: paths.sub("runs", "train_recognition"), description="run folder")
    register_as: str = Field("recognition-unified", description="model registry name ('' = do not register)")


def catalogue_of(c: RecognitionTrainConfig):
    from docray.recognition.tasks import load_catalogue, subset

    cat = load_catalogue(c.catalogue)
    return subset(cat, c.tasks) if c.tasks else cat


def build(c: RecognitionTrainConfig, query_text=None):
    """The model of config `c`, with query-text vectors set and its starting weights: `init_from`'s
    tensors that fit (fine-tuning; with the same catalogue, all of them), else the registered encoder."""
    from docray.models import build_model
    from docray.recognition.text import embed_texts

    cat = catalogue_of(c)
    model = build_model(c.model, catalogue=cat.model_dump(), **c.model_overrides)
    model.set_query_text(query_text if query_text is not None else embed_texts([t.query for t in cat.tasks], c.text_encoder))
    if c.init_from:
        state, _ = saved_state(c.init_from)
        own = model.state_dict()
        fit = {k: v for k, v in state.items() if k in own and k != "query_text" and v.shape == own[k].shape}
        if not fit:
            raise ValueError(f"init_from {c.init_from!r}: none of its tensors fit {c.model}")
        model.load_state_dict(fit, strict=False)
        print(f"init_from {c.init_from}: {len(fit)} of {len(own)} tensors loaded (the rest start fresh)", flush=True)
    elif c.encoder_from:
        from docray.storage.registry import ModelRegistry

        state, config, _ = ModelRegistry().load(c.encoder_from, c.encoder_version)
        want = model.cfg.encoder
        if config.get("name") != want:
            raise ValueError(f"registered encoder {c.encoder_from!r} is a {config.get('name')!r}; {c.model} needs {want!r}")
        model.encoder.load_state_dict(state)
    return model, cat


def make_optimizer(model, c: RecognitionTrainConfig) -> torch.optim.Optimizer:
    enc = [p for n, p in model.named_parameters() if n.startswith("encoder.") and p.requires_grad]
    rest = [p for n, p in model.named_parameters() if not n.startswith("encoder.") and p.requires_grad]
    return torch.optim.AdamW([{"params": enc, "lr": c.encoder_lr}, {"params": rest, "lr": c.lr}],
                             weight_decay=c.weight_decay)


def validate(model, shard, collate, cat, batch_size: int, device) -> dict:
    """Held-out metrics over every worker's val shard: the sums of `eval_stats` added over ranks, the
    detection rows joined (mAP ranks them all), so they are those of one pass over all val rows."""
    from docray.recognition.engine import eval_stats, metrics_from_stats

    sums, det = eval_stats(model, shard.iter_torch_batches(batch_size=batch_size, collate_fn=collate), cat, device)
    det = {n: [d[n] for d in all_gather(det) if d[n] is not None] for n in det}
    det = {n: tuple(np.concatenate(p) for p in zip(*parts)) if parts else None for n, parts in det.items()}
    return metrics_from_stats(all_sum(sums), det, cat)


def train_loop_per_worker(config: dict) -> None:
    import ray.train
    import ray.train.torch

    from docray.recognition.data import DocumentBatch
    from docray.recognition.engine import train_step

    c = RecognitionTrainConfig.model_validate({k: v for k, v in config.items() if k != "query_text"})
    device, rank, world = worker_setup(c.cpus_per_worker)
    torch.manual_seed(c.seed)
    model, cat = build(c, config["query_text"])
    steps = c.steps_per_epoch  # fixed on the driver: the same on every rank
    opt = make_optimizer(model, c)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(s, steps, c.epochs * steps))
    start, state = restore(model, opt, sched)
    net = ray.train.torch.prepare_model(model, parallel_strategy_kwargs={"find_unused_parameters": True})
    train, val = ray.train.get_dataset_shard("train"), ray.train.get_dataset_shard("val")
    collate = DocumentBatch(cat, model.image_size)
    parts = ["loss", "gate", "task_classifier", *cat.names()]
    amp = device.type == "cuda"
    step, elapsed = start * steps, state.get("elapsed_s", 0.0)
    for epoch in range(start, c.epochs):
        net.train()
        t0, first, sums, stop = time.time(), step, {f"{s}/{k}": 0.0 for s in ("sum", "n") for k in parts}, False
        batches = epoch_batches(train, steps, batch_size=c.batch_size, collate_fn=collate, drop_last=True,
                                **shuffled(c, epoch))
        for batch in tqdm(batches, total=steps, desc=f"unified epoch {epoch}", unit="batch", disable=rank != 0):
            losses = train_step(net, batch, opt, cat, device, step, scheduler=sched,
                                frame_tasks_per_batch=c.frame_tasks_per_batch, amp=amp)
            step += 1
            for k, v in losses.items():  # a task no document of the batch was asked has no loss
                sums[f"sum/{k}"], sums[f"n/{k}"] = sums[f"sum/{k}"] + v, sums[f"n/{k}"] + 1
            maybe_exit(c.exit_at_step, step, c.out, rank)
            if c.time_budget_s and agree(elapsed + time.time() - t0 > c.time_budget_s):
                stop = True
                break
        elapsed += time.time() - t0
        rate = samples_per_s((step - first) * c.batch_size, time.time() - t0)  # documents a second
        sums = all_sum(sums)
        metrics = {f"loss/{k}": sums[f"sum/{k}"] / sums[f"n/{k}"] for k in parts if sums[f"n/{k}"]}
        metrics.update({f"val/{k}": v for k, v in validate(model, val, collate, cat, c.batch_size, device).items()})
        metrics.update(steps=step, epoch_s=time.time() - t0, train_samples_per_s=rate, started_at_epoch=start,
                       worker_imported_synth=agree("docray.synth" in sys.modules))
        report_epoch(rank, model, opt, epoch, metrics, sched=sched, extra={"elapsed_s": elapsed})
        maybe_fail(c.fail_at_epoch, epoch, c.out, rank)
        if stop:
            break


def main(argv=None) -> dict:
    from cluster.local import init_ray
    from docray.datasets.contracts import contract
    from docray.recognition.data import DocumentBatch, check_labels
    from docray.recognition.text import embed_texts

    started = time.time()
    c = parse_args(RecognitionTrainConfig, argv, description=__doc__.split("\n")[0])
    cat = catalogue_of(c)
    query_text = embed_texts([t.query for t in cat.tasks], c.text_encoder).tolist()  # once, here
    model, _ = build(c, query_text)  # fail fast (bad catalogue, task list, init_from, encoder) in the driver
    init_ray()
    ds, train, val = documents_datasets(c, DocumentBatch(cat, model.image_size).columns,
                                        required=contract("documents").required, cache=False)
    check_labels(ds["train"], cat)  # every task has labelled rows (else an error naming its columns)
    check_labels(ds["val"], cat, require=False)  # known document types
    steps = steps_per_epoch(ds["train"].count(), c.batch_size, c.num_workers)
    ds, c = shuffle_plan(decoded_documents(ds, model.image_size), c)
    c = c.model_copy(update={"train": train, "val": val, "steps_per_epoch": min(steps, c.steps_per_epoch or steps)})
    save_config(c, c.out)
    result = run_trainer(train_loop_per_worker, _WithText(c, query_text), "train_recognition", ds)
    state, metrics = load_result_state(result)
    version = ""
    if c.register_as:
        from docray.storage.registry import ModelRegistry
        from train_jobs.common import model_card

        model, _ = build(c.model_copy(update={"encoder_from": "", "init_from": ""}), query_text)
        model.load_state_dict(unwrap_state(state))
        config = {"name": model.docray_spec["name"], "overrides": model.docray_spec["overrides"], "train": c.model_dump()}
        card = model_card(c, started, {"train": train, "val": val}, key_metric=_key_metric(metrics))
        version = ModelRegistry().save(c.register_as, model, config, metrics, card=card)
    summary = {k: v for k, v in metrics.items() if k.startswith("val/")}
    summary.update(loss=metrics["loss/loss"], epochs=metrics["epoch"] + 1, steps=metrics["steps"],
                   resumed_at_epoch=metrics["started_at_epoch"], worker_imported_synth=metrics["worker_imported_synth"],
                   registered=f"{c.register_as}/{version}", train=train, val=val)
    write_file(paths.join(c.out, "metrics.json"), json.dumps(summary, indent=2).encode())
    print(json.dumps(summary))
    return summary


def decoded_documents(ds: dict, size: int) -> dict:
    """Each document's capture and frames decoded and resized once (`DocumentPixels`, in Ray Data
    tasks), not by the collate_fn on every epoch: cached in Ray's object store when they fit."""
    from docray.recognition.data import DocumentPixels
    from train_jobs.common import cache_if_fits

    rows = sum(d.count() for d in ds.values())  # before the map: Parquet metadata, no read
    return cache_if_fits({s: d.map_batches(DocumentPixels(size), batch_format="pyarrow", batch_size=32)
                          for s, d in ds.items()}, rows)


def _key_metric(metrics: dict) -> str:
    """The metric `docray models list` shows: the doc_type task's validation figure when there is one,
    else the first validation figure."""
    val = sorted(k for k in metrics if k.startswith("val/"))
    return next((k for k in val if k.startswith("val/doc_type")), val[0] if val else "")


class _WithText:
    """The config plus the precomputed query-text vectors, as the train loop config."""

    def __init__(self, c: RecognitionTrainConfig, query_text: list):
        self.c, self.query_text = c, query_text
        self.num_workers, self.cpus_per_worker, self.use_gpu = c.num_workers, c.cpus_per_worker, c.use_gpu
        self.max_failures, self.out, self.worker_resources = c.max_failures, c.out, c.worker_resources

    def model_dump(self) -> dict:
        return {**self.c.model_dump(), "query_text": self.query_text}


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
