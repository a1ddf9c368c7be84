"""Region proposals that do not depend on the drawn uploads' layouts: where a picture was pasted into
a photo, a texture or a screenshot, its border is a rectangle of straight, axis-aligned edges that
the background around it does not continue.

    edge_boxes(img)            # rectangles whose four sides lie on long straight edges, best supported first
    window_boxes(img.size)     # multi-scale sliding windows (the fallback that needs no edge at all)
    propose(img, "edges", 16)  # either or both, near-duplicates dropped, at most 16 boxes

`edge_boxes`: per pixel, the colour step to its left neighbour (vertical edges) and to the one above
(horizontal edges), at most 640 px a side; a pixel whose step (max over RGB, taken over 3 px across
the side: a border blurred by rescaling or JPEG) exceeds `step` is an edge pixel. Columns (rows)
holding the most pixels on straight runs of at least `min_side` make the candidate left/right
(top/bottom) sides, at most `lines` of each, plus the picture's own border (a picture pasted flush
with it; such a side counts `border_support`). Every pair of columns with every pair of rows is a
box, kept when each side has at least `min_side_support` of its pixels on edges and the four at
least `min_support` on average (prefix sums: two look-ups a side), ranked by that share plus the
share over 2 x `step`, then non-maximum suppression. No learned part: a pasted picture's border is
found on any background where it is visible at all (not where it meets one of its own colours).

Every proposal function returns at most its `max_boxes`: the cost per upload is bounded (the
descriptor embeds each box once).
"""
from __future__ import annotations

from typing import Literal

import numpy as np
from PIL import Image

Box = tuple[int, int, int, int]
Proposals = Literal["layout", "edges", "windows", "edges+windows"]


def iou(a: Box, b: Box) -> float:
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0])) * max(0, min(a[3], b[3]) - max(a[1], b[1]))
    ua = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - ix
    return ix / ua if ua else 0.0


def _lines(edge: np.ndarray, min_len: int, n: int) -> np.ndarray:
    """Columns of `edge` ((h, w) bool) holding the longest vertical runs (at least `min_len` pixels of
    edge in one run), the strongest `n` after suppressing neighbours within 2 columns."""
    import cv2

    runs = cv2.morphologyEx(edge.astype(np.uint8), cv2.MORPH_OPEN, np.ones((min_len, 1), np.uint8))
    score = runs.sum(0).astype(np.float64)  # pixels of each column on a run of >= min_len
    order = np.argsort(-score, kind="stable")
    taken: list[int] = []
    for c in order:
        if score[c] < min_len or len(taken) == n:
            break
        if all(abs(int(c) - t) > 2 for t in taken):
            taken.append(int(c))
    return np.array(sorted(taken), int)


def _nms(boxes: np.ndarray, scores: np.ndarray, max_boxes: int, max_iou: float) -> list[Box]:
    """Greedy non-maximum suppression, vectorised: at most `max_boxes` passes over the candidates."""
    order = np.argsort(-scores, kind="stable")
    b = boxes[order].astype(np.float64)  # (n, 4)
    area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    alive = np.ones(len(b), bool)
    out: list[Box] = []
    while alive.any() and len(out) < max_boxes:
        k = int(np.argmax(alive))  # the best remaining
        out.append(tuple(int(v) for v in boxes[order[k]]))
        ix = np.clip(np.minimum(b[:, 2], b[k, 2]) - np.maximum(b[:, 0], b[k, 0]), 0, None) * \
            np.clip(np.minimum(b[:, 3], b[k, 3]) - np.maximum(b[:, 1], b[k, 1]), 0, None)
        alive &= ix / (area + area[k] - ix) < max_iou
    return out


def edge_boxes(img: Image.Image, max_boxes: int = 16, min_side: int = 16, step: int = 16, lines: int = 40,
               min_support: float = 0.7, min_side_support: float = 0.4, border_support: float = 0.75,
               work_side: int = 640, max_iou: float = 0.6) -> list[Box]:
    """Boxes (x0, y0, x1, y1), in `img`'s pixels, of rectangles bounded by straight edges, best supported
    first, at most `max_boxes`; the whole picture is not one of them. `step`: colour step (max over RGB,
    0-255) that makes an edge pixel; the picture is described at `work_side` pixels at most (cost)."""
    import cv2

    w0, h0 = img.size
    s = min(1.0, work_side / max(w0, h0))
    a = np.asarray(img.convert("RGB"))
    if s < 1:
        a = cv2.resize(a, (max(1, round(w0 * s)), max(1, round(h0 * s))), interpolation=cv2.INTER_AREA)
    a = a.astype(np.int16)
    h, w = a.shape[:2]
    ms = max(4, round(min_side * s))
    if h < 2 * ms or w < 2 * ms:
        return []
    # vertical edges: v[y, x] is the step between columns x-1 and x (a box side at x); x = 0 never an edge
    dv = np.zeros((h, w + 1), np.int16)
    dv[:, 1:w] = np.abs(a[:, 1:] - a[:, :-1]).max(-1)
    dh = np.zeros((h + 1, w), np.int16)
    dh[1:h] = np.abs(a[1:] - a[:-1]).max(-1)
    # a border blurred by rescaling or JPEG spreads over 2 px: a side at x counts a step at x-1..x+1
    dv[:, 1:-1] = np.maximum(np.maximum(dv[:, 1:-1], dv[:, :-2]), dv[:, 2:])
    dh[1:-1] = np.maximum(np.maximum(dh[1:-1], dh[:-2]), dh[2:])
    xs, ys = _lines(dv > step, ms, lines), _lines((dh > step).T, ms, lines)
    # the picture's own border may be a side (a picture pasted flush with it), counted as partly supported
    xs = np.unique(np.concatenate([[0], xs[(xs > 2) & (xs < w - 2)], [w]]))
    ys = np.unique(np.concatenate([[0], ys[(ys > 2) & (ys < h - 2)], [h]]))
    # support of a side: the share of its pixels with a step > `step`, and (ranking only) > 2 x `step`
    prefix = {}
    for name, d, axis in (("v", dv, 0), ("h", dh, 1)):
        for k, t in ((1, step), (2, 2 * step)):
            e = (d > t).astype(np.float32)
            if name == "v":
                e[:, [0, w]] = border_support
            else:
                e[[0, h]] = border_support
            c = np.cumsum(e, axis)
            prefix[name, k] = np.concatenate([np.zeros((1, w + 1)), c]) if axis == 0 else \
                np.concatenate([np.zeros((h + 1, 1)), c], 1)  # (h+1, w+1)
    ia, ib = np.triu_indices(len(xs), 1)
    xa, xb = xs[ia], xs[ib]
    keep = xb - xa >= ms
    xa, xb = xa[keep], xb[keep]
    ja, jb = np.triu_indices(len(ys), 1)
    ya, yb = ys[ja], ys[jb]
    keep = yb - ya >= ms
    ya, yb = ya[keep], yb[keep]
    if not len(xa) or not len(ya):
        return []
    P, Q = np.meshgrid(np.arange(len(xa)), np.arange(len(ya)), indexing="ij")  # every column pair x row pair
    X0, X1, Y0, Y1 = xa[P.ravel()], xb[P.ravel()], ya[Q.ravel()], yb[Q.ravel()]
    hgt, wid = (Y1 - Y0).astype(np.float64), (X1 - X0).astype(np.float64)

    def side(k, which, sel):  # the share of a side's pixels on an edge (prefix sums: two look-ups a side)
        x0, x1, y0, y1 = X0[sel], X1[sel], Y0[sel], Y1[sel]
        if which in ("left", "right"):
            c, x = prefix["v", k], (x0 if which == "left" else x1)
            return (c[y1, x] - c[y0, x]) / hgt[sel]
        c, y = prefix["h", k], (y0 if which == "top" else y1)
        return (c[y, x1] - c[y, x0]) / wid[sel]

    sel = np.arange(len(X0))
    total, low = np.zeros(len(X0)), np.ones(len(X0))
    for which in ("left", "right", "top", "bottom"):  # prune on each side in turn: most boxes fail early
        sup = side(1, which, sel)
        keep = sup >= min_side_support
        sel, total, low = sel[keep], total[keep] + sup[keep], np.minimum(low[keep], sup[keep])
    mean = total / 4
    whole = (X0[sel] == 0) & (Y0[sel] == 0) & (X1[sel] == w) & (Y1[sel] == h)
    keep = (mean >= min_support) & ~whole
    sel, mean = sel[keep], mean[keep]
    if not len(sel):
        return []
    strong = sum(side(2, which, sel) for which in ("left", "right", "top", "bottom")) / 4
    boxes = np.stack([X0[sel], Y0[sel], X1[sel], Y1[sel]], -1)
    # best supported first (by the share of pixels over `step`, then over 2 x `step`); among equals the larger
    score = mean + strong + 1e-6 * np.sqrt(wid[sel] * hgt[sel]) / max(w, h)
    out = _nms(boxes, score, max_boxes, max_iou)
    if s < 1:
        out = [(round(x0 / s), round(y0 / s), min(w0, round(x1 / s)), min(h0, round(y1 / s))) for x0, y0, x1, y1 in out]
    return out


def window_boxes(size: tuple[int, int], max_boxes: int = 16, scales: tuple[float, ...] = (0.5, 0.33),
                 aspects: tuple[float, ...] = (1.0, 2.0, 0.5), overlap: float = 0.5, min_side: int = 16) -> list[Box]:
    """Sliding windows over a picture of `size` (w, h): squares and 2:1 / 1:2 boxes whose area is
    (`scale` x the shorter side)^2, moved by (1 - `overlap`) of their size; the coarsest first, at
    most `max_boxes` (each scale spread evenly over the picture when it has more windows than fit)."""
    w, h = size
    out: list[Box] = []
    per_scale = max(1, max_boxes // max(1, len(scales)))
    for sc in scales:
        boxes = []
        for ar in aspects:
            bw, bh = round(sc * min(w, h) * ar ** 0.5), round(sc * min(w, h) / ar ** 0.5)
            if bw < min_side or bh < min_side or bw > w or bh > h:
                continue
            nx = max(1, int(np.ceil((w - bw) / (bw * (1 - overlap)))) + 1)
            ny = max(1, int(np.ceil((h - bh) / (bh * (1 - overlap)))) + 1)
            for y in np.linspace(0, h - bh, ny).round().astype(int):
                for x in np.linspace(0, w - bw, nx).round().astype(int):
                    boxes.append((int(x), int(y), int(x) + bw, int(y) + bh))
        if len(boxes) > per_scale:  # an even subset, every aspect kept in turn
            boxes = [boxes[i] for i in np.linspace(0, len(boxes) - 1, per_scale).round().astype(int)]
        out += boxes
    return out[:max_boxes]


def propose(img: Image.Image, kind: Proposals, max_boxes: int, min_side: int = 16) -> list[Box]:
    """The layout-free proposals of `kind` ('layout': none; 'edges+windows': edge boxes first, windows
    filling what is left of `max_boxes`), near-duplicates (IoU >= 0.9) dropped."""
    if kind not in ("layout", "edges", "windows", "edges+windows"):
        raise ValueError(f"unknown proposals {kind!r}; known: layout, edges, windows, edges+windows")
    out: list[Box] = []
    if "edges" in kind:
        out += edge_boxes(img, max_boxes if kind == "edges" else max(1, max_boxes // 2), min_side)
    if "windows" in kind:
        for b in window_boxes(img.size, max_boxes, min_side=min_side):
            if len(out) >= max_boxes:
                break
            if all(iou(b, o) < 0.9 for o in out):
                out.append(b)
    return out[:max_boxes]
