"""Multi-task training and evaluation of the unified model (plain PyTorch; Ray wraps it in train_jobs).

Mixed-task batches: every batch asks each document all single-frame tasks plus
`frame_tasks_per_batch` of the multi-frame tasks, cycled by step (frames cost encoder passes, so
they are spread over batches). One loss per task type, summed over the tasks in the batch:
  cls  cross-entropy           reg  smooth L1               seg  cross-entropy + soft Dice
  det  presence BCE + L1 + GIoU on present classes
plus the gate (guidance unit -> task type, cross-entropy) and the task classifier (BCE against the
catalogue's task set for the document type). A document is asked only the tasks it has labels
(and frames) for (`batch["labelled"]`, from data.DocumentBatch): its other slots are -1, so they
get no output, no loss and no score.

Validation adds up over shards: `eval_stats` gives sums (correct answers, absolute errors, pixels of
intersection and union, routing) and the detection rows, `metrics_from_stats` turns the sums of all
shards into the metrics; `evaluate` does both on one loader.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from docray.recognition.data import to_float
from docray.recognition.metrics import iou_sums, map50, miou_from_sums
from docray.recognition.tasks import Catalogue


@dataclass
class LossWeights:
    reg: float = 4.0  # quality MAE is ~0.1: scale it up to the size of a cross-entropy
    det_l1: float = 5.0  # DETR's box weights
    det_giou: float = 2.0
    seg_dice: float = 1.0
    gate: float = 2.0  # the gate must route right from the first epochs (metrics and serving use its routing)
    task_classifier: float = 0.1


def task_slots(cat: Catalogue, step: int, frame_tasks_per_batch: int = 1) -> list[int]:
    """Catalogue indices asked in batch `step`: all single-frame tasks + a cycled share of the others."""
    single = [i for i, t in enumerate(cat.tasks) if t.frames == "none"]
    multi = [i for i, t in enumerate(cat.tasks) if t.frames != "none"]
    k = min(frame_tasks_per_batch, len(multi))
    return sorted(single + [multi[(step * k + j) % len(multi)] for j in range(k)])


def task_ids(batch: dict, slots: list[int], device) -> torch.Tensor:
    """(b, t) catalogue indices asked of each document: `slots`, -1 where it lacks the task's labels."""
    b = batch["image"].shape[0]
    ids = torch.tensor(slots, dtype=torch.long).expand(b, len(slots))
    if "labelled" in batch:
        ids = ids.masked_fill(~batch["labelled"][:, slots].bool(), -1)
    return ids.to(device)


def model_inputs(batch: dict, cat: Catalogue, slots: list[int], device) -> dict:
    ids = task_ids(batch, slots, device)
    kinds = {cat.tasks[i].frames for i in ids.unique().tolist() if i >= 0} - {"none"}
    return dict(images=to_float(batch["image"].to(device)), task_ids=ids,
                frames={k: to_float(batch[k].to(device)) for k in kinds},
                attr_cat=batch["attr_cat"].to(device), attr_num=batch["attr_num"].to(device))


def _cxcywh_to_xyxy(b: torch.Tensor) -> torch.Tensor:
    return torch.cat([b[..., :2] - b[..., 2:] / 2, b[..., :2] + b[..., 2:] / 2], -1)


def giou_loss(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """1 - GIoU of [cx, cy, w, h] boxes (elementwise), as in DETR."""
    a, b = _cxcywh_to_xyxy(a), _cxcywh_to_xyxy(b)
    inter = (torch.min(a[..., 2:], b[..., 2:]) - torch.max(a[..., :2], b[..., :2])).clamp(min=0).prod(-1)
    area = lambda x: (x[..., 2:] - x[..., :2]).clamp(min=0).prod(-1)  # noqa: E731
    union = area(a) + area(b) - inter
    hull = (torch.max(a[..., 2:], b[..., 2:]) - torch.min(a[..., :2], b[..., :2])).clamp(min=0).prod(-1)
    iou = inter / union.clamp(min=1e-9)
    return 1 - (iou - (hull - union) / hull.clamp(min=1e-9))


def _task_loss(task, out: torch.Tensor, target: torch.Tensor, w: LossWeights) -> torch.Tensor:
    if task.type == "cls":
        return F.cross_entropy(out[:, : task.n_out], target.long())
    if task.type == "reg":
        return w.reg * F.smooth_l1_loss(out, target.float(), beta=0.05)
    if task.type == "seg":
        logits, target = out[:, : task.n_out], target.long()
        prob, onehot = logits.softmax(1), F.one_hot(target, task.n_out).permute(0, 3, 1, 2).float()
        dice = 1 - (2 * (prob * onehot).sum((0, 2, 3)) + 1) / ((prob + onehot).sum((0, 2, 3)) + 1)
        return F.cross_entropy(logits, target) + w.seg_dice * dice.mean()
    out, target = out[:, : task.n_out], target.float()  # det: (p, k, 5)
    present = target[..., 0] > 0.5
    loss = F.binary_cross_entropy_with_logits(out[..., 0], target[..., 0])
    if present.any():
        pb, tb = out[..., 1:][present], target[..., 1:][present]
        loss = loss + w.det_l1 * F.l1_loss(pb, tb) + w.det_giou * giou_loss(pb, tb).mean()
    return loss


def compute_loss(out: dict, batch: dict, cat: Catalogue, slots: list[int], w: LossWeights) -> tuple[torch.Tensor, dict]:
    """Total loss and {task name: loss value} for a batch asked `slots` (each document those it has labels for)."""
    total, parts = 0.0, {}
    for ty in ("cls", "reg", "seg", "det"):
        if ty not in out:
            continue
        idx, tid, res = out[ty]["index"], out[ty]["task"], out[ty]["out"]
        for i in tid.unique().tolist():
            task, sel = cat.tasks[i], tid == i
            target = batch["targets"][task.name].to(res.device)[idx[sel, 0]]
            loss = _task_loss(task, res[sel], target, w)
            parts[task.name] = float(loss.detach())
            total = total + task.loss_weight * loss
    ids = task_ids(batch, slots, out["gate_logits"].device)
    asked = ids >= 0
    types = torch.tensor([t.type_id for t in cat.tasks], device=ids.device)[ids[asked]]
    gate = F.cross_entropy(out["gate_logits"][asked], types) if bool(asked.any()) else out["gate_logits"].sum() * 0
    tc = F.binary_cross_entropy_with_logits(out["task_logits"], batch["task_set"].to(out["task_logits"].device).float())
    parts["gate"], parts["task_classifier"] = float(gate.detach()), float(tc.detach())
    return total + w.gate * gate + w.task_classifier * tc, parts


def train_step(model, batch: dict, opt, cat: Catalogue, device, step: int, weights: LossWeights | None = None,
               frame_tasks_per_batch: int = 1, scheduler=None, amp: bool = False) -> dict:
    """One optimiser step on a batch (the slots of `step`); returns {part: loss value} with "loss"."""
    slots = task_slots(cat, step, frame_tasks_per_batch)
    with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=amp):
        out = model(**model_inputs(batch, cat, slots, device), route="type")
        loss, parts = compute_loss(out, batch, cat, slots, weights or LossWeights())
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    if scheduler is not None:
        scheduler.step()
    return {**parts, "loss": float(loss.detach())}


def train_epoch(model, loader, opt, cat: Catalogue, device, step: int = 0, weights: LossWeights | None = None,
                frame_tasks_per_batch: int = 1, scheduler=None, amp: bool = False, progress=None) -> tuple[dict, int]:
    """One pass over `loader`; returns (mean loss per part, next step)."""
    model.train()
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    for batch in loader:
        parts = train_step(model, batch, opt, cat, device, step, weights, frame_tasks_per_batch, scheduler, amp)
        step += 1
        for k, v in parts.items():
            sums[k], counts[k] = sums.get(k, 0.0) + v, counts.get(k, 0) + 1
        if progress is not None:
            progress.update(1)
            progress.set_postfix(loss=f"{parts['loss']:.3f}")
    return {k: v / counts[k] for k, v in sums.items()}, step


def decode_outputs(out: dict, cat: Catalogue) -> dict:
    """Unit outputs -> per (sample, slot) predictions in metric format, keyed by (sample, task index)."""
    preds = {}
    for ty in ("cls", "reg", "seg", "det"):
        if ty not in out:
            continue
        idx, tid, res = out[ty]["index"].tolist(), out[ty]["task"].tolist(), out[ty]["out"].float()
        for j, ((b, _), i) in enumerate(zip(idx, tid)):
            k = cat.tasks[i].n_out
            if ty == "cls":
                p = res[j, :k].softmax(-1)
                preds[(b, i)] = {"label": int(p.argmax()), "probs": p.cpu().numpy()}
            elif ty == "reg":
                preds[(b, i)] = {"value": float(res[j])}
            elif ty == "seg":
                preds[(b, i)] = {"mask": res[j, :k].argmax(0).to(torch.uint8).cpu().numpy()}
            else:
                r = res[j, :k]
                preds[(b, i)] = {"det": torch.cat([r[:, :1].sigmoid(), r[:, 1:]], -1).cpu().numpy()}
    return preds


def _stat_keys(cat: Catalogue, names: list[str]) -> list[str]:
    keys = ["gate/ok", "gate/n", "task_set/ok", "task_set/n"]
    for n in names:
        t = cat.get(n)
        keys += [f"{n}/n"] + {"cls": [f"{n}/correct"], "reg": [f"{n}/abs_err"], "det": [],
                              "seg": [f"{n}/{k}{c}" for k in ("inter", "union") for c in range(t.n_out)]}[t.type]
    return keys


@torch.inference_mode()
def eval_stats(model, loader, cat: Catalogue, device, tasks: list[str] | None = None) -> tuple[dict, dict]:
    """(sums, det): sums over the batches of `loader` that add up over shards (the same keys always),
    and per detection task the (pred, target) rows, (n, k, 5) each, that concatenate. A task's
    prediction from the wrong unit (the gate's routing) counts as wrong."""
    model.eval()
    names = tasks or cat.names()
    slots = [cat.index(n) for n in names]
    sums = dict.fromkeys(_stat_keys(cat, names), 0.0)
    det: dict[str, list] = {n: [] for n in names if cat.get(n).type == "det"}
    for batch in loader:
        inputs = model_inputs(batch, cat, slots, device)
        out = model(**inputs, route="gate")
        asked = inputs["task_ids"] >= 0
        want = model.task_type[inputs["task_ids"].clamp(min=0)]
        sums["gate/ok"] += int((out["route"] == want)[asked].sum())
        sums["gate/n"] += int(asked.sum())
        sums["task_set/ok"] += int(((out["task_logits"] > 0).float() == batch["task_set"].to(device)).all(1).sum())
        sums["task_set/n"] += batch["image"].shape[0]
        dec = decode_outputs(out, cat)
        for j, (n, i) in enumerate(zip(names, slots)):
            t, rows = cat.tasks[i], asked[:, j].nonzero().flatten().tolist()
            if not rows:
                continue
            target = batch["targets"][n][rows].numpy()
            p = [dec.get((b, i), {}) for b in rows]
            sums[f"{n}/n"] += len(rows)
            if t.type == "cls":
                sums[f"{n}/correct"] += sum(int(q.get("label", -1) == y) for q, y in zip(p, target))
            elif t.type == "reg":
                mid = sum(t.range) / 2
                sums[f"{n}/abs_err"] += sum(abs(q.get("value", mid) - float(y)) for q, y in zip(p, target))
            elif t.type == "seg":
                pred = np.stack([q.get("mask", np.full(y.shape, 255, np.uint8)) for q, y in zip(p, target)])
                for k, v in zip(("inter", "union"), iou_sums(pred, target, t.n_out)):
                    for c in range(t.n_out):
                        sums[f"{n}/{k}{c}"] += float(v[c])
            else:
                det[n].append((np.stack([q.get("det", np.zeros_like(y)) for q, y in zip(p, target)]), target))
    return sums, {n: (np.concatenate([a for a, _ in v]), np.concatenate([b for _, b in v])) if v else None
                  for n, v in det.items()}


def metrics_from_stats(sums: dict, det: dict, cat: Catalogue) -> dict:
    """Metric per task that some document was asked (accuracy / mae / miou / map50), gate routing
    accuracy, task-set accuracy, from `eval_stats` (summed, and detection rows joined, over shards)."""
    out = {}
    for t in cat.tasks:
        n, count = t.name, sums.get(f"{t.name}/n", 0)
        if not count:
            continue
        if t.type == "cls":
            out[n] = sums[f"{n}/correct"] / count
        elif t.type == "reg":
            out[n] = sums[f"{n}/abs_err"] / count
        elif t.type == "seg":
            out[n] = miou_from_sums(*[np.array([sums[f"{n}/{k}{c}"] for c in range(t.n_out)]) for k in ("inter", "union")])
        elif det.get(n) is not None:
            out[n] = map50(*det[n])
    out["gate_accuracy"] = sums["gate/ok"] / max(sums["gate/n"], 1)
    out["task_set_accuracy"] = sums["task_set/ok"] / max(sums["task_set/n"], 1)
    return out


def evaluate(model, loader, cat: Catalogue, device, tasks: list[str] | None = None) -> dict:
    """Held-out metric per task (accuracy / mae / miou / map50), gate routing accuracy, task-classifier accuracy."""
    return metrics_from_stats(*eval_stats(model, loader, cat, device, tasks), cat)


def fit(model, arrays: dict, cat: Catalogue, *, epochs: int, batch_size: int = 32, lr: float = 1e-3,
        encoder_lr: float = 5e-4, weight_decay: float = 0.05, frame_tasks_per_batch: int = 1, device="cpu",
        seed: int = 0, desc: str = "train") -> list[dict]:
    """Train in this process (the benchmark's loop; train_jobs/train_recognition runs the same steps under Ray)."""
    import math

    from tqdm import tqdm

    from docray.recognition.data import DocumentSet

    torch.manual_seed(seed)
    train = DocumentSet(arrays, "train")
    loader = torch.utils.data.DataLoader(train, batch_size=batch_size, shuffle=True, drop_last=len(train) > batch_size,
                                         generator=torch.Generator().manual_seed(seed))
    enc = [p for n, p in model.named_parameters() if n.startswith("encoder.")]
    rest = [p for n, p in model.named_parameters() if not n.startswith("encoder.")]
    opt = torch.optim.AdamW([{"params": enc, "lr": encoder_lr}, {"params": rest, "lr": lr}], weight_decay=weight_decay)
    total = epochs * len(loader)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / len(loader)) * 0.5 * (
        1 + math.cos(math.pi * min(s, total) / total)))
    history, step = [], 0
    with tqdm(total=total, desc=desc, unit="batch", leave=False) as bar:
        for _ in range(epochs):
            losses, step = train_epoch(model, loader, opt, cat, device, step, scheduler=sched,
                                       frame_tasks_per_batch=frame_tasks_per_batch, progress=bar)
            history.append(losses)
    return history
