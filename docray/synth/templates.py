"""Document templates: six types, each a small table of layout, background, portrait slot and seal.

Positions are fractions of the document's own width/height. A template's static layer (background
pattern, title, field labels) is rendered once per (type, variant, size) and cached; only the field
values, portrait and seal are drawn per row.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw

from docray.synth.common import font

N_VARIANTS = 4  # background colour/phase variants per type


@dataclass(frozen=True)
class FieldSpec:
    name: str
    label: str  # printed caption ('' for none)
    x: float  # caption (or value) left, fraction of the document width
    y: float  # caption top, fraction of the document height
    gen: str  # value generator in docray.synth.text.GENERATORS
    style: str = "sans"
    fs: float = 0.068  # value font size, fraction of the document height
    right: float = 0.95  # the value never runs past this x


@dataclass(frozen=True)
class SealSpec:
    shapes: tuple[str, ...]
    colors: tuple[str, ...]
    x: float  # centre
    y: float
    h: float  # height, fraction of the document height
    p: float = 1.0  # probability that the document carries the seal


@dataclass(frozen=True)
class DocTemplate:
    name: str
    aspect: float  # width / height of the document
    colors: tuple  # background gradient (c1, c2) and pattern ink (c3)
    patterns: tuple[str, ...]  # any of: guilloche, rosette, dots, waves, frame
    title: str
    title_color: tuple
    fields: tuple[FieldSpec, ...]
    portrait: tuple | None  # (x, y, w, h) or None
    seal: SealSpec
    stacked: bool = False  # captions above values (passport style) instead of before them
    value_color: tuple = (25, 25, 30)
    title_x: float = 0.05


F = FieldSpec
TEMPLATES: tuple[DocTemplate, ...] = (
    DocTemplate(
        "identity_card", 1.585, ((228, 236, 248), (246, 232, 236), (150, 170, 215)), ("guilloche", "rosette"),
        "IDENTITY CARD", (30, 60, 140),
        (F("name", "Name", 0.05, 0.24, "name", right=0.63), F("sex", "Sex", 0.05, 0.36, "sex"),
         F("nationality", "Nat.", 0.30, 0.36, "nationality"), F("birth_date", "Born", 0.05, 0.48, "birth_date", right=0.63),
         F("address", "Address", 0.05, 0.60, "short_address", right=0.63),
         F("id_number", "ID No.", 0.05, 0.83, "id_number", style="mono-bold", fs=0.075)),
        (0.66, 0.18, 0.29, 0.56), SealSpec(("circle",), ("red",), 0.86, 0.80, 0.30, p=0.5),
    ),
    DocTemplate(
        "passport_page", 1.42, ((222, 240, 232), (240, 238, 222), (120, 180, 160)), ("waves", "guilloche"),
        "PASSPORT", (20, 90, 80),
        (F("surname", "Surname", 0.35, 0.15, "surname"), F("passport_no", "Passport No.", 0.68, 0.15, "doc_number"),
         F("given_names", "Given names", 0.35, 0.29, "given"), F("nationality", "Nationality", 0.35, 0.43, "nationality"),
         F("birth_date", "Date of birth", 0.62, 0.43, "birth_date"), F("sex", "Sex", 0.35, 0.57, "sex"),
         F("expiry_date", "Date of expiry", 0.62, 0.57, "expiry_date"),
         F("mrz1", "", 0.04, 0.77, "mrz", style="mono", fs=0.072), F("mrz2", "", 0.04, 0.87, "mrz_numbers", style="mono", fs=0.072)),
        (0.04, 0.17, 0.26, 0.52), SealSpec(("circle", "ellipse"), ("red", "blue"), 0.29, 0.62, 0.24, p=0.8), stacked=True,
    ),
    DocTemplate(
        "driving_licence", 1.46, ((246, 228, 232), (226, 244, 232), (200, 150, 170)), ("dots", "frame"),
        "DRIVING LICENCE", (150, 30, 60),
        (F("licence_no", "No.", 0.36, 0.19, "doc_number", style="mono-bold"), F("name", "Name", 0.36, 0.30, "name"),
         F("sex", "Sex", 0.36, 0.41, "sex"), F("nationality", "Nat.", 0.60, 0.41, "nationality"),
         F("address", "Addr.", 0.36, 0.52, "short_address"), F("birth_date", "Born", 0.36, 0.63, "birth_date"),
         F("issue_date", "Issued", 0.36, 0.74, "issue_date"), F("class", "Class", 0.36, 0.85, "licence_class"),
         F("valid_until", "Valid", 0.58, 0.85, "expiry_date")),
        (0.05, 0.20, 0.26, 0.54), SealSpec(("square", "rectangle"), ("red", "blue"), 0.18, 0.86, 0.20, p=0.9),
    ),
    DocTemplate(
        "residence_permit", 1.585, ((244, 238, 220), (226, 232, 246), (190, 170, 130)), ("guilloche", "waves"),
        "RESIDENCE PERMIT", (110, 80, 20),
        (F("name", "Name", 0.05, 0.17, "name", right=0.66), F("permit_no", "Permit No.", 0.40, 0.35, "doc_number", right=0.66),
         F("nationality", "Nationality", 0.05, 0.35, "nationality"), F("birth_date", "Date of birth", 0.05, 0.53, "birth_date"),
         F("valid_until", "Valid until", 0.40, 0.53, "expiry_date", right=0.66), F("permit_type", "Type", 0.05, 0.71, "permit_type"),
         F("authority", "Authority", 0.36, 0.71, "authority", right=0.66)),
        (0.70, 0.17, 0.25, 0.54), SealSpec(("ellipse", "circle"), ("blue", "red"), 0.83, 0.81, 0.26, p=0.9), stacked=True,
    ),
    DocTemplate(
        "property_certificate", 1.40, ((232, 244, 226), (248, 246, 232), (140, 180, 120)), ("rosette", "frame", "guilloche"),
        "PROPERTY CERTIFICATE", (40, 100, 40),
        (F("cert_no", "Cert. No.", 0.07, 0.20, "doc_number", style="mono-bold"), F("owner", "Owner", 0.07, 0.31, "name"),
         F("location", "Location", 0.07, 0.42, "address"), F("area", "Area", 0.07, 0.53, "area"),
         F("usage", "Use", 0.45, 0.53, "usage"), F("reg_date", "Registered", 0.07, 0.64, "issue_date"),
         F("owner_id", "Owner ID", 0.07, 0.75, "id_number", style="mono")),
        None, SealSpec(("circle", "square"), ("red",), 0.80, 0.78, 0.34), title_x=0.12,
    ),
    DocTemplate(
        "business_licence", 1.42, ((250, 244, 228), (244, 236, 214), (200, 170, 110)), ("dots", "frame", "rosette"),
        "BUSINESS LICENCE", (160, 40, 30),
        (F("reg_no", "Reg. No.", 0.07, 0.19, "uscc", style="mono"), F("company", "Name", 0.07, 0.29, "company"),
         F("company_type", "Type", 0.07, 0.39, "company_type"), F("legal_rep", "Legal rep.", 0.07, 0.49, "name"),
         F("capital", "Capital", 0.07, 0.59, "capital"), F("established", "Founded", 0.07, 0.69, "issue_date"),
         F("address", "Address", 0.07, 0.79, "address", right=0.64)),
        None, SealSpec(("circle", "ellipse", "rectangle"), ("red", "blue"), 0.81, 0.74, 0.34), title_x=0.25,
    ),
)
DOC_TYPES = tuple(t.name for t in TEMPLATES)


def _pattern(name: str, w: int, h: int, r: np.random.Generator) -> np.ndarray:
    """A (h, w) float32 ink coverage in [0, 1] for one background pattern."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    if name == "guilloche":  # interleaved sinusoidal line families
        a, f1, f2 = r.uniform(4, 9), r.uniform(0.05, 0.09), r.uniform(0.04, 0.08)
        v1 = np.abs(np.sin(f1 * y + a * np.sin(f2 * x + r.uniform(0, 6))))
        v2 = np.abs(np.sin(f1 * y - a * np.sin(f2 * x * 1.3 + r.uniform(0, 6))))
        return np.clip(1 - np.minimum(v1, v2) / 0.2, 0, 1) * 0.45
    if name == "rosette":  # concentric modulated rings around a point
        cx, cy = r.uniform(0.3, 0.7) * w, r.uniform(0.3, 0.7) * h
        rad, ang = np.hypot(x - cx, y - cy), np.arctan2(y - cy, x - cx)
        v = np.abs(np.sin(rad * 0.35 + 2.5 * np.sin(ang * int(r.integers(6, 14)))))
        return np.clip(1 - v / 0.1, 0, 1) * 0.5 * np.exp(-rad / (0.5 * w))
    if name == "waves":
        return (0.5 + 0.5 * np.sin(x * r.uniform(0.02, 0.05) + 3 * np.sin(y * r.uniform(0.03, 0.06)))) * 0.2
    if name == "dots":
        s = int(r.integers(5, 8))
        return (((x % s) < 1.5) & ((y % s) < 1.5)).astype(np.float32) * 0.45
    if name == "frame":
        m = max(2, int(0.03 * h))
        d = np.minimum(np.minimum(x, w - 1 - x), np.minimum(y, h - 1 - y))
        return (((d >= m) & (d < m + 2)) | ((d >= m + 4) & (d < m + 5))).astype(np.float32) * 0.9
    raise ValueError(f"unknown background pattern {name!r}")


def _background(t: DocTemplate, w: int, h: int, r: np.random.Generator) -> np.ndarray:
    """Gradient between the template's two colours, overlaid with its patterns in the ink colour."""
    c1, c2, c3 = (np.array(c, np.float32) + r.normal(0, 5, 3) for c in t.colors)
    ang = r.uniform(0, 2 * math.pi)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    g = ((x / w - 0.5) * math.cos(ang) + (y / h - 0.5) * math.sin(ang) + 0.5).clip(0, 1)[..., None]
    img = c1 * (1 - g) + c2 * g
    for name in t.patterns:
        a = _pattern(name, w, h, r)[..., None]
        img = img * (1 - a) + c3 * a
    return np.clip(img, 0, 255).astype(np.uint8)


@dataclass
class StaticLayer:
    """A template rendered at one size: the image without values, and where each value goes."""

    image: Image.Image  # RGB, the document's (w, h)
    value_xy: list[tuple[int, int]] = field(default_factory=list)  # top-left of each field value
    value_size: list[int] = field(default_factory=list)  # font px of each field value
    value_right: list[int] = field(default_factory=list)  # x the value must not pass


@lru_cache(maxsize=256)
def static_layer(type_no: int, variant: int, w: int, h: int) -> StaticLayer:
    """Background, title and captions of template `type_no` at (w, h). Cached; do not mutate."""
    t = TEMPLATES[type_no]
    r = np.random.default_rng([0xD0C, type_no, variant])
    img = Image.fromarray(_background(t, w, h, r))
    d = ImageDraw.Draw(img)
    size = round(0.095 * h)
    while size > 6 and font("sans-bold", size).getlength(t.title) > (0.96 - t.title_x) * w:
        size -= 1  # shrink the title to fit
    d.text((t.title_x * w, 0.035 * h), t.title, font=font("sans-bold", size), fill=t.title_color)
    layer = StaticLayer(img)
    for f in t.fields:
        size = max(6, round(f.fs * h))
        cap_f = font("sans", max(5, round(0.058 * h)))
        x, y = f.x * w, f.y * h
        if f.label:
            d.text((x, y), f.label, font=cap_f, fill=(95, 95, 110))
            if t.stacked:
                y += cap_f.size * 1.15
            else:
                x += cap_f.getlength(f.label) + 0.4 * size
        layer.value_xy.append((round(x), round(y)))
        layer.value_size.append(size)
        layer.value_right.append(round(f.right * w))
    return layer
