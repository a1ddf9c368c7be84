"""Where a document's field values sit, and their line crops: what the content model reads.

The content model reads a document field by field (a whole capture squeezed into one ViT input
leaves 4-pixel glyphs, which no small model reads): its corner head finds the document's four
corners in the capture; each field's value box, known from the type's template in document
coordinates, is mapped through the homography those corners give and warped straight out of the
capture into one fixed-height line image, which the VisionEncoderDecoderModel reads.

    boxes = value_boxes("identity_card")                   # [(x0, y0, x1, y1)] in CANON document px
    lines = crop_lines(capture_rgb, quad, "identity_card", (32, 384))   # (n_fields, 32, 384, 3) uint8

A quad is the document's corners in image px, (4, 2) or 8 floats: top-left, top-right,
bottom-right, bottom-left (as the synthetic world's `doc_quad`).
"""
from __future__ import annotations

from functools import lru_cache

import cv2
import numpy as np

from docray.regen import layout
from docray.doctypes import DocType, doc_rect, homography, registry

CANON = (384, 240)  # (w, h): the frame whose document defines document px for the boxes


def _boxes(doc_type) -> tuple[tuple[tuple[float, float, float, float], ...], tuple[int, int]]:
    """(each field's value box, the document's (w, h)) in CANON document px."""
    return _type_boxes(registry()[layout.type_index(doc_type)])


@lru_cache(maxsize=16)
def _type_boxes(t: DocType) -> tuple[tuple[tuple[float, float, float, float], ...], tuple[int, int]]:
    ox, oy, dw, dh = doc_rect(CANON, t.aspect)
    slots = layout.value_slots(t.name, CANON)
    boxes = []
    for k, (spec, (x, y, fs, right)) in enumerate(zip(t.fields, slots)):
        # a value ends at its `right`, or where the next caption on its row starts ("Sex F  Nat. CHN")
        row = [o.x * dw + ox for j, o in enumerate(t.fields) if j != k and abs(o.y - spec.y) < 0.02 and o.x > spec.x]
        if t.portrait is not None:  # nor into the portrait beside it
            px, py, _, ph = t.portrait.box()
            if px * dw + ox > x and py * dh + oy < y + 1.45 * fs and (py + ph) * dh + oy > y:
                row.append(px * dw + ox)
        right = min([right, *(r - 0.3 * fs for r in row)])
        top = 0.0 if t.stacked else 0.25 * fs  # a stacked caption ends just above its value
        boxes.append((x - ox - 0.3 * fs, y - oy - top, right - ox + 0.2 * fs, y - oy + 1.45 * fs))
    return tuple(boxes), (dw, dh)


def value_boxes(doc_type) -> list[tuple[float, float, float, float]]:
    """Each field's value box in document px of the CANON frame's document (template order)."""
    return list(_boxes(doc_type)[0])


def doc_to_image(quad, doc_type) -> np.ndarray:
    """3x3 H mapping CANON document px to image px, from the document's corners in the image."""
    dw, dh = _boxes(doc_type)[1]
    return homography([(0, 0), (dw, 0), (dw, dh), (0, dh)], np.reshape(np.asarray(quad, np.float64), (4, 2)))


def crop_lines(img: np.ndarray, quad, doc_type, line_hw: tuple[int, int]) -> np.ndarray:
    """(n_fields, h, w, 3) uint8: each value box warped out of `img` (h, w, 3) to height h, its
    aspect kept (squeezed only when longer than w), right-padded with black."""
    h, w = line_hw
    H, boxes = doc_to_image(quad, doc_type), value_boxes(doc_type)
    out = np.zeros((len(boxes), h, w, 3), np.uint8)
    for k, box in enumerate(boxes):
        line = _warp_box(img, H, box, h, w, cv2.INTER_LINEAR)
        out[k, :, :line.shape[1]] = line
    return out


def crop_values(img: np.ndarray, quad, doc_type, height: int, which=None) -> list[np.ndarray]:
    """Each value box (of the fields `which`, indices in template order; None: all) warped out of
    `img` to `height` px at its own aspect (h, w_k, channels), for a reader with inputs of any width
    (`docray.regen.crossread`)."""
    H, boxes = doc_to_image(quad, doc_type), value_boxes(doc_type)
    which = range(len(boxes)) if which is None else which
    return [_warp_box(img, H, boxes[k], height, None, cv2.INTER_CUBIC) for k in which]


def _warp_box(img: np.ndarray, H: np.ndarray, box, h: int, w: int | None, interpolation: int) -> np.ndarray:
    """The document-px `box` of `img` (H: document px -> image px) as a straight line h px high, at
    most `w` wide (None: its own aspect)."""
    x0, y0, x1, y1 = box
    s = (y1 - y0) / h  # document px per line px
    cw = max(1, round((x1 - x0) / s))
    cw = int(min(w, cw)) if w else int(cw)
    A = np.array([[(x1 - x0) / cw, 0, x0], [0, s, y0], [0, 0, 1]], np.float64)  # line px -> document px
    return cv2.warpPerspective(img, H @ A, (cw, h), flags=interpolation | cv2.WARP_INVERSE_MAP,
                               borderMode=cv2.BORDER_REPLICATE)


def frame_quad(doc_type, size: tuple[int, int]) -> np.ndarray:
    """The corners of a flat document laid out in a frame of `size` (w, h), as a processed image is."""
    x0, y0, x1, y1 = layout.doc_box(doc_type, size)
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], np.float64)


def frame_boxes(doc_type, size: tuple[int, int]) -> list[list[int]]:
    """Each field's value box in a flat frame of `size` (w, h) (a processed image), in px [x0, y0, x1, y1]."""
    H = doc_to_image(frame_quad(doc_type, size), doc_type)
    out = []
    for x0, y0, x1, y1 in value_boxes(doc_type):
        pts = cv2.perspectiveTransform(np.array([[[x0, y0], [x1, y1]]], np.float64), H)[0]
        out.append([int(np.floor(pts[0, 0])), int(np.floor(pts[0, 1])), int(np.ceil(pts[1, 0])), int(np.ceil(pts[1, 1]))])
    return out


def frame_to_image(quad, doc_type, size: tuple[int, int]) -> np.ndarray:
    """3x3 H mapping px of a flat frame of `size` (w, h) (where a processed image has its document)
    to px of the capture whose document has the corners `quad`."""
    return doc_to_image(quad, doc_type) @ np.linalg.inv(doc_to_image(frame_quad(doc_type, size), doc_type))


def map_points(H: np.ndarray, pts) -> np.ndarray:
    """(n, 2) points mapped through the homography H."""
    return cv2.perspectiveTransform(np.asarray(pts, np.float64).reshape(-1, 1, 2), H).reshape(-1, 2)


def box_corners(box) -> np.ndarray:
    """(4, 2) corners of a box [x0, y0, x1, y1]: tl, tr, br, bl."""
    x0, y0, x1, y1 = box
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], np.float64)


def bounding_box(pts) -> list[int]:
    """The integer box [x0, y0, x1, y1] around points (n, 2), outward-rounded."""
    p = np.asarray(pts, np.float64)
    return [int(np.floor(p[:, 0].min())), int(np.floor(p[:, 1].min())), int(np.ceil(p[:, 0].max())),
            int(np.ceil(p[:, 1].max()))]


def original_in_frame(img: np.ndarray, quad, doc_type, size: tuple[int, int]) -> np.ndarray:
    """The capture `img` (h, w, 3) warped through its document's corners `quad` onto a flat frame of
    `size` (w, h), the document where a processed image of that size has it: (size[1], size[0], 3)."""
    to_frame = doc_to_image(frame_quad(doc_type, size), doc_type)
    to_img = doc_to_image(quad, doc_type)
    return cv2.warpPerspective(img, to_img @ np.linalg.inv(to_frame), tuple(size),
                               flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REPLICATE)
