"""Text regions by OCR (rapidocr, offline; models ship inside the package), detection only.

The engine is built once per process (`engine()` is cached): building it loads ONNX models, and
recognition is skipped (`use_rec=False`) since screening needs where text is, not what it says.
Small pictures are scaled up first (`upscale_to`): a tile's text is often cut glyphs a few
pixels high, which the detector misses at their posted size (measured on the synthetic uploads:
79% of tiles found at their own size, 89% scaled to a 128 px short side).
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
from PIL import Image

Box = tuple[int, int, int, int]


@lru_cache(maxsize=1)
def engine():
    from rapidocr import RapidOCR

    # the default upscales every picture to a 736 px short side; uploads are small: cap the long side
    return RapidOCR(params={"Global.use_cls": False, "Global.use_rec": False, "Global.log_level": "critical",
                            "Det.limit_side_len": 480, "Det.limit_type": "max"})


def text_boxes(img: Image.Image, min_side: int = 4, upscale_to: int = 128) -> list[Box]:
    """Axis-aligned boxes (x0, y0, x1, y1), in `img`'s pixels, of the text lines OCR detects in
    `img` (scaled up first so that its short side is at least `upscale_to`)."""
    s = max(1.0, upscale_to / max(1, min(img.size)))
    big = img if s == 1.0 else img.resize((round(img.width * s), round(img.height * s)), Image.BICUBIC)
    out = engine()(np.asarray(big.convert("RGB")), use_cls=False, use_rec=False)
    polys = getattr(out, "boxes", None)
    if polys is None:
        return []
    boxes = []
    for p in np.asarray(polys).reshape(-1, 4, 2) / s:
        x0, y0 = np.floor(p.min(0)).astype(int)
        x1, y1 = np.ceil(p.max(0)).astype(int)
        x0, y0, x1, y1 = max(0, x0), max(0, y0), min(img.width, x1), min(img.height, y1)
        if x1 - x0 >= min_side and y1 - y0 >= min_side:
            boxes.append((int(x0), int(y0), int(x1), int(y1)))
    return boxes
