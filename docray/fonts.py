"""Fonts for drawing documents, glyph layers and overlays, from packages (no system fonts needed).

    font("sans", 14)          # a cached scalable font; styles: FONT_STYLES
    font("cjk-sans", 14)      # Noto Sans CJK SC: Chinese (and Latin) text
    rand_color(rng)           # a random RGB colour

Latin styles are the DejaVu files that matplotlib (a docray dependency) ships. CJK styles are faces
of the Noto Sans CJK collection that the `noto-cjk-sans-otc` package (a docray dependency) ships:
"cjk-sans" (Noto Sans CJK SC) and "cjk-mono" (Noto Sans Mono CJK SC); the package has no bold face.
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
_CJK_FACES = {"cjk-sans": 2, "cjk-mono": 7}  # face index in NotoSansCJK-Regular.ttc: SC, Mono SC
FONT_STYLES = tuple(_FONT_FILES) + tuple(_CJK_FACES)
CJK_STYLES = tuple(_CJK_FACES)


@lru_cache(maxsize=1)
def _font_dir() -> str | None:
    spec = importlib.util.find_spec("matplotlib")
    if spec is None or spec.origin is None:
        return None
    d = os.path.join(os.path.dirname(spec.origin), "mpl-data", "fonts", "ttf")
    return d if os.path.isdir(d) else None


@lru_cache(maxsize=1)
def cjk_font_path() -> str:
    """The Noto Sans CJK collection file of the `noto-cjk-sans-otc` package."""
    try:
        import noto_cjk_sans_otc
    except ImportError:
        raise ImportError("CJK font styles need the font package noto-cjk-sans-otc (a docray dependency): "
                          "pip install noto-cjk-sans-otc") from None
    return str(noto_cjk_sans_otc.FONT_PATH)


@lru_cache(maxsize=512)
def font(style: str, size: int) -> ImageFont.FreeTypeFont:
    """A cached scalable font: a CJK style from Noto Sans CJK, matplotlib's DejaVu `style`, else
    Pillow's bundled default (Latin only)."""
    size = max(4, int(size))
    if style in _CJK_FACES:
        return ImageFont.truetype(cjk_font_path(), size, index=_CJK_FACES[style], layout_engine=ImageFont.Layout.BASIC)
    d = _font_dir()
    if d is not None and style in _FONT_FILES:
        return ImageFont.truetype(os.path.join(d, _FONT_FILES[style]), size, layout_engine=ImageFont.Layout.BASIC)
    return ImageFont.load_default(size=size)


def rand_color(rng: np.random.Generator, lo: int = 0, hi: int = 256) -> tuple[int, int, int]:
    """A random RGB colour with channels in [lo, hi)."""
    return tuple(int(v) for v in rng.integers(lo, hi, 3))
