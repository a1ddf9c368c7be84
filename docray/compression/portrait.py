"""Portraits: find, split off, and paste back after generation (DESIGN "Regen compression" 2 and 5).

    box = find_portrait(img, slot_hint=None)                 # Haar face cascade, else the slot hint
    portrait, rest, split = split_portrait(img, box, "background")   # or "blank"
    ...  processed = generate(rest) ...
    out = paste_portrait(processed, portrait, split, scale=processed.width / rest.width)

Split: the portrait crop is kept; its hole in the document is filled either with background
(`cv2.inpaint`, remembering the position) or with blank white (found again later by
`find_blank_region`). The split is the dict the repository records: `position` [x0, y0, x1, y1]
in the original, `fill`, and `scale` (the pixel ratio processed / document-without-portrait, set
when the portrait is pasted back).
Paste: "background" maps the position by the scale (`map_box`) and pastes the portrait resized to
the mapped box; "blank" pastes it resized into the blank region of the processed image.
"""
from __future__ import annotations

from functools import lru_cache

import cv2
import numpy as np
from PIL import Image

FILLS = ("background", "blank")
BLANK = 255  # the blank fill value (white)


@lru_cache(maxsize=1)
def _cascade() -> cv2.CascadeClassifier:
    path = cv2.data.haarcascades + "haarcascade_frontalface_default.xml"  # packaged with OpenCV
    c = cv2.CascadeClassifier(path)
    if c.empty():
        raise RuntimeError(f"could not load OpenCV's face cascade from {path}")
    return c


def detect_faces(image: Image.Image, min_size: int = 20) -> list[list[int]]:
    """Face boxes [x0, y0, x1, y1] from OpenCV's packaged frontal-face Haar cascade, largest first."""
    gray = cv2.equalizeHist(np.asarray(image.convert("L")))
    found = _cascade().detectMultiScale(gray, scaleFactor=1.1, minNeighbors=5, minSize=(min_size, min_size))
    boxes = [[int(x), int(y), int(x + w), int(y + h)] for x, y, w, h in found]
    return sorted(boxes, key=lambda b: -(b[2] - b[0]) * (b[3] - b[1]))


def face_to_portrait(face: list[int], w: int, h: int) -> list[int]:
    """A document portrait around a face box: head and shoulders (wider and taller than the face)."""
    x0, y0, x1, y1 = face
    fw, fh = x1 - x0, y1 - y0
    return clip([x0 - 0.35 * fw, y0 - 0.45 * fh, x1 + 0.35 * fw, y1 + 0.8 * fh], w, h)


def clip(box, w: int, h: int) -> list[int]:
    x0, y0, x1, y1 = (int(round(v)) for v in box)
    x0, y0 = min(max(0, x0), w), min(max(0, y0), h)
    return [x0, y0, max(x0, min(w, x1)), max(y0, min(h, y1))]


def find_portrait(image: Image.Image, slot_hint: list[int] | None = None) -> list[int] | None:
    """The portrait box: a photographed face (Haar cascade) first, else `slot_hint` (for synthetic
    documents, the template's portrait slot located in the image), else None."""
    faces = detect_faces(image)
    if faces:
        return face_to_portrait(faces[0], *image.size)
    if slot_hint:
        box = clip(slot_hint, *image.size)
        return box if box[2] > box[0] and box[3] > box[1] else None
    return None


def split_portrait(image: Image.Image, box: list[int], fill: str = "background"
                   ) -> tuple[Image.Image, Image.Image, dict]:
    """(portrait crop, document without the portrait, split record)."""
    if fill not in FILLS:
        raise ValueError(f"fill must be one of {FILLS}, got {fill!r}")
    x0, y0, x1, y1 = box = clip(box, *image.size)
    if x1 <= x0 or y1 <= y0:
        raise ValueError(f"empty portrait box {box} in a {image.size} image")
    rgb = np.array(image.convert("RGB"))
    portrait = Image.fromarray(rgb[y0:y1, x0:x1].copy())
    if fill == "blank":
        rgb[y0:y1, x0:x1] = BLANK
    else:
        mask = np.zeros(rgb.shape[:2], np.uint8)
        mask[y0:y1, x0:x1] = 255
        rgb = cv2.inpaint(rgb, mask, 5, cv2.INPAINT_TELEA)
    return portrait, Image.fromarray(rgb), {"position": box, "fill": fill, "scale": 1.0}


def map_box(box: list[int], scale: float | tuple[float, float]) -> list[int]:
    """A box scaled by the pixel ratio (one ratio, or (sx, sy))."""
    sx, sy = (scale, scale) if isinstance(scale, (int, float)) else scale
    return [int(round(box[0] * sx)), int(round(box[1] * sy)), int(round(box[2] * sx)), int(round(box[3] * sy))]


def find_blank_region(image: Image.Image, min_area: int = 64, tol: int = 8) -> list[int] | None:
    """The largest blank (near-white) rectangle-like region: its bounding box, or None."""
    rgb = np.asarray(image.convert("RGB")).astype(np.int16)
    blank = (np.abs(rgb - BLANK).max(axis=2) <= tol).astype(np.uint8)
    blank = cv2.morphologyEx(blank, cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))  # drop thin white glyph bits
    n, _, stats, _ = cv2.connectedComponentsWithStats(blank, connectivity=4)
    if n <= 1:
        return None
    k = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    x, y, w, h, area = stats[k]
    return [int(x), int(y), int(x + w), int(y + h)] if area >= min_area else None


def paste_portrait(processed: Image.Image, portrait: Image.Image, split: dict, scale: float | tuple) -> tuple[Image.Image, dict]:
    """Paste the portrait into the processed image; returns (image, split with scale and target box)."""
    out = processed.convert("RGB").copy()
    if split["fill"] == "blank":
        target = find_blank_region(out) or map_box(split["position"], scale)
    else:
        target = map_box(split["position"], scale)
    target = clip(target, *out.size)
    tw, th = target[2] - target[0], target[3] - target[1]
    if tw > 0 and th > 0:
        out.paste(portrait.resize((tw, th), Image.Resampling.LANCZOS), tuple(target[:2]))
    sc = scale if isinstance(scale, (int, float)) else [float(v) for v in scale]
    return out, {**split, "scale": sc, "pasted_at": target}
