"""Edits a tile goes through between a library and an upload, for training and benchmarks.

`copy_edit(tile, rng)` = slight crop -> rescale (lose resolution) -> recolour -> text overlay ->
JPEG re-encode, each with its own probability and strength (SSCD's augmentation family, sized to
what a re-posted tile meets). `sscd_edit(tile, rng, others)` is the wider family SSCD trains on: it
adds crops down to a ninth of the picture (`area_crop`), `blur`, captions in several fonts and
collages (`collage`: the copy pasted inside or beside other pictures). `region_jitter` is the box a
region finder draws around the copy in an upload (a few pixels in, or out onto the page).
`to_tensor` turns PIL tiles into the descriptor's input.
"""
from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter

from docray.fonts import font, rand_color

EDITS = ("default", "sscd")  # the edit families training draws copies from: copy_edit, sscd_edit
EDIT_KINDS = ("crop", "rescale", "recolour", "text", "repost", "jpeg")  # copy_edit's edits, in order


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


def area_crop(img: Image.Image, rng: np.random.Generator, min_area: float = 1 / 9) -> Image.Image:
    """A crop keeping a random share in [min_area, 1] of the area (aspect jittered 3:4 to 4:3), anywhere."""
    w, h = img.size
    area, aspect = rng.uniform(min_area, 1.0) * w * h, float(np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3))))
    cw, ch = min(w, max(1, round((area * aspect) ** 0.5))), min(h, max(1, round((area / aspect) ** 0.5)))
    x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    return img.crop((x, y, x + cw, y + ch))


def blur(img: Image.Image, rng: np.random.Generator, max_radius: float = 2.0) -> Image.Image:
    """Gaussian blur of a random radius up to `max_radius` px."""
    return img.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.3, max_radius))))


def collage(img: Image.Image, rng: np.random.Generator, others=()) -> Image.Image:
    """The copy at 50-90% of its size pasted inside or beside 1-3 of the pictures `others` (scaled
    into a canvas of the copy's size over a plain colour; the colour alone without any)."""
    w, h = img.size
    canvas = Image.new("RGB", (w, h), rand_color(rng))
    for _ in range(int(rng.integers(1, 4)) if len(others) else 0):
        o = others[int(rng.integers(len(others)))].convert("RGB")
        ow, oh = max(1, round(w * rng.uniform(0.4, 1.0))), max(1, round(h * rng.uniform(0.4, 1.0)))
        canvas.paste(o.resize((ow, oh), Image.BILINEAR), (int(rng.integers(0, w - ow + 1)), int(rng.integers(0, h - oh + 1))))
    s = rng.uniform(0.5, 0.9)
    cw, ch = max(4, round(w * s)), max(4, round(h * s))
    canvas.paste(img.convert("RGB").resize((cw, ch), Image.BILINEAR),
                 (int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))))
    return canvas


def text_overlay(img: Image.Image, rng: np.random.Generator, style: str = "sans-bold") -> Image.Image:
    """A short caption or watermark drawn over part of the tile, in font `style`."""
    img = img.copy()
    w, h = img.size
    words = ("repost", "lol", "@user", "#tag", "share", "2024", "wow", "via app")
    s = words[int(rng.integers(len(words)))]
    f = font(style, max(6, int(h * rng.uniform(0.1, 0.2))))
    colour = tuple(int(c) for c in rng.integers(0, 256, 3))
    ImageDraw.Draw(img).text((rng.uniform(0, 0.6) * w, rng.uniform(0, 0.8) * h), s, font=f, fill=colour)
    return img


def jpeg(img: Image.Image, rng: np.random.Generator, lo: int = 30, hi: int = 90) -> Image.Image:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=int(rng.integers(lo, hi)))
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def copy_edit(img: Image.Image, rng: np.random.Generator, strength: float = 1.0, applied: list | None = None
              ) -> Image.Image:
    """A realistic edited copy of a tile (any size in, the same size out). `applied`, when a list, gets
    the names of the edits made (of EDIT_KINDS)."""
    applied = [] if applied is None else applied
    img = img.convert("RGB")
    size = img.size
    if rng.random() < 0.8 * strength:
        img = slight_crop(img, rng, 0.08 * strength).resize(size, Image.BILINEAR)
        applied.append("crop")
    if rng.random() < 0.7 * strength:
        img = rescale(img, rng, 1 - 0.6 * strength)
        applied.append("rescale")
    if rng.random() < 0.7 * strength:
        img = recolour(img, rng, 0.3 * strength)
        applied.append("recolour")
    if rng.random() < 0.3 * strength:
        img = text_overlay(img, rng)
        applied.append("text")
    if rng.random() < 0.5 * strength:  # re-posted at another size (an upload scales it up or down)
        s = rng.uniform(0.7, 2.0)
        img = img.resize((max(4, int(size[0] * s)), max(4, int(size[1] * s))), Image.BILINEAR).resize(size, Image.BILINEAR)
        applied.append("repost")
    if rng.random() < 0.8 * strength:
        img = jpeg(img, rng, int(90 - 60 * strength), 95)
        applied.append("jpeg")
    return img


def sscd_edit(img: Image.Image, rng: np.random.Generator, others=()) -> Image.Image:
    """A copy under SSCD's wider edit family (any size in, the same size out): `copy_edit`'s edits
    plus crops down to a ninth of the picture, blur, captions in several fonts and a collage with
    the pictures `others` (a plain colour without any)."""
    img = img.convert("RGB")
    size = img.size
    if rng.random() < 0.5:
        img = area_crop(img, rng).resize(size, Image.BILINEAR)
    elif rng.random() < 0.8:
        img = slight_crop(img, rng).resize(size, Image.BILINEAR)
    if rng.random() < 0.7:
        img = rescale(img, rng)
    if rng.random() < 0.7:
        img = recolour(img, rng)
    if rng.random() < 0.3:
        img = blur(img, rng, 0.03 * max(size) + 0.5)
    if rng.random() < 0.3:
        img = text_overlay(img, rng, ("sans", "sans-bold", "serif", "serif-bold", "mono-bold")[int(rng.integers(5))])
    if rng.random() < 0.2:
        img = collage(img, rng, others)
    if rng.random() < 0.5:  # re-posted at another size
        s = rng.uniform(0.7, 2.0)
        img = img.resize((max(4, int(size[0] * s)), max(4, int(size[1] * s))), Image.BILINEAR).resize(size, Image.BILINEAR)
    if rng.random() < 0.8:
        img = jpeg(img, rng, 30, 95)
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
