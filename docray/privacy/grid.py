"""The mask x image grid: every mask over every test image, recognised by both recognisers.

The grid is never materialised. `GridPredictor` holds the test images and the models; a batch of
masks goes in, and for each mask and each run r (placement from `place_mask`) it overlays the mask
on all n test images, recognises them in fixed chunks of `chunk` images, and counts the correct
ones. Per mask it returns the counts per run and the accuracy averaged over runs. Chunks never
depend on how masks are batched, so a Ray Data job (masks streamed through actors) and a plain
loop (`plain_grid`) compute bit-identical numbers.

With `inpainter`, each model also gets an `<name>_inpainted` column: the model run on the
inpainted masked images (the attack of the funnel's third stage).

    pred = GridPredictor(test.images, test.labels, {"original": rec_o, "masked": rec_m}, runs=5)
    out = pred(masks_table.to_pydict())       # mask_no, mask_id, bin, hole_ratio, correct_*, acc_*
    pred.no_mask()                            # each model's accuracy on the whole test images

Table 1 (`bin_table`) starts with the no-mask row (`with_no_mask`) when the job has measured it.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np
import pandas as pd
import pyarrow as pa
import torch
from torch import nn

from docray.privacy.masks import BIN_EDGES, bin_label, decode_mask, overlay, place_mask
from docray.privacy.models import load_model

PASS_COLUMNS = ("mask_no", "mask_id", "bin", "hole_ratio")


class GridPredictor:
    """Batch predictor: masks in, per-mask accuracies of each model out (see the module docstring)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, models: Mapping[str, nn.Module | str],
                 runs: int = 5, seed: int = 0, max_shift: float = 0.125, chunk: int = 256,
                 inpainter: nn.Module | str | None = None, device: str | None = None, num_threads: int | None = None):
        if runs < 1:
            raise ValueError(f"runs must be >= 1, got {runs}")
        if len(images) != len(labels) or len(images) == 0:
            raise ValueError(f"need as many labels as images (> 0), got {len(images)} images, {len(labels)} labels")
        if num_threads:
            torch.set_num_threads(num_threads)
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.x = torch.from_numpy(np.ascontiguousarray(images)).to(self.device).permute(0, 3, 1, 2).float().div_(255)
        self.y = torch.as_tensor(np.asarray(labels), dtype=torch.long, device=self.device)
        self.models = {k: load_model(m, self.device) for k, m in models.items()}
        self.inpainter = load_model(inpainter, self.device) if inpainter is not None else None
        self.runs, self.seed, self.max_shift, self.chunk = runs, seed, max_shift, chunk

    @property
    def columns(self) -> list[str]:
        names = list(self.models) + ([f"{k}_inpainted" for k in self.models] if self.inpainter else [])
        return names

    @torch.inference_mode()
    def correct(self, mask: np.ndarray) -> dict[str, int]:
        """Correct recognitions of each column over all test images under one placed mask (h, w)."""
        m = torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32)).to(self.device)[None, None]  # (1, 1, h, w)
        out = dict.fromkeys(self.columns, 0)
        for i in range(0, len(self.y), self.chunk):
            x, y = overlay(self.x[i:i + self.chunk], m), self.y[i:i + self.chunk]  # (c, 3, h, w), (c,)
            filled = self.inpainter(x, m.expand(len(x), -1, -1, -1)) if self.inpainter else None
            for name, model in self.models.items():
                out[name] += int((model(x).argmax(1) == y).sum())
                if filled is not None:
                    out[f"{name}_inpainted"] += int((model(filled).argmax(1) == y).sum())
        return out

    def no_mask(self) -> dict[str, float]:
        """Each column's accuracy on the whole test images (a mask that hides nothing)."""
        return {c: v / len(self.y) for c, v in self.correct(np.ones(self.x.shape[-2:], np.float32)).items()}

    def __call__(self, batch: Mapping[str, np.ndarray | list]) -> dict[str, np.ndarray]:
        n, cols = len(self.y), self.columns
        counts = {c: np.zeros((len(batch["mask_no"]), self.runs), np.int64) for c in cols}  # (b, runs)
        for j, (no, png) in enumerate(zip(batch["mask_no"], batch["mask"])):
            mask = decode_mask(png, size=self.x.shape[-1])
            for r in range(self.runs):
                for c, v in self.correct(place_mask(mask, self.seed, int(no), r, self.max_shift)).items():
                    counts[c][j, r] = v
        out = {k: np.asarray(batch[k]) for k in PASS_COLUMNS if k in batch}
        for c in cols:
            out[f"correct_{c}"] = counts[c]
            out[f"acc_{c}"] = counts[c].mean(1) / n  # accuracy averaged over the runs
        return out


def plain_grid(masks: pa.Table, predictor: GridPredictor, batch_size: int = 16, progress: bool = False) -> pd.DataFrame:
    """The reference: one process, a plain loop over the masks. Returns one row per mask."""
    from tqdm import tqdm

    parts = []
    steps = range(0, masks.num_rows, batch_size)
    for i in tqdm(steps, desc="grid (plain loop)", disable=not progress):
        parts.append(to_frame(predictor(masks.slice(i, batch_size).to_pydict())))
    return pd.concat(parts, ignore_index=True)


def to_frame(out: Mapping[str, np.ndarray]) -> pd.DataFrame:
    """A predictor output (2-D count arrays included) as a DataFrame, one row per mask."""
    return pd.DataFrame({k: list(v) if np.ndim(v) > 1 else v for k, v in out.items()})


def bin_table(per_mask: pd.DataFrame, edges=BIN_EDGES, models=("original", "masked")) -> pd.DataFrame:
    """The method's Table 1: per area bin, the number of masks and each model's mean accuracy."""
    rows = []
    for b in range(len(edges) - 1):
        sel = per_mask[per_mask["bin"] == b]
        row = {"bin": b, "range": bin_label(b, edges), "n_masks": len(sel)}
        for m in models:
            row[f"acc_{m}"] = float(sel[f"acc_{m}"].mean()) if len(sel) else float("nan")
        if "acc_masked" in row and "acc_original" in row:
            row["gap"] = row["acc_masked"] - row["acc_original"]
        rows.append(row)
    return pd.DataFrame(rows)


def with_no_mask(bins: pd.DataFrame, accuracy: Mapping[str, float]) -> pd.DataFrame:
    """Table 1 with the no-mask row first (range "no mask", bin -1, no masks): each model's accuracy on
    the whole test images, {"original": a, "masked": b} (keys as the acc_* columns); it never passes."""
    row = {"bin": -1, "range": "no mask", "n_masks": 0, **{f"acc_{k}": float(v) for k, v in accuracy.items()}}
    if "acc_masked" in row and "acc_original" in row:
        row["gap"] = row["acc_masked"] - row["acc_original"]
    if "passed" in bins.columns:
        row["passed"] = False
    return pd.concat([pd.DataFrame([row]), bins], ignore_index=True)
