"""Synthetic identity and business documents, flat and as camera captures, with labels for every task.

Kind "documents": one row per document. Images are PNG bytes; boxes are [x0, y0, x1, y1] int32
(x1, y1 exclusive), [] when absent. Columns:
    id                str     "doc-<seed>-<i>"
    split             str     'train' | 'val' | 'test' (i % 10: 8 -> val, 9 -> test)
    doc_type          int32   class index of the type in the doc-type registry (docray.doctypes)
    doc_type_name     str     its name: identity_card | passport_page | driving_licence |
                              residence_permit | property_certificate | business_licence by default
    image             binary  the capture (size w x h, RGB): perspective, glare, blur, noise, JPEG
    clean             binary  the flat clean render before capture (same size): the document
                              centred on a flat grey backdrop (regen compression regenerates this)
    seg               binary  uint8 'L' label map in `image` coords: 0 background/document,
                              1 portrait, 2 seal, 3 field text (the field's text box)
    flash             binary  the same scene (same geometry, so the same boxes and seg) under flash:
                              a broad bright fall-off and soft hotspot on paper; on a screen
                              recapture the content is not lit, only a hard glass reflection
    angles            list<binary>  n_angles further captures of the same document, other views
    fields            list<struct<name, text, box>>  field values as printed, boxes in `image` px
    clean_fields      list<struct<name, text, box>>  the same with boxes in `clean` px
    portrait_box, seal_box, tamper_box                 list<int32>, `image` px
    clean_portrait_box, clean_seal_box, clean_tamper_box, clean_doc_box  list<int32>, `clean` px
    doc_quad          list<float32>  document corners in `image` px: tl, tr, br, bl (x, y each)
    seal_color        str     'red' | 'blue' | ''
    seal_shape        str     'circle' | 'ellipse' | 'rectangle' | 'square' | ''
    identity          int32   portrait identity (docray.synth.faces), -1 without a portrait
    quality           float32 capture quality in (0, 1], from the degradations applied to `image`
    blur, noise, glare float32, jpeg_quality int32   those degradations (see captures.py)
    recapture         bool    `image`, `flash` and `angles` are photos of a screen (moire, cast)
    tampered          bool    one field was re-printed with another value (tamper_field)
    tamper_field      str     its name, '' if not tampered
    angles_tampered   bool    whether the tamper also shows in `angles`. Choice: half of the tampers
                              are "physical" (in every view), half "digital" (edited into the main
                              document only, so the angle views show the original value)
    angles_swapped    bool    the angle views show another holder's document (of any type, the
                              same type 1 time in 6): a substitution, for the angle-consistency
                              task. Drawn from a separate generator, so rows with swap_rate=0
                              equal those generated before the option existed

Options: size=(256, 160) as (w, h), n_angles=2, n_identities=256, recapture_rate=0.2,
tamper_rate=0.2, swap_rate=0.0, doc_types=() (names of registered types to draw, each equally
often; () = the six built-ins, so the default rows do not depend on the user's template files).

`random_doctype(rng)` makes a template no registry holds and `unregistered_capture(rng, size)` a capture
of a document of one: the regen gate's hardest negatives (`docray.regen.nondocs`, family other_type).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import pyarrow as pa
from PIL import Image, ImageDraw, ImageFilter

from docray.datasets import contracts
from docray.doctypes import DocType, FieldSpec, Portrait, Seal, doc_rect, registry
from docray.doctypes.schema import PATTERNS
from docray.synth import faces, seals
from docray.synth.captures import (
    degrade, doc_homography, map_box, render_capture, sample_capture, table_texture, warp_document, warp_labels,
)
from docray.synth.common import clip_box, font, png, split_of
from docray.synth.templates import DOC_TYPES, N_VARIANTS, StaticLayer, static_layer, template_layer
from docray.synth.text import GENERATORS, ZH_GIVEN, ZH_ROADS, fake_value

KIND_NO = 1
BACKDROP = (160, 160, 160)  # the flat backdrop of `clean` around the document
SEG_PORTRAIT, SEG_SEAL, SEG_TEXT = 1, 2, 3
N_TABLES = 10

BOX = contracts.BOX
FIELD = contracts.FIELD
SCHEMA = contracts.DOCUMENTS  # the dataset contract (docray.datasets.contracts), written exactly


@dataclass
class DocumentsConfig:
    size: tuple = (256, 160)  # (w, h) of image, clean, seg, flash and angles
    n_angles: int = 2  # extra views per document
    n_identities: int = 256  # portrait identities are drawn from [0, n_identities)
    recapture_rate: float = 0.2  # fraction of screen recaptures
    tamper_rate: float = 0.2  # fraction of documents with a tampered field
    swap_rate: float = 0.0  # fraction whose angle views show another holder's document (angles_swapped)
    doc_types: tuple = ()  # registered type names to draw (docray.doctypes); () = the built-ins

    def check(self):
        if len(self.size) != 2 or not all(64 <= int(v) <= 4096 for v in self.size):
            raise ValueError(f"documents: size must be (w, h) with sides in [64, 4096], got {self.size}")
        self.size = (int(self.size[0]), int(self.size[1]))
        if not 0 <= int(self.n_angles) <= 16:
            raise ValueError(f"documents: n_angles must be in [0, 16], got {self.n_angles}")
        if int(self.n_identities) < 1:
            raise ValueError(f"documents: n_identities must be >= 1, got {self.n_identities}")
        for k in ("recapture_rate", "tamper_rate", "swap_rate"):
            if not 0 <= getattr(self, k) <= 1:
                raise ValueError(f"documents: {k} must be in [0, 1], got {getattr(self, k)}")
        self.doc_types = (self.doc_types,) if isinstance(self.doc_types, str) else tuple(self.doc_types)
        reg = registry()
        for name in self.names:
            for f in reg[name].fields:  # UnknownDocType names the registered types
                if f.value not in GENERATORS:
                    raise ValueError(f"documents: type {name!r} field {f.name!r} has value generator {f.value!r} "
                                     f"(`value:` in {reg.files[reg.index(name)]}); one of {sorted(GENERATORS)}")

    @property
    def names(self) -> tuple[str, ...]:
        """The type names drawn, each equally often."""
        return self.doc_types or DOC_TYPES


@dataclass
class FlatDoc:
    """A flat document render (document px) and its labels."""

    image: Image.Image
    fields: list = field(default_factory=list)  # [name, text, box]
    portrait_box: list = field(default_factory=list)
    seal_box: list = field(default_factory=list)
    seal_color: str = ""
    seal_shape: str = ""
    identity: int = -1


def _fit_text(text: str, f, x: float, right: float) -> str:
    while len(text) > 1 and x + f.getlength(text) > right:
        text = text[:-1].rstrip()
    return text


def _draw_value(d: ImageDraw.ImageDraw, xy, text: str, f, fill, right: float) -> tuple[str, list[int]]:
    text = _fit_text(text, f, xy[0], right)
    d.text(xy, text, font=f, fill=fill)
    return text, list(d.textbbox(xy, text, font=f))


def _draw_fields(img: Image.Image, t: DocType, layer: StaticLayer, rng: np.random.Generator) -> list:
    d, out = ImageDraw.Draw(img), []
    ink = tuple(int(v) for v in np.clip(np.array(t.colors.value) + rng.integers(-15, 16, 3), 0, 255))
    for k, fs in enumerate(t.fields):
        f = font(t.value_font(fs), layer.value_size[k])
        text, box = _draw_value(d, layer.value_xy[k], fake_value(fs.value, rng), f, ink, layer.value_right[k])
        out.append([fs.name, text, box])
    return out


def _tamper(img: Image.Image, doc: FlatDoc, t: DocType, layer: StaticLayer, rng: np.random.Generator) -> tuple[int, list[int]]:
    """Re-print one field with another value: erased with a slightly-off background patch, new text in a
    slightly different size/colour, sometimes softened like a pasted patch. Returns (field index, box)."""
    k = int(rng.integers(len(t.fields)))
    name, old, box = doc.fields[k]
    e = clip_box([box[0] - 1, box[1] - 1, box[2] + 2, box[3] + 1], *img.size)
    patch = np.asarray(layer.image.crop(e), np.float32) * rng.uniform(0.95, 1.05) + rng.uniform(-6, 6, 3)
    new = old
    for _ in range(8):
        if new != old:
            break
        new = fake_value(t.fields[k].value, rng)
    if new == old:
        new = old[:-1] + ("7" if old[-1:] != "7" else "1")
    f = font(t.value_font(t.fields[k]), layer.value_size[k] + int(rng.integers(-1, 2)))
    ink = tuple(int(v) for v in np.clip(np.array(t.colors.value) + rng.integers(-40, 41, 3), 0, 255))
    x, y = layer.value_xy[k][0] + int(rng.integers(-1, 2)), layer.value_xy[k][1] + int(rng.integers(-1, 2))
    new = _fit_text(new, f, x, layer.value_right[k])
    nb = clip_box(ImageDraw.Draw(img).textbbox((x, y), new, font=f), *img.size)
    region = [min(e[0], nb[0] - 1), min(e[1], nb[1] - 1), max(e[2], nb[2] + 1), max(e[3], nb[3] + 1)]
    region = clip_box(region, *img.size)
    piece = layer.image.crop(region)
    piece.paste(Image.fromarray(np.clip(patch, 0, 255).astype(np.uint8)), (e[0] - region[0], e[1] - region[1]))
    ImageDraw.Draw(piece).text((x - region[0], y - region[1]), new, font=f, fill=ink)
    if rng.random() < 0.4:  # a pasted, resampled patch
        piece = piece.filter(ImageFilter.GaussianBlur(0.6))
    img.paste(piece, region[:2])
    doc.fields[k] = [name, new, nb]
    return k, region


def _portrait(img: Image.Image, doc: FlatDoc, slot, n_identities: int, rng: np.random.Generator):
    w, h = img.size
    x0, y0, x1, y1 = round(slot.x * w), round(slot.y * h), round((slot.x + slot.w) * w), round((slot.y + slot.h) * h)
    doc.identity = int(rng.integers(n_identities))
    bg = tuple(int(v) for v in rng.integers(200, 250, 3))
    pose = replace(faces.sample_pose(rng, strength=0.3), background=bg, noise=float(rng.uniform(0, 3)),
                   light=float(rng.uniform(0, 0.2)), brightness=float(rng.uniform(0.9, 1.1)))
    img.paste(faces.render_face(faces.face_geometry(doc.identity), pose, (x1 - x0, y1 - y0), rng), (x0, y0))
    doc.portrait_box = [x0, y0, x1, y1]


def _seal_params(s: Seal | None, dh: int, dw: int, rng: np.random.Generator) -> dict | None:
    if s is None or rng.random() >= s.rate:  # a type without a seal slot draws nothing
        return None
    return dict(
        shape=s.shapes[int(rng.integers(len(s.shapes)))], color=s.colors[int(rng.integers(len(s.colors)))],
        variant=int(rng.integers(seals.N_VARIANTS)), h=max(12, round(s.height * dh * rng.uniform(0.9, 1.1))),
        center=((s.x + rng.uniform(-0.03, 0.03)) * dw, (s.y + rng.uniform(-0.03, 0.03)) * dh),
        angle=float(rng.uniform(-20, 20)), strength=float(rng.uniform(0.55, 0.95)), tex_xy=tuple(rng.uniform(0, 1, 2)),
    )


def _seg_map(doc: FlatDoc, size, seal: dict | None) -> Image.Image:
    seg = Image.new("L", size, 0)
    d = ImageDraw.Draw(seg)
    for _, _, b in doc.fields:
        d.rectangle([b[0], b[1], b[2] - 1, b[3] - 1], fill=SEG_TEXT)
    if doc.portrait_box:
        b = doc.portrait_box
        d.rectangle([b[0], b[1], b[2] - 1, b[3] - 1], fill=SEG_PORTRAIT)
    if seal is not None:  # a throwaway canvas: the seal's filled shape only
        seals.stamp(Image.new("RGB", size), seg, **seal)
    return seg


def _offset(box, dx: int, dy: int) -> list[int]:
    return [box[0] + dx, box[1] + dy, box[2] + dx, box[3] + dy] if box else []


def _to_image(H: np.ndarray, box, size) -> list[int]:
    return clip_box(map_box(H, box), *size) if box else []


def _flat_document(t: DocType, layer: StaticLayer, cfg: DocumentsConfig, rng: np.random.Generator):
    """(doc, original, seg, tamper) for one document of template `t` drawn on its static `layer`:
    `doc.image` is what `clean` shows, `original` the same document before any tamper, `seg` its label
    map in document px."""
    img = layer.image.copy()
    (dw, dh), doc = img.size, FlatDoc(img)
    doc.fields = _draw_fields(img, t, layer, rng)
    if t.portrait is not None:
        _portrait(img, doc, t.portrait, cfg.n_identities, rng)
    seal = _seal_params(t.seal, dh, dw, rng)
    tamper = None
    original = img
    if rng.random() < cfg.tamper_rate:
        original = img.copy()
        tamper = _tamper(img, doc, t, layer, rng)
    seg = _seg_map(doc, (dw, dh), seal)
    if seal is not None:
        box = seals.stamp(img, None, **seal)
        if original is not img:  # the untampered copy carries the same stamp
            seals.stamp(original, None, **seal)
        doc.seal_box, doc.seal_color, doc.seal_shape = clip_box(box, dw, dh), seal["color"], seal["shape"]
    return doc, original, seg, tamper


def make_row(i: int, rng: np.random.Generator, seed: int, cfg: DocumentsConfig) -> dict:
    """Row i of the documents set (see the module docstring for the columns)."""
    size, reg, names = cfg.size, registry(), cfg.names
    name, variant = names[int(rng.integers(len(names)))], int(rng.integers(N_VARIANTS))
    type_no = reg.index(name)
    ox, oy, dw, dh = doc_rect(size, reg[type_no].aspect)
    doc, original, seg, tamper = _flat_document(reg[type_no], static_layer(type_no, variant, dw, dh), cfg, rng)
    angles_tampered = tamper is not None and bool(rng.random() < 0.5)
    clean = Image.new("RGB", size, BACKDROP)
    clean.paste(doc.image, (ox, oy))

    recapture = bool(rng.random() < cfg.recapture_rate)
    level = float(rng.uniform())
    table = table_texture(int(rng.integers(N_TABLES)), *size)
    cap = sample_capture(rng, (dw, dh), size, level, recapture)
    H = doc_homography(cap, (dw, dh))
    arr = np.asarray(doc.image)
    base = warp_document(arr, table, H)  # one geometry for the no-flash and the flash frame
    image = degrade(base, cap, rng, recapture)
    flash = degrade(base, replace(cap, flash=True, blur=cap.blur * 0.6, noise=cap.noise * 0.5), rng, recapture)
    src = arr if (tamper is None or angles_tampered) else np.asarray(original)
    swap_rng = np.random.default_rng([int(seed), KIND_NO, int(i), 1])  # its own stream: other columns unchanged
    swapped, src_wh = bool(swap_rng.random() < cfg.swap_rate), (dw, dh)
    if swapped:  # another holder's document, of any drawn type (the same one 1 time in 6 by default)
        other_type = reg.index(names[int(swap_rng.integers(len(names)))])
        src_wh = doc_rect(size, reg[other_type].aspect)[2:]
        layer = static_layer(other_type, int(swap_rng.integers(N_VARIANTS)), *src_wh)
        other = _flat_document(reg[other_type], layer, replace(cfg, tamper_rate=0.0), swap_rng)[0]
        src = np.asarray(other.image)
    angles = []
    for _ in range(cfg.n_angles):
        lv = float(np.clip(level + rng.normal(0, 0.15), 0, 1))
        c = sample_capture(rng, src_wh, size, lv, recapture, persp=float(rng.uniform(1.2, 2.0)))
        angles.append(png(render_capture(src, table, c, rng, recapture)))

    tbox = tamper[1] if tamper else []
    return {
        "id": f"doc-{seed}-{i:07d}", "split": split_of(i), "doc_type": type_no, "doc_type_name": name,
        "image": png(image), "clean": png(clean), "seg": png(warp_labels(np.asarray(seg), H, size)),
        "flash": png(flash), "angles": angles,
        "fields": [{"name": n, "text": t, "box": _to_image(H, b, size)} for n, t, b in doc.fields],
        "clean_fields": [{"name": n, "text": t, "box": _offset(b, ox, oy)} for n, t, b in doc.fields],
        "portrait_box": _to_image(H, doc.portrait_box, size), "seal_box": _to_image(H, doc.seal_box, size),
        "tamper_box": _to_image(H, tbox, size), "clean_portrait_box": _offset(doc.portrait_box, ox, oy),
        "clean_seal_box": _offset(doc.seal_box, ox, oy), "clean_tamper_box": _offset(tbox, ox, oy),
        "clean_doc_box": [ox, oy, ox + dw, oy + dh], "doc_quad": list(cap.quad),
        "seal_color": doc.seal_color, "seal_shape": doc.seal_shape, "identity": doc.identity,
        "quality": cap.quality, "blur": cap.blur, "noise": cap.noise, "glare": cap.glare, "jpeg_quality": cap.jpeg,
        "recapture": recapture, "tampered": tamper is not None,
        "tamper_field": doc.fields[tamper[0]][0] if tamper else "", "angles_tampered": angles_tampered,
        "angles_swapped": swapped,
    }


# Documents of no registered type: the regen gate's hardest negatives (docray.regen.nondocs "other_type").
CAPTIONS = ("Name", "Surname", "Given names", "Sex", "Nationality", "Date of birth", "Born", "Address", "Issued",
            "Expires", "Valid until", "No.", "Document No.", "Class", "Authority", "Holder", "Place", "Reg. No.",
            "Category", "Remarks", "Member", "Card No.", "Dept.", "Grade", "Owner", "Vehicle", "Licence")
TITLE_WORDS = ("CARD", "PERMIT", "CERTIFICATE", "LICENCE", "PASS", "MEMBERSHIP", "STUDENT", "EMPLOYEE", "HEALTH",
               "INSURANCE", "RESIDENT", "TRAVEL", "VISA", "BOARDING", "ACCESS", "NATIONAL", "REGISTRATION", "LIBRARY")
ZH_CHARS = ZH_GIVEN + "".join(ZH_ROADS) + "证卡号码日期地址单位类别有效期签发机关编号"


def random_doctype(rng: np.random.Generator) -> DocType:
    """A template no registry holds: random page (aspect, colours, patterns, title), 3-7 fields at random
    places with captions beside or above, a portrait slot on either side or none, a seal or none; English
    or Chinese. Drawn by the same code as the registered types, so only its layout tells it apart."""
    def rgb(lo: int, hi: int) -> tuple[int, int, int]:
        return tuple(int(v) for v in rng.integers(lo, hi, 3))

    zh = bool(rng.random() < 0.3)
    gens = [g for g in GENERATORS if g.startswith("zh_") == zh and g not in ("mrz", "scope")] + \
        (["id_number", "doc_number", "issue_date"] if zh else [])
    portrait = None
    x0, right = 0.05, 0.95
    if rng.random() < 0.6:
        w, h = float(rng.uniform(0.2, 0.32)), float(rng.uniform(0.4, 0.6))
        left = bool(rng.random() < 0.5)
        px, py = (0.04 if left else 0.96 - w), float(rng.uniform(0.15, 0.95 - h))
        portrait = Portrait(x=px, y=py, w=w, h=h)
        x0, right = (px + w + 0.04, 0.96) if left else (0.05, px - 0.03)
    stacked, n = bool(rng.random() < 0.3), int(rng.integers(3, 8))
    size = float(rng.uniform(0.045, 0.075))
    step = (0.93 - 0.2 - size) / max(n - 1, 1)
    fields = []
    for k in range(n):
        cap = "".join(rng.choice(list(ZH_CHARS), int(rng.integers(2, 5)))) if zh else str(rng.choice(CAPTIONS))
        fields.append(FieldSpec(name=f"field{k}", caption=cap if rng.random() < 0.9 else "", x=x0, y=0.2 + k * step,
                                right=right, size=min(size, step / (2.2 if stacked else 1.1)), value=str(rng.choice(gens))))
    seal = None
    if rng.random() < 0.4:
        seal = Seal(shapes=(str(rng.choice(["circle", "ellipse", "rectangle", "square"])),),
                    colors=(str(rng.choice(["red", "blue"])),), x=float(rng.uniform(0.55, 0.9)),
                    y=float(rng.uniform(0.55, 0.85)), height=float(rng.uniform(0.18, 0.3)))
    title = "".join(rng.choice(list(ZH_CHARS), int(rng.integers(3, 7)))) if zh else \
        " ".join(rng.choice(TITLE_WORDS, int(rng.integers(1, 4)), replace=False))
    return DocType(
        name="unregistered", title=title, language="zh" if zh else "en",
        aspect=float(rng.choice([0.71, 1.0, 1.3, 1.42, 1.585, 1.9]) * rng.uniform(0.92, 1.08)),
        colors={"background": (rgb(200, 256), rgb(200, 256)), "pattern": rgb(90, 230), "title": rgb(0, 110),
                "caption": rgb(0, 110), "value": rgb(0, 110)},
        patterns=tuple(rng.choice(PATTERNS, int(rng.integers(0, 3)), replace=False)),
        title_x=float(rng.uniform(0.04, 0.3)), captions="above" if stacked else "beside",
        fields=tuple(fields), portrait=portrait, seal=seal)


def unregistered_capture(rng: np.random.Generator, size: tuple[int, int]) -> Image.Image:
    """A capture (w, h = `size`) of a document of `random_doctype(rng)`, through the same camera model as
    the rows' `image` (perspective, table, glare, blur, noise, JPEG; a screen recapture 1 time in 5)."""
    t = random_doctype(rng)
    _, _, dw, dh = doc_rect(size, t.aspect)
    layer = template_layer(t, dw, dh, int(rng.integers(2**31)))
    doc = _flat_document(t, layer, DocumentsConfig(tamper_rate=0.0), rng)[0]
    recapture, level = bool(rng.random() < 0.2), float(rng.uniform())
    table = table_texture(int(rng.integers(N_TABLES)), *size)
    cap = sample_capture(rng, (dw, dh), size, level, recapture)
    base = warp_document(np.asarray(doc.image), table, doc_homography(cap, (dw, dh)))
    return Image.fromarray(degrade(base, cap, rng, recapture))
