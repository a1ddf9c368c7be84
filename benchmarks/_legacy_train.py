"""The OLD training data path, kept ONLY for `benchmarks/train_paths.py` (issue 15's "no loss of quality").

Before issue 15 every trainer generated its synthetic rows with `docray.synth` INSIDE each Ray
Train worker and fed them from memory (`documents_table`/`prepare` in pretrain_recognition and
train_recognition, `synth_examples` in train_regen, `synth_pictures`/`CopyPairs` in train_screening,
`synth_identities` and a `ray.put` mask bank in train_privacy; commit 01ddc54). This module is
that path, copied and trimmed to what the benchmark runs: the old data functions and the old train
loops, with no checkpoint/resume, failure hooks, sample grids or registry. (Unified recognition's
in-memory `prepare`/`DocumentSet` stay in `docray.recognition.data`, where the other benchmarks use
them; the per-row targets are today's, so both paths learn the same labels.) Each loop reports once at
the end, with a checkpoint holding the trained weights, and times its steps with
`benchmarks.train_paths.StepTimer`. Models, losses and train steps come from the live library.
Rows are index ranges `[start, stop)` of `docray.synth.generate` (seed `seed`; only one `split`
where asked), so the benchmark can train both paths on the same rows; `train_seed` seeds the
training's own randomness (initial weights, order, augmentation). Do not use it for anything else.
"""
from __future__ import annotations

import time

import numpy as np
import pyarrow as pa
import torch
from PIL import Image

from docray.imageio import decode_image

# -- data, generated in the worker (old) ---------------------------------------------------------


def synth_rows(kind: str, rows: tuple[int, int], seed: int, options: dict, split: str | None = None) -> pa.Table:
    """Rows [start, stop) of the synthetic `kind` (the old paths called docray.synth in the worker),
    only those of `split` when given."""
    import pyarrow.compute as pc

    from docray import synth

    table = synth.generate(kind, int(rows[0]), int(rows[1]), seed=seed, **options)
    return table.filter(pc.equal(table.column("split"), split)) if split else table


def load_rgb(data, size: int) -> np.ndarray:
    """Image bytes (or a PIL image) -> (3, size, size) uint8."""
    img = data if isinstance(data, Image.Image) else decode_image(data)
    return np.asarray(img.convert("RGB").resize((size, size), Image.BILINEAR)).transpose(2, 0, 1).copy()


def load_images(table: pa.Table, image_size: int, with_frames: bool) -> np.ndarray:
    """(n, 3, s, s) uint8 captures, plus their flash and angle frames when `with_frames` (MAE)."""
    cols = ["image"] + (["flash"] if with_frames else [])
    out = [load_rgb(b, image_size) for c in cols for b in table.column(c).to_pylist()]
    if with_frames:
        out += [load_rgb(b, image_size) for views in table.column("angles").to_pylist() for b in views]
    return np.stack(out)


def synth_examples(table: pa.Table, flat: pa.Table, seed: int, start: int, cfg, tokenizer, flat_rate: float,
                   quad_jitter: float = 1.5) -> dict:
    """Regen's old training tensors: `table` the captures at the original size, `flat` the same rows
    rendered at the first size threshold (the generator's target). Lines kept as uint8, `line_doc`
    their example's index."""
    from docray.regen import layout
    from docray.regen.data import cond_input, content_input
    from docray.regen.fields import crop_lines, frame_quad

    gen_size = tuple(cfg.gen_size)
    rng = np.random.default_rng([seed, start, 0xF1E1D])
    out = {k: [] for k in ("pixels", "corner_px", "quad", "cond", "target", "texts", "types", "lines", "line_texts", "line_doc")}
    for i, (o, f) in enumerate(zip(table.to_pylist(), flat.to_pylist())):
        values = [x["text"] for x in o["clean_fields"]]
        if rng.random() < flat_rate:  # a processed image: at the capture's size or at the first threshold's
            img = decode_image(o["clean"] if rng.random() < 0.5 else f["clean"])
            quad = frame_quad(o["doc_type"], img.size)
        else:
            img, quad = decode_image(o["image"]), np.reshape(o["doc_quad"], (4, 2))
        out["pixels"].append(content_input(img, cfg.content_size))
        out["corner_px"].append(content_input(img, cfg.corner_size))
        out["quad"].append(torch.tensor((quad / img.size).ravel(), dtype=torch.float32))
        jittered = quad + rng.normal(0, quad_jitter, quad.shape)
        out["lines"].append(torch.from_numpy(crop_lines(np.asarray(img), jittered, o["doc_type"], cfg.line_size)))
        out["line_texts"] += values
        out["line_doc"] += [i] * len(values)
        out["cond"].append(cond_input(o["doc_type"], values, gen_size)[0])
        clean = np.asarray(decode_image(f["clean"]), np.float32) / 127.5 - 1
        out["target"].append(torch.from_numpy(clean).permute(2, 0, 1))
        out["texts"].append(layout.join_content(values))
        out["types"].append(o["doc_type"])
    for k in ("pixels", "corner_px", "quad", "cond"):
        out[k] = torch.stack(out[k])
    out["target"] = torch.stack(out["target"]).float()
    out["lines"] = torch.cat(out["lines"]).permute(0, 3, 1, 2).contiguous()  # (n, 3, h, w) uint8
    out["types"], out["line_doc"] = torch.tensor(out["types"], dtype=torch.long), torch.tensor(out["line_doc"])
    out["content_ids"] = tokenizer.batch(out["texts"], cfg.max_len)
    out["line_ids"] = tokenizer.batch(out["line_texts"], cfg.field_len)
    return out


def regen_batches(ex: dict, bs: int, gen: torch.Generator):
    """Shuffled batches of `bs` documents, each with its documents' field lines."""
    n = len(ex["types"])
    order = torch.randperm(n, generator=gen)
    for i in range(0, n - bs + 1, bs):  # full batches only (the equal-steps rule of the new path)
        idx = order[i:i + bs]
        b = {k: ex[k][idx] for k in ("pixels", "corner_px", "quad", "content_ids", "types", "target", "cond")}
        rows = torch.isin(ex["line_doc"], idx)
        b["lines"], b["line_ids"] = ex["lines"][rows].float() / 255, ex["line_ids"][rows]
        yield b


def raw_tiles(pictures, min_detail: float = 12.0) -> list[Image.Image]:
    """Every template's tiles of every picture at their own size, flat ones left out."""
    from docray.screening.dedup import detail
    from docray.screening.templates import DEFAULT_TEMPLATES, cut

    return [t.image for p in pictures for tpl in DEFAULT_TEMPLATES for t in cut(p, tpl, None) if detail(t.image) >= min_detail]


def distractor(rng: np.random.Generator) -> Image.Image:
    """A fresh whole picture of any category at a random size (drawn in the worker)."""
    from docray.synth.targets import BENIGN_CATEGORIES, TARGET_CATEGORIES, render_picture

    cats = BENIGN_CATEGORIES + TARGET_CATEGORIES
    size = tuple(int(v) for v in rng.integers(64, 224, 2))
    return render_picture(rng, cats[int(rng.integers(len(cats)))], size)[0]


class CopyPairs(torch.utils.data.Dataset):
    """Pairs (library view, edited copy) of a random tile; a `distractor_rate` share are fresh pictures."""

    def __init__(self, tiles, image_size: int, length: int, seed: int, distractor_rate: float, grey_rate: float):
        self.tiles, self.size, self.length, self.seed = tiles, image_size, length, seed
        self.distractor_rate, self.grey_rate, self.epoch = distractor_rate, grey_rate, 0

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int):
        from docray.screening.augment import copy_edit, region_jitter, to_tensor

        rng = np.random.default_rng([self.seed, self.epoch, i])
        if rng.random() < self.distractor_rate:
            k, tile = len(self.tiles) + i, distractor(rng)
        else:
            k = int(rng.integers(len(self.tiles)))
            tile = self.tiles[k]
        a = tile if rng.random() < 0.5 else copy_edit(tile, rng, strength=0.5)
        b = region_jitter(copy_edit(tile, rng), rng)
        if rng.random() < self.grey_rate:
            b = b.convert("L").convert("RGB")
        x = to_tensor([a, b], self.size)  # (2, 3, s, s)
        return x[0], x[1], k


def face_tensors(table: pa.Table, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, 3, s, s) float pixels in [0, 1] and (n,) int64 identities of a faces table."""
    images = np.stack([np.asarray(decode_image(b, mode="RGB").resize((size, size), Image.Resampling.BILINEAR))
                       for b in table.column("image").to_pylist()]).astype(np.uint8)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255)
    return x, torch.tensor(table.column("identity").to_pylist(), dtype=torch.int64)


def mask_bank(n: int, seed: int, size: int) -> np.ndarray:
    """(n, s, s) float32 synthetic masks (1 kept, 0 hidden), as the old driver `ray.put` them."""
    from docray.privacy.masks import decode_mask

    return np.stack([decode_mask(b) for b in synth_rows("masks", (0, n), seed, {"size": size}).column("mask").to_pylist()])


def batch_masks(bank: np.ndarray | None, n: int, rng: np.random.Generator, device, max_shift: float):
    """(n, 1, h, w) masks drawn from the bank with a random placement each, or None without a bank."""
    from docray.privacy.masks import random_masks

    if bank is None:
        return None
    return torch.from_numpy(random_masks(bank, n, rng, max_shift)).to(device)[:, None]


# -- the old train loops (one Ray Train worker each; config: a plain dict) ------------------------


def _finish(c: dict, rank: int, model, opt, timer, metrics: dict, table: pa.Table) -> None:
    """Write this rank's step timings and the keys of its training rows, then report the trained
    weights once (rank 0 checkpoints)."""
    from benchmarks.train_paths import row_keys
    from train_jobs.common import report_epoch

    timer.rows = row_keys(table)
    timer.dump(c["timing_dir"], rank)
    report_epoch(rank, model, opt, c["epochs"] - 1, metrics)


def mae_loop(c: dict) -> None:
    """Old pretrain_recognition: all images of the rows (frames too when `use_frames`) in memory, a DataLoader."""
    import ray.train.torch

    from benchmarks.train_paths import StepTimer
    from docray.models import build_model
    from docray.recognition.data import to_float
    from train_jobs.common import warmup_cosine, worker_setup

    timer, (device, rank, world) = StepTimer(), worker_setup(c["cpus_per_worker"])
    torch.manual_seed(c["train_seed"])
    model = build_model(c["model"], **c["overrides"])
    table = synth_rows("documents", c["rows"], c["seed"], c["options"])
    images = torch.from_numpy(load_images(table, model.spec.image_size, c["use_frames"]))
    opt = torch.optim.AdamW(model.parameters(), lr=c["lr"], weight_decay=c["weight_decay"], betas=(0.9, 0.95))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(images), batch_size=c["batch_size"],
                                         shuffle=True, drop_last=True)
    loader = ray.train.torch.prepare_data_loader(loader)
    net = ray.train.torch.prepare_model(model)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(s, len(loader), c["epochs"] * len(loader)))
    amp, losses = device.type == "cuda", []
    for epoch in range(c["epochs"]):
        if world > 1:
            loader.sampler.set_epoch(epoch)
        net.train()
        for (x,) in timer.wrap(loader):
            with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=amp):
                loss = net(to_float(x.to(device))).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(float(loss.detach()))
    _finish(c, rank, model, opt, timer, {"loss": float(np.mean(losses))}, table)


def unified_loop(c: dict) -> None:
    """Old train_recognition: `prepare` every row in the worker (the library's in-memory path, kept for
    benchmarks), a DataLoader of dicts, engine.train_epoch."""
    import ray.train.torch

    from benchmarks.train_paths import StepTimer
    from docray.models import build_model
    from docray.recognition.data import DocumentSet, prepare
    from docray.recognition.engine import train_epoch
    from docray.recognition.tasks import load_catalogue
    from train_jobs.common import warmup_cosine, worker_setup

    timer, (device, rank, world) = StepTimer(), worker_setup(c["cpus_per_worker"])
    torch.manual_seed(c["train_seed"])
    cat = load_catalogue(c["catalogue"])
    model = build_model(c["model"], catalogue=c["catalogue"], **c["overrides"])
    model.set_query_text(np.asarray(c["query_text"], np.float32))
    if c["encoder_state"]:
        model.encoder.load_state_dict(torch.load(c["encoder_state"], map_location="cpu"))
    table = synth_rows("documents", c["rows"], c["seed"], c["options"])
    arrays = prepare(table, cat, model.image_size)
    enc = [p for n, p in model.named_parameters() if n.startswith("encoder.") and p.requires_grad]
    rest = [p for n, p in model.named_parameters() if not n.startswith("encoder.") and p.requires_grad]
    opt = torch.optim.AdamW([{"params": enc, "lr": c["encoder_lr"]}, {"params": rest, "lr": c["lr"]}],
                            weight_decay=c["weight_decay"])
    loader = torch.utils.data.DataLoader(DocumentSet(arrays), batch_size=c["batch_size"], shuffle=True, drop_last=True)
    loader = ray.train.torch.prepare_data_loader(loader)
    net = ray.train.torch.prepare_model(model, parallel_strategy_kwargs={"find_unused_parameters": True})
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(s, len(loader), c["epochs"] * len(loader)))
    step, losses = 0, {}
    for epoch in range(c["epochs"]):
        if world > 1:
            loader.sampler.set_epoch(epoch)
        losses, step = train_epoch(net, timer.wrap(loader), opt, cat, device, step, scheduler=sched,
                                   frame_tasks_per_batch=c["frame_tasks_per_batch"], amp=device.type == "cuda")
    _finish(c, rank, model, opt, timer, {f"loss/{k}": v for k, v in losses.items()}, table)


def regen_loop(c: dict) -> None:
    """Old train_regen: each worker renders its share of the rows twice (capture, flat target) in memory."""
    import ray.train.torch

    from benchmarks.train_paths import StepTimer
    from docray.regen.convergence import LOSSES
    from docray.models import build_model
    from train_jobs.common import warmup_cosine, worker_setup

    timer, (device, rank, world) = StepTimer(), worker_setup(c["cpus_per_worker"])
    torch.manual_seed(c["train_seed"] + rank)
    model = build_model(c["model"], **c["overrides"])
    mc = model.cfg
    lo, hi = c["rows"]
    share = (lo + rank * (hi - lo) // world, lo + (rank + 1) * (hi - lo) // world)  # each worker its contiguous share
    capture = synth_rows("documents", share, c["seed"], {"size": tuple(c["original_size"]), "n_angles": 0})
    flat = synth_rows("documents", share, c["seed"], {"size": (mc.gen_size[1], mc.gen_size[0]), "n_angles": 0})
    train = synth_examples(capture, flat, c["train_seed"], share[0], mc, model.tokenizer, c["flat_rate"])
    model = ray.train.torch.prepare_model(model)
    opt = torch.optim.AdamW(model.parameters(), lr=c["lr"], weight_decay=c["weight_decay"])
    bs = c["batch_size"] // world
    total = c["epochs"] * (len(train["types"]) // bs)
    warmup = min(c["warmup_steps"], total // 10)
    gen, step, sums = torch.Generator(), 0, dict.fromkeys(LOSSES, 0.0)
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)
    for epoch in range(c["epochs"]):
        gen.manual_seed(c["train_seed"] * 1000 + epoch)
        for b in timer.wrap(regen_batches(train, bs, gen)):
            b = {k: v.to(device) for k, v in b.items()}
            with amp:
                losses = model(**b)
            for g in opt.param_groups:
                g["lr"] = c["lr"] * warmup_cosine(step, warmup, total)
            opt.zero_grad(set_to_none=True)
            sum(c["weights"].get(k, 1.0) * losses[k].float() for k in LOSSES).backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            step += 1
            for k in LOSSES:
                sums[k] += float(losses[k])
    _finish(c, rank, model, opt, timer, {f"train_{k}": v / max(step, 1) for k, v in sums.items()}, capture)


def descriptor_loop(c: dict) -> None:
    """Old train_screening: every tile of the rows' pictures in memory; pairs (and distractor
    pictures, drawn by docray.synth) made per item by a DataLoader."""
    import ray.train
    import ray.train.torch

    from benchmarks.train_paths import StepTimer
    from docray.models import build_model
    from train_jobs.common import warmup_cosine, worker_setup
    from train_jobs.train_screening import info_nce, koleo

    timer, (device, rank, world) = StepTimer(), worker_setup(c["cpus_per_worker"])
    torch.manual_seed(c["train_seed"])
    table = synth_rows("targets", c["rows"], c["seed"], c["options"], c["split"])
    tiles = raw_tiles([decode_image(b) for b in table.column("image").to_pylist()])
    model = build_model(c["model"], **c["overrides"])
    ds = CopyPairs(tiles, model.cfg.image_size, c["steps_per_epoch"] * c["batch_size"], c["train_seed"],
                   c["distractor_rate"], c["grey_rate"])
    loader = torch.utils.data.DataLoader(ds, batch_size=c["batch_size"] // world, shuffle=False, drop_last=True)
    loader = ray.train.torch.prepare_data_loader(loader)
    model = ray.train.torch.prepare_model(model)
    opt = torch.optim.AdamW(model.parameters(), lr=c["lr"], weight_decay=c["weight_decay"])
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(s, 20, c["epochs"] * c["steps_per_epoch"]))
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)
    losses = []
    for epoch in range(c["epochs"]):
        ds.epoch = epoch
        if hasattr(loader, "sampler") and hasattr(loader.sampler, "set_epoch"):
            loader.sampler.set_epoch(epoch)
        for xa, xb, keys in timer.wrap(loader):
            with amp:
                za, zb = model(xa), model(xb)
            loss = info_nce(za.float(), zb.float(), keys, c["temperature"]) + c["koleo"] * koleo(za.float())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(float(loss))
    _finish(c, rank, model, opt, timer, {"loss": float(np.mean(losses))}, table)


def mask_loop(c: dict) -> None:
    """Old train_privacy (a recogniser, `kind` original | masked): faces and the mask bank in memory."""
    import ray.train.torch

    from benchmarks.train_paths import StepTimer
    from docray.privacy import training as T
    from docray.models import build_model
    from train_jobs.common import worker_setup

    timer, (device, rank, world) = StepTimer(), worker_setup(c["cpus_per_worker"])
    torch.manual_seed(c["train_seed"] + rank)
    rng = np.random.default_rng([c["train_seed"], rank, {"original": 0, "masked": 1}[c["kind"]]])
    table = synth_rows("faces", c["rows"], c["seed"], c["options"], c["split"])
    x, y = face_tensors(table, c["image_size"])
    bank = mask_bank(c["mask_bank"], c["mask_seed"], c["image_size"]) if c["kind"] == "masked" else None
    model = build_model(c["model"], num_classes=c["num_classes"])
    loader = ray.train.torch.prepare_data_loader(torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(x, y), batch_size=c["batch_size"], shuffle=True, drop_last=True))
    model = ray.train.torch.prepare_model(model)
    opt = torch.optim.AdamW(model.parameters(), lr=c["lr"], weight_decay=c["weight_decay"])
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, c["epochs"] * len(loader))
    losses = []
    for epoch in range(c["epochs"]):
        model.train()
        if hasattr(loader, "sampler") and hasattr(loader.sampler, "set_epoch"):
            loader.sampler.set_epoch(epoch)
        for xb, yb in timer.wrap(loader):
            loss = T.recognizer_step(model, xb, yb, batch_masks(bank, len(xb), rng, xb.device, c["max_shift"]))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(float(loss))
    _finish(c, rank, model, opt, timer, {"loss": float(np.mean(losses))}, table)


def fit(loop, c: dict, name: str, out: str, use_gpu: bool | None) -> dict:
    """Run an old loop on Ray Train (`c["num_workers"]` workers); returns the trained state dict."""
    from types import SimpleNamespace

    from train_jobs.common import load_checkpoint_state, run_trainer, unwrap_state

    t0 = time.time()
    scaling = SimpleNamespace(num_workers=c["num_workers"], cpus_per_worker=c["cpus_per_worker"], use_gpu=use_gpu,
                              max_failures=0, out=out)
    result = run_trainer(loop, scaling, name, loop_config=c)
    return {"state": unwrap_state(load_checkpoint_state(result.checkpoint)["model"]), "wall_s": time.time() - t0}
