"""MAE pre-training of the recognition encoder on Ray Train (DDP over N workers, CPU or GPU).

Patches, random masking (`mask_ratio`), encoder on the visible patches, mask tokens back in order,
decoder reconstruction, normalised-pixel loss: transformers' ViTMAE (docray/models/vit_mae.py).
Data: `train=` and `val=` documents datasets (Parquet, local or s3://, the `documents` contract; only
`image` is required, `flash` and `angles` frames add views), or neither: the synthetic default
(`n_train` + `n_val` documents), made once on the driver through Ray Data. Each worker reads its
equal shard (`DocumentImages`: every capture and frame resized, the code inference uses) and runs
the same number of steps, fixed on the driver. Each epoch: the validation loss over every worker's
val shard (a fixed mask), a checkpoint (model, optimiser, schedule, epoch), an original | masked |
reconstruction grid PNG under `<out>/grids/` (rank 0's first val images); after a worker failure Ray
restarts the workers (FailureConfig) and training resumes from the latest checkpoint. At the end the
encoder is registered as `register_as` (`$DOCRAY_HOME/models/<register_as>/vNNNN`).

    python -m train_jobs.pretrain_recognition --set epochs=2 n_train=200 n_val=40          # a quick local run
    python -m train_jobs.pretrain_recognition --set train=data/docs/train val=data/docs/val init_from=registry:recognition-encoder
    ray job submit --working-dir . -- python -m train_jobs.pretrain_recognition --set num_workers=2 epochs=20
"""
from __future__ import annotations

import json
import os
import sys
import time

import torch
from pydantic import Field
from tqdm import tqdm

from docray import paths
from docray.config import Config, parse_args, save_config
from docray.storage.blobs import write_file
from docray.storage.registry import parse_ref
from train_jobs.common import (agree, all_sum, epoch_batches, load_result_state, maybe_exit, maybe_fail, read_datasets,
                               report_epoch, restore, run_trainer, samples_per_s, steps_per_epoch, synth_dataset, unwrap_state,
                               warmup_cosine, worker_setup)

GRID_IMAGES = 6  # rows of the original | masked | reconstruction grid


class DocumentsJobConfig(Config):
    """What the two recognition trainers share: the documents datasets, the workers, the stops."""

    train: str = Field("", description="training documents: a Parquet folder or file, local or s3:// (documents "
                                       "contract, docs/datasets.md); '' = the synthetic default")
    val: str = Field("", description="validation documents, the same contract (give both train and val, or neither)")
    n_train: int = Field(1600, ge=1, description="synthetic default: training documents")
    n_val: int = Field(200, ge=1, description="synthetic default: validation documents")
    seed: int = 0
    batch_size: int = Field(32, ge=1, description="documents per step per worker (each trainer says what a step takes)")
    steps_per_epoch: int = Field(0, ge=0, description="at most this many steps per epoch on every worker (0: a "
                                                      "pass over the worker's share of the training rows)")
    time_budget_s: float = Field(0, ge=0, description="stop after this much training time (0 = none); one "
                                                      "decision for all workers")
    weight_decay: float = 0.05
    num_workers: int = Field(1, ge=1, description="Ray Train workers (DDP)")
    cpus_per_worker: float = Field(1.0, gt=0, description="CPU reserved per worker (fractions fit a small host)")
    worker_resources: dict[str, float] = Field(default_factory=dict, description="custom Ray resources per "
                                               "worker, e.g. {node_a: 0.01}: train only on the nodes that have them")
    shuffle_buffer: int = Field(512, ge=0, description="rows each worker shuffles among (Ray Data's local shuffle, "
                                "reseeded every epoch, after the blocks' order is shuffled) when the decoded set "
                                "is streamed; cached, the whole shard; 0: file order")
    use_gpu: bool | None = Field(None, description="None: use a GPU when the cluster has one")
    max_failures: int = Field(2, ge=0, description="worker-group restarts from the latest checkpoint")
    fail_at_epoch: int = Field(-1, description="testing: raise once after this epoch's checkpoint (-1 = never)")
    exit_at_step: int = Field(-1, description="testing: rank 0's process dies once after this global step (-1 = never)")


class RecognitionPretrainConfig(DocumentsJobConfig):
    model: str = Field("vit_mae_small", description="registered MAE factory (vit_mae_tiny|small|base)")
    image_size: int | None = Field(None, description="override the model's square input size (None: its default)")
    mask_ratio: float = Field(0.75, gt=0, lt=1, description="fraction of patches removed")
    init_from: str = Field("", description="start the encoder from 'registry:<name>[@<version>]' (a registered "
                                           "encoder) or a saved encoder folder; '' = from scratch")
    use_frames: bool = Field(True, description="flash and angle frames as extra images (more views, same docs)")
    epochs: int = Field(10, ge=1)
    batch_size: int = Field(32, ge=1, description="documents' worth of views per step per worker (each document gives "
                                                 "1 + its frames images; a step's views come from all documents)")
    lr: float = Field(1.5e-3, gt=0, description="AdamW peak learning rate (cosine decay, 1 epoch warm-up)")
    out: str = Field(default_factory=lambda: paths.sub("runs", "pretrain_recognition"), description="run folder")
    register_as: str = Field("recognition-encoder", description="model registry name ('' = do not register)")


# -- data and starting weights (shared with train_recognition) ---------------------------------------------


def documents_datasets(c, columns: list[str], required: tuple[str, ...], cache: bool | None = None) -> tuple[dict, str, str]:
    """({"train", "val"} Ray Datasets, train URI, val URI) of `c.train` / `c.val`, or of the synthetic
    default made once here (on the driver), reduced to the `columns` each carries; a dataset lacking
    a `required` column is a ValueError naming it."""
    from docray.recognition.data import DOC_OPTIONS

    if bool(c.train) != bool(c.val):
        raise ValueError("give both train= and val= (your own documents), or neither (the synthetic default)")
    train, val = c.train, c.val
    if not train:
        train, val = synth_dataset("documents", c.n_train, c.n_val, c.seed, options=DOC_OPTIONS)
    ds = read_datasets(train, val, cache=cache)
    for split, uri in (("train", train), ("val", val)):
        missing = [col for col in required if col not in ds[split].schema().names]
        if missing:
            raise ValueError(f"{split} dataset {uri}: missing column(s) {missing}, which this job needs "
                             "(the 'documents' contract, docray.datasets.contracts)")
    return {s: d.select_columns([col for col in columns if col in d.schema().names]) for s, d in ds.items()}, train, val


def shuffle_plan(ds: dict, c: DocumentsJobConfig) -> tuple[dict, DocumentsJobConfig]:
    """The training set's blocks in another order every epoch, the same orders every run of a seed
    (Ray Data reseeds per execution; rows then mix in each worker's shuffle buffer, `shuffled`), and
    the config that ran: when the decoded training set is cached in Ray's object store (it fits,
    `cache_if_fits`), each worker's buffer holds its whole shard, a full shuffle every epoch as an
    in-memory loader gives (a 512-row buffer over a few blocks mixes less, and trained worse on
    some seeds: issue 15); streamed, `shuffle_buffer` rows. Unless c.shuffle_buffer is 0 (file order)."""
    from ray.data.dataset import MaterializedDataset

    if not c.shuffle_buffer:
        return ds, c
    train = ds["train"]
    if isinstance(train, MaterializedDataset):
        c = c.model_copy(update={"shuffle_buffer": max(c.shuffle_buffer, train.count())})
    return {**ds, "train": train.randomize_block_order(seed=c.seed)}, c


def shuffled(c: DocumentsJobConfig, epoch: int) -> dict:
    """`iter_torch_batches` arguments of an epoch's local shuffle: at least a batch of rows, reseeded every epoch."""
    if not c.shuffle_buffer:
        return {}
    return {"local_shuffle_buffer_size": max(c.shuffle_buffer, c.batch_size), "local_shuffle_seed": c.seed + epoch}


def decoded_views(ds: dict, size: int, frames: bool, train_views: int) -> dict:
    """Each document's views decoded and resized once (DocumentViews, in Ray Data tasks): the training
    views (with frames), a row each, and the validation captures; cached in Ray's object store when
    they fit (`cache_if_fits`), streamed otherwise. `train_views`: the training views (`count_views`)."""
    from docray.recognition.data import DocumentViews
    from train_jobs.common import cache_if_fits

    out = {s: d.map_batches(DocumentViews(size, frames and s == "train", per_view=s == "train"), batch_format="numpy",
                            batch_size=32) for s, d in ds.items()}
    return cache_if_fits(out, train_views + sum(d.count() for s, d in ds.items() if s != "train"))


def saved_state(ref: str) -> tuple[dict, str]:
    """(state dict, factory name) of a registered model ('registry:<name>[@<version>]') or a saved folder."""
    from docray.models import from_pretrained

    if parse_ref(ref):
        from docray.storage.registry import ModelRegistry

        state, config, _ = ModelRegistry().load(*parse_ref(ref))
        return state, config.get("name", "")
    model = from_pretrained(os.path.expanduser(ref))
    return model.state_dict(), model.docray_spec["name"]


# -- MAE ---------------------------------------------------------------------------------------------


def _overrides(c: RecognitionPretrainConfig) -> dict:
    o = {"mask_ratio": c.mask_ratio}
    if c.image_size:
        o["image_size"] = c.image_size
    return o


def build(c: RecognitionPretrainConfig):
    """The MAE of config `c`, its encoder loaded from `init_from` when given."""
    from docray.models import build_model

    model = build_model(c.model, **_overrides(c))
    if c.init_from:
        state, name = saved_state(c.init_from)
        want = c.model.replace("vit_mae_", "vit_encoder_")
        if name != want:
            raise ValueError(f"init_from {c.init_from!r} is a {name!r}; {c.model} needs a {want!r}")
        model.net.vit.load_state_dict({k.removeprefix("vit."): v for k, v in state.items()})
    return model


@torch.no_grad()
def validate(model, shard, collate, batch_size: int, seed: int, device) -> tuple[float, torch.Tensor | None]:
    """(MAE loss over every worker's val shard, this worker's first val images). Each batch has a
    fixed mask (seeded by its index), so epochs compare."""
    from docray.recognition.data import to_float

    model.eval()
    total, n, first = 0.0, 0, None
    for i, x in enumerate(shard.iter_torch_batches(batch_size=batch_size, collate_fn=collate)):
        x = to_float(x.to(device))
        noise = torch.rand(len(x), model.spec.grid ** 2, generator=torch.Generator().manual_seed(seed + i))
        total, n = total + float(model(x, noise.to(device)).loss) * len(x), n + len(x)
        first = x[:GRID_IMAGES].cpu() if first is None else first
    sums = all_sum({"loss": total, "n": n})
    return sums["loss"] / max(sums["n"], 1), first


def train_loop_per_worker(config: dict) -> None:
    import ray.train
    import ray.train.torch

    from docray.recognition.data import ViewBatch, image_grid, to_float

    config = dict(config)
    view_batch = config.pop("view_batch", None)  # the job's: views a step takes (batch_size documents' worth)
    c = RecognitionPretrainConfig.model_validate(config)
    device, rank, world = worker_setup(c.cpus_per_worker)
    torch.manual_seed(c.seed)
    model = build(c)
    steps, size = c.steps_per_epoch, model.spec.image_size  # steps: fixed on the driver, the same on every rank
    opt = torch.optim.AdamW(model.parameters(), lr=c.lr, weight_decay=c.weight_decay, betas=(0.9, 0.95))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(s, steps, c.epochs * steps))
    start, state = restore(model, opt, sched)
    net = ray.train.torch.prepare_model(model)
    train, val = ray.train.get_dataset_shard("train"), ray.train.get_dataset_shard("val")
    views = captures = ViewBatch(size)  # the datasets hold decoded views (DocumentViews, on the driver)
    amp = device.type == "cuda"
    step, elapsed = start * steps, state.get("elapsed_s", 0.0)
    for epoch in range(start, c.epochs):
        net.train()
        t0, total, n, seen, stop = time.time(), 0.0, 0, 0, False
        batches = epoch_batches(train, steps, batch_size=view_batch or c.batch_size, collate_fn=views,
                                drop_last=True, **shuffled(c, epoch))
        for x in tqdm(batches, total=steps, desc=f"mae epoch {epoch}", unit="batch", disable=rank != 0):
            with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=amp):
                loss = net(to_float(x.to(device))).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step, total, n, seen = step + 1, total + float(loss.detach()), n + 1, seen + len(x)
            maybe_exit(c.exit_at_step, step, c.out, rank)
            if c.time_budget_s and agree(elapsed + time.time() - t0 > c.time_budget_s):
                stop = True
                break
        elapsed += time.time() - t0
        rate = samples_per_s(seen, time.time() - t0)  # views a second
        train_sums = all_sum({"loss": total, "n": n})
        val_loss, first = validate(model, val, captures, c.batch_size, c.seed, device)
        files = {}
        if rank == 0 and first is not None:
            noise = torch.rand(len(first), model.spec.grid ** 2, generator=torch.Generator().manual_seed(0))  # a fixed mask
            masked, recon = model.reconstruct(first.to(device), noise.to(device))
            files["grid.png"] = image_grid([[o, m, r] for o, m, r in zip(first, masked.cpu(), recon.cpu())])
            write_file(paths.join(c.out, "grids", f"epoch_{epoch:03d}.png"), files["grid.png"])
        metrics = {"loss": train_sums["loss"] / max(train_sums["n"], 1), "val_loss": val_loss, "steps": step,
                   "epoch_s": time.time() - t0, "train_samples_per_s": rate, "started_at_epoch": start,
                   "worker_imported_synth": agree("docray.synth" in sys.modules)}
        report_epoch(rank, model, opt, epoch, metrics, files, sched=sched, extra={"elapsed_s": elapsed})
        maybe_fail(c.fail_at_epoch, epoch, c.out, rank)
        if stop:
            break


def register_encoder(c: RecognitionPretrainConfig, state: dict, metrics: dict, started: float | None = None) -> str:
    """Save the encoder part of an MAE state dict in the registry, with its model card (wall time since
    `started`, time.time() at the job's start); returns the version."""
    from docray.models import build_model
    from docray.models.vit_mae import MAE
    from docray.storage.registry import ModelRegistry
    from train_jobs.common import model_card

    mae = build_model(c.model, **_overrides(c))
    assert isinstance(mae, MAE)
    mae.load_state_dict(unwrap_state(state))
    enc_name = c.model.replace("vit_mae_", "vit_encoder_")
    config = {"name": enc_name, "overrides": _overrides(c), "pretrain": c.model_dump()}
    card = model_card(c, started or time.time(), {"train": c.train, "val": c.val}, key_metric="val_loss")
    return ModelRegistry().save(c.register_as, mae.encoder_state_dict(), config, metrics, card=card)


def main(argv=None) -> dict:
    from cluster.local import init_ray
    from docray.recognition.data import DocumentImages, count_views

    started = time.time()
    c = parse_args(RecognitionPretrainConfig, argv, description=__doc__.split("\n")[0])
    size = build(c).spec.image_size  # fail fast (bad model, init_from) in the driver
    init_ray()
    ds, train, val = documents_datasets(c, DocumentImages(size, c.use_frames).columns, required=("image",), cache=False)
    docs = ds["train"].count()  # Parquet metadata, before the decode
    steps = steps_per_epoch(docs, c.batch_size, c.num_workers)
    views = count_views(ds["train"], c.use_frames)
    # a step takes batch_size documents' worth of views, drawn apart from their documents (a row per view,
    # shuffled); whole views per document, rounded down, so every rank has its `steps` full batches
    view_batch = c.batch_size * (views // docs)
    ds, c = shuffle_plan(decoded_views(ds, size, c.use_frames, views), c)
    c = c.model_copy(update={"train": train, "val": val, "steps_per_epoch": min(steps, c.steps_per_epoch or steps)})
    save_config(c, c.out)
    result = run_trainer(train_loop_per_worker, c, "pretrain_recognition", ds,
                         loop_config={**c.model_dump(), "view_batch": view_batch})
    state, metrics = load_result_state(result)
    version = register_encoder(c, state, metrics, started) if c.register_as else ""
    summary = {"loss": metrics["loss"], "val_loss": metrics["val_loss"], "epochs": metrics["epoch"] + 1,
               "steps": metrics["steps"], "resumed_at_epoch": metrics["started_at_epoch"],
               "worker_imported_synth": metrics["worker_imported_synth"], "registered": f"{c.register_as}/{version}",
               "grids": paths.join(c.out, "grids"), "train": train, "val": val}
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
