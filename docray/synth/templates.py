"""The synthetic world's drawing of document templates: backgrounds, patterns and each type's static layer.

The types themselves are data: the template files of the doc-type registry (`docray.doctypes`: the
six built-ins in docray/doctypes/types/, and the user's). Positions are fractions of the document's
own width/height. A template's static layer (background pattern, title, field captions) is
rendered once per (type, variant, size) and cached; only the field values, portrait and seal are
drawn per row.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw

from docray.doctypes import BUILTIN, DocType, draw_static, registry

N_VARIANTS = 4  # background colour/phase variants per type
DOC_TYPES = BUILTIN  # the types the synthetic world draws unless told others (class indices 0..5)


def _pattern(name: str, w: int, h: int, r: np.random.Generator) -> np.ndarray:
    """A (h, w) float32 ink coverage in [0, 1] for one background pattern."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    if name == "guilloche":  # interleaved sinusoidal line families
        a, f1, f2 = r.uniform(4, 9), r.uniform(0.05, 0.09), r.uniform(0.04, 0.08)
        v1 = np.abs(np.sin(f1 * y + a * np.sin(f2 * x + r.uniform(0, 6))))
        v2 = np.abs(np.sin(f1 * y - a * np.sin(f2 * x * 1.3 + r.uniform(0, 6))))
        return np.clip(1 - np.minimum(v1, v2) / 0.2, 0, 1) * 0.45
    if name == "rosette":  # concentric modulated rings around a point
        cx, cy = r.uniform(0.3, 0.7) * w, r.uniform(0.3, 0.7) * h
        rad, ang = np.hypot(x - cx, y - cy), np.arctan2(y - cy, x - cx)
        v = np.abs(np.sin(rad * 0.35 + 2.5 * np.sin(ang * int(r.integers(6, 14)))))
        return np.clip(1 - v / 0.1, 0, 1) * 0.5 * np.exp(-rad / (0.5 * w))
    if name == "waves":
        return (0.5 + 0.5 * np.sin(x * r.uniform(0.02, 0.05) + 3 * np.sin(y * r.uniform(0.03, 0.06)))) * 0.2
    if name == "dots":
        s = int(r.integers(5, 8))
        return (((x % s) < 1.5) & ((y % s) < 1.5)).astype(np.float32) * 0.45
    if name == "frame":
        m = max(2, int(0.03 * h))
        d = np.minimum(np.minimum(x, w - 1 - x), np.minimum(y, h - 1 - y))
        return (((d >= m) & (d < m + 2)) | ((d >= m + 4) & (d < m + 5))).astype(np.float32) * 0.9
    raise ValueError(f"unknown background pattern {name!r}")


def _background(t: DocType, w: int, h: int, r: np.random.Generator) -> np.ndarray:
    """Gradient between the template's two background colours, overlaid with its patterns in the ink colour."""
    c1, c2, c3 = (np.array(c, np.float32) + r.normal(0, 5, 3) for c in (*t.colors.background, t.colors.pattern))
    ang = r.uniform(0, 2 * math.pi)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    g = ((x / w - 0.5) * math.cos(ang) + (y / h - 0.5) * math.sin(ang) + 0.5).clip(0, 1)[..., None]
    img = c1 * (1 - g) + c2 * g
    for name in t.patterns:
        a = _pattern(name, w, h, r)[..., None]
        img = img * (1 - a) + c3 * a
    return np.clip(img, 0, 255).astype(np.uint8)


@dataclass
class StaticLayer:
    """A template rendered at one size: the image without values, and where each value goes."""

    image: Image.Image  # RGB, the document's (w, h)
    value_xy: list[tuple[int, int]] = field(default_factory=list)  # top-left of each field value
    value_size: list[int] = field(default_factory=list)  # font px of each field value
    value_right: list[int] = field(default_factory=list)  # x the value must not pass


def static_layer(type_no: int, variant: int, w: int, h: int) -> StaticLayer:
    """Background, title and captions of the registry's type `type_no` at (w, h). Cached; do not mutate."""
    return _static_layer(registry()[type_no], int(type_no), variant, w, h)


def template_layer(t: DocType, w: int, h: int, seed: int) -> StaticLayer:
    """The static layer of a template that need not be registered, its background drawn from `seed`. Not cached."""
    return _static_layer.__wrapped__(t, int(seed), 0, w, h)


@lru_cache(maxsize=256)
def _static_layer(t: DocType, type_no: int, variant: int, w: int, h: int) -> StaticLayer:
    r = np.random.default_rng([0xD0C, type_no, variant])
    img = Image.fromarray(_background(t, w, h, r))
    slots = draw_static(ImageDraw.Draw(img), t, (0, 0, w, h))
    return StaticLayer(img, [(x, y) for x, y, _, _ in slots], [s for _, _, s, _ in slots], [right for *_, right in slots])
