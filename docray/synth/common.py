"""Shared helpers of the synthetic world: per-row generators, splits, fonts, boxes, option checks.

Determinism: every row is drawn from `row_rng(seed, kind_no, i)` alone, and every cache (fonts,
backgrounds, noise banks, seal sprites) is a pure function of its key, so a row never depends on
which other rows were generated before it in the same process.
"""
from __future__ import annotations

import dataclasses

import numpy as np
from PIL import Image

from docray.fonts import FONT_STYLES, font, rand_color  # noqa: F401  (re-exported for the synthetic world)
from docray.imageio import encode_png

def row_rng(seed: int, kind_no: int, i: int) -> np.random.Generator:
    """The generator of row `i` of kind `kind_no`: rows depend on (seed, kind, i) only."""
    return np.random.default_rng([int(seed), int(kind_no), int(i)])


def split_of(k: int) -> str:
    """80/10/10 split by a counter: k % 10 == 8 -> val, == 9 -> test, else train."""
    return {8: "val", 9: "test"}.get(int(k) % 10, "train")


def png(img: Image.Image | np.ndarray) -> bytes:
    """PNG bytes, fast (compress_level=1)."""
    return encode_png(img, compress_level=1)


def clip_box(box, w: int, h: int) -> list[int]:
    """[x0, y0, x1, y1] rounded outward to ints and clipped to the (w, h) image."""
    x0, y0, x1, y1 = box
    x0, y0 = max(0, int(np.floor(x0))), max(0, int(np.floor(y0)))
    x1, y1 = min(w, int(np.ceil(x1))), min(h, int(np.ceil(y1)))
    return [x0, y0, max(x0, x1), max(y0, y1)]


def make_config(cls, kind: str, options: dict):
    """Build the dataclass config `cls` from `options`, refusing unknown names with a clear message."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for kind {kind!r}; valid options: {sorted(known)}")
    cfg = cls(**options)
    if hasattr(cfg, "check"):
        cfg.check()
    return cfg


def mix(c1, c2, t: float) -> tuple[int, int, int]:
    """Linear blend of two RGB colours."""
    return tuple(int(round(a + (b - a) * t)) for a, b in zip(c1, c2))
