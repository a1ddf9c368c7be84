"""Old vs new training data path, per method: quality on the same held-out rows and training throughput.

    python -m benchmarks.train_paths --set out=/tmp/train_paths reference_seed=1   # the run reported (2 cores)
    python -m benchmarks.train_paths --set methods=[privacy,screening] privacy.epochs=2
    python -m benchmarks.train_paths --help

Issue 15 moved every trainer from "each Ray Train worker generates its synthetic data in memory"
(the old path, kept in `benchmarks/_legacy_train.py` for this comparison only) to "the driver reads
Parquet with Ray Data, each worker consumes its shard" (the new path: `train_jobs.*` with `train=`
and `val=` URIs). Methods: unified recognition (MAE pre-training, then the unified model from each
path's own encoder), regen, the screening descriptor, the mask recognisers. For each, both paths
train on THE SAME ROWS (the synthetic dataset `train_jobs.common.synth_dataset` materialises; the
old path generates the same index range in its worker, and the benchmark checks that the two row
sets are equal: ids and image bytes), for the same steps, with the same seed, model and
hyper-parameters, on the same workers (`num_workers` x `cpus_per_worker`). The short settings train
the methods' real model sizes on a few hundred rows for a few epochs. Then, in this process and
with the trained weights, it computes each method's validation figures for both on the same
held-out rows with the same code (so a figure the new path aggregates over workers is compared
fairly), and reads what each worker measured of its training steps (the first step, warm-up,
excluded): samples per second, samples per CPU second of the worker process, GPU utilisation on a
GPU, and the seconds before the first step (`prep`: the old path generates its data there).

A figure is ok when the new path is not worse than the old by more than `tolerance_points`:
percentage points for shares (accuracy, mIoU, mAP, top-1, similarities), percent of the old value
for losses. With `reference_seed` the old path also trains with that training seed on the same rows:
its difference to the old run is what two runs of ONE path differ by at these settings (data order,
initial weights, augmentation), the noise floor against which to read new-old. Throughput is ok when the steps are equal and new/old samples/s >= `min_throughput_ratio`.
The 1-minute load average beside each run says how shared the host was (wall-clock throughput means
little on a loaded one; samples per CPU second less so). Trained models and datasets go to
`out/home` (DOCRAY_HOME of the runs; its synthetic datasets are reused by the next run), not to your
registry; `out/runs` (the runs' checkpoints) and `out/timing` are emptied at the start. Prints tables, then (last line) JSON.
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
import os
import shutil
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch
from pydantic import Field

from docray import paths
from docray.config import Config, parse_args, save_config

METHODS = ("recognition", "regen", "screening", "privacy")


# -- step timing (runs inside the Ray Train workers of both paths) --------------------------------


def _rows_in(batch) -> int:
    if isinstance(batch, dict):
        return _rows_in(next(iter(batch.values())))
    if isinstance(batch, (list, tuple)):
        return _rows_in(batch[0])
    return len(batch)


class StepTimer:
    """Times one worker's training steps: `for b in timer.wrap(batches)` around each epoch's batches.

    A step runs from the moment its batch is handed over to the moment the loop asks for the next
    one, so it includes waiting for data. Throughput counts every step but the first of the first
    epoch (warm-up: allocator, first compile, the data pipeline's start); a later epoch counts from
    the moment its pass begins. Beside wall-clock samples/s, samples per CPU second of this worker's
    process (all its threads: a collate_fn runs there too; Ray Data's read tasks do not) measure
    the work per sample where other jobs share the host. On CUDA a thread samples GPU utilisation
    every 0.1 s meanwhile.
    """

    def __init__(self):
        self.created = time.perf_counter()  # make it where the loop starts: `prep_s` counts from here
        self.passes: list[dict] = []  # {"start": t, "steps": [(t_given, t_done, rows)]}
        self.gpu: list[tuple[float, float]] = []  # (t, utilisation %)
        self.rows: list[str] = []  # "id:hash" of the training rows this worker used (the legacy path sets it)
        self._stop = threading.Event()
        self._sampler = None

    def wrap(self, batches):
        self._start_gpu_sampler()
        rec = {"start": time.perf_counter(), "cpu_start": time.process_time(), "steps": []}
        self.passes.append(rec)
        for batch in batches:
            t, n = time.perf_counter(), _rows_in(batch)
            yield batch
            rec["steps"].append((t, time.perf_counter(), n, time.process_time()))

    def _start_gpu_sampler(self) -> None:
        if self._sampler is None and torch.cuda.is_available():
            self._sampler = threading.Thread(target=self._sample_gpu, daemon=True)
            self._sampler.start()

    def _sample_gpu(self) -> None:
        while not self._stop.wait(0.1):
            u = gpu_utilization()
            if u is not None:
                self.gpu.append((time.perf_counter(), u))

    def summary(self) -> dict:
        """steps, samples and seconds timed, samples_per_s, gpu_utilization_percent (None off CUDA),
        prep_s (from the timer's creation to the first batch: the old path generates its data there)."""
        self._stop.set()
        seconds, cpu, samples, spans = 0.0, 0.0, 0, []
        for i, p in enumerate(self.passes):
            steps = p["steps"][1:] if i == 0 else p["steps"]
            if not steps:
                continue
            begin, cpu_begin = (p["steps"][0][1], p["steps"][0][3]) if i == 0 else (p["start"], p["cpu_start"])
            seconds, cpu = seconds + steps[-1][1] - begin, cpu + steps[-1][3] - cpu_begin
            samples += sum(s[2] for s in steps)
            spans.append((begin, steps[-1][1]))
        util = [u for t, u in self.gpu if any(a <= t <= b for a, b in spans)]
        first = next((p["steps"][0][0] for p in self.passes if p["steps"]), self.created)
        return {"steps": sum(len(p["steps"]) for p in self.passes), "samples_timed": samples, "seconds_timed": seconds,
                "prep_s": first - self.created,
                "samples_per_s": samples / seconds if seconds > 0 else float("nan"),
                "samples_per_cpu_s": samples / cpu if cpu > 0 else float("nan"),
                "gpu_utilization_percent": float(np.mean(util)) if util else None,
                "synth_imported": "docray.synth" in sys.modules, "rows": self.rows,
                "load_average_1min": os.getloadavg()[0]}

    def dump(self, folder: str, rank: int) -> None:
        Path(folder).mkdir(parents=True, exist_ok=True)
        Path(folder, f"rank{rank}.json").write_text(json.dumps(self.summary()))


def gpu_utilization() -> float | None:
    """GPU utilisation (%) of this process's device over the last sample period (NVML; else nvidia-smi)."""
    try:
        return float(torch.cuda.utilization())
    except Exception:  # no pynvml: ask nvidia-smi
        import subprocess

        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits",
                                  f"--id={torch.cuda.current_device()}"], capture_output=True, text=True, timeout=5)
            return float(out.stdout.split()[0])
        except Exception:
            return None


def row_keys(table) -> list[str]:
    """'id:hash of image bytes' of each row: enough to tell whether two paths trained on the same rows."""
    return [f"{i}:{hashlib.sha1(b).hexdigest()[:16]}"
            for i, b in zip(table.column("id").to_pylist(), table.column("image").to_pylist())]


def timed_loop(module: str, name: str, timing_dir: str):
    """A new trainer's `module.name` train loop with its "train" shard's batches timed: each pass of
    `train_jobs.common.epoch_batches` (only the batches it hands to the loop, not the rest of the pass
    it drains) or of `iter_torch_batches` goes through a StepTimer; each rank writes
    `timing_dir/rank<r>.json` at the end."""

    def loop(config: dict) -> None:
        import ray.train

        from train_jobs import common

        timer, get_shard, epoch_batches = StepTimer(), ray.train.get_dataset_shard, common.epoch_batches

        class TimedShard:
            def __init__(self, shard):
                self.shard = shard

            def iter_torch_batches(self, **kw):
                return timer.wrap(self.shard.iter_torch_batches(**kw))

            def __getattr__(self, attr):
                return getattr(self.shard, attr)

        def timed_shard(dataset_name: str):
            shard = get_shard(dataset_name)
            return TimedShard(shard) if dataset_name == "train" else shard

        def timed_batches(shard, steps=None, **kw):
            if isinstance(shard, TimedShard):
                return timer.wrap(epoch_batches(shard.shard, steps, **kw))
            return epoch_batches(shard, steps, **kw)

        mod = importlib.import_module(module)
        patches = [(ray.train, "get_dataset_shard", timed_shard), (common, "epoch_batches", timed_batches)]
        patches += [(mod, a, f) for _, a, f in patches if hasattr(mod, a)]
        with contextlib.ExitStack() as stack:
            for obj, attr, fn in patches:
                stack.enter_context(patched(obj, attr, fn))
            try:
                getattr(mod, name)(config)
            finally:
                timer.dump(timing_dir, ray.train.get_context().get_world_rank())

    return loop


@contextlib.contextmanager
def patched(obj, attr: str, value):
    """`obj.attr = value` inside the `with` block, restored after."""
    old = getattr(obj, attr)
    setattr(obj, attr, value)
    try:
        yield
    finally:
        setattr(obj, attr, old)


def read_timing(folder: str) -> dict:
    """The ranks' StepTimer summaries of one run, combined: steps (every rank the same, else an
    error), samples_per_s_per_worker (mean over ranks), GPU utilisation, row keys (union)."""
    ranks = [json.loads(p.read_text()) for p in sorted(Path(folder).glob("rank*.json"))]
    if not ranks:
        raise RuntimeError(f"{folder}: no step timings were written (the loop did not run through?)")
    steps = {r["steps"] for r in ranks}
    if len(steps) != 1:
        raise RuntimeError(f"{folder}: ranks ran different numbers of steps {sorted(steps)}")
    gpu = [r["gpu_utilization_percent"] for r in ranks if r["gpu_utilization_percent"] is not None]
    return {"steps": steps.pop(), "samples_per_s_per_worker": float(np.mean([r["samples_per_s"] for r in ranks])),
            "samples_per_cpu_s": float(np.mean([r["samples_per_cpu_s"] for r in ranks])),
            "gpu_utilization_percent": float(np.mean(gpu)) if gpu else None,
            "synth_imported_in_worker": any(r["synth_imported"] for r in ranks),
            "load_average_1min": max(r["load_average_1min"] for r in ranks),
            "prep_s": max(r["prep_s"] for r in ranks),
            "rows": sorted(k for r in ranks for k in r["rows"])}


class NewRuns:
    """While active, a trainer module's `run_trainer` runs its loop timed (`timed_loop`) and keeps
    every Result, so the benchmark gets the new path's weights and step timings from its own run()."""

    def __init__(self, module, timing_root: str):
        self.module, self.root, self.runs = module, timing_root, []

    def run_trainer(self, loop, cfg, name: str, datasets=None, loop_config=None):
        from train_jobs.common import run_trainer

        folder = fresh(Path(self.root, name))
        result = run_trainer(timed_loop(loop.__module__, loop.__name__, folder), cfg, name, datasets, loop_config)
        self.runs.append({"name": name, "result": result, "timing": read_timing(folder)})
        return result

    def __enter__(self):
        self._patch = patched(self.module, "run_trainer", self.run_trainer)
        self._patch.__enter__()
        return self

    def __exit__(self, *exc):
        return self._patch.__exit__(*exc)


# -- configuration ---------------------------------------------------------------------------------


class RecognitionBench(Config):
    n_train: int = Field(192, ge=8, description="training documents: rows [0, n_train) of the synthetic documents")
    n_val: int = Field(128, ge=8, description="held-out documents: the rows after them")
    mae_model: str = Field("vit_mae_small", description="MAE factory (pre-training, both paths)")
    mae_epochs: int = Field(2, ge=1)
    mae_batch_size: int = Field(16, ge=1, description="documents per step (each gives a capture and its frames)")
    model: str = Field("unified_small", description="unified factory, from each path's own MAE encoder")
    epochs: int = Field(3, ge=1)
    batch_size: int = Field(16, ge=1)
    text_encoder: str = Field("hash", description="query-text encoder: hash (fast) | minilm")
    train_seeds: list[int] = Field([0], min_length=1, description="training seeds (the same rows): both paths train "
                                   "once per seed and each figure is the mean over them, its spread beside it")


class RegenBench(Config):
    n_train: int = Field(48, ge=4, description="training documents")
    n_val: int = Field(32, ge=4, description="held-out documents")
    model: str = "regen_small"
    epochs: int = Field(2, ge=1)
    batch_size: int = Field(8, ge=1, description="global batch (split across workers)")


class ScreeningBench(Config):
    n_pictures: int = Field(160, ge=4, description="pictures drawn for training (targets rows [0, n_pictures), their "
                            "'train' split: ~80%)")
    val_pictures: int = Field(48, ge=4, description="held-out pictures: the rows after them")
    model: str = "descriptor_small"
    epochs: int = Field(2, ge=1, description="passes over the training pictures")
    batch_size: int = Field(64, ge=2, description="tiles per step, about (the new path takes whole pictures)")


class PrivacyBench(Config):
    n_identities: int = Field(32, ge=2, description="synthetic identities")
    samples: int = Field(20, ge=10, description="faces per identity (8 of 10 train, 1 val)")
    image_size: int = 64
    model: str = Field("recognizer_small", description="recogniser factory (both recognisers)")
    kinds: list[str] = Field(["original", "masked"], description="recognisers to train")
    epochs: int = Field(4, ge=1)
    batch_size: int = Field(64, ge=2)
    mask_bank: int = Field(60, ge=6, description="synthetic training masks")
    train_seeds: list[int] = Field([0], min_length=1, description="training seeds (the same rows): both paths train "
                                   "once per seed and each figure is the mean over them, its spread beside it")
    eval_splits: list[str] = Field(["val", "test"], description="held-out splits of the faces scored (both are "
                                   "new photos of the training identities; more rows, less noise)")


class BenchConfig(Config):
    methods: list[str] = Field(list(METHODS), description=f"which methods to compare, of {list(METHODS)}")
    seed: int = 0
    num_workers: int = Field(1, ge=1, description="Ray Train workers, the same for both paths")
    cpus_per_worker: float = Field(1.0, gt=0)
    use_gpu: bool | None = Field(None, description="None: a GPU when the cluster has one")
    tolerance_points: float = Field(2.0, ge=0, description="a new figure may be this much worse than the old one: "
                                    "percentage points of a share, percent of a loss")
    min_throughput_ratio: float = Field(0.9, gt=0, description="new/old training samples/s per worker, at least")
    reference_seed: int | None = Field(None, description="also train the old path with this training seed (same "
                                       "rows): old-vs-old shows how far two runs of one path differ at these "
                                       "settings, the noise floor of the 2-point check (None: skip)")
    recognition: RecognitionBench = RecognitionBench()
    regen: RegenBench = RegenBench()
    screening: ScreeningBench = ScreeningBench()
    privacy: PrivacyBench = PrivacyBench()
    out: str = Field(default_factory=lambda: paths.sub("reports", "train_paths"),
                     description="report folder; its home/ is DOCRAY_HOME of both paths' runs (their datasets "
                                 "and models stay out of your own registry)")


def figure(name: str, old, new, higher_is_better: bool, share: bool, tol: float,
           reference: float | None = None) -> dict:
    """One validation figure of both paths; `worse_points` > 0 where the new path is worse;
    `reference`: the old path's figure with `reference_seed` (its difference to `old` alongside).
    `old` and `new` may be lists (one value per training seed): the figure is their mean, and the
    standard deviation over seeds (in points) stands beside it, with the standard error of new - old
    (sqrt(sd_old² / n + sd_new² / n)) and each seed's value."""
    points = lambda a, b: 100 * (a - b) if share else 100 * (a - b) / max(abs(b), 1e-12)  # noqa: E731
    olds, news = np.atleast_1d(np.asarray(old, float)), np.atleast_1d(np.asarray(new, float))
    old, new = float(olds.mean()), float(news.mean())
    diff = points(new, old)
    worse = -diff if higher_is_better else diff
    sd = lambda v: float(v.std(ddof=1)) * (100 if share else 100 / max(abs(old), 1e-12)) if len(v) > 1 else None  # noqa: E731
    se = None if len(olds) < 2 else float(np.hypot(sd(olds) / np.sqrt(len(olds)), sd(news) / np.sqrt(len(news))))
    return {"figure": name, "unit": "share" if share else "loss", "higher_is_better": higher_is_better,
            "old": old, "new": new, "diff_points": diff, "worse_points": worse, "ok": bool(worse <= tol),
            "seeds": len(olds), "old_sd_points": sd(olds), "new_sd_points": sd(news), "diff_se_points": se,
            "old_per_seed": olds.tolist(), "new_per_seed": news.tolist(),
            "old_reseeded": reference, "reseeded_diff_points": None if reference is None else points(reference, old)}


def throughput(model: str, old: dict, new: dict, min_ratio: float) -> dict:
    ratio = new["samples_per_s_per_worker"] / old["samples_per_s_per_worker"]
    return {"model": model, "steps_old": old["steps"], "steps_new": new["steps"],
            "samples_per_s_per_worker_old": old["samples_per_s_per_worker"],
            "samples_per_s_per_worker_new": new["samples_per_s_per_worker"], "ratio_new_old": ratio,
            "samples_per_cpu_s_old": old["samples_per_cpu_s"], "samples_per_cpu_s_new": new["samples_per_cpu_s"],
            "gpu_utilization_percent_old": old["gpu_utilization_percent"],
            "gpu_utilization_percent_new": new["gpu_utilization_percent"],
            "synth_imported_in_worker_old": old["synth_imported_in_worker"],
            "synth_imported_in_worker_new": new["synth_imported_in_worker"],
            "load_average_1min_old": old["load_average_1min"], "load_average_1min_new": new["load_average_1min"],
            "prep_s_old": old["prep_s"], "prep_s_new": new["prep_s"],
            "ok": bool(ratio >= min_ratio and old["steps"] == new["steps"])}


def parquet_rows(uri: str, split: str | None = None) -> list[str]:
    """`row_keys` of a Parquet dataset (only `split`'s rows when given), sorted."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    table = pq.read_table(uri, columns=["id", "image"] + (["split"] if split else []))
    if split:
        table = table.filter(pc.equal(table.column("split"), split))
    return sorted(row_keys(table))


def fresh(folder: Path) -> str:
    """`folder`, emptied (a rerun must not read an earlier run's timings)."""
    shutil.rmtree(folder, ignore_errors=True)
    return str(folder)


def legacy(c: BenchConfig, loop, name: str, reference: dict | None = None, train_seed: int | None = None,
           **settings) -> tuple[dict, dict, dict | None]:
    """Train an old loop under the benchmark's worker settings (training seed `train_seed`, default
    c.seed): (state dict, timing, and the state dict of a second run with training seed
    `c.reference_seed` and `reference` settings, or None)."""
    from benchmarks import _legacy_train as L

    runs = [(c.seed if train_seed is None else train_seed, name, settings)]
    if c.reference_seed is not None:
        runs.append((c.reference_seed, f"{name}-reseeded", {**settings, **(reference or {})}))
    out = []
    for train_seed, run_name, kw in runs:
        folder = fresh(Path(c.out, "timing", run_name))
        run = L.fit(loop, {"num_workers": c.num_workers, "cpus_per_worker": c.cpus_per_worker, "seed": c.seed,
                           "train_seed": train_seed, "timing_dir": folder, **kw}, run_name, str(Path(c.out, "runs")),
                    c.use_gpu)
        out.append((run["state"], read_timing(folder)))
    return out[0][0], out[0][1], out[1][0] if len(out) > 1 else None


# -- methods ---------------------------------------------------------------------------------------


def bench_privacy(c: BenchConfig) -> dict:
    """Original and masked recognisers: val accuracy on whole and on masked faces (fixed masks)."""
    import pyarrow.parquet as pq

    from benchmarks import _legacy_train as L
    from docray.privacy import training as T
    from docray.privacy.data import MaskedFaces
    from docray.models import build_model
    from train_jobs import train_privacy as new
    from train_jobs.common import load_checkpoint_state, synth_dataset

    m = c.privacy
    n = m.n_identities * m.samples
    faces, _ = synth_dataset("faces", n, 0, c.seed, {"size": m.image_size, "n_identities": m.n_identities})
    masks, _ = synth_dataset("masks", m.mask_bank, 0, new.PrivacyTrainConfig().mask_seed, {"size": m.image_size})
    bank = pq.read_table(masks, columns=["mask"]).column("mask").to_pylist()
    classes = list(range(m.n_identities))
    cfg = new.PrivacyTrainConfig(train=faces, masks=masks, image_size=m.image_size, seed=c.seed, recognizer=m.model,
                               models=m.kinds, epochs=m.epochs, batch_size=m.batch_size, num_workers=c.num_workers,
                               cpus_per_worker=c.cpus_per_worker, use_gpu=c.use_gpu, out=str(Path(c.out, "runs", "mask")))
    val = pq.read_table(faces, columns=["id", "image", "identity", "split"]).to_pylist()
    val = [r for r in val if r["split"] in m.eval_splits]
    prep = MaskedFaces(m.image_size, classes, bank)  # a fixed mask per row: the same for both paths

    def scores(state: dict) -> dict:
        model = build_model(m.model, num_classes=len(classes))
        model.load_state_dict(state)
        batches = (prep({k: [r[k] for r in val[i:i + 256]] for k in ("id", "image", "identity")})
                   for i in range(0, len(val), 256))
        return T.val_metrics(T.evaluate(model, "masked", batches))

    keys = ("val_acc_whole", "val_acc_masked")
    per_seed = {kind: {"old": [], "new": [], "ref": {}} for kind in m.kinds}
    speed, same_rows, want = [], True, parquet_rows(faces, "train")
    for i, seed in enumerate(m.train_seeds):
        with NewRuns(new, str(Path(c.out, "timing", f"new-{seed}"))) as runs:
            new.run(cfg.model_copy(update={"seed": seed, "out": str(Path(c.out, "runs", f"mask-{seed}"))}))
        for kind, run in zip(m.kinds, runs.runs):
            state, t_old, ref = legacy(c if i == 0 else c.model_copy(update={"reference_seed": None}), L.mask_loop,
                                       f"old-mask-{kind}-{seed}", train_seed=seed, kind=kind, rows=[0, n], split="train",
                                       options={"size": m.image_size, "n_identities": m.n_identities},
                                       image_size=m.image_size, mask_bank=m.mask_bank, mask_seed=cfg.mask_seed,
                                       model=m.model, num_classes=len(classes), batch_size=m.batch_size, lr=cfg.lr,
                                       weight_decay=cfg.weight_decay, epochs=m.epochs, max_shift=cfg.max_shift)
            per_seed[kind]["old"].append(scores(state))
            per_seed[kind]["new"].append(scores(load_checkpoint_state(run["result"].checkpoint)["model"]))
            if ref:
                per_seed[kind]["ref"] = scores(ref)
            if i == 0:
                speed.append(throughput(kind, t_old, run["timing"], c.min_throughput_ratio))
            same_rows &= t_old["rows"] == want
    figures = [figure(f"{kind}: {k}", [s[k] for s in r["old"]], [s[k] for s in r["new"]], True, True,
                      c.tolerance_points, r["ref"].get(k)) for kind, r in per_seed.items() for k in keys]
    return {"figures": figures, "throughput": speed, "same_rows": same_rows, "held_out_rows": len(val)}


def bench_screening(c: BenchConfig) -> dict:
    """The tile descriptor: top-1 retrieval of edited held-out tiles among all clean ones, and the
    mean positive / hardest negative similarity (the same edits for both: EditedTileBatch)."""
    import pyarrow.parquet as pq

    from benchmarks import _legacy_train as L
    from docray.models import build_model
    from docray.screening.data import EditedTileBatch
    from train_jobs import train_screening as new
    from train_jobs.common import load_checkpoint_state, synth_dataset

    d = c.screening
    train, val = synth_dataset("targets", d.n_pictures, d.val_pictures, c.seed)
    # the trainer's synthetic default (train='', val=''): the same cached folders, the 'train' split of `train`
    cfg = new.ScreeningTrainConfig(model=d.model, n_pictures=d.n_pictures, val_pictures=d.val_pictures, seed=c.seed,
                                    epochs=d.epochs, batch_size=d.batch_size,
                                    num_workers=c.num_workers, cpus_per_worker=c.cpus_per_worker, use_gpu=c.use_gpu,
                                    out=str(Path(c.out, "runs", "descriptor")), background_pictures=2,
                                    background_distractors=2, to_registry=False)
    with NewRuns(new, str(Path(c.out, "timing", "new"))) as runs:
        new.run(cfg)
    (run,) = runs.runs
    state_new = load_checkpoint_state(run["result"].checkpoint)
    spec = state_new["spec"]
    state_old, t_old, ref = legacy(c, L.descriptor_loop, "old-descriptor", rows=[0, d.n_pictures], split="train",
                              options={}, model=spec["name"], overrides=spec["overrides"],
                              steps_per_epoch=run["timing"]["steps"] // d.epochs, batch_size=d.batch_size,
                              epochs=d.epochs, lr=cfg.lr, weight_decay=cfg.weight_decay, temperature=cfg.temperature,
                              koleo=cfg.koleo, distractor_rate=cfg.distractor_rate, grey_rate=cfg.grey_rate)
    model = build_model(spec["name"], **spec["overrides"]).eval()
    rows = pq.read_table(val, columns=["id", "image"]).to_pydict()
    xa, xb, _ = EditedTileBatch(model.cfg.image_size)(rows)

    @torch.inference_mode()
    def scores(state: dict) -> dict:
        model.load_state_dict(state)
        embed = lambda x: torch.cat([model(x[i:i + 256]).float() for i in range(0, len(x), 256)])  # noqa: E731
        return new.retrieval(embed(xa), embed(xb))

    old, new_ = scores(state_old), scores(state_new["model"])
    ref = scores(ref) if ref else {}
    figures = [figure(k, old[k], new_[k], k != "val_hard_neg_sim", True, c.tolerance_points, ref.get(k))
               for k in ("val_top1", "val_pos_sim", "val_hard_neg_sim")]
    return {"figures": figures, "throughput": [throughput(spec["name"], t_old, run["timing"], c.min_throughput_ratio)],
            "same_rows": t_old["rows"] == parquet_rows(train, "train"), "held_out_rows": len(xa),
            "held_out_unit": "tiles", "held_out_pictures": len(rows["id"])}


def bench_recognition(c: BenchConfig) -> dict:
    """MAE pre-training, then unified recognition from each path's own encoder: the MAE validation
    loss (a fixed mask) and every task's held-out metric, gate and task-set accuracy (engine.evaluate
    over DocumentBatch of the same held-out rows)."""
    import pyarrow.parquet as pq

    from benchmarks import _legacy_train as L
    from docray.models import build_model
    from docray.recognition.data import DOC_OPTIONS, DocumentBatch, DocumentImages, to_float
    from docray.recognition.engine import evaluate
    from docray.recognition.metrics import HIGHER_IS_BETTER
    from docray.recognition.text import embed_texts
    from train_jobs import pretrain_recognition, train_recognition
    from train_jobs.common import load_checkpoint_state, synth_dataset

    u = c.recognition
    train, val = synth_dataset("documents", u.n_train, u.n_val, c.seed, options=DOC_OPTIONS)
    mcfg = pretrain_recognition.RecognitionPretrainConfig(model=u.mae_model, epochs=u.mae_epochs, batch_size=u.mae_batch_size)
    ucfg = train_recognition.RecognitionTrainConfig(model=u.model, text_encoder=u.text_encoder, encoder_from="",
                                            epochs=u.epochs, batch_size=u.batch_size)
    cat = train_recognition.catalogue_of(ucfg)
    query_text = embed_texts([t.query for t in cat.tasks], u.text_encoder).tolist()
    mae = build_model(u.mae_model, mask_ratio=mcfg.mask_ratio)

    def train_both(seed: int, first: bool) -> dict:
        """Both paths, MAE then unified from each path's own encoder, with training seed `seed`."""
        out = Path(c.out, "runs", f"unified-{seed}")
        cs = c if first else c.model_copy(update={"reference_seed": None})  # the old-vs-old run: once
        shared = [f"seed={seed}", f"num_workers={c.num_workers}", f"cpus_per_worker={c.cpus_per_worker}",
                  f"use_gpu={json.dumps(c.use_gpu)}", f"train={train}", f"val={val}"]
        with NewRuns(pretrain_recognition, str(Path(c.out, "timing", f"new-{seed}"))) as runs:
            pretrain_recognition.main(["--set", f"model={u.mae_model}", f"epochs={u.mae_epochs}", f"batch_size={u.mae_batch_size}",
                               "register_as=bench-encoder-new", f"out={out / 'mae'}", *shared])
        (mae_run,) = runs.runs
        views = 2 + DOC_OPTIONS["n_angles"]  # each document's capture, flash and angle frames: the MAE's images
        mae_state, t_mae, mae_ref = legacy(cs, L.mae_loop, f"old-mae-{seed}", train_seed=seed, rows=[0, u.n_train],
                                           options=DOC_OPTIONS, model=u.mae_model, overrides={"mask_ratio": mcfg.mask_ratio},
                                           use_frames=True, batch_size=u.mae_batch_size * views, epochs=u.mae_epochs,
                                           lr=mcfg.lr, weight_decay=mcfg.weight_decay)
        encoders = {}
        for key, state in (("old", mae_state), ("reseeded", mae_ref)):
            if state is not None:  # the old unified runs start from their own MAE's encoder
                mae.load_state_dict(state)
                encoders[key] = str(out / f"{key}-encoder.pt")
                torch.save(mae.encoder_state_dict(), encoders[key])
        with NewRuns(train_recognition, str(Path(c.out, "timing", f"new-{seed}"))) as runs:
            train_recognition.main(["--set", f"model={u.model}", f"text_encoder={u.text_encoder}", f"epochs={u.epochs}",
                                f"batch_size={u.batch_size}", "encoder_from=bench-encoder-new", "register_as=",
                                f"out={out / 'unified'}", *shared])
        (uni_run,) = runs.runs
        uni_state, t_uni, uni_ref = legacy(cs, L.unified_loop, f"old-unified-{seed}", {"encoder_state": encoders.get("reseeded")},
                                           train_seed=seed, rows=[0, u.n_train], options=DOC_OPTIONS, model=u.model,
                                           overrides={}, catalogue=cat.model_dump(), query_text=query_text,
                                           encoder_state=encoders["old"], batch_size=u.batch_size, epochs=u.epochs,
                                           lr=ucfg.lr, encoder_lr=ucfg.encoder_lr, weight_decay=ucfg.weight_decay,
                                           frame_tasks_per_batch=ucfg.frame_tasks_per_batch)
        return {"mae": (mae_state, load_checkpoint_state(mae_run["result"].checkpoint)["model"], mae_ref),
                "unified": (uni_state, load_checkpoint_state(uni_run["result"].checkpoint)["model"], uni_ref),
                "timing": (t_mae, mae_run["timing"], t_uni, uni_run["timing"])}

    rows = pq.read_table(val).to_pydict()
    chunks = [{k: np.asarray(v[i:i + 32], dtype=object) for k, v in rows.items()} for i in range(0, len(rows["id"]), 32)]
    images = torch.cat([DocumentImages(mae.spec.image_size, frames=False)(b) for b in chunks])
    noise = torch.rand(len(images), mae.spec.grid ** 2, generator=torch.Generator().manual_seed(0))  # a fixed mask

    @torch.inference_mode()
    def mae_loss(state: dict) -> float:
        mae.load_state_dict(state)
        mae.eval()
        return float(mae(to_float(images), noise).loss)

    model, _ = train_recognition.build(ucfg, np.asarray(query_text, np.float32))
    batches = [DocumentBatch(cat, model.image_size)(b) for b in chunks]

    def scores(state: dict) -> dict:
        model.load_state_dict(state)
        return {"mae": None, **evaluate(model, batches, cat, "cpu")}

    keys = [t.name for t in cat.tasks] + ["gate_accuracy", "task_set_accuracy"]
    old, new_, ref, want, same_rows, speed = [], [], {}, parquet_rows(train), True, []
    for i, seed in enumerate(u.train_seeds):
        r = train_both(seed, i == 0)
        (m_old, m_new, m_ref), (s_old, s_new, s_ref) = r["mae"], r["unified"]
        old.append({**scores(s_old), "mae": mae_loss(m_old)})
        new_.append({**scores(s_new), "mae": mae_loss(m_new)})
        if m_ref is not None:
            ref = {**(scores(s_ref) if s_ref else {}), "mae": mae_loss(m_ref)}
        t_mae, t_mae_new, t_uni, t_uni_new = r["timing"]
        if i == 0:
            speed = [throughput(u.mae_model, t_mae, t_mae_new, c.min_throughput_ratio),
                     throughput(u.model, t_uni, t_uni_new, c.min_throughput_ratio)]
        same_rows &= t_mae["rows"] == want and t_uni["rows"] == want
    figures = [figure("mae: val_loss", [o["mae"] for o in old], [n["mae"] for n in new_], False, False,
                      c.tolerance_points, ref.get("mae"))]
    higher = {**{t.name: HIGHER_IS_BETTER[t.type] for t in cat.tasks}, "gate_accuracy": True, "task_set_accuracy": True}
    for k in keys:
        figures.append(figure(f"unified: {k}", [o[k] for o in old], [n[k] for n in new_], higher[k], True,
                              c.tolerance_points, ref.get(k)))
    return {"figures": figures, "throughput": speed, "same_rows": same_rows, "held_out_rows": len(rows["id"])}


def bench_regen(c: BenchConfig) -> dict:
    """Regen: the validation losses (content, type, generation; fixed diffusion noise), the share of
    field lines read exactly and the type accuracy, on the same held-out RegenBatch tensors."""
    import pyarrow.parquet as pq

    from benchmarks import _legacy_train as L
    from docray.regen.data import RegenBatch
    from docray.models import build_model
    from train_jobs import train_regen as new
    from train_jobs.common import load_checkpoint_state, synth_dataset

    g = c.regen
    defaults = new.RegenTrainConfig()
    train, val = synth_dataset("documents", g.n_train, g.n_val, c.seed,
                               options={"size": tuple(defaults.original_size), "n_angles": 0})
    never = {k: {"target": 0.0, "patience": 10_000} for k in ("content", "type", "generation")}  # equal epochs
    cfg = new.RegenTrainConfig(model=g.model, train=train, val=val, seed=c.seed, max_epochs=g.epochs,
                               batch_size=g.batch_size, convergence=never, num_workers=c.num_workers,
                               cpus_per_worker=c.cpus_per_worker, use_gpu=c.use_gpu, out=str(Path(c.out, "runs", "regen")),
                               to_registry=False)
    with NewRuns(new, str(Path(c.out, "timing", "new"))) as runs:
        new.run(cfg)
    (run,) = runs.runs
    state_new = load_checkpoint_state(run["result"].checkpoint)
    spec = state_new["spec"]
    state_old, t_old, ref = legacy(c, L.regen_loop, "old-regen", rows=[0, g.n_train], original_size=defaults.original_size,
                              model=spec["name"], overrides=spec["overrides"], batch_size=g.batch_size,
                              epochs=g.epochs, lr=cfg.lr, weight_decay=cfg.weight_decay, warmup_steps=cfg.warmup_steps,
                              weights=cfg.weights, flat_rate=cfg.flat_rate)
    model = build_model(spec["name"], **spec["overrides"]).eval()
    rows = pq.read_table(val).to_pydict()
    collate = RegenBatch(model.cfg, model.tokenizer, cfg.flat_rate, seed=c.seed)
    bs = max(1, g.batch_size // c.num_workers)
    batches = [collate({k: v[i:i + bs] for k, v in rows.items()}) for i in range(0, len(rows["id"]), bs)]

    @torch.inference_mode()
    def scores(state: dict) -> dict:
        model.load_state_dict(state)
        out, _ = new.evaluate(model, batches, "cpu", read_lines=len(rows["id"]) * 100)
        right = sum(int((model.predict_type(b["pixels"]).argmax(-1) == b["types"]).sum()) for b in batches)
        return {**out, "type_accuracy": right / len(rows["id"])}

    old, new_ = scores(state_old), scores(state_new["model"])
    ref = scores(ref) if ref else {}
    figures = [figure(k, old[k], new_[k], True, True, c.tolerance_points, ref.get(k))
               for k in ("type_accuracy", "line_exact")]
    figures += [figure(f"val_{k}", old[k], new_[k], False, False, c.tolerance_points, ref.get(k))
                for k in ("content", "type", "generation")]
    return {"figures": figures, "throughput": [throughput(spec["name"], t_old, run["timing"], c.min_throughput_ratio)],
            "same_rows": t_old["rows"] == parquet_rows(train), "held_out_rows": len(rows["id"])}


# -- report ----------------------------------------------------------------------------------------


def _num(v, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def print_report(c: BenchConfig, results: dict) -> None:
    print(f"\nold (in-worker synth) vs new (Parquet -> Ray Data) training path: {c.num_workers} worker(s) x "
          f"{c.cpus_per_worker:g} CPU, {os.cpu_count()} cores, GPU: {torch.cuda.is_available()}")
    print(f"{'method':11s} {'figure':34s} {'old':>8s} {'new':>8s} {'new-old':>8s} {'ok':>3s}  "
          f"{'old, seed ' + str(c.reference_seed) if c.reference_seed is not None else ''}")
    for method, r in results.items():
        for f in r["figures"]:
            unit = "pts" if f["unit"] == "share" else "%"
            ref = "" if f["old_reseeded"] is None else f"{f['old_reseeded']:8.4f} {f['reseeded_diff_points']:+6.1f}{unit}"
            if f.get("seeds", 1) > 1:
                ref += f"  mean of {f['seeds']} seeds, sd old {f['old_sd_points']:.1f} new {f['new_sd_points']:.1f} {unit}"
            print(f"{method:11s} {f['figure']:34s} {f['old']:8.4f} {f['new']:8.4f} {f['diff_points']:+6.1f}{unit:>3s}"
                  f" {'ok' if f['ok'] else 'NO':>3s}  {ref}")
    print(f"\n{'method':11s} {'model':16s} {'steps':>9s} {'samples/s/worker':>17s} {'new/old':>7s} "
          f"{'samples/CPU s':>13s} {'GPU %':>9s} {'prep s':>11s} {'load':>9s} {'ok':>3s}")
    print(f"{'':11s} {'':16s} {'old/new':>9s} {'old/new':>17s} {'':7s} {'old/new':>13s} {'old/new':>9s} "
          f"{'old/new':>11s} {'old/new':>9s}")
    for method, r in results.items():
        for t in r["throughput"]:
            pair = lambda k, fmt: f"{_num(t[k + '_old'], fmt)}/{_num(t[k + '_new'], fmt)}"  # noqa: E731
            print(f"{method:11s} {t['model']:16s} {t['steps_old']:>4d}/{t['steps_new']:<4d} "
                  f"{pair('samples_per_s_per_worker', '.1f'):>17s} {t['ratio_new_old']:7.2f} "
                  f"{pair('samples_per_cpu_s', '.1f'):>13s} {pair('gpu_utilization_percent', '.0f'):>9s} {pair('prep_s', '.1f'):>11s} "
                  f"{pair('load_average_1min', '.0f'):>9s} {'ok' if t['ok'] else 'NO':>3s}")
    for method, r in results.items():
        unit = r.get("held_out_unit", "rows")
        print(f"{method}: same training rows in both paths: {r['same_rows']}; {r['held_out_rows']} held-out {unit} "
              f"(one is {100 / r['held_out_rows']:.2f} points of a share over them)")


BENCHES = {"recognition": bench_recognition, "regen": bench_regen, "screening": bench_screening, "privacy": bench_privacy}


def main(argv=None) -> dict:
    from cluster.local import init_ray

    c = parse_args(BenchConfig, argv, description=__doc__.split("\n")[0])
    unknown = set(c.methods) - set(METHODS)
    if unknown:
        raise ValueError(f"unknown method(s) {sorted(unknown)}; choose from {list(METHODS)}")
    c = c.model_copy(update={"out": str(Path(c.out).expanduser().resolve())})
    for folder in ("runs", "timing"):  # Ray Train would resume a run of the same name found there
        fresh(Path(c.out, folder))
    save_config(c, c.out)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    home = os.environ.get("DOCRAY_HOME")
    os.environ["DOCRAY_HOME"] = str(Path(c.out, "home"))  # before Ray starts: its workers inherit it
    try:
        init_ray()
        load0, t0 = os.getloadavg()[0], time.time()
        results = {m: BENCHES[m](c) for m in c.methods}
    finally:
        os.environ.pop("DOCRAY_HOME") if home is None else os.environ.update(DOCRAY_HOME=home)
    print_report(c, results)
    figures = [f for r in results.values() for f in r["figures"]]
    speeds = [t for r in results.values() for t in r["throughput"]]
    summary = {
        "methods": results, "num_workers": c.num_workers, "cpus_per_worker": c.cpus_per_worker,
        "cpu_cores": os.cpu_count(), "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "load_average_1min_start": load0, "load_average_1min_end": os.getloadavg()[0], "wall_s": time.time() - t0,
        "figures_ok": all(f["ok"] for f in figures), "throughput_ok": all(t["ok"] for t in speeds),
        "same_rows": all(r["same_rows"] for r in results.values()),
        "worst_figure_points": max((f["worse_points"] for f in figures), default=0.0),
        "largest_old_vs_old_points": max((abs(f["reseeded_diff_points"]) for f in figures
                                          if f["reseeded_diff_points"] is not None), default=None),
        "min_throughput_ratio_new_old": min((t["ratio_new_old"] for t in speeds), default=float("nan")),
    }
    summary["ok"] = summary["figures_ok"] and summary["throughput_ok"] and summary["same_rows"]
    Path(c.out, "result.json").write_text(json.dumps(summary, indent=2, default=str))
    print(json.dumps(summary, default=str))
    return summary


if __name__ == "__main__":
    main()
