"""Train the regen compression models jointly (content, type, generation) on Ray Train.

    python -m train_jobs.train_regen                                         # regen_small, CPU ok
    python -m train_jobs.train_regen --set model=regen_tiny n_train=32 n_val=8 max_epochs=2
    python -m train_jobs.train_regen --set train=/data/docs/train val=/data/docs/val   # your own documents
    python -m train_jobs.train_regen --set init_from=~/.docray/models/regen/v0001   # warm start / fine-tune
    ray job submit --working-dir . -- python -m train_jobs.train_regen --set num_workers=2

Data: `train` and `val` are Parquet datasets of the documents contract (docs/datasets.md; regen
needs the columns `contract("documents").for_method("regen")` names: id, image, doc_type_name,
clean, fields, clean_fields, doc_quad), a folder or file, local or s3://. With neither given, the
synthetic default (`n_train` + `n_val` documents at `original_size`) is materialised once on the
driver (`train_jobs.common.synth_dataset`). The driver checks the columns, sets the model's reader
characters from the training texts (printable ASCII first) and its type classes from the doc-type
registry (`model_overrides`), fixes the steps of an epoch (every rank runs the same number) and
hands both datasets to the TorchTrainer; each worker turns the rows of its shard into tensors with
`docray.regen.data.RegenBatch`, the functions inference uses.

One model holds the three (`docray.models.regen`); each step computes three losses on a batch of
documents: content (token cross-entropy of each field's value read from its line crop, plus a CTC
loss on the reader's encoder and the L1 error of the document corners the crops are cut by;
`val_lines`, `val_ctc` and `val_corners` log the parts, `val_line_exact` the share of validation
lines read exactly), type (cross-entropy), generation (MSE between the generator's predicted clean
image and the row's `clean` resized to the generator's size, the generator conditioned on the
LABELLED type and content and their glyph layer). Their weighted sum is minimised; reader-only
and type-only steps on recent batches' lines and captures (`reader_steps`, `type_steps`) follow
each joint step, as those two parts need many more steps than the generator. Validation runs
on every rank's val shard and is summed over the ranks. After every epoch the validation losses
are checked against the convergence rule (`docray.regen.convergence`, configurable per
loss); training stops when all three have converged (or at `max_epochs`, or when `time_budget_s`
is spent: one decision for all ranks). Every epoch: a checkpoint (resumable: worker restarts via
`FailureConfig`; rerunning with the same `out` continues the run (Ray Train restores it from its
storage path); `resume_from=<checkpoint folder>` continues another run's) and a sample grid PNG in
`<out>/samples/epoch_XXX.png` (capture | glyph layer | generated | target), from rank 0's first val
batch. The result is saved to `<out>/model` (`from_pretrained`) and the model registry as `regen`,
with calibration.json: the document gate and field confidence fitted on calibration documents (your
val documents; with the synthetic default, rows drawn apart from training, validation and the
benchmarks) and generated non-documents (`calibrate_docs`; `docray calibrate regen` refits them later).
"""
from __future__ import annotations

import collections
import io
import os
import sys
import time
from typing import Literal

import numpy as np
import torch
from pydantic import Field

from docray import paths
from docray.regen.convergence import LOSSES, Convergence, converged
from docray.config import Config, parse_args, save_config
from docray.storage.blobs import write_file
from train_jobs.common import (agree, all_sum, epoch_batches, load_checkpoint_state, read_datasets, report_epoch,
                               restore, run_trainer, samples_per_s, steps_per_epoch, sync_buffers, synth_dataset, unwrap,
                               warmup_cosine)

KIND, METHOD = "documents", "regen"  # the dataset contract regen trains on


class RegenTrainConfig(Config):
    model: str = Field("regen_small", description="registered regen factory (regen_small | regen_tiny)")
    model_overrides: dict = Field(default_factory=dict, description="overrides for the factory (the reader's `chars` "
                                  "and `n_types` default to the training data's and the doc-type registry's)")
    train: str = Field("", description="training documents: a Parquet folder or file (local or s3://) in the "
                       "documents contract; '' -> the synthetic default (n_train documents)")
    val: str = Field("", description="held-out documents, as `train`; '' -> the synthetic default (n_val documents)")
    seed: int = 0
    n_train: int = Field(512, ge=1, description="synthetic default: documents to train on (rows 0..n_train)")
    n_val: int = Field(32, ge=1, description="synthetic default: held-out documents after the training rows")
    original_size: tuple[int, int] = Field((384, 240), description="synthetic default: (w, h) of the captures")
    flat_rate: float = Field(0.15, ge=0, le=1, description="share of examples whose content input is the flat "
                             "clean render instead of a photo (so the content model reads processed images too)")
    init_from: str = Field("", description="a regen model folder (model.safetensors) or a checkpoint folder "
                           "(state.pt) to start from: weights whose names and shapes match are loaded, the rest start fresh")
    max_epochs: int = Field(30, ge=1)
    steps_per_epoch: int = Field(0, ge=0, description="joint steps per epoch on every worker (0: the training rows "
                                 "split equally over the workers, in full batches)")
    time_budget_s: float = Field(0, ge=0, description="also stop after this many seconds of training (0: no limit)")
    batch_size: int = Field(16, ge=1, description="global batch (split across workers)")
    shuffle_buffer: int = Field(256, ge=0, description="rows each worker shuffles among (Ray Data's local shuffle, "
                                "reseeded every epoch; 0: the dataset's order)")
    reader_steps: int = Field(0, ge=0, description="reader-only steps after each joint step, each on `line_batch` "
                              "lines drawn from the last `line_pool` batches: the reader needs many more steps "
                              "than the type model and the UNet (see the README's regen section)")
    line_batch: int = Field(64, ge=1, description="field lines per reader step (per worker)")
    line_pool: int = Field(4, ge=1, description="recent batches whose lines the reader steps draw from (per worker)")
    processed_lines: bool = Field(True, description="the reader also learns each field as regen's output draws it "
                                  "(the glyph layer over the target), beside the capture's: the round trip re-reads "
                                  "regen's output, and a reader of captures only misreads it")
    type_steps: int = Field(2, ge=0, description="type-only steps after each joint step, each on `type_batch` "
                            "captures drawn from the last `type_pool` batches: one joint step per batch leaves the "
                            "type model (whose features are the gate's) far from trained")
    type_batch: int = Field(32, ge=1, description="captures per type step (per worker)")
    type_pool: int = Field(256, ge=1, description="recent batches whose captures the type steps draw from (per "
                           "worker; kept as 8-bit pixels)")
    outliers: int = Field(16, ge=0, description="non-documents in each type step (docray.regen.nondocs, its "
                          "'training' split: never the calibration's or the benchmarks' images), whose type "
                          "distribution is pushed to uniform (outlier exposure), so the gate tells what is not a "
                          "document of a known type; drawn 4 a step into a pool of the last `outlier_pool` (0: off)")
    outlier_pool: int = Field(512, ge=1, description="recent non-documents the type steps draw from (per worker)")
    outlier_weight: float = Field(0.5, ge=0, description="weight of the outlier loss beside the type loss")
    val_read_lines: int = Field(128, ge=0, description="validation lines read for val_line_exact (all workers "
                                "together)")
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
    calibrate_docs: int = Field(1500, ge=0, description="after training, fit the document gate and field confidence "
                                "(docray.regen.gate) on up to this many documents (your val documents; the synthetic "
                                "default: rows from gate.CALIBRATION_ROWS, as `docray calibrate regen` draws them) and "
                                "`calibrate_non_docs` generated non-documents; calibration.json goes beside the "
                                "weights (0: skip; an uncalibrated model regenerates nothing: `docray calibrate regen` "
                                "later)")
    calibrate_non_docs: int = Field(500, ge=1, description="generated non-documents for the calibration")
    calibrate_search_others: int = Field(60, ge=0, description="calibration documents searched against the other "
                                         "types' templates to set the layout check's corner-search threshold "
                                         "(gate.search_layout, ~5 s each; 0: no corner search)")
    calibrate_cross_read: bool = Field(True, description="a second reader's agreement (PP-OCR's recogniser, "
                                       "docray.regen.crossread) joins the field confidence (~16 ms a field)")


def data_uris(cfg: RegenTrainConfig) -> tuple[str, str]:
    """(train, val) URIs: cfg's, or the synthetic default's (made once, on the driver; cached after)."""
    if bool(cfg.train) != bool(cfg.val):
        raise ValueError("give both train= and val= (your own documents), or neither (the synthetic default)")
    if cfg.train:
        return cfg.train, cfg.val
    return synth_dataset(KIND, cfg.n_train, cfg.n_val, cfg.seed, options={"size": tuple(cfg.original_size), "n_angles": 0})


def datasets(cfg: RegenTrainConfig) -> dict:
    """The train and val Ray Datasets (`data_uris`) of only the columns regen reads, projected as they
    are read (and cached), so no epoch runs a task of its own: a worker of 1.5 CPUs on a 2-core host
    leaves too little for one. A dataset lacking a column is named with the column."""
    import ray.data

    from docray.datasets.contracts import contract

    train, val = data_uris(cfg)
    columns = list(contract(KIND).for_method(METHOD))
    for split, uri in (("train", train), ("val", val)):
        names = ray.data.read_parquet(os.path.expanduser(uri), file_extensions=["parquet"]).schema().names
        missing = [c for c in columns if c not in names]
        if missing:
            raise ValueError(f"{split} dataset {uri}: missing column(s) {missing}; regen needs {columns} "
                             f"(the {KIND!r} contract: docs/datasets.md)")
    return read_datasets(train, val, columns=columns)


@torch.no_grad()
def evaluate(model, batches, device, read_lines: int = 128, processed: bool = False) -> tuple[dict, dict | None]:
    """Validation over this rank's `batches` (RegenBatch dicts), summed over every rank (`all_sum`):
    the mean losses with fixed diffusion noise (seeded), so epochs compare fairly, and `line_exact`
    (with `line_exact_attention`, `line_exact_ctc`): the share of the captures' field lines read
    exactly as labelled, over the first `read_lines` lines of each rank; `line_exact_processed` the
    same (joint reading) of the batches' `processed_lines`, with `processed`. Returns (metrics,
    the first batch)."""
    model.eval()
    state = torch.get_rng_state()
    torch.manual_seed(1234)
    sums, first = {"n": 0.0, "read": 0.0}, None
    for b in batches:
        if first is None:
            first = {k: v.cpu() for k, v in b.items()}
        b = {k: v.to(device) for k, v in b.items()}
        drawn, n = b.pop("processed_lines", None), len(b["types"])
        for k, v in model(**b).items():  # the three losses and the content loss's parts
            sums[k] = sums.get(k, 0.0) + float(v) * n
        sums["n"] += n
        k = min(len(b["lines"]), read_lines - int(sums["read"]))
        if k > 0:  # reads of the first lines, exactly as labelled or not
            labels = [model.tokenizer.decode(ids[1:]) for ids in b["line_ids"][:k].tolist()]
            for decode, reads in model.readings(b["lines"][:k]).items():
                key = "line_exact" if decode == "joint" else f"line_exact_{decode}"
                sums[key] = sums.get(key, 0.0) + sum(r == t for r, t in zip(reads, labels))
            if drawn is not None:
                sums["line_exact_processed"] = sums.get("line_exact_processed", 0.0) + sum(
                    r == t for r, t in zip(model.read_lines(drawn[:k]), labels))
            sums["read"] += k
    torch.set_rng_state(state)
    for k in ("line_exact", "line_exact_attention", "line_exact_ctc", *LOSSES, "lines", "ctc", "corners"):
        sums.setdefault(k, 0.0)  # the same keys on every rank, even one with no val rows
    if processed:
        sums.setdefault("line_exact_processed", 0.0)
    totals = all_sum(sums)
    exact = [k for k in totals if k.startswith("line_exact")]
    out = {k: v / max(1.0, totals["n"]) for k, v in totals.items() if k not in ("n", "read", *exact)}
    if totals["read"]:
        out.update({k: totals[k] / totals["read"] for k in exact})
    model.train()
    return out, first


@torch.no_grad()
def sample_grid(model, val: dict, n: int, path: str, device) -> None:
    """Rows: capture | glyph layer | generated (composited, few-step DDIM) | target, of the first
    `n` documents of `val` (a RegenBatch dict)."""
    from PIL import Image

    from docray.regen import layout
    from docray.regen.data import to_image

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
    png = io.BytesIO()
    Image.fromarray(np.concatenate(rows, axis=0)).save(png, format="PNG")
    write_file(path, png.getvalue())  # a local file or object storage
    model.train()


def _saved(folder: str) -> tuple[dict, dict]:
    """(state dict, build spec {"name", "overrides"}) of a regen model folder (model.safetensors and
    config.json: `<out>/model` or the registry's) or a checkpoint folder (state.pt)."""
    import json

    import ray.train
    from safetensors.torch import load_file

    folder = os.path.expanduser(folder)
    if os.path.exists(os.path.join(folder, "state.pt")):
        state = load_checkpoint_state(ray.train.Checkpoint(folder))
        return state["model"], state.get("spec", {})
    with open(os.path.join(folder, "config.json")) as f:
        return load_file(os.path.join(folder, "model.safetensors")), json.load(f)


def _init_from(model, folder: str) -> None:
    """Load the weights of `folder` (see `_saved`) whose names match `model`'s: a warm start, also
    from an earlier architecture. Tensors of the same shape are copied; where `model` has more rows
    (a vocabulary with new characters, more document types: `model_overrides` keeps the old ids
    first), the rows both have; the rest start fresh."""
    src = _saved(folder)[0]
    own = model.state_dict()
    keep = {}
    for k, v in src.items():
        o = own.get(k)
        if o is not None and o.shape == v.shape:
            keep[k] = v
        elif o is not None and o.dim() == v.dim() and o.shape[1:] == v.shape[1:] and o.shape[0] > v.shape[0]:
            keep[k] = torch.cat([v.to(o.dtype), o[v.shape[0]:]])
    model.load_state_dict(keep, strict=False)
    print(f"init_from {folder}: {len(keep)} of {len(own)} tensors loaded")


def field_texts(ds) -> set[str]:
    """Every field value (`clean_fields` texts) of a documents dataset, read through Ray Data."""
    import pyarrow.compute as pc

    texts = set()
    for b in ds.select_columns(["clean_fields"]).iter_batches(batch_size=4096, batch_format="pyarrow"):
        texts.update(pc.unique(pc.struct_field(pc.list_flatten(b["clean_fields"]), "text")).to_pylist())
    texts.discard(None)
    return texts


def rest_quad(ds, n: int = 256) -> tuple[float, float, float, float]:
    """Where the documents of a documents dataset's first `n` captures lie on average, as
    (x0, y0, x1, y1) fractions of the image: the corner head's `corner_rest`."""
    from PIL import Image

    rows = ds.select_columns(["image", "doc_quad"]).take(n)
    quads = np.stack([np.reshape(r["doc_quad"], (4, 2)) / Image.open(io.BytesIO(r["image"])).size for r in rows])
    tl, tr, br, bl = quads.mean(0)  # PIL reads the size from the header, without decoding the pixels
    return tuple(round(float(v), 4) for v in ((tl[0] + bl[0]) / 2, (tl[1] + tr[1]) / 2, (tr[0] + br[0]) / 2,
                                               (br[1] + bl[1]) / 2))


def model_overrides(cfg: RegenTrainConfig, train) -> dict:
    """cfg's `model_overrides` plus what the data decides, unless given: the reader's characters
    (`chars`: printable ASCII, or the `init_from` model's, then every other character of the training
    texts), `n_types` (the doc-type registry's types) and `corner_rest` (`rest_quad` of the training
    captures: where serving's second corner reading warps the first corners)."""
    from docray.doctypes import registry
    from docray.models.regen import CHARS, CharTokenizer

    over = dict(cfg.model_overrides)
    base = (_saved(cfg.init_from)[1].get("overrides", {}).get("chars") if cfg.init_from else "") or CHARS
    if "chars" not in over:
        chars = CharTokenizer.from_texts(field_texts(train), base=base).chars
        if chars != CHARS:
            over["chars"] = chars
    over.setdefault("n_types", len(registry()))
    over.setdefault("corner_rest", rest_quad(train))
    return over


DRIVER_FAMILY = "other_type"  # drawn by the synthetic world's document code: on the driver, not in a worker


def _pixels(img, size_hw) -> torch.Tensor:
    """(3, h, w) uint8 at the type model's input size: how the outlier pool keeps an image."""
    from docray.regen.data import content_input

    return (content_input(img, size_hw) * 255).round().to(torch.uint8)


def draw_driver_outliers(cfg: RegenTrainConfig, content_size) -> np.ndarray | None:
    """`outlier_pool` images of the 'training' split's `DRIVER_FAMILY`, as (n, 3, h, w) uint8 at the
    type model's input size: drawn once on the driver, so no worker imports docray.synth."""
    from docray.regen.nondocs import non_document

    if not cfg.outliers:
        return None
    size = tuple(cfg.original_size)
    return np.stack([_pixels(non_document(DRIVER_FAMILY, i, "training", size), content_size).numpy()
                     for i in range(cfg.outlier_pool)])


class Outliers:
    """The type steps' non-documents: `nondocs` images of the 'training' split, 4 new ones drawn per
    call of `sample` (each rank its own) into a pool of the last `outlier_pool`, as 8-bit pixels at
    the type model's input size; `sample` gives `outliers` of the pool, or None when off. The families
    take turns; `DRIVER_FAMILY`'s images come from `drawn` (`draw_driver_outliers`), left out without it."""

    def __init__(self, cfg: RegenTrainConfig, model_cfg, rank: int, fresh: int = 4, drawn: np.ndarray | None = None):
        from docray.regen.nondocs import FAMILIES

        self.n, self.size, self.hw, self.fresh = cfg.outliers, tuple(cfg.original_size), model_cfg.content_size, fresh
        self.pool = collections.deque(maxlen=cfg.outlier_pool)
        self.next = rank * 10_000_000  # image indices per rank: no two ranks draw the same image
        self.drawn = None if drawn is None else torch.from_numpy(drawn)
        self.families = [f for f in FAMILIES if f != DRIVER_FAMILY or drawn is not None]

    def draw(self, k: int) -> None:
        from docray.regen.nondocs import non_document

        for i in range(self.next, self.next + k):  # the families take turns
            f, j = self.families[i % len(self.families)], i // len(self.families)
            self.pool.append(self.drawn[j % len(self.drawn)] if f == DRIVER_FAMILY else
                             _pixels(non_document(f, j, "training", self.size), self.hw))
        self.next += k

    def sample(self, gen: torch.Generator) -> torch.Tensor | None:
        if not self.n:
            return None
        self.draw(max(self.fresh, self.n - len(self.pool)))
        idx = torch.randint(len(self.pool), (self.n,), generator=gen).tolist()
        return torch.stack([self.pool[i] for i in idx])


def train_loop_per_worker(config: dict) -> None:
    import ray.train
    import ray.train.torch

    from docray.regen.data import RegenBatch
    from docray.models import build_model

    from train_jobs.common import worker_setup

    config = dict(config)
    drawn_ref = config.pop("driver_outliers", None)  # an object ref (run), or absent
    cfg = RegenTrainConfig(**config)
    device, rank, world = worker_setup(cfg.cpus_per_worker)  # torch threads = the worker's CPUs
    torch.manual_seed(cfg.seed + rank)
    model = build_model(cfg.model, **cfg.model_overrides)
    if cfg.init_from:
        _init_from(model, cfg.init_from)
    collate = RegenBatch(model.cfg, model.tokenizer, cfg.flat_rate, seed=cfg.seed, processed_lines=cfg.processed_lines)
    bs = max(1, cfg.batch_size // world)
    train_shard, val_shard = ray.train.get_dataset_shard("train"), ray.train.get_dataset_shard("val")
    # reader and type steps leave the other parts' weights without gradients: DDP must be told
    unused = cfg.reader_steps + cfg.type_steps > 0
    model = ray.train.torch.prepare_model(model, parallel_strategy_kwargs={"find_unused_parameters": unused})
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    ckpt = ray.train.get_checkpoint()  # a restarted worker group (FailureConfig) or a rerun of this run
    if ckpt is None and cfg.resume_from:  # an earlier run's checkpoint folder
        ckpt = ray.train.Checkpoint(cfg.resume_from)
    start, state = restore(model, opt, checkpoint=ckpt)
    history = state.get("history") or {k: [] for k in LOSSES}
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)
    gen = torch.Generator()
    pool = collections.deque(maxlen=cfg.line_pool)  # (lines, line_ids) of the last batches: the reader steps' lines
    type_pool = collections.deque(maxlen=cfg.type_pool)  # (pixels as uint8, types): the type steps' captures
    drawn = ray.get(drawn_ref) if drawn_ref is not None else None
    outliers = Outliers(cfg, model_cfg=unwrap(model).cfg, rank=rank, drawn=drawn)  # non-documents for the type steps
    t_start = time.perf_counter()
    # optimiser steps per epoch (the driver fixed steps_per_epoch)
    per_epoch = cfg.steps_per_epoch * (1 + cfg.reader_steps + cfg.type_steps)
    step, total = start * per_epoch, cfg.max_epochs * per_epoch  # a resumed run does not redo the warm-up
    warmup = min(cfg.warmup_steps, total // 10)  # short runs: 10%

    def elapsed() -> float:
        """Seconds trained, one clock for all ranks (the mean of theirs), so every rank stops and
        decays its rate at the same step."""
        return all_sum({"t": time.perf_counter() - t_start})["t"] / world

    def opt_step(loss, by_time: float) -> None:
        nonlocal step
        if cfg.schedule == "cosine":
            for g in opt.param_groups:
                g["lr"] = cfg.lr * warmup_cosine(step, warmup, total, progress=max(by_time, step / total))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1

    out_of_time = False
    for epoch in range(start, cfg.max_epochs):
        seed = cfg.seed * 1000 + epoch * world + rank
        gen.manual_seed(seed)
        t0, sums, steps = time.perf_counter(), dict.fromkeys(LOSSES, 0.0), 0
        outlier_sum, outlier_steps = 0.0, 0
        shuffle = {}  # Ray Data's local shuffle, reseeded every epoch
        if cfg.shuffle_buffer:
            shuffle = dict(local_shuffle_buffer_size=max(cfg.shuffle_buffer, bs), local_shuffle_seed=seed)
        for b in epoch_batches(train_shard, cfg.steps_per_epoch, batch_size=bs, collate_fn=collate, drop_last=True,
                               **shuffle):
            by_time = elapsed() / cfg.time_budget_s if cfg.time_budget_s else 0.0
            if by_time > 1:
                out_of_time = True  # the budget is spent (and the cosine at 0): evaluate, checkpoint and stop
                break
            b = {k: v.to(device) for k, v in b.items()}
            if "processed_lines" in b:  # the reader reads both: the capture's lines and regen's drawing of them
                b["lines"] = torch.cat([b["lines"], b.pop("processed_lines")])
                b["line_ids"] = torch.cat([b["line_ids"], b["line_ids"]])
            with amp:
                losses = model(**b)
            opt_step(sum(cfg.weights.get(k, 1.0) * losses[k].float() for k in LOSSES), by_time)
            for k in LOSSES:
                sums[k] += losses[k].item()
            steps += 1
            pool.append((b["lines"], b["line_ids"]))
            if cfg.reader_steps:  # the reader alone, on lines of the last batches
                lines, line_ids = (torch.cat(x) for x in zip(*pool))
                for _ in range(cfg.reader_steps):
                    idx = torch.randint(len(lines), (cfg.line_batch,), generator=gen).to(device)
                    with amp:
                        read = model(lines=lines[idx], line_ids=line_ids[idx])
                    opt_step(cfg.weights.get("content", 1.0) * read["content"].float(), by_time)
            if cfg.type_steps:  # the type model alone, on captures of the last batches
                type_pool.append(((b["pixels"] * 255).round().to(torch.uint8).cpu(), b["types"].cpu()))
                for _ in range(cfg.type_steps):  # row i of the pool: batch i // bs, row i % bs (full batches)
                    idx = torch.randint(len(type_pool) * bs, (cfg.type_batch,), generator=gen).tolist()
                    pixels = torch.stack([type_pool[i // bs][0][i % bs] for i in idx])
                    types = torch.stack([type_pool[i // bs][1][i % bs] for i in idx])
                    negs = outliers.sample(gen)
                    with amp:
                        typed = model(pixels=pixels.to(device).float() / 255, types=types.to(device),
                                      outliers=None if negs is None else negs.to(device).float() / 255)
                    loss = cfg.weights.get("type", 1.0) * typed["type"].float()
                    if "outlier" in typed:
                        loss = loss + cfg.outlier_weight * typed["outlier"].float()
                        outlier_sum, outlier_steps = outlier_sum + typed["outlier"].item(), outlier_steps + 1
                    opt_step(loss, by_time)
        rate = samples_per_s(steps * bs, time.perf_counter() - t0)  # documents a second (joint steps)
        sync_buffers(model)  # the last type step's BatchNorm statistics differ per rank: evaluate rank 0's
        val_losses, first = evaluate(unwrap(model), val_shard.iter_torch_batches(batch_size=bs, collate_fn=collate),
                                     device, read_lines=-(-cfg.val_read_lines // world),
                                     processed=cfg.processed_lines)
        for k in LOSSES:
            history[k].append(val_losses[k])
        done = converged(history, cfg.convergence)
        metrics = {"epoch": epoch, "epoch_s": time.perf_counter() - t0, "train_samples_per_s": rate,
                   "lr": opt.param_groups[0]["lr"], "steps": steps,
                   **{f"train_{k}": sums[k] / max(1, steps) for k in LOSSES},
                   "train_outlier": outlier_sum / max(1, outlier_steps),  # log(n_types) at best: uniform
                   **{f"val_{k}": v for k, v in val_losses.items()},
                   **{f"converged_{k}": bool(v) for k, v in done.items()}, "converged": all(done.values()),
                   "worker_imported_synth": agree("docray.synth" in sys.modules)}  # on any rank
        if rank == 0 and first is not None:
            grid = paths.join(cfg.out, "samples", f"epoch_{epoch:03d}.png")
            sample_grid(unwrap(model), first, cfg.n_samples, grid, device)
        report_epoch(rank, model, opt, epoch, metrics, extra={"history": history, "spec": unwrap(model).docray_spec})
        out_of_time = out_of_time or bool(cfg.time_budget_s and elapsed() > cfg.time_budget_s)
        if agree(metrics["converged"] or out_of_time):
            break


def calibrate(model, val, cfg: RegenTrainConfig):
    """The gate and field confidence of the trained model, fitted on calibration documents held out
    from training (`calibrate_docs`) and generated non-documents of the captures' size; prints the
    report. The field threshold bounds the wrong rate's upper confidence bound, which needs thousands
    of fields: more than the synthetic default's few hundred val documents hold."""
    from docray.regen.file_types import load_file_types
    from docray.regen.gate import CALIBRATION_ROWS, documents
    from docray.regen.nondocs import family_names, non_documents
    from docray.regen.pipeline import RegenCompressor
    from docray.imageio import decode_image
    from docray.synth import generate

    if cfg.train:
        rows = val.take(cfg.calibrate_docs)
    else:
        rows = generate(KIND, CALIBRATION_ROWS, CALIBRATION_ROWS + cfg.calibrate_docs, seed=cfg.seed,
                        size=tuple(cfg.original_size), n_angles=0).to_pylist()
    if not rows:
        return None
    h, w = model.cfg.gen_size  # only the type model and the reader are used: any library of this first size
    ft = {"base": 80, "format": "jpeg", "second": {"width": w, "height": h, "bytes": 1}}
    rc = RegenCompressor(model, file_types=load_file_types({"first": {"width": w, "height": h, "bytes": 2},
                                                            "types": {}, "default": ft}), device="cpu")
    n, size = cfg.calibrate_non_docs, decode_image(rows[0]["image"]).size
    report = rc.calibrate(documents(rows), non_documents(n, "calibration", size),
                          families=family_names(n), search_others=cfg.calibrate_search_others,
                          cross_read=cfg.calibrate_cross_read)
    print("regen calibration:", {k: v for k, v in report.items() if k != "settings"})
    return rc.calibration


def run(cfg: RegenTrainConfig) -> dict:
    """Train on Ray (already initialised), save the model; returns the final metrics and paths."""
    import ray

    from docray.models import build_model, save_pretrained
    from docray.storage.blobs import local_folder
    from docray.storage.registry import ModelRegistry
    from train_jobs.common import model_card

    started = time.time()
    out = paths.absolute(cfg.out or paths.sub("models", "regen-run"))
    ds = datasets(cfg)
    overrides = model_overrides(cfg, ds["train"])
    steps = steps_per_epoch(ds["train"].count(), max(1, cfg.batch_size // cfg.num_workers), cfg.num_workers)
    if cfg.steps_per_epoch > steps:
        raise ValueError(f"steps_per_epoch={cfg.steps_per_epoch}: each worker's share of the training rows holds "
                         f"{steps} full batches")
    steps = cfg.steps_per_epoch or steps
    cfg = cfg.model_copy(update={"out": out, "steps_per_epoch": steps, "model_overrides": overrides})
    save_config(cfg, out)
    drawn = draw_driver_outliers(cfg, build_model(cfg.model, **overrides).cfg.content_size)
    loop_config = {**cfg.model_dump(), "driver_outliers": None if drawn is None else ray.put(drawn)}
    result = run_trainer(train_loop_per_worker, cfg, "regen", datasets=ds, loop_config=loop_config)
    state = load_checkpoint_state(result.checkpoint)
    model = build_model(state["spec"]["name"], **state["spec"]["overrides"])
    model.load_state_dict(state["model"])
    model_dir = paths.join(out, "model")
    with local_folder(model_dir) as folder:  # a local folder, or uploaded to object storage
        save_pretrained(model, folder)
        calibration = calibrate(model, ds["val"], cfg) if cfg.calibrate_docs else None
        if calibration is not None:
            calibration.save(folder)
    metrics = {k: v for k, v in result.metrics.items() if isinstance(v, (int, float))}
    version = None
    if cfg.to_registry:
        extra = {} if calibration is None else {"calibration.json": calibration.to_json().encode()}
        train, val = data_uris(cfg)
        card = model_card(cfg, started, {"train": train, "val": val}, key_metric="val_line_exact")
        version = ModelRegistry().save("regen", model, config=state["spec"], metrics=metrics, extra_files=extra,
                                       card=card)
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
