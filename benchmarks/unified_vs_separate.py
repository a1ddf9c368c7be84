"""Unified recognition vs the models it replaces: one single-task model per task, same encoder size.

Both start from the same registered MAE encoder (or from scratch with encoder_from=''), see the
same training documents for the same number of epochs (the unified model asks every task of every
document: frame_tasks_per_batch covers all multi-frame tasks), and are scored on the held-out
split. Prints per task: metric, a no-image baseline ("chance"), unified, separate; then total
parameters (the frozen text encoder is outside both: its query vectors are stored buffers) and the
time to answer all tasks for one image (batch 1, CPU threads as configured). Last line: JSON.

    python -m benchmarks.unified_vs_separate                                  # ~2k train docs, a few epochs
    python -m benchmarks.unified_vs_separate --set epochs=12 "seeds=[0,1,2]"   # make bench: mean, spread of 3 seeds
    python -m benchmarks.unified_vs_separate --set n_docs=10000 epochs=30      # a longer run (GPU: device=cuda)
    python -m benchmarks.unified_vs_separate --set model=unified_tiny encoder_from='' n_docs=60 epochs=1 text_encoder=hash
"""
from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from pydantic import Field

from docray import paths
from docray.config import Config, parse_args, save_config


class BenchConfig(Config):
    model: str = Field("unified_small", description="unified factory; the separate models use the same one")
    encoder_from: str = Field("recognition-encoder", description="registered MAE encoder ('' = scratch)")
    text_encoder: str = "minilm"
    n_docs: int = Field(2500, ge=20, description="synthetic documents (80% train; val and test, 10% each, held out)")
    seeds: list[int] = Field([0], min_length=1, description="one run per seed (documents and initialisation); "
                             "the table gives the mean and the lowest and highest")
    epochs: int = Field(5, ge=1, description="training epochs, the same for every model")
    train_limit: int | None = Field(None, ge=1, description="use only the first N training documents (a quick run)")
    batch_size: int = 32
    lr: float = 1e-3
    encoder_lr: float = 5e-4
    frame_tasks_per_batch: int = Field(2, ge=1, description="unified: multi-frame tasks per batch (2 = all)")
    tasks: list[str] | None = Field(None, description="a subset of the catalogue (None: all)")
    eval_splits: list[str] = Field(["val", "test"], description="held-out splits scored (nothing else uses them)")
    threads: int = Field(2, ge=1, description="torch CPU threads")
    timing_repeats: int = Field(20, ge=1)
    device: str = Field("cpu", description="cpu | cuda")
    out: str = Field(default_factory=lambda: paths.sub("reports", "unified_vs_separate"))


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.inference_mode()
def time_all_tasks(models: list, arrays: dict, device, repeats: int, split: str = "test") -> float:
    """Median ms to answer every task of each model for one image (frames included), summed over models."""
    from docray.recognition.data import DocumentSet
    from docray.recognition.engine import model_inputs

    item = torch.utils.data.default_collate([DocumentSet(arrays, split)[0]])
    calls = []
    for m in models:
        m.eval()
        calls.append((m, model_inputs(item, m.catalogue, list(range(len(m.catalogue.tasks))), device)))
    for m, inp in calls:  # warm-up
        m(**inp)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for m, inp in calls:
            m(**inp)
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def run_seed(c: BenchConfig, seed: int) -> dict:
    """One seed: its documents, the unified model and one model per task trained on them, scored on
    the held-out split; timings and parameters of those models."""
    from docray.recognition.data import DocumentSet, documents_table, prepare
    from docray.recognition.engine import evaluate, fit
    from docray.recognition.metrics import HIGHER_IS_BETTER, METRIC_NAME, chance
    from train_jobs.train_recognition import RecognitionTrainConfig, build, catalogue_of

    ucfg = RecognitionTrainConfig(model=c.model, encoder_from=c.encoder_from, text_encoder=c.text_encoder,
                                  tasks=c.tasks, seed=seed)
    cat = catalogue_of(ucfg)
    torch.manual_seed(seed)  # each model's initialisation from the seed (torch's own start seed differs per process)
    unified, _ = build(ucfg)
    arrays = prepare(documents_table(c.n_docs, seed), cat, unified.image_size)
    if c.train_limit:
        arrays["split"][(arrays["split"] == "train").nonzero()[0][c.train_limit:]] = "unused"
    held = torch.utils.data.DataLoader(DocumentSet(arrays, c.eval_splits), batch_size=64)
    train_kw = dict(epochs=c.epochs, batch_size=c.batch_size, lr=c.lr, encoder_lr=c.encoder_lr, device=c.device,
                    seed=seed)

    t0 = time.time()
    unified.to(c.device)
    fit(unified, arrays, cat, frame_tasks_per_batch=c.frame_tasks_per_batch, desc=f"unified, seed {seed}", **train_kw)
    u_metrics = evaluate(unified, held, cat, c.device)
    u_train_s = time.time() - t0

    separate, s_metrics, t0 = [], {}, time.time()
    for t in cat.tasks:
        torch.manual_seed(seed)
        m, sub = build(ucfg.model_copy(update={"tasks": [t.name]}))
        m.to(c.device)
        sub_arrays = {**arrays, "task_set": sub.task_set_matrix(arrays["doc_type_name"])}  # its own task set
        fit(m, sub_arrays, sub, desc=f"{t.name}, seed {seed}", **train_kw)
        sub_held = torch.utils.data.DataLoader(DocumentSet(sub_arrays, c.eval_splits), batch_size=64)
        s_metrics[t.name] = evaluate(m, sub_held, sub, c.device)[t.name]
        separate.append(m)
    s_train_s = time.time() - t0

    split = arrays["split"]
    held_out = np.isin(split, c.eval_splits)
    rows = []
    for t in cat.tasks:
        y = arrays["targets"][t.name]
        u, s = u_metrics[t.name], s_metrics[t.name]
        rows.append({"task": t.name, "type": t.type, "metric": METRIC_NAME[t.type],
                     "chance": chance(t.type, y[split == "train"], y[held_out], t.n_out), "unified": u, "separate": s,
                     "unified_minus_separate_points": 100 * ((u - s) if HIGHER_IS_BETTER[t.type] else (s - u))})
    return {"tasks": rows, "held_out": int(held_out.sum()), "train": int((split == "train").sum()),
            "unified_params": n_params(unified), "separate_params": sum(n_params(m) for m in separate),
            "unified_all_tasks_ms": time_all_tasks([unified], arrays, c.device, c.timing_repeats, c.eval_splits[0]),
            "separate_all_tasks_ms": time_all_tasks(separate, arrays, c.device, c.timing_repeats, c.eval_splits[0]),
            "unified_train_s": u_train_s, "separate_train_s": s_train_s,
            "gate_accuracy": u_metrics["gate_accuracy"], "task_set_accuracy": u_metrics["task_set_accuracy"]}


def main(argv=None) -> dict:
    c = parse_args(BenchConfig, argv, description=__doc__.split("\n")[0])
    torch.set_num_threads(c.threads)
    save_config(c, c.out)
    runs = [run_seed(c, seed) for seed in c.seeds]
    rows = []
    for i, t in enumerate(runs[0]["tasks"]):
        by = {k: [r["tasks"][i][k] for r in runs]
              for k in ("chance", "unified", "separate", "unified_minus_separate_points")}
        rows.append({**{k: t[k] for k in ("task", "type", "metric")}, **{k: statistics.fmean(v) for k, v in by.items()},
                     "unified_by_seed": by["unified"], "separate_by_seed": by["separate"],
                     "gap_points_by_seed": by["unified_minus_separate_points"]})
    first = runs[0]

    def mean_of(key: str) -> float:
        return statistics.fmean(r[key] for r in runs)

    summary = {
        "tasks": rows, "seeds": c.seeds, "unified_params": first["unified_params"],
        "separate_params": first["separate_params"], "param_ratio": first["unified_params"] / first["separate_params"],
        **{k: statistics.median(r[k] for r in runs) for k in ("unified_all_tasks_ms", "separate_all_tasks_ms")},
        **{k: mean_of(k) for k in ("unified_train_s", "separate_train_s", "gate_accuracy", "task_set_accuracy")},
        "epochs": c.epochs, "n_docs": c.n_docs,
        "worst_gap_points": min(r["unified_minus_separate_points"] for r in rows),
        "worst_gap_points_any_seed": min(min(r["gap_points_by_seed"]) for r in rows),
    }

    spread = len(runs) > 1

    def cell(v: float, xs: list, f: str) -> str:  # the mean, then the lowest and highest seed's
        return f"{v:{f}}" + (f" [{min(xs):{f}}, {max(xs):{f}}]" if spread else "")

    w = 24 if spread else 9
    print(f"\nunified vs separate on {first['held_out']} held-out documents ({first['train']} train, {c.epochs} "
          f"epochs, encoder: {c.encoder_from or 'scratch'}), seeds {c.seeds}"
          + (": mean [lowest, highest]" if spread else ""))
    print(f"{'task':22s} {'metric':9s} {'chance':>8s} {'unified':>{w}s} {'separate':>{w}s} "
          f"{'u-s (pts, +=better)':>{w}s}")
    for r in rows:
        print(f"{r['task']:22s} {r['metric']:9s} {r['chance']:8.3f} "
              f"{cell(r['unified'], r['unified_by_seed'], '.3f'):>{w}s} "
              f"{cell(r['separate'], r['separate_by_seed'], '.3f'):>{w}s} "
              f"{cell(r['unified_minus_separate_points'], r['gap_points_by_seed'], '+.1f'):>{w}s}")
    f = summary
    print(f"{'parameters':22s} {'':9s} {'':8s} {f['unified_params']:8,d} {f['separate_params']:9,d}   "
          f"ratio {f['param_ratio']:.2f}")
    print(f"{'all tasks, 1 image':22s} {'ms':9s} {'':8s} {f['unified_all_tasks_ms']:8.1f} "
          f"{f['separate_all_tasks_ms']:9.1f}   (median over seeds)")
    print(f"{'training':22s} {'s':9s} {'':8s} {f['unified_train_s']:8.0f} {f['separate_train_s']:9.0f}   "
          "(mean per seed)")
    print(f"gate routing accuracy {f['gate_accuracy']:.3f}, task-set accuracy {f['task_set_accuracy']:.3f}")
    Path(c.out).mkdir(parents=True, exist_ok=True)
    Path(c.out, "result.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
