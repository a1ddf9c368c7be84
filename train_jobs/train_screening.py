"""Train the tile descriptor (copy detection, SSCD-style) on tiles of target pictures, on Ray Train.

    python -m train_jobs.train_screening                                  # synthetic targets, descriptor_small, CPU ok
    python -m train_jobs.train_screening --set train=DIR val=DIR background=DIR   # your pictures (Parquet, `targets`)
    python -m train_jobs.train_screening --set model=descriptor_tiny steps_per_epoch=5 epochs=1
    python -m train_jobs.train_screening --set synth_mix=0.5 edits=sscd  # procedural pictures, SSCD edits
    python -m train_jobs.train_screening --set calibrate=DIR max_fpr=0.005     # threshold on your held-out pictures
    ray job submit --working-dir . -- python -m train_jobs.train_screening --set num_workers=2

Data: `train`, `val` and `background` are Parquet datasets of the `targets` contract (`id`, `image`;
other columns are ignored), local or s3://. '' is the synthetic default, generated once on the
driver and cached (`synth_dataset`): the 'train' split of rows [0, n_pictures), rows
[n_pictures, +val_pictures) for validation, and the rows after those for the background. The
driver reads train and val with Ray Data and TorchTrainer splits them equally over the workers (no
worker generates data); it reads the background's first rows itself, before training.

A step takes `pictures_per_step` pictures on each worker (by default as many as give ~batch_size
tiles over all workers) and cuts `tiles_per_picture` of each one's template tiles (flat ones left
out), each with two views (`docray.screening.data.CopyPairBatch`, the collate_fn of
`iter_torch_batches`): the library view (clean, or lightly edited) and an edited copy (crop,
rescale, recolour, text overlay, JPEG) as a region finder crops it from an upload (a few pixels in
or out). A `distractor_rate` share of the items are the tile's whole picture at a random size
instead, as an upload carries pictures beside a tile. Few tiles of many pictures a step: the other
pictures' tiles are the negatives. An epoch takes every textured tile (at least) once: 35 /
tiles_per_picture passes over the train shard, each a new share of every picture's tiles (with
`cache_pictures` the driver reads the pictures into Ray's object store once, so a pass starts in
milliseconds), the same number of steps on every worker (`steps_per_epoch` caps it).
Loss: InfoNCE over the 2B views (each view's positive is its pair) plus a KoLeo entropy term that
spreads descriptors over the sphere (as SSCD).

Validation, each epoch: every worker embeds its val shard's tiles clean and edited; the
descriptors are all-gathered, so every worker scores the whole val set (top-1 retrieval of edited
val tiles among all clean val tiles, mean positive / hardest negative similarity). The result goes
to the model registry as `descriptor` (and `out/`), with these metrics and its background bank
(`background.npy`: descriptors of the background's tiles and whole pictures, for matching's score
normalisation).

Calibration, last, on the driver: the match threshold of what was trained, as `docray calibrate
screening` finds it: `calibrate_queries` edited tiles per class (targets, benign), posted as uploads
come, on `calibrate` (targets contract with `is_target`) or synthetic rows from CALIBRATION_START
(none of them a training, validation or background row). The lowest threshold with at most
`max_fpr` benign matches goes beside the model and the registered version as `calibration.json`,
the threshold matching uses (`ScreenConfig.threshold` unset). With `rerank_queries`, the learned
re-ranker is then fitted for it on other pictures (`rerank_pictures`, or synthetic rows from
RERANK_START), its threshold calibrated the same way, and saved beside it as `rerank.pkl`
(`ScreenConfig.rerank`; docs/screening.md). Both screen against a library of the sensitive pictures'
tiles and of more pictures' (`calibrate_library`, or synthetic rows from LIBRARY_START), about as
many tiles as the served library holds.
"""
from __future__ import annotations

import os
import sys
import time
from contextlib import nullcontext
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator

from docray.config import Config, parse_args, save_config
from docray.datasets.contracts import contract
from docray.screening.data import passes_per_epoch, tile_count
from train_jobs.common import (agree, all_sum, epoch_batches, load_checkpoint_state, read_datasets, report_epoch,
                               restore, run_trainer, steps_per_epoch, synth_dataset, unwrap, warmup_cosine,
                               worker_setup)

COLUMNS = contract("targets").for_method("screening")  # what the descriptor reads of its datasets: id, image
CALIBRATION_START = 300_000  # synthetic calibration rows: after any training, validation or background row
RERANK_START = 310_000  # synthetic rows the re-ranker is fitted on: after the calibration rows
LIBRARY_START = 320_000  # synthetic rows whose tiles fill the calibration library: after the re-ranker's rows


class ScreeningTrainConfig(Config):
    model: str = Field("descriptor_small", description="registered descriptor factory")
    image_size: int = Field(0, ge=0, description="tile input size of the model (0: the factory's default)")
    init_from: str = Field("", description="start from a saved descriptor (fine-tune / continue): a folder, "
                                           "registry:descriptor[:<version>]")
    train: str = Field("", description="training pictures: Parquet folder/file of the targets contract, "
                                       "local or s3:// ('' -> synthetic)")
    val: str = Field("", description="held-out pictures for the metrics, same contract ('' -> synthetic)")
    background: str = Field("", description="ordinary pictures for the background bank, same contract "
                                            "('' -> synthetic)")
    seed: int = 0
    n_pictures: int = Field(1200, ge=1, description="synthetic default: rows drawn for training (their 'train' split "
                                                    "is used, ~80%)")
    val_pictures: int = Field(200, ge=1, description="synthetic default: validation rows, after the training ones")
    synth_mix: float = Field(0.0, ge=0, le=1, description="synthetic default: share of its train and val pictures "
                                                          "drawn from procedural families (docray.synth.procedural: "
                                                          "polygons, voronoi, waves, value_noise, ifs, faces, "
                                                          "documents) instead of posters; 0: posters only")
    epochs: int = Field(4, ge=1, description="each takes every tile of every training picture (at least) once")
    steps_per_epoch: int = Field(0, ge=0, description="at most this many steps per epoch (0: all its steps)")
    batch_size: int = Field(128, ge=2, description="tiles per step over all workers (2 views each), about: a step "
                                                   "takes tiles_per_picture tiles of whole pictures")
    tiles_per_picture: int = Field(2, ge=0, description="tiles of one picture in a step, a pass over the pictures "
                                                        "(0: all 35 in one pass; few make diverse batches)")
    pictures_per_step: int = Field(0, ge=0, description="pictures per step on each worker (0: batch_size / workers / "
                                                        "tiles_per_picture)")
    distractor_rate: float = Field(0.2, ge=0, lt=1, description="share of items that are whole pictures, not tiles")
    grey_rate: float = Field(0.2, ge=0, le=1, description="share of edited copies turned grey (recolouring to grey is "
                                                          "the edit the descriptor missed most)")
    edits: Literal["default", "sscd"] = Field("default", description="the copies' edits: default (crop, rescale, "
                                              "recolour, caption, JPEG) or sscd (adds crops down to a ninth, blur, "
                                              "captions in several fonts, collages with other pictures); "
                                              "validation keeps the default")
    lr: float = 2e-3
    weight_decay: float = 0.05
    temperature: float = Field(0.05, description="InfoNCE temperature (SSCD uses 0.05)")
    koleo: float = Field(0.5, description="weight of the KoLeo entropy regulariser")
    time_budget_s: float = Field(0, ge=0, description="stop after the epoch that passes this many seconds (0: none); "
                                                      "one decision for all workers")
    num_workers: int = Field(1, ge=1, description="Ray Train workers")
    use_gpu: bool | None = Field(None, description="None: when the Ray cluster has a GPU")
    cpus_per_worker: float = Field(1.0, gt=0)
    cache_pictures: bool = Field(True, description="read train and val pictures into Ray's object store once, "
                                                   "before training (a pass then starts in ms, not seconds); off "
                                                   "for datasets larger than the object store")
    max_failures: int = 1
    out: str = Field("", description="output folder ('' -> DOCRAY_HOME/models/descriptor-run)")
    background_pictures: int = Field(200, ge=0, description="background pictures whose tiles join the background bank")
    background_distractors: int = Field(1000, ge=0, description="background pictures added whole (at a random size)")
    to_registry: bool = Field(True, description="save the result in the model registry as 'descriptor'")
    calibrate: str = Field("", description="calibration pictures: Parquet of the targets contract with is_target, "
                                           "local or s3:// ('' -> synthetic rows from CALIBRATION_START)")
    calibrate_pictures: int = Field(100, ge=2, description="synthetic default: calibration rows (half targets)")
    calibrate_queries: int = Field(200, ge=0, description="after training, the match threshold is calibrated on this "
                                   "many queries per class (targets, benign; 200 resolve a 0.5% FPR; minutes on 2 "
                                   "CPU cores) and written as calibration.json beside the model (0: skip; an uncalibrated "
                                   "descriptor matches at 0.55, flagged: `docray calibrate screening --write` later)")
    max_fpr: float = Field(0.005, ge=0, lt=1, description="the calibrated threshold's false-positive budget on benign "
                                                          "queries")
    calibrate_library: str = Field("", description="more pictures (id, image) whose tiles join the library that "
                                   "calibration and the re-ranker screen against, so it holds about as many tiles as "
                                   "the served one ('' -> `calibrate_library_pictures` synthetic rows from LIBRARY_START when "
                                   "`calibrate` is '' too, else none)")
    calibrate_library_pictures: int = Field(300, ge=0, description="synthetic default: those rows, whose sensitive "
                                            "half joins (0: the calibration pictures' own tiles only); with the 50 "
                                            "sensitive calibration pictures, about the 200 of screening_library's "
                                            "default library")
    rerank_queries: int = Field(0, ge=0, description="after calibration, fit the learned re-ranker (docray.screening."
                                "rerank) on this many queries per class of `rerank_pictures`, calibrate its threshold "
                                "on `calibrate` as above, and save it as rerank.pkl beside the model (0: none)")
    rerank_pictures: str = Field("", description="the re-ranker's fitting pictures, targets contract with is_target "
                                                 "('' -> synthetic rows from RERANK_START)")

    @model_validator(mode="after")
    def _rerank_is_calibrated(self) -> "ScreeningTrainConfig":
        if self.rerank_queries and not self.calibrate_queries:
            raise ValueError("rerank_queries needs calibrate_queries: the re-ranker's threshold is calibrated on them")
        return self


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


def retrieval(clean: torch.Tensor, edited: torch.Tensor, chunk: int = 1024) -> dict:
    """Edited copy i retrieved among all clean tiles (the right one is clean i): top-1 rate, mean
    positive and hardest-negative similarity. (n, d) unit rows each; queries in chunks."""
    n, hits, pos, neg = len(clean), 0.0, 0.0, 0.0
    for i in range(0, n, chunk):
        sim = edited[i:i + chunk] @ clean.T  # (c, n)
        rows, right = torch.arange(len(sim), device=sim.device), torch.arange(i, i + len(sim), device=sim.device)
        hits += float((sim.argmax(1) == right).sum())
        pos += float(sim[rows, right].sum())
        sim[rows, right] = -2
        neg += float(sim.max(1).values.sum())
    n = max(n, 1)
    return {"val_top1": hits / n, "val_pos_sim": pos / n, "val_hard_neg_sim": neg / n}


def all_gather_rows(x: torch.Tensor) -> torch.Tensor:
    """The rows of `x` of every rank, in rank order (ranks may hold different numbers of rows)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return x
    n = torch.tensor([len(x)], device=x.device)
    sizes = [torch.zeros_like(n) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, n)
    padded = torch.cat([x, x.new_zeros((int(max(sizes)) - len(x), *x.shape[1:]))])
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded)
    return torch.cat([p[:int(s)] for p, s in zip(parts, sizes)])


@torch.inference_mode()
def evaluate(model, shard, image_size: int, pictures: int = 8) -> dict:
    """Validation over every rank's val shard: this rank embeds its tiles clean and edited
    (`EditedTileBatch`: the same edits every epoch), the descriptors of all ranks are gathered and
    every rank scores the whole val set (`retrieval`), so all report the same figures. `pictures`
    a batch: every tile of each, ~35."""
    from docray.screening.data import EditedTileBatch

    model.eval()
    clean, edited = [], []
    for xa, xb, _ in shard.iter_torch_batches(batch_size=pictures, collate_fn=EditedTileBatch(image_size)):
        clean.append(model(xa).float())
        edited.append(model(xb).float())
    model.train()
    device = next(model.parameters()).device
    empty = torch.zeros(0, model.cfg.dim, device=device)  # a rank whose val shard is empty still gathers
    clean, edited = all_gather_rows(torch.cat(clean or [empty])), all_gather_rows(torch.cat(edited or [empty]))
    return {**retrieval(clean, edited), "val_tiles": len(clean)}


def build_descriptor(cfg: ScreeningTrainConfig) -> torch.nn.Module:
    """A fresh descriptor of `cfg.model`, or the saved one `cfg.init_from` (to fine-tune), in train mode."""
    from docray.models import build_model
    from docray.screening.embed import load_descriptor

    if cfg.init_from:
        return load_descriptor(cfg.init_from, device="cpu").train()
    return build_model(cfg.model, **({"image_size": cfg.image_size} if cfg.image_size else {}))


def descriptor_loss(model, xa: torch.Tensor, xb: torch.Tensor, keys: torch.Tensor, cfg: ScreeningTrainConfig,
                    amp) -> torch.Tensor:
    """InfoNCE over both views plus KoLeo; a zero loss (every parameter in the graph, so DDP's
    all-reduce still runs) for a batch whose tiles were all flat."""
    with amp:
        za, zb = model(xa), model(xb)  # (n, dim) each
    za, zb = za.float(), zb.float()
    if len(keys) == 0:
        return (za.sum() + zb.sum()) * 0
    return info_nce(za, zb, keys, cfg.temperature) + cfg.koleo * koleo(za)


def train_loop_per_worker(config: dict) -> None:
    """One worker: each epoch `passes_per_epoch` passes over its train shard in steps of
    `pictures_per_step` pictures, `steps_per_epoch` steps in all (fixed on the driver), validation
    over all val shards, a checkpoint every epoch."""
    import ray.train
    import ray.train.torch

    from docray.screening.data import CopyPairBatch

    cfg = ScreeningTrainConfig(**config)
    device, rank, world = worker_setup(cfg.cpus_per_worker)
    torch.manual_seed(cfg.seed)
    model = build_descriptor(cfg)
    size, spec = model.cfg.image_size, model.docray_spec
    model = ray.train.torch.prepare_model(model)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(s, 20, cfg.epochs * cfg.steps_per_epoch))
    start, _ = restore(model, opt, sched)
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()
    train, val = ray.train.get_dataset_shard("train"), ray.train.get_dataset_shard("val")
    began = time.perf_counter()
    for epoch in range(start, cfg.epochs):
        t0, loss_sum, steps, tiles = time.perf_counter(), 0.0, 0, 0
        for part in range(passes_per_epoch(cfg.tiles_per_picture)):
            pairs = CopyPairBatch(size, cfg.distractor_rate, cfg.grey_rate, cfg.seed, epoch, cfg.tiles_per_picture,
                                  part, edits=cfg.edits)
            for xa, xb, keys in epoch_batches(train, cfg.steps_per_epoch - steps, batch_size=cfg.pictures_per_step,
                                              collate_fn=pairs, drop_last=True,
                                              local_shuffle_buffer_size=8 * cfg.pictures_per_step,
                                              local_shuffle_seed=(cfg.seed * 1000 + epoch) * 1000 + part):
                loss = descriptor_loss(model, xa, xb, keys, cfg, amp)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                loss_sum, steps, tiles = loss_sum + loss.item(), steps + 1, tiles + len(keys)
            if steps == cfg.steps_per_epoch:  # the same on every rank: equal shards, full batches only
                break
        epoch_s = time.perf_counter() - t0
        totals = all_sum({"loss": loss_sum, "steps": steps, "tiles": tiles,
                          "synth": float("docray.synth" in sys.modules)})  # the generator must stay out of workers
        metrics = {"epoch": epoch, "loss": totals["loss"] / max(totals["steps"], 1), "epoch_s": epoch_s,
                   "steps_per_epoch": steps, "tiles_per_step": totals["tiles"] / max(totals["steps"], 1) * world,
                   "tiles_per_s_per_worker": tiles / max(epoch_s, 1e-9), "train_samples_per_s": totals["tiles"] / max(epoch_s, 1e-9),
                   "worker_imported_synth": totals["synth"] > 0}
        metrics.update(evaluate(unwrap(model), val, size))
        report_epoch(rank, model, opt, epoch, metrics, sched=sched, extra={"spec": spec})
        if agree(bool(cfg.time_budget_s) and time.perf_counter() - began > cfg.time_budget_s):
            break


# -- driver ---------------------------------------------------------------------------------------

def _read(uris: dict[str, str]) -> dict:
    """Ray Datasets of these URIs, each checked for the columns the descriptor reads."""
    ds = read_datasets(uris["train"], uris.get("val", ""), cache=False)  # cache_pictures materialises what it keeps
    for name, d in ds.items():
        missing = [c for c in COLUMNS if c not in d.schema().names]
        if missing:
            raise ValueError(f"{name} dataset {uris[name]}: no column {', '.join(map(repr, missing))}; the descriptor "
                             f"reads {list(COLUMNS)} of the targets contract (docray.datasets.contracts)")
    return ds


def data_uris(cfg: ScreeningTrainConfig) -> tuple[str, str]:
    """(train, val) URIs: cfg's, the synthetic default's for the one(s) not given (made once; cached after)."""
    train, val = cfg.train, cfg.val
    if not (train and val):
        options = {"mix": cfg.synth_mix} if cfg.synth_mix else {}  # none: the default's cache key as before
        synth_train, synth_val = synth_dataset("targets", cfg.n_pictures, cfg.val_pictures, cfg.seed, options)
        train, val = train or synth_train, val or synth_val
    return train, val


def background_uri(cfg: ScreeningTrainConfig) -> str:
    """The background pictures' URI: cfg's, or synthetic rows after the train and val ones ('' for none)."""
    n = max(cfg.background_pictures, cfg.background_distractors)
    if n == 0:
        return ""
    return cfg.background or synth_dataset("targets", n, 0, cfg.seed, start=cfg.n_pictures + cfg.val_pictures)[0]


def training_datasets(cfg: ScreeningTrainConfig) -> dict:
    """{"train", "val"} Ray Datasets of pictures (id, image): the URIs given, or the synthetic default."""
    train, val = data_uris(cfg)
    ds = _read({"train": train, "val": val})
    if not cfg.train:  # the synthetic rows' 'train' split, as the descriptor always trained on
        from ray.data.expressions import col

        ds["train"] = ds["train"].filter(expr=col("split") == "train")
    return {k: d.select_columns(list(COLUMNS)) for k, d in ds.items()}


def read_background(cfg: ScreeningTrainConfig) -> list[bytes]:
    """The background bank's pictures (encoded), read on the driver: the first max(background_pictures,
    background_distractors) rows of `cfg.background`, or synthetic rows after the train and val ones."""
    from docray.storage.datasets import iter_batches

    n = max(cfg.background_pictures, cfg.background_distractors)
    uri = background_uri(cfg)
    if not uri:
        return []
    first = next(iter_batches(os.path.expanduser(uri), n), None)
    if first is None or "image" not in first.schema.names:
        raise ValueError(f"background dataset {uri}: " + ("no rows" if first is None else "no column 'image'"))
    return first.column("image").to_pylist()


def pictures_per_step(batch_size: int, world: int, tiles_per_picture: int = 0) -> int:
    """Pictures per step on each worker for ~batch_size tiles over all workers: a picture gives
    `tiles_per_picture` tiles (fewer only if it has fewer textured ones), or (0) all of them (35)."""
    return max(1, round(batch_size / world / (tiles_per_picture or tile_count())))


def run(cfg: ScreeningTrainConfig) -> dict:
    """Train on Ray (already initialised), save the model; returns the final metrics and paths."""
    from docray import paths
    from docray.imageio import decode_image
    from docray.models import build_model

    started = time.time()
    out = cfg.out or paths.sub("models", "descriptor-run")
    save_config(cfg, out)
    ds, background = training_datasets(cfg), read_background(cfg)
    if cfg.cache_pictures:
        ds = {k: d.materialize() for k, d in ds.items()}
    per_step = cfg.pictures_per_step or pictures_per_step(cfg.batch_size, cfg.num_workers, cfg.tiles_per_picture)
    steps = steps_per_epoch(ds["train"].count(), per_step, cfg.num_workers) * passes_per_epoch(cfg.tiles_per_picture)
    steps = min(steps, cfg.steps_per_epoch) if cfg.steps_per_epoch else steps
    loop_cfg = cfg.model_copy(update={"out": out, "pictures_per_step": per_step, "steps_per_epoch": steps})
    result = run_trainer(train_loop_per_worker, loop_cfg, "descriptor", ds)
    state = load_checkpoint_state(result.checkpoint)
    model = build_model(state["spec"]["name"], **state["spec"]["overrides"])
    model.load_state_dict(state["model"])
    metrics = {k: v for k, v in result.metrics.items() if isinstance(v, (int, float))}
    train, val = data_uris(cfg)
    data = {"train": train, "val": val, "background": background_uri(cfg)}
    res = save_descriptor(model, state["spec"], metrics, cfg, out, [decode_image(b) for b in background], started, data)
    res["calibration"] = calibrate(model, res, cfg) if cfg.calibrate_queries else None
    res["rerank"] = fit_rerank(model, res, cfg) if cfg.rerank_queries else None
    return res


def save_descriptor(model, spec: dict, metrics: dict, cfg: ScreeningTrainConfig, out: str, background: list,
                    started: float | None = None, data: dict[str, str] | None = None) -> dict:
    """Compute the background bank (tiles of the first `background_pictures` of the PIL pictures
    `background`, and its first `background_distractors` whole), then save model + bank to `out/model` and, if asked,
    to the registry as `descriptor`, with its model card (`data`: the datasets' URIs, default cfg's; wall time
    since `started`)."""
    from docray import paths
    from docray.models import save_pretrained
    from docray.screening.data import background_bank
    from docray.storage.blobs import local_folder
    from docray.screening.embed import BACKGROUND, Embedder, npy_bytes
    from docray.storage.registry import ModelRegistry
    from train_jobs.common import model_card

    tiled, whole = background[:cfg.background_pictures], background[:cfg.background_distractors]
    bank = npy_bytes(background_bank(Embedder(model.eval()), tiled, whole, cfg.seed))
    model_dir = paths.join(out, "model")
    with local_folder(model_dir) as folder:  # a local folder, or uploaded to object storage
        save_pretrained(model, folder)
        with open(os.path.join(folder, BACKGROUND), "wb") as f:
            f.write(bank)
    version = None
    if cfg.to_registry:
        data = data if data is not None else {"train": cfg.train, "val": cfg.val, "background": cfg.background}
        card = model_card(cfg, started or time.time(), data, key_metric="val_top1")
        version = ModelRegistry().save("descriptor", model, config=spec, metrics=metrics,
                                       extra_files={BACKGROUND: bank}, card=card)
    return {"metrics": metrics, "model_dir": model_dir, "registry_version": version}


def calibration_uri(cfg: ScreeningTrainConfig) -> str:
    """The calibration pictures' URI: cfg's, or synthetic rows from CALIBRATION_START (past every row
    training, validation and the background bank read)."""
    if cfg.calibrate:
        return cfg.calibrate
    return synth_dataset("targets", cfg.calibrate_pictures, 0, cfg.seed, start=_after_training(cfg, CALIBRATION_START))[0]


def _after_training(cfg: ScreeningTrainConfig, start: int) -> int:
    return max(start, cfg.n_pictures + cfg.val_pictures + max(cfg.background_pictures, cfg.background_distractors))


def library_uri(cfg: ScreeningTrainConfig) -> str:
    """The calibration library's extra pictures: cfg's; synthetic rows from LIBRARY_START when the calibration
    pictures are synthetic too; else '' (none: a user's own calibration pictures get no drawn ones)."""
    if cfg.calibrate_library or cfg.calibrate or not cfg.calibrate_library_pictures:
        return cfg.calibrate_library
    start = max(_after_training(cfg, LIBRARY_START), _rerank_start(cfg) + 2 * cfg.calibrate_pictures)
    return synth_dataset("targets", cfg.calibrate_library_pictures, 0, cfg.seed, start=start)[0]


def _rerank_start(cfg: ScreeningTrainConfig) -> int:
    return max(_after_training(cfg, RERANK_START), _after_training(cfg, CALIBRATION_START) + cfg.calibrate_pictures)


def rerank_uri(cfg: ScreeningTrainConfig) -> str:
    """The re-ranker's fitting pictures: cfg's, or synthetic rows from RERANK_START (after the calibration rows)."""
    if cfg.rerank_pictures:
        return cfg.rerank_pictures
    return synth_dataset("targets", 2 * cfg.calibrate_pictures, 0, cfg.seed, start=_rerank_start(cfg))[0]


def calibrate(model, saved: dict, cfg: ScreeningTrainConfig) -> dict:
    """The trained descriptor's operating point on the calibration pictures (`docray calibrate screening`,
    on the driver): calibration.json beside the saved model and the registered version; prints it."""
    from docray.calibration import calibrate_screening
    from docray.screening.calibrate import write_calibration
    from docray.screening.embed import Embedder, load_background
    from docray.storage.registry import ref

    embed = Embedder(model.eval(), background=load_background(saved["model_dir"]))
    op, record = calibrate_screening(calibration_uri(cfg), embed, cfg.max_fpr, cfg.calibrate_queries, cfg.seed,
                                     library_pictures=library_uri(cfg))
    record["descriptor"] = saved["model_dir"]
    write_calibration(saved["model_dir"], record)
    if saved["registry_version"]:
        registered = ref("descriptor", saved["registry_version"])
        write_calibration(registered, {**record, "descriptor": registered})
    print(f"screening calibration: {op.line()}")
    return record


def fit_rerank(model, saved: dict, cfg: ScreeningTrainConfig) -> dict | None:
    """The learned re-ranker of what was trained (`docray calibrate rerank`, on the driver): fitted on
    `rerank_pictures`, calibrated on the calibration pictures, saved as rerank.pkl beside the model and
    the registered version; returns its record (None, said, when the descriptor proposed no true pair)."""
    from docray.calibration import fit_reranker
    from docray.screening.calibrate import write_reranker
    from docray.screening.embed import Embedder, load_background
    from docray.screening.rerank import NoTruePairs
    from docray.storage.registry import ref

    embed = Embedder(model.eval(), background=load_background(saved["model_dir"]))
    try:
        rr, op = fit_reranker(rerank_uri(cfg), calibration_uri(cfg), embed, queries=cfg.rerank_queries,
                              calibrate_queries=cfg.calibrate_queries, max_fpr=cfg.max_fpr, seed=cfg.seed,
                              library_pictures=library_uri(cfg))
    except NoTruePairs as e:  # the descriptor proposed no true tile to learn from: no re-ranker, said so
        print(f"no re-ranker: {e}")
        return None
    write_reranker(saved["model_dir"], rr)
    if saved["registry_version"]:
        write_reranker(ref("descriptor", saved["registry_version"]), rr)
    print(f"re-ranker: {rr.record['pairs']} pairs ({rr.record['true_pairs']} true); {op.line()}")
    return {k: v for k, v in rr.record.items() if k != "created_at"} | {"threshold": rr.threshold}


def main(argv=None) -> None:
    cfg = parse_args(ScreeningTrainConfig, argv, description=__doc__.split("\n\n")[0])
    from cluster.local import init_ray

    init_ray()
    res = run(cfg)
    print({k: round(v, 4) if isinstance(v, float) else v for k, v in res["metrics"].items()})
    print(f"model: {res['model_dir']}  registry: descriptor {res['registry_version']}")
    if res["calibration"] is None:
        print("not calibrated (calibrate_queries=0): matching uses 0.55, flagged; docray calibrate screening --write")


if __name__ == "__main__":
    main()
