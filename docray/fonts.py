"""Fonts for drawing documents, glyph layers and overlays, from packages (no system fonts needed).

    font("sans", 14)          # a cached scalable font; styles: FONT_STYLES
    rand_color(rng)           # a random RGB colour

Latin styles are the DejaVu files that matplotlib (a docray dependency) ships. CJK styles come from
the font package `docray.doctypes` names for its Chinese templates (see there).
"""
from __future__ import annotations

import importlib.util
import os
from functools import lru_cache

import numpy as np
from PIL import ImageFont

# style -> DejaVu file bundled with matplotlib (a docray dependency); no system fonts needed
_FONT_FILES = {
    "sans": "DejaVuSans.ttf",
    "sans-bold": "DejaVuSans-Bold.ttf",
    "sans-oblique": "DejaVuSans-Oblique.ttf",
    "serif": "DejaVuSerif.ttf",
    "serif-bold": "DejaVuSerif-Bold.ttf",
    "mono": "DejaVuSansMono.ttf",
    "mono-bold": "DejaVuSansMono-Bold.ttf",
}
FONT_STYLES = tuple(_FONT_FILES)


@lru_cache(maxsize=1)
def _font_dir() -> str | None:
    spec = importlib.util.find_spec("matplotlib")
    if spec is None or spec.origin is None:
        return None
    d = os.path.join(os.path.dirname(spec.origin), "mpl-data", "fonts", "ttf")
    return d if os.path.isdir(d) else None


@lru_cache(maxsize=512)
def font(style: str, size: int) -> ImageFont.FreeTypeFont:
    """A cached scalable font: matplotlib's DejaVu `style`, else Pillow's bundled default."""
    size = max(4, int(size))
    d = _font_dir()
    if d is not None and style in _FONT_FILES:
        return ImageFont.truetype(os.path.join(d, _FONT_FILES[style]), size, layout_engine=ImageFont.Layout.BASIC)
    return ImageFont.load_default(size=size)


def rand_color(rng: np.random.Generator, lo: int = 0, hi: int = 256) -> tuple[int, int, int]:
    """A random RGB colour with channels in [lo, hi)."""
    return tuple(int(v) for v in rng.integers(lo, hi, 3))
