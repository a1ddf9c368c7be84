"""Seal detection with OpenCV: red or blue circles, ellipses, rectangles and squares.

A seal is an inked OUTLINE of one of four shapes in red or blue. Detection, per colour:
1. a colour mask in HSV (hue band, enough saturation), closed so the blotchy ink joins up;
2. each outer contour of a plausible size is a candidate; two models are fitted to it, an ellipse
   (`cv2.fitEllipse`) and a rotated rectangle (`cv2.minAreaRect`);
3. the shape must be an outline: the largest bare region it encloses is at least `min_hole` of its
   area (lettering inside a seal does not close off the paper; a solid blob or a word does);
4. a rectangle if the corners of the fitted rectangle are inked, else an ellipse; the model is
   accepted when at least `min_cover` of its outline (sampled at a few scales just inside the fit,
   for double rings and blotchy ink) is inked. An ellipse with axis ratio < `round_ratio` is a
   circle, a rectangle likewise a square;
5. a seal carries a star or lettering: at least `min_inner_ink` of the region inside its outline is
   ink (a bare letter 'O' or 'D' is an outline with nothing inside).
Negatives fall out of the rules: a green circle fails the colour mask; red text closes into a blob
whose fitted outline is mostly bare paper (letters only touch it here and there).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import cv2
import numpy as np
from PIL import Image

# OpenCV hue is 0..179. Red wraps around 0.
HUE_BANDS = {"red": ((0, 12), (165, 180)), "blue": ((95, 135),)}
SHAPES = ("circle", "ellipse", "rectangle", "square")


@dataclass
class Seal:
    box: list[int]  # [x0, y0, x1, y1] in image px
    color: str  # 'red' | 'blue'
    shape: str  # 'circle' | 'ellipse' | 'rectangle' | 'square'
    score: float  # fraction of the fitted outline that is inked

    def as_dict(self) -> dict:
        return asdict(self)


def color_mask(rgb: np.ndarray, color: str, min_sat: int = 30, min_val: int = 50) -> np.ndarray:
    """uint8 0/255 mask of pixels of `color` in an RGB (h, w, 3) image."""
    hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)
    h, s, v = hsv[..., 0], hsv[..., 1], hsv[..., 2]
    hue = np.zeros(h.shape, bool)
    for lo, hi in HUE_BANDS[color]:
        hue |= (h >= lo) & (h < hi)
    return ((hue & (s >= min_sat) & (v >= min_val)) * 255).astype(np.uint8)


SHRINKS = (0.86, 0.9, 0.94, 0.98)  # the fitted outline is sampled at these scales (double rings, blotchy ink)


def _ellipse_points(center, axes, angle, k: float, n: int = 72) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    a, b = axes[0] / 2 * k, axes[1] / 2 * k
    c, s = np.cos(np.deg2rad(angle)), np.sin(np.deg2rad(angle))
    x, y = a * np.cos(t), b * np.sin(t)
    return np.stack([center[0] + c * x - s * y, center[1] + s * x + c * y], 1)


def _rect_points(rect, k: float, n: int = 72) -> np.ndarray:
    (cx, cy), (w, h), angle = rect
    corners = cv2.boxPoints(((cx, cy), (w * k, h * k), angle))
    t = np.linspace(0, 1, n // 4, endpoint=False)[:, None]
    return np.concatenate([corners[i] + (corners[(i + 1) % 4] - corners[i]) * t for i in range(4)])


def _inked(ink: np.ndarray, pts: np.ndarray) -> np.ndarray:
    h, w = ink.shape
    xi, yi = np.clip(pts[:, 0].round().astype(int), 0, w - 1), np.clip(pts[:, 1].round().astype(int), 0, h - 1)
    return ink[yi, xi] > 0


def _cover(ink: np.ndarray, points) -> float:
    """Fraction of outline positions inked at any of the sampled scales."""
    return float(np.any([_inked(ink, points(k)) for k in SHRINKS], axis=0).mean())


def _classify(ink: np.ndarray, contour: np.ndarray, round_ratio: float) -> tuple[str, float]:
    """(shape, coverage): a rectangle if the fitted rectangle's corners are inked, else an ellipse."""
    rect = cv2.minAreaRect(contour)
    (w, h) = rect[1]
    if min(w, h) <= 0 or len(contour) < 5:
        return "", 0.0
    corners = np.concatenate([cv2.boxPoints((rect[0], (w * k, h * k), rect[2])) for k in SHRINKS])
    if _inked(ink, corners).reshape(len(SHRINKS), 4).any(axis=0).mean() >= 0.75:  # 3 of 4 corners
        square = max(w, h) / min(w, h) < round_ratio
        return ("square" if square else "rectangle"), _cover(ink, lambda k: _rect_points(rect, k))
    center, axes, angle = cv2.fitEllipse(contour)
    if min(axes) <= 0:
        return "", 0.0
    circle = max(axes) / min(axes) < round_ratio
    return ("circle" if circle else "ellipse"), _cover(ink, lambda k: _ellipse_points(center, axes, angle, k))


def _hole(mask: np.ndarray, contour: np.ndarray) -> tuple[float, float]:
    """(hole, inner ink): the largest bare region enclosed by the contour as a fraction of the
    contour's area, and the ink fraction within that region's outline (a star or lettering)."""
    inside = np.zeros_like(mask)
    cv2.drawContours(inside, [contour], -1, 255, -1)
    bare = ((inside > 0) & (mask == 0)).astype(np.uint8)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(bare, connectivity=4)
    if n <= 1:
        return 0.0, 0.0
    k = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    outline, _ = cv2.findContours((labels == k).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    region = np.zeros_like(mask)
    cv2.drawContours(region, outline, -1, 255, -1)
    hole = stats[k, cv2.CC_STAT_AREA] / max(1.0, float((inside > 0).sum()))
    return float(hole), float((mask[region > 0] > 0).mean())


def _inside(a: list[int], b: list[int]) -> bool:
    return a is not b and a[0] >= b[0] and a[1] >= b[1] and a[2] <= b[2] and a[3] <= b[3]


def detect_seals(image: Image.Image | np.ndarray, colors=("red", "blue"), min_size: int = 12,
                 min_cover: float = 0.85, min_hole: float = 0.08, min_inner_ink: float = 0.03, round_ratio: float = 1.2,
                 max_aspect: float = 3.0, max_frac: float = 0.5) -> list[Seal]:
    """Seals in an RGB image, largest first (see the module docstring)."""
    rgb = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image)
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"detect_seals needs an RGB image (h, w, 3), got shape {rgb.shape}")
    out = []
    for color in colors:
        mask = color_mask(rgb, color)
        closed = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, np.ones((3, 3), np.uint8))
        ink = cv2.dilate(closed, np.ones((3, 3), np.uint8))  # tolerance for the sampled outline
        contours, _ = cv2.findContours(closed, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        for c in contours:
            x, y, w, h = cv2.boundingRect(c)
            if min(w, h) < min_size or max(w, h) / min(w, h) > max_aspect or w * h > max_frac * closed.size:
                continue
            hole, inner = _hole(mask, c)
            if hole < min_hole or inner < min_inner_ink:
                continue
            shape, cov = _classify(ink, c, round_ratio)
            if shape and cov >= min_cover:
                out.append(Seal([x, y, x + w, y + h], color, shape, round(cov, 3)))
    out = [s for s in out if not any(_inside(s.box, o.box) for o in out)]  # lettering inside a seal
    return sorted(out, key=lambda s: -(s.box[2] - s.box[0]) * (s.box[3] - s.box[1]))


def crop_seal(image: Image.Image, seal: Seal, pad: int = 2) -> Image.Image:
    """The seal's crop (with a little margin), the attachment image linked to the original."""
    x0, y0, x1, y1 = seal.box
    return image.crop((max(0, x0 - pad), max(0, y0 - pad), min(image.width, x1 + pad), min(image.height, y1 + pad)))
