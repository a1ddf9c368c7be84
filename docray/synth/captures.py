"""Camera captures of a flat document: perspective, glare/flash, screen recapture, blur, noise, JPEG.

Coordinates are continuous with pixel centres at +0.5 (PIL's convention): a box [x0, y0, x1, y1]
covers pixels x0 <= x < x1. Homographies map continuous points; `_cv_matrix` converts them to
OpenCV's integer-centre convention for `cv2.warpPerspective`.

The capture-quality label is a product of per-degradation factors in (0, 1] (`Capture.quality`),
computed from the strengths that really were applied to the pixels:
    quality = (1 - .55 blur/2.5) (1 - .45 noise/20) (1 - .35 (95 - jpeg)/70) (1 - .35 glare) (1 - .25 moire/.15)
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import lru_cache

import cv2
import numpy as np

from docray.doctypes.geometry import homography
from docray.imageio import decode_array, encode_jpeg

MAX_BLUR, MAX_NOISE, JPEG_RANGE, MAX_MOIRE = 2.5, 20.0, (25, 95), 0.15


@dataclass(frozen=True)
class Capture:
    """One exposure of the document: where it lands, and how the camera degrades it."""

    quad: tuple  # document corners in image px, (tl, tr, br, bl) as 8 floats
    blur: float = 0.0  # Gaussian sigma, px
    noise: float = 0.0  # sensor noise std, 0..255 units
    jpeg: int = 95  # JPEG quality
    glare: float = 0.0  # ambient specular strength, 0..1
    glare_xy: tuple = (0.5, 0.5)  # glare centre, fraction of the image
    moire: float = 0.0  # screen-recapture moire amplitude (0 = paper)
    moire_freq: tuple = (0.3, 0.05)  # carrier and beat frequencies, cycles/px
    moire_angle: float = 0.0
    gamma: float = 1.0  # screen gamma (recapture)
    cast: tuple = (1.0, 1.0, 1.0)  # screen white balance (recapture)
    flash: bool = False
    flash_xy: tuple = (0.5, 0.45)  # flash hotspot centre, fraction of the image

    @property
    def quality(self) -> float:
        j = (JPEG_RANGE[1] - self.jpeg) / (JPEG_RANGE[1] - JPEG_RANGE[0])
        q = (1 - 0.55 * self.blur / MAX_BLUR) * (1 - 0.45 * self.noise / MAX_NOISE) * (1 - 0.35 * j)
        return float(q * (1 - 0.35 * self.glare) * (1 - 0.25 * self.moire / MAX_MOIRE))


def sample_quad(rng: np.random.Generator, doc_wh, size, persp: float) -> tuple:
    """Corners of the document in an image of `size`: scaled, shifted, rotated, corners jittered."""
    (dw, dh), (w, h) = doc_wh, size
    s = min((w - 4) / dw, (h - 4) / dh) * rng.uniform(0.80, 0.95)
    cx = w / 2 + rng.uniform(-0.5, 0.5) * (w - dw * s) * 0.8
    cy = h / 2 + rng.uniform(-0.5, 0.5) * (h - dh * s) * 0.8
    a = math.radians(rng.uniform(-3, 3) * persp)
    corners = np.array([[-dw, -dh], [dw, -dh], [dw, dh], [-dw, dh]], np.float64) * s / 2
    rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    q = corners @ rot.T + (cx, cy) + rng.uniform(-1, 1, (4, 2)) * persp * 0.05 * min(w, h)
    q[:, 0], q[:, 1] = q[:, 0].clip(1, w - 1), q[:, 1].clip(1, h - 1)
    return tuple(float(v) for v in q.ravel())


def sample_capture(rng: np.random.Generator, doc_wh, size, level: float, recapture: bool, persp: float = 1.0) -> Capture:
    """A capture whose degradations are all driven by `level` in [0, 1] (0 = pristine), plus jitter."""
    def s():
        return float(np.clip(level + rng.normal(0, 0.2), 0, 1))

    cap = Capture(
        quad=sample_quad(rng, doc_wh, size, persp),
        blur=MAX_BLUR * s() ** 1.3, noise=MAX_NOISE * s() ** 1.3,
        jpeg=int(round(JPEG_RANGE[1] - (JPEG_RANGE[1] - JPEG_RANGE[0]) * s())),
        glare=s() if rng.random() < 0.6 else 0.0, glare_xy=tuple(rng.uniform(0.15, 0.85, 2)),
        flash_xy=(float(rng.uniform(0.35, 0.65)), float(rng.uniform(0.3, 0.6))),
    )
    if recapture:
        cap = replace(
            cap, moire=float(rng.uniform(0.04, MAX_MOIRE)),
            moire_freq=(float(rng.uniform(0.2, 0.45)), float(rng.uniform(0.015, 0.06))),
            moire_angle=float(rng.uniform(0, math.pi)), gamma=float(rng.uniform(0.75, 1.3)),
            cast=tuple(float(v) for v in rng.uniform(0.88, 1.08, 3)),
        )
    return cap


def map_points(H: np.ndarray, pts) -> np.ndarray:
    """Apply H to (n, 2) points."""
    p = np.c_[np.asarray(pts, np.float64), np.ones(len(pts))] @ H.T
    return p[:, :2] / p[:, 2:]


def map_box(H: np.ndarray, box) -> tuple:
    """Bounding box (floats) of a box's four corners under H."""
    x0, y0, x1, y1 = box
    p = map_points(H, [(x0, y0), (x1, y0), (x1, y1), (x0, y1)])
    return p[:, 0].min(), p[:, 1].min(), p[:, 0].max(), p[:, 1].max()


def _cv_matrix(H_dst_to_src: np.ndarray) -> np.ndarray:
    """Continuous-coordinate H (dst -> src) as OpenCV's inverse map (integer pixel centres)."""
    t_in, t_out = np.eye(3), np.eye(3)
    t_in[:2, 2], t_out[:2, 2] = 0.5, -0.5
    return t_out @ H_dst_to_src @ t_in


def doc_homography(cap: Capture, doc_wh) -> np.ndarray:
    """H mapping document px (continuous) to image px."""
    dw, dh = doc_wh
    return homography([(0, 0), (dw, 0), (dw, dh), (0, dh)], np.reshape(cap.quad, (4, 2)))


@lru_cache(maxsize=32)
def _ones(h: int, w: int) -> np.ndarray:
    return np.ones((h, w), np.float32)


def warp_document(doc: np.ndarray, table: np.ndarray, H: np.ndarray) -> np.ndarray:
    """The document (h, w, 3) uint8 warped by H onto `table` (uint8), with antialiased edges."""
    h, w = table.shape[:2]
    M, flags = _cv_matrix(np.linalg.inv(H)), cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    rgb = cv2.warpPerspective(doc, M, (w, h), flags=flags, borderMode=cv2.BORDER_REPLICATE)
    a = cv2.warpPerspective(_ones(*doc.shape[:2]), M, (w, h), flags=flags, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return cv2.blendLinear(rgb, table, a, 1 - a)


def warp_labels(seg: np.ndarray, H: np.ndarray, size) -> np.ndarray:
    """A uint8 label map warped by H with nearest-neighbour sampling; 0 outside."""
    M = _cv_matrix(np.linalg.inv(H))
    return cv2.warpPerspective(seg, M, tuple(size), flags=cv2.INTER_NEAREST | cv2.WARP_INVERSE_MAP,
                               borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def _blob(h: int, w: int, xy, sx: float, sy: float) -> np.ndarray:
    """A separable Gaussian blob (h, w) peaking at 1 at xy (fractions of the image)."""
    ys = np.exp(-0.5 * ((np.arange(h, dtype=np.float32) + 0.5 - xy[1] * h) / sy) ** 2)
    xs = np.exp(-0.5 * ((np.arange(w, dtype=np.float32) + 0.5 - xy[0] * w) / sx) ** 2)
    return ys[:, None] * xs[None, :]


def _moire(h: int, w: int, cap: Capture) -> np.ndarray:
    """Coloured moire bands: an aliased screen-grid carrier beating against a slow wave, (h, w, 3)."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    c, s = math.cos(cap.moire_angle), math.sin(cap.moire_angle)
    u, v = x * c + y * s, -x * s + y * c
    phase = 2 * math.pi * (cap.moire_freq[1] * u + 0.6 * np.sin(2 * math.pi * cap.moire_freq[1] * 0.7 * v))
    shifts = np.array([0, 2.1, 4.2], np.float32)  # RGB sub-pixels out of phase: coloured bands
    bands = np.cos(phase[..., None] + shifts) * np.cos(2 * math.pi * cap.moire_freq[0] * v)[..., None] ** 2
    return 1 + cap.moire * bands


def _light(img: np.ndarray, cap: Capture, recapture: bool) -> np.ndarray:
    """Glare (ambient specular) and flash on a float32 (h, w, 3) image."""
    h, w = img.shape[:2]
    if cap.glare > 0:
        img = img + (230 * cap.glare) * _blob(h, w, cap.glare_xy, 0.16 * w, 0.09 * h)[..., None]
    if cap.flash:
        xy, m = cap.flash_xy, min(h, w)
        if recapture:  # glass: content is emissive (not lit), a hard bright disc with a halo
            r = np.hypot(*np.meshgrid((np.arange(w) + 0.5 - xy[0] * w), (np.arange(h) + 0.5 - xy[1] * h)))
            disc = np.clip((0.07 * m - r) / 1.5, 0, 1).astype(np.float32)
            halo = 0.25 * _blob(h, w, xy, 0.12 * m, 0.12 * m)
            a = np.maximum(disc, halo)[..., None]
            img = img * (1 - a) + 255 * a + 8
        else:  # paper: broad fall-off of the flash light and a soft specular hotspot
            gain = 0.8 + 0.45 * _blob(h, w, xy, 0.45 * w, 0.45 * h)
            img = img * gain[..., None] + 200 * _blob(h, w, xy, 0.07 * m, 0.07 * m)[..., None]
    return img


@lru_cache(maxsize=1)
def _noise_bank(n: int = 640) -> np.ndarray:
    """A fixed bank of unit Gaussian noise; rows crop it at random offsets (fast, deterministic)."""
    return np.random.default_rng(0x0015E).standard_normal((n, n, 3), dtype=np.float32)


def _noise(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    bank = _noise_bank()
    if h > bank.shape[0] or w > bank.shape[1]:
        return rng.standard_normal((h, w, 3), dtype=np.float32)
    y, x = rng.integers(0, bank.shape[0] - h + 1), rng.integers(0, bank.shape[1] - w + 1)
    return bank[y:y + h, x:x + w]


def degrade(base: np.ndarray, cap: Capture, rng: np.random.Generator, recapture: bool = False) -> np.ndarray:
    """Light, screen, blur, noise and JPEG applied to a warped frame `base` (uint8) -> uint8."""
    img = base.astype(np.float32)
    if cap.glare > 0 or cap.flash:
        img = _light(img, cap, recapture)
    if recapture:
        img = 255 * (np.clip(img, 0, 255) / 255) ** cap.gamma * np.float32(cap.cast)
        img *= _moire(img.shape[0], img.shape[1], cap)
    if cap.blur > 0.3:
        img = cv2.GaussianBlur(img, (0, 0), cap.blur)
    if cap.noise > 0:
        img += cap.noise * _noise(rng, img.shape[0], img.shape[1])
    img = np.clip(img, 0, 255, out=img).astype(np.uint8)
    if cap.jpeg < 95:
        img = decode_array(encode_jpeg(img, cap.jpeg))
    return img


def render_capture(doc: np.ndarray, table: np.ndarray, cap: Capture, rng: np.random.Generator,
                   recapture: bool = False) -> np.ndarray:
    """The captured image (h, w, 3) uint8 of a flat document `doc` lying on `table`."""
    H = doc_homography(cap, (doc.shape[1], doc.shape[0]))
    return degrade(warp_document(doc, table, H), cap, rng, recapture)


@lru_cache(maxsize=64)
def table_texture(variant: int, w: int, h: int) -> np.ndarray:
    """The surface under the document: wood, desk, cloth, paper or cutting mat. Cached, read-only."""
    r = np.random.default_rng([0x7AB1E, variant])
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    fine = np.asarray(cv2.GaussianBlur(r.normal(0, 1, (h, w)).astype(np.float32), (0, 0), 1.2))
    kind = variant % 5
    if kind == 0:  # wood grain
        base, v = np.float32([150, 100, 60]), np.sin(y * 0.25 + 4 * np.sin(x * 0.01 + r.uniform(0, 6))) * 18
    elif kind == 1:  # grey desk with a light fall-off
        base, v = np.float32([120, 122, 128]), (x / w - 0.5) * 40
    elif kind == 2:  # dark cloth
        base, v = np.float32([45, 50, 62]), fine * 10
    elif kind == 3:  # white paper / light desk
        base, v = np.float32([225, 222, 215]), (y / h - 0.5) * 25
    else:  # green cutting mat with a grid
        base, v = np.float32([40, 110, 80]), (((x % 16) < 1) | ((y % 16) < 1)) * 45.0
    img = base * r.uniform(0.85, 1.15, 3).astype(np.float32) + (v + fine * 4)[..., None]
    out = np.clip(img, 0, 255).astype(np.uint8)
    out.flags.writeable = False
    return out
