"""What every Ray Train entrypoint shares: datasets, worker set-up, checkpoints, the trainer, failure tests.

Data: every trainer takes `train=` and `val=` dataset URIs (a Parquet folder or file, local or
`s3://`, in the contract of its kind: `docray.datasets.contracts`). With none given, the job
materialises its synthetic default once through Ray Data (`synth_dataset`, cached under
`DOCRAY_HOME/datasets/synth/`) and reads that: no worker generates data. Every artifact path is a
local path or a URI alike (`docray.paths.join`, `docray.storage.blobs.write_file`), so an s3://
DOCRAY_HOME keeps datasets, run storage, configs and models in object storage. The driver reads both with
`ray.data.read_parquet` (`read_datasets`), fixes the steps of an epoch before the loop
(`steps_per_epoch`: every rank runs the same number), and passes them as `TorchTrainer(datasets=...)`
(`run_trainer`), split equally over the workers. A worker consumes its shard as

    shard = ray.train.get_dataset_shard("train")
    for batch in epoch_batches(shard, steps, batch_size=bs, collate_fn=Preprocess(...)):
        ...
    if agree(time.time() - t0 > budget): ...           # one decision, taken by every rank
    totals = all_sum({"loss": s, "n": n})               # validation summed over every rank's val shard

    start, state = restore(model, opt, sched)          # 0, {} on a fresh run
    for epoch in range(start, epochs):
        ...
        report_epoch(rank, model, opt, epoch, metrics, sched=sched, extra={"history": h})

Checkpoints hold one `state.pt` ({"model", "opt", "epoch"} plus "sched" and any `extra` keys, the
model's weights without DDP's `module.` prefix) and `metrics.json`. Rank 0 writes them in a
TemporaryDirectory; every rank reports (Ray Train's pattern). After a worker failure Ray restarts
the group (`FailureConfig`) and `restore` picks up the latest checkpoint.

Every registered version carries a model card (`model_card`, saved as the registry's card.json):
the job's resolved config, its datasets (URI and fingerprint: `dataset_fingerprint`), the code
commit (DOCRAY_COMMIT, which `docray submit` sets from the submitting checkout), the hardware and
the wall time; `docray models show NAME` prints it with the version's config and metrics.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import tempfile
import time
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
    """Device and threads of this worker; returns (device, world_rank, world_size).

    Torch threads: the worker's CPUs rounded up, so `cpus_per_worker=1.5` on a 2-core host computes on
    both cores while half a CPU stays free for Ray Data's tasks."""
    import ray.train
    import ray.train.torch

    torch.set_num_threads(max(1, math.ceil(cpus)))
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
    from docray import paths
    from docray.storage.blobs import exists, write_file

    marker = paths.join(out, ".failed_once")
    if epoch == cfg_fail_at and rank == 0 and not exists(marker):
        write_file(marker, b"1")
        raise RuntimeError(f"injected failure after epoch {epoch} (fail_at_epoch)")


def maybe_exit(cfg_exit_at: int, step: int, out: str, rank: int) -> None:
    """Testing hook: the process of rank 0 dies (os._exit, no clean-up) once, at global `step`, as a
    worker lost mid-epoch; a marker file remembers, so the restarted group runs through."""
    from docray import paths
    from docray.storage.blobs import exists, write_file

    marker = paths.join(out, ".exited_once")
    if step == cfg_exit_at and rank == 0 and not exists(marker):
        _wait_for_registered_checkpoint()
        write_file(marker, b"1")
        os._exit(1)


def _wait_for_registered_checkpoint(timeout_s: float = 120.0) -> None:
    """Block until the controller has registered a checkpoint (its snapshot file on storage lists one):
    the controller collects reports on a 2 s poll, so a worker that dies right after `report` may
    otherwise die before its checkpoint counts, and the run restarts from scratch."""
    import ray.train

    storage = ray.train.get_context().get_storage()
    fs, path = storage.storage_filesystem, storage.checkpoint_manager_snapshot_path
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with fs.open_input_stream(path) as f:
                if json.loads(f.read()).get("checkpoint_results"):
                    return
        except (FileNotFoundError, OSError, ValueError):
            pass
        time.sleep(0.5)
    raise TimeoutError(f"no registered checkpoint in {path} after {timeout_s:.0f} s")


# -- datasets ------------------------------------------------------------------------------------

SYNTH_CACHE_VERSION = 1  # part of the synthetic datasets' cache key: bump when docray.synth's rows change


def synth_dataset(kind: str, n_train: int, n_val: int, seed: int = 0, options: dict | None = None,
                  start: int = 0) -> tuple[str, str]:
    """The synthetic default of `kind` as (train, val) Parquet folders: rows [start, start + n_train) and
    [start + n_train, start + n_train + n_val), generated once through Ray Data (`data_jobs.synth_corpus`) and cached
    under `DOCRAY_HOME/datasets/synth/<kind>-<key>/` (a local folder or object storage), keyed by the
    arguments; `_SUCCESS`, written last, marks a complete one. Call on the driver."""
    from data_jobs.synth_corpus import generate_with_ray
    from docray import paths
    from docray.storage.blobs import exists, write_file

    options = dict(options or {})
    key = json.dumps([kind, n_train, n_val, seed, options, SYNTH_CACHE_VERSION] + ([start] if start else []),
                     sort_keys=True)
    root = paths.sub("datasets", "synth", f"{kind}-{hashlib.sha256(key.encode()).hexdigest()[:12]}")
    done = paths.join(root, "_SUCCESS")
    if not exists(done):
        for split, first, n in (("train", start, n_train), ("val", start + n_train, n_val)):
            if n:
                generate_with_ray(kind, n, paths.join(root, split), seed=seed, start=first, **options)
        write_file(done, key.encode())
    return paths.join(root, "train"), paths.join(root, "val") if n_val else ""


CACHE_FRACTION = 0.25  # datasets whose files fit in this share of Ray's object store are read into it once


def read_datasets(train: str, val: str = "", columns: list[str] | None = None, cache: bool | None = None) -> dict:
    """`{"train": ..., "val": ...}` Ray Datasets of the Parquet at these URIs (val only if given).

    `cache` reads them into Ray's object store once (`materialize`), so each epoch's pass starts in
    milliseconds instead of the seconds a streaming read takes to start (which small epochs pay every
    time); None decides by size: cached when their files take at most CACHE_FRACTION of the object
    store, streamed otherwise (a dataset larger than memory is never pulled in whole)."""
    import ray.data

    in_order()

    def read(uri: str):
        if not uri:
            raise ValueError("a dataset URI is empty")
        return ray.data.read_parquet(os.path.expanduser(uri), columns=columns, file_extensions=["parquet"])

    uris = {"train": train, **({"val": val} if val else {})}
    ds = {name: read(uri) for name, uri in uris.items()}
    if cache is None:
        cache = fits_in_store(sum(_stored_bytes(u) for u in uris.values()))
    return {name: d.materialize() for name, d in ds.items()} if cache else ds


def in_order() -> None:
    """Ray Data keeps the rows' order in this (driver) process, and so in the trainers' ingest, whose
    default options Train copies from it (`run_trainer`): with seeded shuffles, one worker sees the same rows in the same order every run
    of a seed, so a run can be repeated (several workers take blocks as they come)."""
    import ray.data

    ray.data.DataContext.get_current().execution_options.preserve_order = True


def _stored_bytes(uri: str) -> int:
    """The size of a dataset's files (a local path or a URI)."""
    from docray.storage.blobs import filesystem

    fs, path = filesystem(os.path.expanduser(uri))
    return int(fs.du(path, total=True)) if fs.isdir(path) else int(fs.size(path))


def cache_if_fits(mapped: dict, rows: int) -> dict:
    """Datasets after a per-row map step (decoded pixels), materialised in Ray's object store when
    `rows` of them fit in CACHE_FRACTION of it (their size counted on 16 rows of the train one), so
    the map runs once and not on every epoch's pass; streamed otherwise."""
    sample = mapped["train"].take_batch(16, batch_format="pyarrow")
    if fits_in_store(rows * sample.nbytes / max(sample.num_rows, 1)):
        return {name: d.materialize() for name, d in mapped.items()}
    return mapped


def fits_in_store(nbytes: float) -> bool:
    """Whether `nbytes` fit in CACHE_FRACTION of Ray's object store (the rule for caching a dataset)."""
    return nbytes <= CACHE_FRACTION * _object_store_bytes()


def _object_store_bytes() -> float:
    import ray

    return float(ray.cluster_resources().get("object_store_memory", 0))


def steps_per_epoch(n_rows: int, batch_size: int, world: int) -> int:
    """Optimiser steps each rank runs per epoch: its equal share of `n_rows`, in full batches."""
    steps = (n_rows // world) // batch_size
    if steps < 1:
        raise ValueError(f"{n_rows} training rows give no full batch of {batch_size} on each of {world} worker(s); "
                         "lower batch_size or num_workers, or add rows")
    return steps


def epoch_batches(shard, steps: int | None = None, **iter_kwargs):
    """One pass over a worker's dataset shard (`iter_torch_batches(**iter_kwargs)`), yielding at most
    `steps` batches; the rest of the pass is drained unused, so every rank stays in step with the
    equal split."""
    for i, batch in enumerate(shard.iter_torch_batches(**iter_kwargs)):
        if steps is None or i < steps:
            yield batch


def _distributed() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _collective_device() -> torch.device:
    """Where a collective's tensor must live: the rank's GPU under NCCL (which rejects CPU tensors), else CPU."""
    import torch.distributed as dist

    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def agree(flag: bool) -> bool:
    """True on every rank when `flag` is true on any: one decision (stop, converge) for all."""
    if not _distributed():
        return bool(flag)
    import torch.distributed as dist

    t = torch.tensor([1.0 if flag else 0.0], device=_collective_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def all_sum(values: dict[str, float]) -> dict[str, float]:
    """`values` summed over every rank (same keys on all ranks): validation over all val shards."""
    if not _distributed():
        return {k: float(v) for k, v in values.items()}
    import torch.distributed as dist

    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=_collective_device())
    dist.all_reduce(t)
    return dict(zip(keys, t.tolist()))


def samples_per_s(samples: int, seconds: float) -> float:
    """Training throughput over all workers: the samples (a trainer's batch rows) every worker trained on
    this epoch over this worker's training seconds, validation left out (the workers step together).
    `docray models build` prints it per step, from the registered version's metrics."""
    return all_sum({"n": float(samples)})["n"] / max(seconds, 1e-9)


def sync_buffers(model: nn.Module) -> None:
    """Rank 0's buffers (BatchNorm statistics) on every rank. DDP copies them at the start of each
    forward; a model whose last forward ran on every rank's own batch differs per rank until then."""
    if not _distributed():
        return
    import torch.distributed as dist

    for b in unwrap(model).buffers():
        dist.broadcast(b.data, src=0)


def all_gather(value) -> list:
    """Every rank's `value` (any picklable object), in rank order: validation rows that do not add
    up (detections, ranked over all shards for mAP)."""
    if not _distributed():
        return [value]
    import torch.distributed as dist

    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, value)
    return out


def say_if_waiting(cpus: float) -> None:
    """Ray Train starts the workers only when all their CPUs are free at once, and waits silently
    until then: say so when the cluster has fewer free now (Serve replicas, other jobs) or in all."""
    import ray

    free, total = ray.available_resources().get("CPU", 0.0), ray.cluster_resources().get("CPU", 0.0)
    if cpus > free + 1e-9:
        where = (f"the cluster has {total:g} in all: it waits until an autoscaler adds nodes" if cpus > total + 1e-9
                 else f"{free:g} of the cluster's {total:g} are free now (Serve replicas and other jobs hold the rest)")
        print(f"waiting for {cpus:g} CPUs for the training workers: {where}; Ray Data's reads need CPUs too. "
              "Fewer workers or a smaller cpus_per_worker start sooner.", file=sys.stderr, flush=True)


def run_name(prefix: str) -> str:
    """A fresh Ray Train run name, `<prefix>-<UTC time>-<6 hex>`. Ray Train resumes a run whose name
    already has checkpoints under the storage path, so a fixed name would hand each call the last
    call's checkpoint, even one of another config (another task set: a size mismatch on restore)."""
    return f"{prefix}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{os.urandom(3).hex()}"


def run_trainer(loop, cfg, name: str, datasets: dict | None = None, loop_config: dict | None = None,
                resume: bool = False):
    """Fit `loop` with TorchTrainer under cfg's scaling and failure settings; returns the Result.

    Each call is a run of its own (`run_name(name)`), which resumes after a worker failure within
    the call (`FailureConfig`); `resume=True` takes `name` as it is, so a call with an earlier
    run's name continues that run from its latest checkpoint.

    `cfg` needs: num_workers, cpus_per_worker, use_gpu (None: a GPU when the cluster has one),
    max_failures, out; and may have worker_resources (custom Ray resources each worker needs, e.g.
    `{node_a: 0.01}`: the workers run only on nodes that have them). Ray Train keeps the run (checkpoints, results) under `<out>/ray`, a local
    folder or object storage (`s3://...`: Ray opens it with pyarrow, which reads the same AWS_*
    environment as s3fs). `datasets` (from `read_datasets`) are split equally over the workers
    (`ray.train.get_dataset_shard(name)` in the loop). The loop gets `loop_config`, by default
    `cfg.model_dump()`.
    """
    import ray
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from docray import paths

    use_gpu = cfg.use_gpu if cfg.use_gpu is not None else ray.cluster_resources().get("GPU", 0) > 0
    say_if_waiting(cfg.num_workers * cfg.cpus_per_worker)
    trainer = TorchTrainer(
        loop, train_loop_config=cfg.model_dump() if loop_config is None else loop_config,
        scaling_config=ScalingConfig(num_workers=cfg.num_workers, use_gpu=use_gpu,
                                     resources_per_worker={"CPU": cfg.cpus_per_worker,
                                                           **getattr(cfg, "worker_resources", {})}),
        run_config=RunConfig(name=name if resume else run_name(name), storage_path=paths.join(paths.absolute(cfg.out), "ray"),
                             failure_config=FailureConfig(max_failures=cfg.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=2)),
        datasets=datasets or {},
        dataset_config=DataConfig(datasets_to_split="all"),  # its ingest takes the driver's order (`in_order`)
    )
    return trainer.fit()


# -- model cards ---------------------------------------------------------------------------------

def dataset_fingerprint(uri: str) -> dict:
    """What a dataset was, cheaply: its URI, Parquet files, bytes, rows and a sha256 over each file's
    name (relative to `uri`), size and Parquet footer (schema, row groups, every column chunk's
    offsets, sizes and statistics). Reads only the footers, so it costs the same on S3 as on disk.
    Equal fingerprints mean the same files with the same layout and statistics; a rewrite that keeps
    all of these (one value changed for another of the same encoded size, inside min/max) goes unseen."""
    import pyarrow.parquet as pq

    from docray.storage.blobs import filesystem

    fs, root = filesystem(os.path.expanduser(uri))
    root = root.rstrip("/")
    files = sorted(f for f in fs.find(root) if f.endswith(".parquet")) if fs.isdir(root) else [root]
    digest, rows, size = hashlib.sha256(), 0, 0
    for f in files:
        with fs.open(f, "rb") as fh:
            meta = pq.ParquetFile(fh).metadata
        n = int(fs.size(f))
        footer = json.dumps(meta.to_dict(), sort_keys=True, default=str)
        digest.update(json.dumps([f[len(root):].lstrip("/"), n, footer]).encode())
        rows, size = rows + meta.num_rows, size + n
    return {"uri": uri, "files": len(files), "bytes": size, "rows": rows, "sha256": digest.hexdigest()}


def code_commit() -> str:
    """DOCRAY_COMMIT (set by `docray submit`: a job's working dir has no git history), else the commit
    of the checkout this runs in (`python -m train_jobs.X` from the repository), else 'unknown'."""
    from cluster.submit import git_commit

    return os.environ.get("DOCRAY_COMMIT") or git_commit(".") or "unknown"


def hardware(cfg) -> dict:
    """Where the job trained: its workers (cfg's scaling settings), the GPU type when it used GPUs
    (Ray's `accelerator_type:*` resources, or the driver's CUDA device), the cluster's totals."""
    import ray

    res = ray.cluster_resources() if ray.is_initialized() else {}
    use_gpu = cfg.use_gpu if cfg.use_gpu is not None else res.get("GPU", 0) > 0
    kinds = sorted(k.split(":", 1)[1] for k in res if k.startswith("accelerator_type:"))
    gpu = None
    if use_gpu:
        gpu = ", ".join(kinds) or (torch.cuda.get_device_name(0) if torch.cuda.is_available() else "unknown")
    return {"num_workers": cfg.num_workers, "cpus_per_worker": cfg.cpus_per_worker, "gpu": gpu,
            "cluster_cpus": res.get("CPU"), "cluster_gpus": res.get("GPU", 0.0), "driver_cpus": os.cpu_count()}


def model_card(cfg, started: float, datasets: dict[str, str], key_metric: str = "") -> dict:
    """The card of a version this job registers (`ModelRegistry.save(..., card=...)`): the job's module
    and resolved config, its datasets (`{"train": uri, ...}`, empty URIs left out) fingerprinted, the
    code commit, the hardware, the wall time since `started` (time.time() at the job's start) and the
    metric `docray models list` shows (`key_metric`; the version's metrics themselves are metrics.json)."""
    module = type(cfg).__module__
    if module == "__main__":  # `python -m train_jobs.X`: the module's own name
        module = getattr(sys.modules["__main__"].__spec__, "name", module)
    return {"job": module, "job_config": cfg.model_dump(mode="json"),
            "datasets": {k: dataset_fingerprint(u) for k, u in datasets.items() if u},
            "commit": code_commit(), "hardware": hardware(cfg), "wall_time_s": round(time.time() - started, 1),
            "key_metric": key_metric}
