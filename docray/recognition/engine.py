"""Multi-task training and evaluation of the unified model (plain PyTorch; Ray wraps it in train_jobs).

Mixed-task batches: every batch asks each document all single-frame tasks plus
`frame_tasks_per_batch` of the multi-frame tasks, cycled by step (frames cost encoder passes, so
they are spread over batches). One loss per task type, summed over the tasks in the batch:
  cls  cross-entropy           reg  smooth L1               seg  cross-entropy + soft Dice
  det  presence BCE + L1 + GIoU on present classes
plus the gate (guidance unit -> task type, cross-entropy) and the task classifier (BCE against the
catalogue's task set for the document type).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from docray.recognition.data import to_float
from docray.recognition.metrics import task_metric
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


def model_inputs(batch: dict, cat: Catalogue, slots: list[int], device) -> dict:
    b = batch["image"].shape[0]
    kinds = {cat.tasks[i].frames for i in slots} - {"none"}
    return dict(images=to_float(batch["image"].to(device)),
                task_ids=torch.tensor(slots, device=device).expand(b, len(slots)),
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
    """Total loss and {task name: loss value} for a batch whose documents were all asked `slots`."""
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
    types = torch.tensor([["cls", "reg", "seg", "det"].index(cat.tasks[i].type) for i in slots], device=out["gate_logits"].device)
    gate = F.cross_entropy(out["gate_logits"].flatten(0, 1), types.repeat(out["gate_logits"].shape[0]))
    tc = F.binary_cross_entropy_with_logits(out["task_logits"], batch["task_set"].to(out["task_logits"].device).float())
    parts["gate"], parts["task_classifier"] = float(gate.detach()), float(tc.detach())
    return total + w.gate * gate + w.task_classifier * tc, parts


def train_epoch(model, loader, opt, cat: Catalogue, device, step: int = 0, weights: LossWeights | None = None,
                frame_tasks_per_batch: int = 1, scheduler=None, amp: bool = False, progress=None) -> tuple[dict, int]:
    """One pass over `loader`; returns (mean loss per part, next step)."""
    weights = weights or LossWeights()
    model.train()
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    for batch in loader:
        slots = task_slots(cat, step, frame_tasks_per_batch)
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=amp):
            out = model(**model_inputs(batch, cat, slots, device), route="type")
            loss, parts = compute_loss(out, batch, cat, slots, weights)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if scheduler is not None:
            scheduler.step()
        step += 1
        parts["loss"] = float(loss.detach())
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


def _as_metric_input(task, p: dict):
    return {"cls": "label", "reg": "value", "seg": "mask", "det": "det"}[task.type], p


@torch.inference_mode()
def evaluate(model, loader, cat: Catalogue, device, tasks: list[str] | None = None) -> dict:
    """Held-out metric per task (accuracy / mae / miou / map50), gate routing accuracy, task-classifier accuracy."""
    model.eval()
    names = tasks or cat.names()
    slots = [cat.index(n) for n in names]
    preds: dict[str, list] = {n: [] for n in names}
    targets: dict[str, list] = {n: [] for n in names}
    gate_ok = gate_n = tc_ok = tc_n = 0
    for batch in loader:
        out = model(**model_inputs(batch, cat, slots, device), route="gate")
        want = model.task_type[torch.tensor(slots, device=device)]
        gate_ok += int((out["route"] == want).sum())
        gate_n += out["route"].numel()
        tc_ok += int(((out["task_logits"] > 0).float() == batch["task_set"].to(device)).all(1).sum())
        tc_n += batch["image"].shape[0]
        dec = decode_outputs(out, cat)
        for b in range(batch["image"].shape[0]):
            for n, i in zip(names, slots):
                key, p = _as_metric_input(cat.tasks[i], dec.get((b, i), {}))
                if key not in p:  # routed to the wrong unit: counts as wrong (NaN never matches)
                    t = cat.tasks[i]
                    p = {key: {"cls": -1, "reg": sum(t.range) / 2, "seg": None, "det": None}[t.type]}
                preds[n].append(p[key])
                targets[n].append(batch["targets"][n][b].numpy())
    metrics = {}
    for n in names:
        t = cat.get(n)
        pr = preds[n]
        if t.type == "seg":
            pr = [x if x is not None else np.full_like(targets[n][0], 255) for x in pr]
        if t.type == "det":
            pr = [x if x is not None else np.zeros_like(targets[n][0]) for x in pr]
        metrics[n] = task_metric(t.type, np.stack(pr) if t.type in ("seg", "det") else np.asarray(pr),
                                 np.stack(targets[n]), t.n_out)
    metrics["gate_accuracy"] = gate_ok / max(gate_n, 1)
    metrics["task_set_accuracy"] = tc_ok / max(tc_n, 1)
    return metrics


def fit(model, arrays: dict, cat: Catalogue, *, epochs: int, batch_size: int = 32, lr: float = 1e-3,
        encoder_lr: float = 5e-4, weight_decay: float = 0.05, frame_tasks_per_batch: int = 1, device="cpu",
        seed: int = 0, desc: str = "train") -> list[dict]:
    """Train in this process (the benchmark's loop; train_jobs/unified_train runs the same steps under Ray)."""
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
