"""Where a document sits in a frame, and the homography between two quadrilaterals.

    ox, oy, dw, dh = doc_rect((256, 160), 1.585)       # a document of aspect 1.585 centred in 256x160
    H = homography(src_4x2, dst_4x2)                    # dst ~ H @ src

Coordinates are continuous px (PIL's convention: pixel centres at +0.5).
"""
from __future__ import annotations

import numpy as np


def doc_rect(size, aspect: float) -> tuple[int, int, int, int]:
    """(x, y, w, h) of a document of `aspect` (w / h) centred in a canvas of `size` (w, h), with a
    margin of 3% of the height (at least 2 px) on every side."""
    w, h = size
    m = max(2, round(0.03 * h))
    dh = h - 2 * m
    dw = min(w - 2 * m, round(dh * aspect))
    dh = min(dh, round(dw / aspect))
    return (w - dw) // 2, (h - dh) // 2, dw, dh


def homography(src, dst) -> np.ndarray:
    """3x3 H with dst ~ H @ src for four point pairs, (4, 2) each."""
    a, b = [], []
    for (x, y), (u, v) in zip(np.asarray(src, np.float64), np.asarray(dst, np.float64)):
        a += [[x, y, 1, 0, 0, 0, -u * x, -u * y], [0, 0, 0, x, y, 1, -v * x, -v * y]]
        b += [u, v]
    return np.append(np.linalg.solve(np.array(a), np.array(b)), 1.0).reshape(3, 3)
