"""Training steps of the three mask-privacy models (plain PyTorch; Ray Train wiring in train_jobs).

The original and the masked recogniser use the same `recognizer_step`, the same optimiser and the
same epochs; the masked one passes the batch's masks (drawn at random from the training bank with
a random placement each, by `docray.privacy.data.MaskedFaces`), the original passes None. The
inpainter learns masked -> whole. Validation sums (`val_sums`) add up over batches and ranks.
`fit` runs the same steps in this process on in-memory tensors (the attack suite's small models).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from docray.privacy.masks import overlay, random_masks


def recognizer_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, masks: torch.Tensor | None) -> torch.Tensor:
    """Cross-entropy on (b, 3, h, w) pixels in [0, 1], overlaid with `masks` when given; with a
    cosine head, the true class's logit first loses scale x margin (CosFace)."""
    if masks is not None:
        x = overlay(x, masks)
    logits = model(x)
    cfg = getattr(getattr(model, "module", model), "cfg", None)  # the model itself, or under DDP
    if getattr(cfg, "head", "linear") == "cosine" and cfg.margin:
        logits = logits - cfg.scale * cfg.margin * F.one_hot(y, logits.shape[1]).to(logits)
    return F.cross_entropy(logits, y)


def inpaint_step(model: nn.Module, x: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """L1 over the hidden pixels (the kept ones are copied through by the model) + 0.1 x L1 of a 2x-downsampled view."""
    out = model(overlay(x, masks), masks)
    hole = 1 - masks
    l1 = ((out - x).abs() * hole).sum() / (hole.sum() * 3).clamp_min(1)
    coarse = F.l1_loss(F.avg_pool2d(out, 2), F.avg_pool2d(x, 2))
    return l1 + 0.1 * coarse


@torch.inference_mode()
@torch.no_grad()
def val_sums(model: nn.Module, kind: str, x: torch.Tensor, y: torch.Tensor, masks: torch.Tensor) -> dict[str, float]:
    """Sums over one validation batch, to be added up over batches and ranks (`val_metrics` divides):
    a recogniser's correct answers on the whole and on the masked images and the count; the
    inpainter's absolute error over the hidden pixels and their count (x 3 channels)."""
    model.eval()
    if kind == "inpaint":
        out = model(overlay(x, masks), masks)
        return {"hole_err": float(((out - x).abs() * (1 - masks)).sum()), "hole_px": float((1 - masks).sum() * 3)}
    return {"correct_whole": float((model(x).argmax(1) == y).sum()),
            "correct_masked": float((model(overlay(x, masks)).argmax(1) == y).sum()), "n": float(len(y))}


def evaluate(model: nn.Module, kind: str, batches) -> dict[str, float]:
    """`val_sums` added up over (images, labels, masks) batches; zeros (same keys) for no batch."""
    keys = ("hole_err", "hole_px") if kind == "inpaint" else ("correct_whole", "correct_masked", "n")
    totals = dict.fromkeys(keys, 0.0)
    for x, y, masks in batches:
        for k, v in val_sums(model, kind, x, y, masks).items():
            totals[k] += v
    return totals


def val_metrics(totals: dict[str, float]) -> dict[str, float]:
    """The validation metrics of summed `val_sums`: val_acc_whole and val_acc_masked, or val_hole_l1 (0..1 scale)."""
    if "hole_err" in totals:
        return {"val_hole_l1": totals["hole_err"] / max(totals["hole_px"], 1.0)}
    n = max(totals["n"], 1.0)
    return {"val_acc_whole": totals["correct_whole"] / n, "val_acc_masked": totals["correct_masked"] / n}


def warm_start(model: nn.Module, ref: str) -> tuple[int, int]:
    """Load into `model` the weights of `ref` (a registry reference or a saved folder, see
    `docray.privacy.models.load_model`) whose names and shapes match: fine-tuning starts there, and a
    classifier for another set of identities starts fresh. Returns (tensors loaded, tensors of model)."""
    from docray.privacy.models import load_model

    src, own = load_model(ref).state_dict(), model.state_dict()
    keep = {k: v for k, v in src.items() if k in own and own[k].shape == v.shape}
    if not keep:
        raise ValueError(f"init_from {ref!r}: no weight matches the model (another architecture?)")
    model.load_state_dict(keep, strict=False)
    return len(keep), len(own)


# -- in-process training (the open-set attack suite; the jobs use Ray Train) -------------------------

def _batches(n: int, batch_size: int, rng: np.random.Generator):
    order = rng.permutation(n)
    for i in range(0, n - batch_size + 1 if n >= batch_size else 1, batch_size):
        yield torch.from_numpy(order[i:i + batch_size])


def fit(model: nn.Module, kind: str, x: torch.Tensor, y: torch.Tensor | None = None, bank: np.ndarray | None = None, *,
        epochs: int, batch_size: int = 64, lr: float = 2e-3, weight_decay: float = 5e-4, max_shift: float = 0.125,
        seed: int = 0) -> nn.Module:
    """Train `model` in this process, the steps the Ray Train job takes (`recognizer_step` /
    `inpaint_step`, AdamW, cosine decay); returns it in eval mode. kind "original": x (n, 3, h, w)
    in [0, 1] and class ids y; "masked": the same, each image overlaid with a mask drawn from `bank`
    (m, h, w) with a random placement; "inpaint": x and `bank` (no labels). Fixed by `seed`."""
    if kind not in ("original", "masked", "inpaint"):
        raise ValueError(f"kind must be original, masked or inpaint, got {kind!r}")
    if kind != "original" and bank is None:
        raise ValueError(f"kind {kind!r} needs a mask bank")
    if kind != "inpaint" and (y is None or len(y) != len(x)):
        raise ValueError("a recogniser needs a class id per image")
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    steps = epochs * max(len(x) // batch_size, 1)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0 if kind == "inpaint" else weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    model.train()
    for _ in range(epochs):
        for idx in _batches(len(x), batch_size, rng):
            masks = None if bank is None or kind == "original" else \
                torch.from_numpy(random_masks(bank, len(idx), rng, max_shift))[:, None].to(x)  # (b, 1, h, w)
            loss = inpaint_step(model, x[idx], masks) if kind == "inpaint" else recognizer_step(model, x[idx], y[idx], masks)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return model.eval()
