"""Edits a tile goes through between a library and an upload, for training and benchmarks.

`copy_edit(tile, rng)` = slight crop -> rescale (lose resolution) -> recolour -> text overlay ->
JPEG re-encode, each with its own probability and strength (SSCD's augmentation family, sized to
what a re-posted tile meets). `region_jitter` is the box a region finder draws around the copy in
an upload (a few pixels in, or out onto the page). `to_tensor` turns PIL tiles into the
descriptor's input.
"""
from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageEnhance

from docray.fonts import font, rand_color


def slight_crop(img: Image.Image, rng: np.random.Generator, max_frac: float = 0.08) -> Image.Image:
    w, h = img.size
    l, t, r, b = (rng.uniform(0, max_frac, 4) * [w, h, w, h]).astype(int)
    return img.crop((l, t, max(l + 1, w - r), max(t + 1, h - b)))


def rescale(img: Image.Image, rng: np.random.Generator, lo: float = 0.4) -> Image.Image:
    w, h = img.size
    s = rng.uniform(lo, 1.0)
    small = img.resize((max(4, int(w * s)), max(4, int(h * s))), Image.BILINEAR)
    return small.resize((w, h), Image.BILINEAR)


def recolour(img: Image.Image, rng: np.random.Generator, strength: float = 0.3) -> Image.Image:
    for enh in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
        img = enh(img).enhance(float(rng.uniform(1 - strength, 1 + strength)))
    if rng.random() < 0.1:
        img = img.convert("L").convert("RGB")
    return img


def text_overlay(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A short caption or watermark drawn over part of the tile."""
    img = img.copy()
    w, h = img.size
    words = ("repost", "lol", "@user", "#tag", "share", "2024", "wow", "via app")
    s = words[int(rng.integers(len(words)))]
    f = font("sans-bold", max(6, int(h * rng.uniform(0.1, 0.2))))
    colour = tuple(int(c) for c in rng.integers(0, 256, 3))
    ImageDraw.Draw(img).text((rng.uniform(0, 0.6) * w, rng.uniform(0, 0.8) * h), s, font=f, fill=colour)
    return img


def jpeg(img: Image.Image, rng: np.random.Generator, lo: int = 30, hi: int = 90) -> Image.Image:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=int(rng.integers(lo, hi)))
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def copy_edit(img: Image.Image, rng: np.random.Generator, strength: float = 1.0) -> Image.Image:
    """A realistic edited copy of a tile (any size in, the same size out)."""
    img = img.convert("RGB")
    size = img.size
    if rng.random() < 0.8 * strength:
        img = slight_crop(img, rng, 0.08 * strength).resize(size, Image.BILINEAR)
    if rng.random() < 0.7 * strength:
        img = rescale(img, rng, 1 - 0.6 * strength)
    if rng.random() < 0.7 * strength:
        img = recolour(img, rng, 0.3 * strength)
    if rng.random() < 0.3 * strength:
        img = text_overlay(img, rng)
    if rng.random() < 0.5 * strength:  # re-posted at another size (an upload scales it up or down)
        s = rng.uniform(0.7, 2.0)
        img = img.resize((max(4, int(size[0] * s)), max(4, int(size[1] * s))), Image.BILINEAR).resize(size, Image.BILINEAR)
    if rng.random() < 0.8 * strength:
        img = jpeg(img, rng, int(90 - 60 * strength), 95)
    return img


def region_jitter(img: Image.Image, rng: np.random.Generator, max_in: float = 0.06, max_out: float = 0.04) -> Image.Image:
    """The copy as a region finder crops it from an upload: each side moves up to `max_in` of the
    size inwards or `max_out` outwards, where the page (a light plain colour) shows."""
    w, h = img.size
    l, t, r, b = np.round(rng.uniform(-max_out, max_in, 4) * [w, h, w, h]).astype(int)
    pad = max(0, -min(l, t, r, b))
    page = Image.new("RGB", (w + 2 * pad, h + 2 * pad), rand_color(rng, 215, 256))
    page.paste(img.convert("RGB"), (pad, pad))
    return page.crop((pad + l, pad + t, max(pad + l + 1, pad + w - r), max(pad + t + 1, pad + h - b)))


def to_tensor(tiles: list[Image.Image], size: int) -> torch.Tensor:
    """PIL tiles -> (b, 3, size, size) float in [0, 1] (each scaled to size x size)."""
    arr = np.stack([np.asarray(t.convert("RGB").resize((size, size), Image.BILINEAR)) for t in tiles])
    return torch.from_numpy(arr).permute(0, 3, 1, 2).float().div_(255.0)
