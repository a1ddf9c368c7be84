"""Train the three mask-privacy models on Ray Train: original recogniser, masked recogniser, inpainter.

    python -m train_jobs.train_privacy                                   # synthetic faces, recognizer_small, CPU ok
    python -m train_jobs.train_privacy --set recognizer=recognizer_tiny inpainter=inpaint_unet_tiny \
        n_identities=8 samples=20 epochs=1 inpaint_epochs=1                  # smoke run
    python -m train_jobs.train_privacy --set train=/data/faces/train val=/data/faces/val masks=/data/masks
    python -m train_jobs.train_privacy --set data=/data/lfw              # an ImageFolder of identities
    python -m train_jobs.train_privacy --set init_from.masked=registry:mask_recognizer_masked train=...
    ray job submit --working-dir . -- python -m train_jobs.train_privacy --set num_workers=2

Data (`docray.datasets.contracts`): `train` and `val` are datasets of the `faces` contract (id, image,
identity; a Parquet folder or file, local or s3://). With `val` empty, the rows of `train` whose
`split` is 'val' validate and those whose split is 'train' train (test rows are left for
`data_jobs.privacy_grid`). With no `train`, the synthetic faces (`n_identities` x `samples`, split
by sample 80/10/10) are materialised once on the driver (`train_jobs.common.synth_dataset`); `data`
instead imports an ImageFolder of identities (root/<identity>/<image>, e.g. LFW) into `out/data/faces`.
`masks` is a dataset of the `masks` contract (id, mask): the training mask bank, read once on the
driver and handed to the workers in their config (`mask_bank` synthetic masks of seed `mask_seed`
when empty; the grid evaluates with other seeds).

The driver fixes what every rank shares: the classes (the sorted distinct identities of the
training rows: class id = index), the steps of an epoch, the mask bank. Each worker reads its equal
shard through `iter_torch_batches` with the library's preprocessing as `collate_fn`
(`docray.privacy.data.FacePreprocess` / `MaskedFaces`: decode, resize to `image_size`, [0, 1]: what
the evaluation feeds the recognisers). The original and the masked recogniser are the same factory,
the same parameters and the same epochs; the masked one sees every training image overlaid with a
mask drawn at random from the bank with a random placement. The inpainter learns masked -> whole
on the same images and masks. Validation runs over every rank's val shard (each row with a fixed
mask of the bank) and is summed over the ranks. Each model goes to the registry
(`mask_recognizer_original`, `mask_recognizer_masked`, `mask_inpainter`) with its val metrics and
`worker_imported_synth` (1 if any worker had imported docray.synth: it must stay 0).
"""
from __future__ import annotations

import os
import sys
import time

import numpy as np
import torch
from pydantic import Field

from docray import paths
from docray.config import Config, parse_args, save_config
from train_jobs.common import (agree, all_sum, epoch_batches, load_checkpoint_state, report_epoch, restore, run_trainer,
                               samples_per_s, unwrap, worker_setup)

FACE_COLUMNS = ["id", "image", "identity"]  # what the trainer reads of a faces dataset
KIND_NO = {"original": 0, "masked": 1, "inpaint": 2}


class PrivacyTrainConfig(Config):
    train: str = Field("", description="faces dataset to train on (Parquet folder/file, local or s3://; columns id, "
                                       "image, identity): with val '' its rows of split 'train'. '' -> synthetic faces")
    val: str = Field("", description="faces dataset to validate on; '' -> the rows of `train` whose split is 'val'")
    data: str = Field("", description="instead of train/val: an ImageFolder of identities (root/<identity>/<image>, "
                                      "e.g. LFW), imported into out/data/faces (split by file order per identity, 80/10/10)")
    masks: str = Field("", description="masks dataset (columns id, mask): the training mask bank. '' -> `mask_bank` "
                                       "synthetic masks of seed `mask_seed`")
    n_identities: int = Field(64, ge=2, description="synthetic faces: identities (harder with more)")
    samples: int = Field(40, ge=10, description="synthetic faces: samples per identity (8 of 10 train, 1 val, 1 test)")
    image_size: int = 64
    seed: int = 0
    recognizer: str = Field("recognizer_small", description="registered recogniser factory (both recognisers)")
    recognizer_overrides: dict = Field(default_factory=dict, description="overrides of that factory, e.g. "
                                       "'{head: cosine, margin: 0.2}': a CosFace head (docray.models.recognizer)")
    inpainter: str = Field("inpaint_unet_small", description="registered inpainting factory")
    epochs: int = Field(10, ge=1, description="recognisers (both: the method's same epochs)")
    batch_size: int = Field(64, ge=2, description="per worker")
    lr: float = Field(2e-3, description="recognisers: AdamW, cosine decay")
    weight_decay: float = 5e-4
    inpaint_epochs: int = Field(10, ge=1)
    inpaint_lr: float = 2e-3
    mask_bank: int = Field(600, ge=6, description="synthetic training masks (bins evenly)")
    mask_seed: int = Field(100, description="seed of the synthetic training masks; the grid uses other seeds")
    max_shift: float = Field(0.125, description="random mask placement: roll up to this fraction of the side")
    shuffle_buffer: int = Field(2048, ge=0, description="rows of each worker's local shuffle buffer (0: file order)")
    models: list[str] = Field(["original", "masked", "inpaint"], description="which models to train")
    init_from: dict[str, str] = Field({}, description="start a model from saved weights to fine-tune, by kind: e.g. "
                                      "init_from.masked=registry:mask_recognizer_masked (or a saved folder); weights "
                                      "whose names and shapes match are loaded (a classifier for other identities "
                                      "starts fresh)")
    time_budget_s: float = Field(0, ge=0, description="stop a model's training after the epoch that passes this "
                                 "many seconds (0: no limit); decided once for all ranks")
    num_workers: int = Field(1, ge=1)
    cpus_per_worker: float = Field(1.0, gt=0)
    use_gpu: bool | None = Field(None, description="None: when the cluster has a GPU")
    max_failures: int = 1
    out: str = Field("", description="run folder ('' -> DOCRAY_HOME/reports/privacy/train)")
    run_name: str = Field("", description="Ray Train run name prefix; '' -> a fresh run per call. Give a name "
                                          "(and the same out) to resume that run from its checkpoints")


class MaskRun(Config):
    """What one model's workers get: the job's config and what the driver fixed for every rank."""
    job: PrivacyTrainConfig
    kind: str
    classes: list[int] = Field(description="sorted identity values; class id = index")
    steps: int = Field(description="optimiser steps per epoch, on every rank")
    mask_pngs: list[bytes] = Field(description="the training mask bank, PNG (255 kept, 0 hidden)")


def _to(device, batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    x, y, *m = batch
    return x.to(device), y.to(device), m[0].to(device) if m else None


def train_loop_per_worker(config: dict) -> None:
    import ray.train
    import ray.train.torch

    from docray.privacy import training as T
    from docray.privacy.data import FacePreprocess, MaskedFaces
    from docray.models import build_model

    mrun = MaskRun(**config)
    cfg = mrun.job
    device, rank, _ = worker_setup(cfg.cpus_per_worker)
    torch.manual_seed(cfg.seed + rank)
    if mrun.kind == "inpaint":
        model, epochs, lr, wd = build_model(cfg.inpainter, image_size=cfg.image_size), cfg.inpaint_epochs, cfg.inpaint_lr, 0.0
    else:
        model = build_model(cfg.recognizer, num_classes=len(mrun.classes), **cfg.recognizer_overrides)
        epochs, lr, wd = cfg.epochs, cfg.lr, cfg.weight_decay
    spec = model.docray_spec
    if cfg.init_from.get(mrun.kind):
        loaded, total = T.warm_start(model, cfg.init_from[mrun.kind])
        print(f"{mrun.kind}: init_from {cfg.init_from[mrun.kind]}: {loaded} of {total} tensors loaded", flush=True)
    model = ray.train.torch.prepare_model(model)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=wd)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs * mrun.steps)
    start, _ = restore(model, opt, sched)  # a checkpoint of this run (restart or resume) wins over init_from
    if mrun.kind == "original":
        prep = FacePreprocess(cfg.image_size, mrun.classes)
    else:
        prep = MaskedFaces(cfg.image_size, mrun.classes, mrun.mask_pngs, seed=[cfg.seed, rank, KIND_NO[mrun.kind], start],
                           max_shift=cfg.max_shift)
    val_prep = MaskedFaces(cfg.image_size, mrun.classes, mrun.mask_pngs)  # a fixed mask per row
    shard, val_shard = ray.train.get_dataset_shard("train"), ray.train.get_dataset_shard("val")
    t_start = time.perf_counter()
    for epoch in range(start, epochs):
        model.train()
        t0, loss_sum = time.perf_counter(), 0.0
        shuffle = {} if not cfg.shuffle_buffer else {"local_shuffle_buffer_size": cfg.shuffle_buffer,
                                                      "local_shuffle_seed": cfg.seed + epoch}
        for batch in epoch_batches(shard, mrun.steps, batch_size=cfg.batch_size, collate_fn=prep, drop_last=True, **shuffle):
            x, y, masks = _to(device, batch)
            loss = T.inpaint_step(model, x, masks) if mrun.kind == "inpaint" else T.recognizer_step(model, x, y, masks)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += loss.item()
        rate = samples_per_s(mrun.steps * cfg.batch_size, time.perf_counter() - t0)  # faces a second
        sums = T.evaluate(unwrap(model), mrun.kind, (_to(device, b) for b in epoch_batches(
            val_shard, batch_size=cfg.batch_size, collate_fn=val_prep)))
        totals = all_sum({**sums, "loss": loss_sum, "synth": float("docray.synth" in sys.modules)})
        metrics = {"loss": totals["loss"] / (mrun.steps * cfg.num_workers), "epoch_s": time.perf_counter() - t0,
                   "train_samples_per_s": rate,
                   "steps": (epoch + 1) * mrun.steps, "worker_imported_synth": int(totals["synth"] > 0),
                   **T.val_metrics(totals)}
        report_epoch(rank, model, opt, epoch, metrics, sched=sched, extra={"spec": spec})
        if agree(cfg.time_budget_s > 0 and time.perf_counter() - t_start > cfg.time_budget_s):
            break


# -- driver ----------------------------------------------------------------------------------------

def _require(have: list[str], kind: str, uri: str, columns: list[str]) -> None:
    """A clear error naming the columns of `columns` that a dataset (with columns `have`) lacks."""
    missing = [c for c in columns if c not in have]
    if missing:
        raise ValueError(f"{uri}: the {kind} dataset has no column(s) {missing}; the mask trainer needs {columns} "
                         f"(it has {have})")


def face_datasets(cfg: PrivacyTrainConfig, out: str) -> tuple[dict, list[int], int, dict[str, str]]:
    """{"train", "val"} Ray Datasets (id, image, identity) for the job, the sorted training
    identities, the training rows and the URIs read ({"train", "val"}; val '' when taken from train's
    split column). See the module docstring for where they come from."""
    from ray.data.expressions import col

    from docray.privacy.data import import_image_folder
    from docray.storage.datasets import read_table
    from train_jobs.common import read_datasets, synth_dataset

    train, val = os.path.expanduser(cfg.train), os.path.expanduser(cfg.val)
    if cfg.data and (train or val):
        raise ValueError("give either data= (an ImageFolder) or train=/val= (faces datasets), not both")
    if val and not train:
        raise ValueError("val= needs train= too")
    if cfg.data:
        train = import_image_folder(cfg.data, paths.join(out, "data", "faces"))
    elif not train:
        train, _ = synth_dataset("faces", cfg.n_identities * cfg.samples, 0, cfg.seed,
                                 {"size": cfg.image_size, "n_identities": cfg.n_identities})
    ds = read_datasets(train, val)
    _require(ds["train"].schema().names, "faces", train, FACE_COLUMNS + ([] if val else ["split"]))
    if val:
        _require(ds["val"].schema().names, "faces", val, FACE_COLUMNS)
        identity = {k: read_table(uri, ["identity"]).to_pandas()["identity"] for k, uri in (("train", train), ("val", val))}
    else:  # one dataset, split by its split column
        rows = read_table(train, ["identity", "split"]).to_pandas()
        identity = {s: rows["identity"][rows["split"] == s] for s in ("train", "val")}
        ds = {s: ds["train"].filter(expr=col("split") == s) for s in ("train", "val")}
    ds = {k: d.select_columns(FACE_COLUMNS) for k, d in ds.items()}
    for k, ids in identity.items():
        where = val if val and k == "val" else train
        if not len(ids):
            raise ValueError(f"no {k} rows in {where}"
                             + ("" if val else " (taken by its split column: give val=, or rows of split 'train' and 'val')"))
        if ids.isna().any():
            raise ValueError(f"{where}: {int(ids.isna().sum())} {k} row(s) have no identity (column 'identity' is null)")
    classes = sorted(int(i) for i in np.unique(identity["train"]))
    unknown = sorted(set(np.unique(identity["val"]).tolist()) - set(classes))
    if unknown:
        raise ValueError(f"{len(unknown)} validation identities never appear in training (e.g. {unknown[:5]}): "
                         "a recogniser can only name identities it trained on")
    ds["train"] = ds["train"].randomize_block_order(seed=cfg.seed)  # another order every epoch, the same every run; rows then mix in the shuffle buffer
    return ds, classes, len(identity["train"]), {"train": train, "val": val}


def mask_bank(cfg: PrivacyTrainConfig) -> list[bytes]:
    """The training masks (PNG bytes) of `cfg.masks`, or the synthetic bank, each checked to decode.
    A bank is small: the driver reads it whole and the workers get it in their config."""
    from docray.privacy.masks import decode_mask
    from docray.storage.datasets import read_table
    from train_jobs.common import synth_dataset

    uri = os.path.expanduser(cfg.masks) or synth_dataset("masks", cfg.mask_bank, 0, cfg.mask_seed, {"size": cfg.image_size})[0]
    table = read_table(uri)
    _require(table.column_names, "masks", uri, ["id", "mask"])
    if not table.num_rows:
        raise ValueError(f"{uri}: no masks")
    pngs = table.column("mask").to_pylist()
    for i, png in zip(table.column("id").to_pylist(), pngs):
        try:
            decode_mask(png)
        except ValueError as e:
            raise ValueError(f"{uri}: mask {i!r}: {e}") from None
    return pngs


def run(cfg: PrivacyTrainConfig) -> dict:
    """Train the chosen models on Ray (already initialised); returns {kind: (registry version, metrics)}."""
    from docray import paths
    from docray.privacy.models import NAMES, save_to_registry
    from docray.models import build_model
    from train_jobs.common import model_card, steps_per_epoch

    for what, kinds in (("model kind(s)", cfg.models), ("init_from kind(s)", cfg.init_from)):
        unknown = set(kinds) - set(NAMES)
        if unknown:
            raise ValueError(f"unknown {what} {sorted(unknown)}; choose from {sorted(NAMES)}")
    started = time.time()
    out = cfg.out or paths.sub("reports", "privacy", "train")
    save_config(cfg, out)
    datasets, classes, n_train, uris = face_datasets(cfg, out)
    steps = steps_per_epoch(n_train, cfg.batch_size, cfg.num_workers)
    bank = mask_bank(cfg)
    print(f"{n_train} training rows of {len(classes)} identities, {steps} steps per epoch per worker, "
          f"{len(bank)} training masks", flush=True)
    results = {}
    job = cfg.model_copy(update={"out": out})
    for kind in cfg.models:
        loop_config = MaskRun(job=job, kind=kind, classes=classes, steps=steps, mask_pngs=bank).model_dump()
        result = run_trainer(train_loop_per_worker, job, f"{cfg.run_name or 'mask'}-{kind}", datasets, loop_config,
                             resume=bool(cfg.run_name))
        state = load_checkpoint_state(result.checkpoint)
        model = build_model(state["spec"]["name"], **state["spec"]["overrides"])
        model.load_state_dict(state["model"])
        metrics = {k: v for k, v in result.metrics.items() if isinstance(v, (int, float))}
        card = model_card(job, started, {**uris, "masks": cfg.masks},
                          key_metric={"original": "val_acc_whole", "masked": "val_acc_masked"}.get(kind, "val_hole_l1"))
        version = save_to_registry(NAMES[kind], model, metrics, card=card)
        results[kind] = (version, metrics)
        print(f"{NAMES[kind]} {version}: " + ", ".join(f"{k}={v:.4g}" for k, v in metrics.items()), flush=True)
    return results


def main(argv=None) -> None:
    cfg = parse_args(PrivacyTrainConfig, argv, description=__doc__.split("\n\n")[0])
    from cluster.local import init_ray

    init_ray()
    run(cfg)


if __name__ == "__main__":
    # Run the imported module's main: Ray pickles a train loop defined in __main__ by value, which fails
    # here ("cannot pickle '_Classes' object"); the module's loop pickles by reference.
    from train_jobs.train_privacy import main as module_main

    module_main()
