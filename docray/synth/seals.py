"""Seals (stamps): red or blue; circle, ellipse, rectangle or square; ring, star and lettering.

A seal sprite (ink alpha + filled-shape mask) is drawn once per (shape, colour, variant, height) and
cached; each use rotates it, thins the ink with a texture and stamps it onto a document, writing
label 2 into the segmentation map over the filled shape.
"""
from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw

from docray.synth.common import font

SEAL_SHAPES = ("circle", "ellipse", "rectangle", "square")
SEAL_COLORS = {"red": (205, 35, 40), "blue": (35, 70, 190)}
N_VARIANTS = 6  # lettering variants per shape and colour
_WORDS = ("CITY", "BUREAU", "REGISTRY", "OFFICE", "AUTHORITY", "DEPARTMENT", "SEAL", "ADMINISTRATION", "PUBLIC", "SECURITY")
ASPECT = {"circle": 1.0, "ellipse": 1.45, "rectangle": 1.9, "square": 1.0}  # width / height


def _lettering(variant: int) -> str:
    r = np.random.default_rng([0x5EA1, variant])
    return " ".join(_WORDS[int(k)] for k in r.choice(len(_WORDS), 3, replace=False))


def _arc_text(img: Image.Image, text: str, cx: float, cy: float, rx: float, ry: float, size: int, fill: int):
    """Letters along the top arc of an ellipse, each rotated to follow it."""
    f = font("sans-bold", size)
    span = math.radians(250)
    for k, ch in enumerate(text):
        t = -math.pi / 2 - span / 2 + span * (k + 0.5) / len(text)
        x, y = cx + rx * math.cos(t), cy + ry * math.sin(t)
        l, tp, r, b = f.getbbox(ch)
        glyph = Image.new("L", (r + 2, b + 2), 0)
        ImageDraw.Draw(glyph).text((1, 1), ch, font=f, fill=fill)
        glyph = glyph.rotate(-math.degrees(t) - 90, resample=Image.Resampling.BILINEAR, expand=True)
        img.paste(255, (int(x - glyph.width / 2), int(y - glyph.height / 2)), glyph)


@lru_cache(maxsize=512)
def seal_sprite(shape: str, variant: int, h: int) -> tuple[Image.Image, Image.Image]:
    """(ink, shape) 'L' images of a seal `h` px tall: ink alpha, and the filled outline."""
    w = int(round(h * ASPECT[shape]))
    W, H = 2 * w, 2 * h  # drawn at 2x, then reduced
    ink, filled = Image.new("L", (W, H), 0), Image.new("L", (W, H), 0)
    di, df = ImageDraw.Draw(ink), ImageDraw.Draw(filled)
    lw = max(2, H // 20)
    box = [lw // 2, lw // 2, W - 1 - lw // 2, H - 1 - lw // 2]
    text = _lettering(variant)
    if shape in ("circle", "ellipse"):
        di.ellipse(box, outline=255, width=lw)
        df.ellipse(box, fill=255)
        fs = max(6, int(H * 0.14))
        ring = lw + 1.25 * fs  # inner ring just inside the lettering
        di.ellipse([ring, ring, W - 1 - ring, H - 1 - ring], outline=255, width=max(1, lw // 2))
        cx, cy, rs = W / 2, H / 2, H * 0.17  # a five-pointed star in the middle
        star = [(cx + rs * (1 if k % 2 == 0 else 0.42) * math.sin(k * math.pi / 5),
                 cy - rs * (1 if k % 2 == 0 else 0.42) * math.cos(k * math.pi / 5)) for k in range(10)]
        di.polygon(star, fill=255)
        r_text = lw + 0.65 * fs
        _arc_text(ink, text, W / 2, H / 2, W / 2 - r_text, H / 2 - r_text, fs, 255)
    else:
        di.rectangle(box, outline=255, width=lw)
        df.rectangle(box, fill=255)
        ins = 1.8 * lw
        di.rectangle([box[0] + ins, box[1] + ins, box[2] - ins, box[3] - ins], outline=255, width=max(1, lw // 3))
        words = text.split()
        lines = [" ".join(words[:2]), words[2]] if shape == "rectangle" else words
        size = int(H / (len(lines) + 1.6) * 0.8)
        longest = max(lines, key=len)
        while size > 6 and font("sans-bold", size).getlength(longest) > W - 3 * ins:
            size -= 1
        f = font("sans-bold", size)
        step = (H - 2 * ins) / len(lines)
        for k, line in enumerate(lines):
            di.text((W / 2, ins + step * (k + 0.5)), line, font=f, fill=255, anchor="mm")
    return ink.reduce(2), filled.reduce(2).point(lambda v: 255 if v >= 128 else 0)  # binary: labels never blend


@lru_cache(maxsize=8)
def _ink_texture(n: int = 256) -> np.ndarray:
    """Blotchy ink coverage in [0.35, 1], tiled for the seal's faded look."""
    r = np.random.default_rng(0x1CE)
    small = r.uniform(0.35, 1.0, (n // 8, n // 8)).astype(np.float32)
    tex = np.asarray(Image.fromarray((small * 255).astype(np.uint8)).resize((n, n), Image.Resampling.BILINEAR), np.float32) / 255
    return np.minimum(1.0, tex * 1.2)


def stamp(canvas: Image.Image | None, seg: Image.Image | None, shape: str, color: str, variant: int, h: int,
          center: tuple[float, float], angle: float, strength: float, tex_xy: tuple[float, float]) -> list[int]:
    """Stamp a seal centred at `center` (canvas px) onto `canvas` (and label 2 into `seg`); returns its box.

    `tex_xy` in [0, 1)^2 picks the ink-texture offset, so the same stamp can be repeated exactly.
    """
    ink, filled = seal_sprite(shape, variant, h)
    if angle:
        ink = ink.rotate(angle, resample=Image.Resampling.BILINEAR, expand=True)
        filled = filled.rotate(angle, resample=Image.Resampling.NEAREST, expand=True)
    x0, y0 = int(round(center[0] - ink.width / 2)), int(round(center[1] - ink.height / 2))
    if canvas is not None:
        tex = _ink_texture(max(256, -(-max(ink.size) // 64) * 64 + 64))
        oy, ox = int(tex_xy[1] * (tex.shape[0] - ink.height)), int(tex_xy[0] * (tex.shape[1] - ink.width))
        alpha = np.asarray(ink, np.float32) * tex[oy:oy + ink.height, ox:ox + ink.width] * strength
        canvas.paste(SEAL_COLORS[color], (x0, y0), Image.fromarray(alpha.astype(np.uint8)))
    fb = filled.getbbox()
    if seg is not None:
        seg.paste(2, (x0, y0), filled)
    return [x0 + fb[0], y0 + fb[1], x0 + fb[2], y0 + fb[3]]
