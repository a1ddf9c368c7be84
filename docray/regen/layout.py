"""The deterministic layout-and-glyph rendering of a document's content: the generator's image condition.

A diffusion model trained from scratch for minutes on two CPU cores does not learn to draw legible
text. So legibility is not left to it: given the type and the field values, this module renders the
template's text layer (title, captions, values, in their template fonts, colours and places) on a
transparent canvas, plus the portrait slot as an opaque blank box. The generator sees this layer
as extra input channels and learns what is left (background, pattern, colour, seal ink, edges);
the pipeline then composites the layer over the generated image, so every glyph in the processed
image is exactly the recognised content. The same rendering is done in training (with labelled
content) and in serving (with recognised content).

The types are the doc-type registry's (`docray.doctypes`): the built-in templates and any the user
registered by a template file, named or given by class index.

    layer = render_layer("passport_page", ["JENSEN", "UN1262405", ...], (256, 160))  # (h, w, 4) uint8
    content = join_content(values); values = split_content(content)
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw

from docray.doctypes import DocType, doc_rect, draw_static, registry
from docray.fonts import font

SEP = "|"  # between field values in a content string (a '|' inside a value is printed as a space)


def type_index(doc_type: str | int) -> int:
    """The registry's class index of a type name (or an index, checked); ValueError if unknown."""
    if isinstance(doc_type, (int, np.integer)):
        n = len(registry())
        if not 0 <= int(doc_type) < n:
            raise ValueError(f"document type index {doc_type} out of range 0..{n - 1}")
        return int(doc_type)
    return registry().index(doc_type)  # UnknownDocType (a ValueError) names the registered types


def _type(doc_type: str | int) -> DocType:
    return registry()[type_index(doc_type)]


def field_names(doc_type: str | int) -> list[str]:
    return list(_type(doc_type).field_names)


def join_content(values: list[str]) -> str:
    return SEP.join(v.replace(SEP, " ") for v in values)


def split_content(content: str, doc_type: str | int | None = None) -> list[str]:
    """Values of a content string; with a type, padded/truncated to its number of fields."""
    values = content.split(SEP)
    if doc_type is not None:
        n = len(field_names(doc_type))
        values = (values + [""] * n)[:n]
    return values


def doc_box(doc_type: str | int, size: tuple[int, int]) -> list[int]:
    """Where the document sits in a processed frame of `size` (w, h): [x0, y0, x1, y1]."""
    ox, oy, dw, dh = doc_rect(size, _type(doc_type).aspect)
    return [ox, oy, ox + dw, oy + dh]


def slot_box(doc_type: str | int, size: tuple[int, int]) -> list[int] | None:
    """The template's portrait slot in a frame of `size`, or None for types without a portrait."""
    return _slot(_type(doc_type), size)


def _slot(t: DocType, size: tuple[int, int]) -> list[int] | None:
    if t.portrait is None:
        return None
    x0, y0, dw, dh = doc_rect(size, t.aspect)
    px, py, pw, ph = t.portrait.box()
    return [x0 + round(px * dw), y0 + round(py * dh), x0 + round((px + pw) * dw), y0 + round((py + ph) * dh)]


@lru_cache(maxsize=64)
def _static(t: DocType, size: tuple[int, int]) -> tuple[Image.Image, tuple]:
    """Title, captions and blank portrait slot (RGBA) and each value's (x, y, font px, right)."""
    img = Image.new("RGBA", size, (0, 0, 0, 0))
    d = ImageDraw.Draw(img)
    slots = draw_static(d, t, doc_rect(size, t.aspect), alpha=255)
    box = _slot(t, size)
    if box is not None:
        d.rectangle([box[0], box[1], box[2] - 1, box[3] - 1], fill=(255, 255, 255, 255))
    return img, tuple(slots)


def static_ink(doc_type: str | int, size: tuple[int, int]) -> np.ndarray:
    """The opacity (h, w) float32 of the template's static text (title, captions) in a frame of `size`,
    the portrait slot's blank fill left out: what every document of the type shows, whatever its values."""
    alpha = np.asarray(_static(_type(doc_type), tuple(size))[0])[..., 3].astype(np.float32)
    box = slot_box(doc_type, size)
    if box is not None:
        alpha[box[1]:box[3], box[0]:box[2]] = 0
    return alpha


def value_slots(doc_type: str | int, size: tuple[int, int]) -> tuple:
    """Each field value's (x, y, font px, right) in a frame of `size` (w, h), as `render_layer` draws it."""
    return _static(_type(doc_type), tuple(size))[1]


def value_extent(doc_type: str | int, k: int, text: str, size: tuple[int, int]) -> list[int]:
    """The box [x0, y0, x1, y1] the glyphs of `text` cover as field `k`'s value in a frame of `size`."""
    t = _type(doc_type)
    x, y, fs, _ = value_slots(doc_type, size)[k]
    box = ImageDraw.Draw(Image.new("L", (1, 1))).textbbox((x, y), text or " ", font=font(t.value_font(t.fields[k]), fs))
    return [int(v) for v in box]


def render_layer(doc_type: str | int, values: list[str], size: tuple[int, int]) -> np.ndarray:
    """The text layer of a document of `doc_type` with field `values`, as (h, w, 4) uint8 RGBA."""
    t = _type(doc_type)
    base, slots = _static(t, tuple(size))
    img = base.copy()
    d = ImageDraw.Draw(img)
    for spec, (x, y, fs, right), text in zip(t.fields, slots, values):
        if text:  # never truncated: every recognised character is kept
            d.text((x, y), text, font=font(t.value_font(spec), fs), fill=(*t.colors.value, 255))
    return np.asarray(img)


def composite(layer: np.ndarray, background: np.ndarray) -> np.ndarray:
    """The layer over a generated RGB image (both (h, w, ...) uint8): every glyph exactly as rendered."""
    a = layer[..., 3:4].astype(np.float32) / 255
    out = layer[..., :3].astype(np.float32) * a + background.astype(np.float32) * (1 - a)
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)
