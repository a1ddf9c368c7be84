"""Irregular occlusion masks (free-form brush strokes and blobs, like NVIDIA's irregular mask set).

Convention: 255 = kept, 0 = hidden, so an overlay is `image * mask / 255`. Row i aims at hole-area
bin i % 6 of BIN_EDGES, (0.01, 0.1], (0.1, 0.2], ..., (0.5, 0.6], and adds strokes (never one that
overshoots the bin) until the hidden fraction reaches a target drawn inside the bin.

Kind "masks" columns:
    id          str     "msk-<seed>-<i>"
    mask        binary  PNG, mode 'L', size x size, values 0 (hidden) or 255 (kept)
    hole_ratio  float32 fraction of hidden pixels, exactly as decoded from `mask`
    bin         int32   area_bin(hole_ratio), 0..5
    n_strokes   int32   strokes and blobs drawn
    split       str     'train' | 'val' | 'test' by i // 6 (so every split sees every bin)
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
from PIL import Image, ImageDraw

from docray.datasets import contracts
from docray.privacy.bins import BIN_EDGES, area_bin  # the mask-privacy method's bins, aimed at here
from docray.synth.common import png, split_of

KIND_NO = 4
SCHEMA = contracts.MASKS  # the dataset contract (docray.datasets.contracts), written exactly


@dataclass
class MasksConfig:
    size: int = 64  # masks are size x size

    def check(self):
        if not 16 <= int(self.size) <= 2048:
            raise ValueError(f"masks: size must be in [16, 2048], got {self.size}")


def _stroke(d: ImageDraw.ImageDraw, rng: np.random.Generator, n: int, scale: float):
    """A brush stroke (a wandering polyline with round joints) or, one time in four, a blob."""
    x, y = rng.uniform(0, n, 2)
    if rng.random() < 0.25:
        rx, ry = rng.uniform(0.03, 0.15, 2) * n * scale + 0.5
        d.ellipse([x - rx, y - ry, x + rx, y + ry], fill=255)
        return
    width = max(2, int(rng.uniform(0.03, 0.1) * n * scale))
    pts, ang = [(x, y)], rng.uniform(0, 2 * math.pi)
    for _ in range(int(rng.integers(2, 7))):
        ang += rng.uniform(-1.2, 1.2)
        step = rng.uniform(0.05, 0.25) * n * max(scale, 0.3)
        x, y = float(np.clip(x + step * math.cos(ang), 0, n)), float(np.clip(y + step * math.sin(ang), 0, n))
        pts.append((x, y))
    d.line(pts, fill=255, width=width, joint="curve")
    r = width / 2
    for px, py in (pts[0], pts[-1]):  # round caps
        d.ellipse([px - r, py - r, px + r, py + r], fill=255)


def make_mask(rng: np.random.Generator, size: int, target_bin: int) -> tuple[np.ndarray, int]:
    """(mask uint8 (size, size) with 0 = hidden, strokes drawn) with its hole ratio in `target_bin`."""
    lo, hi = BIN_EDGES[target_bin], BIN_EDGES[target_bin + 1]
    target = rng.uniform(lo + 0.15 * (hi - lo), hi - 0.05 * (hi - lo))
    hole, total, ratio, strokes = Image.new("L", (size, size), 0), size * size, 0.0, 0
    for _ in range(400):
        cand = hole.copy()
        scale = float(np.clip(math.sqrt((target - ratio) / 0.1), 0.1, 1.5))
        _stroke(ImageDraw.Draw(cand), rng, size, scale)
        r = np.count_nonzero(np.asarray(cand)) / total
        if r < hi:  # never overshoot (or touch) the top edge of the bin
            hole, ratio, strokes = cand, r, strokes + 1
            if ratio >= target:
                break
    while ratio <= lo:  # rare: finish with single pixels
        y, x = rng.integers(0, size, 2)
        hole.putpixel((int(x), int(y)), 255)
        ratio = np.count_nonzero(np.asarray(hole)) / total
    return 255 - np.asarray(hole), strokes


def make_row(i: int, rng: np.random.Generator, seed: int, cfg: MasksConfig) -> dict:
    """Row i of the masks set: bin i % 6."""
    mask, strokes = make_mask(rng, cfg.size, i % (len(BIN_EDGES) - 1))
    ratio = float(np.count_nonzero(mask == 0) / mask.size)
    return {"id": f"msk-{seed}-{i:07d}", "mask": png(Image.fromarray(mask, "L")), "hole_ratio": ratio,
            "bin": area_bin(ratio), "n_strokes": strokes, "split": split_of(i // (len(BIN_EDGES) - 1))}
