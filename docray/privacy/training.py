"""Training steps of the three mask-privacy models (plain PyTorch; Ray Train wiring in train_jobs).

The original and the masked recogniser use the same `recognizer_step`, the same optimiser and the
same epochs; the masked one passes the batch's masks (drawn at random from the training bank with
a random placement each, by `docray.privacy.data.MaskedFaces`), the original passes None. The
inpainter learns masked -> whole. Validation sums (`val_sums`) add up over batches and ranks.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from docray.privacy.masks import overlay


def recognizer_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, masks: torch.Tensor | None) -> torch.Tensor:
    """Cross-entropy on (b, 3, h, w) pixels in [0, 1], overlaid with `masks` when given."""
    if masks is not None:
        x = overlay(x, masks)
    return F.cross_entropy(model(x), y)


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
