"""Procedural faces: identity data for mask privacy, and the portraits printed on documents.

A face's geometry and colours (`FaceGeometry`) are a pure function of its identity number, the same
for every seed, so identity 17 on a document is identity 17 in the faces set. Each sample then
varies pose (rotation, shift, scale), light (direction, strength, brightness), expression (smile,
brows, open mouth), a per-sample colour jitter, background and sensor noise (`FacePose`).

Kind "faces", row i: identity = i % n_identities, sample = i // n_identities. Columns:
    id          str     "fac-<seed>-<i>"
    image       binary  PNG, size x size RGB
    identity    int32   0 .. n_identities-1
    sample      int32   sample number of that identity
    split       str     'train' | 'val' | 'test' by sample (sample % 10: 8 -> val, 9 -> test)
    angle       float32 in-plane rotation, degrees
    shift_x, shift_y float32  face-centre shift, fraction of the image size
    scale       float32 face scale factor
    light_angle float32 light direction, radians (0 = from the right)
    light       float32 strength of the directional light (0 = flat)
    brightness  float32 global brightness factor
    smile       float32 mouth curvature, -1 (frown) .. 1 (smile)
    noise       float32 sensor-noise std, in 0..255 units
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
from PIL import Image, ImageDraw

from docray.datasets import contracts
from docray.synth.common import png, split_of

KIND_NO = 2
N_HAIR_STYLES = 8
SKIN_TONES = ((255, 224, 196), (241, 194, 160), (224, 172, 120), (198, 134, 90), (141, 85, 54), (92, 58, 40))
HAIR_COLORS = ((20, 16, 14), (60, 40, 28), (110, 72, 40), (170, 130, 80), (225, 195, 120), (150, 60, 30), (130, 130, 130), (235, 235, 230))
IRIS_COLORS = ((60, 40, 25), (90, 60, 30), (60, 110, 160), (70, 120, 70), (110, 110, 120))

SCHEMA = contracts.FACES  # the dataset contract (docray.datasets.contracts), written exactly


@dataclass
class FacesConfig:
    size: int = 64  # output is size x size RGB
    n_identities: int = 256  # row i shows identity i % n_identities

    def check(self):
        if not (16 <= int(self.size) <= 1024):
            raise ValueError(f"faces: size must be in [16, 1024], got {self.size}")
        if int(self.n_identities) < 1:
            raise ValueError(f"faces: n_identities must be >= 1, got {self.n_identities}")


@dataclass(frozen=True)
class FaceGeometry:
    """Identity-level parameters; lengths are fractions of the face canvas side."""

    face_w: float  # half-width of the face
    face_h: float  # half-height of the face
    jaw: float  # superellipse exponent of the lower face: 2 round .. 4 square
    taper: float  # chin narrowing (heart shape)
    eye_dx: float  # half the distance between the eyes
    eye_y: float  # eye height relative to the face centre
    eye_w: float
    eye_h: float
    brow_gap: float  # brow height above the eyes
    brow_thick: float
    brow_tilt: float  # radians; positive raises the outer ends
    nose_len: float
    nose_w: float
    mouth_w: float
    mouth_y: float
    lip: float  # lip thickness
    ear: float  # ear size
    hair_style: int  # 0 short, 1 long, 2 bald, 3 fringe, 4 bun, 5 spiky, 6 side part, 7 curly
    hairline: float  # hairline height above the face centre
    skin: tuple
    hair: tuple
    iris: tuple
    lip_color: tuple
    glasses: bool
    beard: int  # 0 none, 1 moustache, 2 full beard
    mole: tuple  # (x, y) relative to the face centre, or () for none


@dataclass(frozen=True)
class FacePose:
    """Sample-level parameters."""

    angle: float = 0.0
    shift_x: float = 0.0
    shift_y: float = 0.0
    scale: float = 1.0
    light_angle: float = 0.0
    light: float = 0.0
    brightness: float = 1.0
    smile: float = 0.3
    brow_raise: float = 0.0
    mouth_open: float = 0.0
    noise: float = 0.0
    jitter: tuple = (0, 0, 0)  # per-sample colour shift of skin and hair
    background: tuple = (235, 238, 242)
    shirt: tuple = (60, 70, 90)


def _jitter_color(rng, base, amount):
    return tuple(int(np.clip(c + rng.normal(0, amount), 0, 255)) for c in base)


def face_geometry(identity: int) -> FaceGeometry:
    """The geometry of `identity`: deterministic, independent of any dataset seed."""
    r = np.random.default_rng([0xFACE, int(identity)])
    u = r.uniform
    return FaceGeometry(
        face_w=u(0.22, 0.30), face_h=u(0.29, 0.37), jaw=u(2.0, 4.2), taper=u(0.0, 0.35),
        eye_dx=u(0.085, 0.13), eye_y=u(-0.07, 0.0), eye_w=u(0.035, 0.06), eye_h=u(0.017, 0.032),
        brow_gap=u(0.045, 0.075), brow_thick=u(0.008, 0.026), brow_tilt=u(-0.3, 0.3),
        nose_len=u(0.06, 0.13), nose_w=u(0.025, 0.055), mouth_w=u(0.06, 0.12), mouth_y=u(0.14, 0.21),
        lip=u(0.008, 0.025), ear=u(0.035, 0.065),
        hair_style=int(r.integers(N_HAIR_STYLES)), hairline=u(0.12, 0.24),
        skin=_jitter_color(r, SKIN_TONES[int(r.integers(len(SKIN_TONES)))], 10),
        hair=_jitter_color(r, HAIR_COLORS[int(r.integers(len(HAIR_COLORS)))], 12),
        iris=_jitter_color(r, IRIS_COLORS[int(r.integers(len(IRIS_COLORS)))], 10),
        lip_color=_jitter_color(r, (170, 80, 80), 20),
        glasses=bool(r.random() < 0.2), beard=int(r.choice(3, p=[0.7, 0.15, 0.15])),
        mole=(u(-0.15, 0.15), u(-0.05, 0.2)) if r.random() < 0.3 else (),
    )


def sample_pose(rng: np.random.Generator, strength: float = 1.0) -> FacePose:
    """A random pose/light/expression; `strength` scales the geometric jitter (documents use less)."""
    s = strength
    return FacePose(
        angle=float(rng.uniform(-12, 12) * s), shift_x=float(rng.uniform(-0.06, 0.06) * s),
        shift_y=float(rng.uniform(-0.05, 0.05) * s), scale=float(1 + rng.uniform(-0.1, 0.1) * s),
        light_angle=float(rng.uniform(0, 2 * math.pi)), light=float(rng.uniform(0, 0.45)),
        brightness=float(rng.uniform(0.75, 1.2)), smile=float(rng.uniform(-0.6, 1.0)),
        brow_raise=float(rng.uniform(-0.01, 0.02)), mouth_open=float(rng.uniform(0, 1) ** 3),
        noise=float(rng.uniform(0, 8)), jitter=tuple(int(v) for v in rng.normal(0, 8, 3)),
        background=tuple(int(v) for v in rng.integers(40, 250, 3)),
        shirt=tuple(int(v) for v in rng.integers(20, 230, 3)),
    )


def _outline(cx, cy, g: FaceGeometry, u: float, n: int = 36):
    """Face outline: an ellipse on top, a superellipse (jaw) with taper below."""
    pts = []
    for k in range(n):
        t = 2 * math.pi * k / n
        c, s = math.cos(t), math.sin(t)
        e = 2.0 / (g.jaw if s > 0 else 2.2)
        x = math.copysign(abs(c) ** e, c) * g.face_w
        y = math.copysign(abs(s) ** e, s) * g.face_h
        if s > 0:
            x *= 1 - g.taper * s * s
        pts.append((cx + x * u, cy + y * u))
    return pts


def _shade(c, f):
    return tuple(int(np.clip(v * f, 0, 255)) for v in c)


def _add(c, d):
    return tuple(int(np.clip(a + b, 0, 255)) for a, b in zip(c, d))


def _draw_hair_top(d, cx, cy, g, u, hair):
    fw, fh, top = g.face_w * u, g.face_h * u, cy - g.face_h * u
    line = cy - g.hairline * u
    st = g.hair_style
    if st == 2:  # bald: side tufts only
        d.chord([cx - fw * 1.02, cy - fh * 0.5, cx - fw * 0.7, cy + fh * 0.1], 90, 270, fill=hair)
        d.chord([cx + fw * 0.7, cy - fh * 0.5, cx + fw * 1.02, cy + fh * 0.1], 270, 90, fill=hair)
        return
    d.chord([cx - fw * 1.08, top - fh * 0.12, cx + fw * 1.08, line + (line - top) + fh * 0.1], 180, 360, fill=hair)
    if st == 3:  # fringe to the brows (none when the brows sit above the hairline)
        brows = cy + (g.eye_y - g.brow_gap - 0.02) * u
        if brows >= line - 2:
            d.rectangle([cx - fw * 0.95, line - 2, cx + fw * 0.95, brows], fill=hair)
    elif st == 4:  # bun
        d.ellipse([cx - 0.09 * u, top - 0.2 * u, cx + 0.09 * u, top - 0.02 * u], fill=hair)
    elif st == 5:  # spikes
        for k in range(7):
            x = cx - fw + k * fw / 3
            d.polygon([(x - 0.05 * u, top + 0.04 * u), (x, top - 0.1 * u), (x + 0.05 * u, top + 0.04 * u)], fill=hair)
    elif st == 6:  # side part: a sweep over one side of the forehead
        d.polygon([(cx - fw, line), (cx + 0.05 * u, line - 0.02 * u), (cx - fw * 0.9, line + 0.1 * u)], fill=hair)
    elif st == 7:  # curls around the head
        for k in range(11):
            t = math.pi + math.pi * k / 10
            x, y = cx + math.cos(t) * fw * 1.05, cy - fh * 0.35 + math.sin(t) * fh * 0.85
            d.ellipse([x - 0.06 * u, y - 0.06 * u, x + 0.06 * u, y + 0.06 * u], fill=hair)


def _draw_features(d, cx, cy, g: FaceGeometry, p: FacePose, u: float, skin):
    dark = _shade(skin, 0.7)
    ey = cy + g.eye_y * u
    for side in (-1, 1):  # eyes and brows
        ex = cx + side * g.eye_dx * u
        ew, eh = g.eye_w * u, g.eye_h * u
        d.ellipse([ex - ew, ey - eh, ex + ew, ey + eh], fill=(245, 245, 240))
        r = eh * 0.95
        d.ellipse([ex - r, ey - r, ex + r, ey + r], fill=g.iris)
        d.ellipse([ex - r * 0.45, ey - r * 0.45, ex + r * 0.45, ey + r * 0.45], fill=(10, 10, 10))
        by = ey - (g.brow_gap + p.brow_raise) * u
        tilt = g.brow_tilt * ew
        d.line([(ex - side * ew * 1.1, by + tilt), (ex + side * ew * 1.2, by - tilt)], fill=g.hair, width=max(1, int(g.brow_thick * u)))
    ny = ey + g.nose_len * u  # nose: a shaded wedge
    d.polygon([(cx, ey + 0.02 * u), (cx - g.nose_w * u, ny), (cx + g.nose_w * u, ny)], fill=_shade(skin, 0.88))
    d.line([(cx - g.nose_w * u, ny), (cx + g.nose_w * u, ny)], fill=dark, width=max(1, int(0.012 * u)))
    my, mw = cy + g.mouth_y * u, g.mouth_w * u  # mouth: curvature from the smile
    if g.beard == 2:
        d.chord([cx - g.face_w * u * 0.85, my - 0.06 * u, cx + g.face_w * u * 0.85, cy + g.face_h * u * 1.02], 0, 180, fill=g.hair)
    if g.beard >= 1:
        d.rectangle([cx - mw * 1.05, my - 0.045 * u, cx + mw * 1.05, my - 0.015 * u], fill=g.hair)
    bend = p.smile * 0.04 * u
    lw = max(1, int(g.lip * u))
    if p.mouth_open > 0.3:
        d.ellipse([cx - mw * 0.7, my - 0.01 * u, cx + mw * 0.7, my + p.mouth_open * 0.06 * u], fill=(60, 20, 25))
    d.line([(cx - mw, my - bend), (cx - mw * 0.4, my + bend * 0.2), (cx + mw * 0.4, my + bend * 0.2), (cx + mw, my - bend)],
           fill=g.lip_color, width=lw, joint="curve")
    if g.mole:
        mx, myy, r = cx + g.mole[0] * u, cy + g.mole[1] * u, 0.012 * u
        d.ellipse([mx - r, myy - r, mx + r, myy + r], fill=(60, 40, 30))
    if g.glasses:
        r = g.eye_w * u * 1.5
        for side in (-1, 1):
            ex = cx + side * g.eye_dx * u
            d.rectangle([ex - r, ey - r * 0.75, ex + r, ey + r * 0.75], outline=(20, 20, 20), width=max(1, int(0.012 * u)))
        d.line([(cx - g.eye_dx * u + r, ey), (cx + g.eye_dx * u - r, ey)], fill=(20, 20, 20), width=max(1, int(0.01 * u)))


def _draw_head(side: int, g: FaceGeometry, p: FacePose) -> Image.Image:
    """The upright head and shoulders on a transparent (side x side) RGBA layer."""
    layer = Image.new("RGBA", (side, side), (0, 0, 0, 0))
    d = ImageDraw.Draw(layer)
    u = side * p.scale
    cx, cy = side * (0.5 + p.shift_x), side * (0.47 + p.shift_y)
    skin, hair = _add(g.skin, p.jitter), _add(g.hair, p.jitter)
    fw, fh = g.face_w * u, g.face_h * u
    if g.hair_style in (1, 7):  # long hair behind the head
        d.rounded_rectangle([cx - fw * 1.25, cy - fh * 1.1, cx + fw * 1.25, cy + fh * 1.35], radius=fw * 0.6, fill=hair)
    d.ellipse([cx - fw * 1.9, cy + fh * 1.15, cx + fw * 1.9, cy + fh * 2.6], fill=p.shirt)  # shoulders
    d.rectangle([cx - fw * 0.45, cy + fh * 0.5, cx + fw * 0.45, cy + fh * 1.3], fill=_shade(skin, 0.85))  # neck
    ey, er = cy + g.eye_y * u, g.ear * u
    for side_ in (-1, 1):
        ex = cx + side_ * fw * 0.98
        d.ellipse([ex - er * 0.6, ey - er * 0.3, ex + er * 0.6, ey + er * 1.6], fill=_shade(skin, 0.92))
    d.polygon(_outline(cx, cy, g, u), fill=skin)
    _draw_hair_top(d, cx, cy, g, u, hair)
    _draw_features(d, cx, cy, dataclasses.replace(g, hair=hair), p, u, skin)
    if p.angle:
        layer = layer.rotate(p.angle, resample=Image.Resampling.BILINEAR, center=(cx, cy))
    return layer


def _light(arr: np.ndarray, p: FacePose, rng: np.random.Generator | None) -> np.ndarray:
    """Directional light ramp, brightness and sensor noise on a uint8 (h, w, 3) array."""
    h, w = arr.shape[:2]
    ys, xs = np.linspace(-0.5, 0.5, h, dtype=np.float32)[:, None], np.linspace(-0.5, 0.5, w, dtype=np.float32)[None, :]
    gain = p.brightness * (1 + p.light * (xs * math.cos(p.light_angle) + ys * math.sin(p.light_angle)) * 2)
    out = arr.astype(np.float32) * gain[..., None]
    if rng is not None and p.noise > 0:
        out += rng.standard_normal(out.shape, dtype=np.float32) * p.noise
    return np.clip(out, 0, 255).astype(np.uint8)


def render_face(g: FaceGeometry, p: FacePose, size=(64, 64), rng: np.random.Generator | None = None) -> Image.Image:
    """An RGB face of `size` (w, h): drawn at 2x on a square canvas, downsampled, lit, noised."""
    w, h = size
    side = 2 * max(w, h)
    img = _compose(side, g, p).reduce(2)
    if (w, h) != img.size:
        left, top = (img.width - w) // 2, (img.height - h) // 2
        img = img.crop((left, top, left + w, top + h))
    return Image.fromarray(_light(np.asarray(img), p, rng))


def _compose(side: int, g: FaceGeometry, p: FacePose) -> Image.Image:
    """The head over a vertical background gradient."""
    top, bot = np.array(p.background, np.float32), np.array(p.background, np.float32) * 0.8
    t = np.linspace(0, 1, side, dtype=np.float32)[:, None, None]
    grad = np.broadcast_to(top + (bot - top) * t, (side, side, 3)).astype(np.uint8)
    bg = Image.fromarray(grad)
    head = _draw_head(side, g, p)
    bg.paste(head, (0, 0), head)
    return bg


def make_row(i: int, rng: np.random.Generator, seed: int, cfg: FacesConfig) -> dict:
    """Row i of the faces set."""
    identity, sample = i % cfg.n_identities, i // cfg.n_identities
    p = sample_pose(rng)
    img = render_face(face_geometry(identity), p, (cfg.size, cfg.size), rng)
    return {
        "id": f"fac-{seed}-{i:07d}", "image": png(img), "identity": identity, "sample": sample,
        "split": split_of(sample), "angle": p.angle, "shift_x": p.shift_x, "shift_y": p.shift_y,
        "scale": p.scale, "light_angle": p.light_angle, "light": p.light, "brightness": p.brightness,
        "smile": p.smile, "noise": p.noise,
    }
