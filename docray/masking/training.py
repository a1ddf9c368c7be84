"""Training steps of the three mask-privacy models (plain PyTorch; Ray Train wiring in train_jobs).

The original and the masked recogniser use the same `recognizer_step`, the same optimiser and the
same epochs; the masked one passes `mask_bank`, so every batch is overlaid with masks drawn at
random from the bank (with a random placement each). The inpainter learns masked -> whole.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from docray.masking.masks import overlay, random_masks


def batch_masks(bank: np.ndarray | None, n: int, rng: np.random.Generator, device, max_shift: float = 0.125):
    """(n, 1, h, w) masks from the bank, or None when there is no bank (whole images)."""
    if bank is None:
        return None
    return torch.from_numpy(random_masks(bank, n, rng, max_shift)).to(device)[:, None]


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
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, masks: torch.Tensor | None = None, chunk: int = 256) -> float:
    """Top-1 accuracy on (n, 3, h, w), overlaid with (n, 1, h, w) masks when given."""
    model.eval()
    correct = 0
    for i in range(0, len(y), chunk):
        xi = x[i:i + chunk] if masks is None else overlay(x[i:i + chunk], masks[i:i + chunk])
        correct += int((model(xi).argmax(1) == y[i:i + chunk]).sum())
    return correct / max(len(y), 1)


@torch.inference_mode()
def inpaint_l1(model: nn.Module, x: torch.Tensor, masks: torch.Tensor, chunk: int = 128) -> float:
    """Mean absolute error over the hidden pixels (0..1 scale)."""
    model.eval()
    err, count = 0.0, 0.0
    for i in range(0, len(x), chunk):
        xi, mi = x[i:i + chunk], masks[i:i + chunk]
        out = model(overlay(xi, mi), mi)
        err += float(((out - xi).abs() * (1 - mi)).sum())
        count += float((1 - mi).sum() * 3)
    return err / max(count, 1.0)
