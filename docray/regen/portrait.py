"""Portraits: find, split off, and paste back after generation (DESIGN "Regen compression" 2 and 5).

    where = locate_portrait(img, quad, doc_type)     # the slot through the document's corners (or a face)
    portrait, rest, split = split_portrait(img, where["box"], "background", where["polygon"])  # or "blank"
    ...  processed = generate(type, content) ...
    flat = fields.original_in_frame(capture, quad, doc_type, processed.size)   # the capture straightened
    out, split = paste_through_corners(processed, flat, split, slot_in_frame, scale)

Locate: with the document's corners (the content model's corner head), the type's portrait slot is
mapped from the template into the capture: on a skewed photo it is a quadrilateral, not the
template's box laid on the unstraightened picture. A type without a slot falls back to a
photographed face (OpenCV's Haar cascade). `find_portrait` (a face, else a slot hint) and
`paste_portrait` (a box scaled by the pixel ratio) remain for a flat capture without corners.

Split: the portrait crop is kept; its hole in the document is filled either with background
(`cv2.inpaint`, remembering the position) or with blank white (found again later by
`find_blank_region`). The split is the dict the repository records: `position` [x0, y0, x1, y1]
in the original, `fill`, and `scale` (the pixel ratio processed / document-without-portrait, set
when the portrait is pasted back).
Paste through the corners: the portrait is cut from the capture straightened onto the processed
image's frame, so it lands in the slot the processed image has; "blank" pastes it into the blank
region of the processed image instead (when one is found). Paste by scale (`paste_portrait`):
"background" maps the position by the scale (`map_box`), "blank" uses the blank region.
"""
from __future__ import annotations

from functools import lru_cache

import cv2
import numpy as np
from PIL import Image

from docray.regen import fields, layout

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


def locate_portrait(image: Image.Image, quad, doc_type: str) -> dict | None:
    """Where the portrait is in a capture whose document has the corners `quad` (4, 2): the type's
    slot mapped through the corners ({"box", "polygon": its 4 corners, "found_by": "slot"}); for a type
    without a slot (or a slot the corners put outside the picture), a photographed face ("face",
    polygon None); else None. `box` is the axis-aligned box around it, clipped to the picture."""
    slot = layout.slot_box(doc_type, fields.CANON)
    if slot is not None:
        poly = fields.map_points(fields.frame_to_image(quad, doc_type, fields.CANON), fields.box_corners(slot))
        box = clip(fields.bounding_box(poly), *image.size)
        if box[2] - box[0] >= 2 and box[3] - box[1] >= 2:
            return {"box": box, "polygon": np.round(poly, 2).tolist(), "found_by": "slot"}
    faces = detect_faces(image)
    if faces:
        return {"box": face_to_portrait(faces[0], *image.size), "polygon": None, "found_by": "face"}
    return None


def split_portrait(image: Image.Image, box: list[int], fill: str = "background", polygon=None
                   ) -> tuple[Image.Image, Image.Image, dict]:
    """(portrait crop, document without the portrait, split record). `polygon`: the portrait's four
    corners in the image (a skewed slot): only they are filled (the box around them may hold text)."""
    if fill not in FILLS:
        raise ValueError(f"fill must be one of {FILLS}, got {fill!r}")
    x0, y0, x1, y1 = box = clip(box, *image.size)
    if x1 <= x0 or y1 <= y0:
        raise ValueError(f"empty portrait box {box} in a {image.size} image")
    rgb = np.array(image.convert("RGB"))
    portrait = Image.fromarray(rgb[y0:y1, x0:x1].copy())
    mask = np.zeros(rgb.shape[:2], np.uint8)
    if polygon is None:
        mask[y0:y1, x0:x1] = 255
    else:
        cv2.fillPoly(mask, [np.round(np.asarray(polygon, np.float64)).astype(np.int32).reshape(-1, 1, 2)], 255)
        mask = cv2.dilate(mask, np.ones((3, 3), np.uint8))  # the slot's edge pixels too
    if fill == "blank":
        rgb[mask > 0] = BLANK
    else:
        rgb = cv2.inpaint(rgb, mask, 5, cv2.INPAINT_TELEA)
    split = {"position": box, "fill": fill, "scale": 1.0}
    if polygon is not None:
        split["polygon"] = [[float(x), float(y)] for x, y in np.asarray(polygon, np.float64).reshape(4, 2)]
    return portrait, Image.fromarray(rgb), split


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


def paste_through_corners(processed: Image.Image, flat: np.ndarray, split: dict, frame_box: list[int],
                          scale: float) -> tuple[Image.Image, dict]:
    """Paste the portrait straightened: `flat` (h, w, 3) is the capture warped through its document's
    corners onto the processed image's frame (`fields.original_in_frame`), `frame_box` the portrait's
    place there (the type's slot in the frame); with the blank fill, the processed image's blank region
    (when found) receives it. Returns (image, split with `scale` (processed document px per captured
    document px), `pasted_at` and `through`: "corners")."""
    out = processed.convert("RGB").copy()
    src = clip(frame_box, *out.size)
    target = clip((find_blank_region(out) if split["fill"] == "blank" else None) or src, *out.size)
    tw, th = target[2] - target[0], target[3] - target[1]
    if src[2] <= src[0] or src[3] <= src[1] or tw <= 0 or th <= 0:
        return out, {**split, "scale": float(scale), "pasted_at": None, "through": "corners"}
    crop = Image.fromarray(np.ascontiguousarray(flat[src[1]:src[3], src[0]:src[2]]))
    out.paste(crop if crop.size == (tw, th) else crop.resize((tw, th), Image.Resampling.LANCZOS), tuple(target[:2]))
    return out, {**split, "scale": float(scale), "pasted_at": target, "through": "corners"}
