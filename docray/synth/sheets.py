"""Contact sheets: the first rows of a synth table as one picture with their labels drawn, for a person."""
from __future__ import annotations

import math

import pyarrow as pa
from PIL import Image, ImageDraw

from docray.imageio import decode_image
from docray.synth.common import font

CLASS_COLORS = {"field": (0, 200, 0), "portrait": (0, 120, 255), "seal": (255, 40, 40), "tamper": (255, 0, 255),
                "text": (255, 200, 0)}
CAPTION_H = 26


def _boxes(img: Image.Image, items, scale: float):
    d = ImageDraw.Draw(img)
    for cls, box in items:
        if box:
            d.rectangle([v * scale for v in box], outline=CLASS_COLORS[cls], width=1 if cls == "field" else 2)


def _tile(row: dict, kind: str, width: int) -> tuple[Image.Image, list[str]]:
    """A thumbnail with its boxes, and its caption lines."""
    key = "mask" if kind == "masks" else "image"
    img = decode_image(row[key], mode="RGB")
    s = width / img.width
    img = img.resize((width, max(1, round(img.height * s))), Image.Resampling.NEAREST if kind in ("faces", "masks") else Image.Resampling.BILINEAR)
    if kind == "documents":
        items = [("field", f["box"]) for f in row["fields"]]
        items += [("portrait", row["portrait_box"]), ("seal", row["seal_box"]), ("tamper", row["tamper_box"])]
        _boxes(img, items, s)
        flags = ("RECAPTURE " if row["recapture"] else "") + (f"TAMPER:{row['tamper_field']}" if row["tampered"] else "")
        ident = f" id={row['identity']}" if row["identity"] >= 0 else ""
        return img, [f"{row['doc_type_name']} q={row['quality']:.2f}{ident}", flags or row["seal_color"] + " " + row["seal_shape"]]
    if kind == "faces":
        return img, [f"identity {row['identity']}", f"sample {row['sample']} {row['split']}"]
    if kind == "masks":
        return img, [f"hole {row['hole_ratio']:.3f}", f"bin {row['bin']}"]
    _boxes(img, [("text", row["text_box"])], s)
    head = "TARGET" if row["is_target"] else "benign"
    return img, [f"{head} {row['category']}", row["text"][:40]]


def _legend(d: ImageDraw.ImageDraw, kind: str, y: int):
    f = font("sans", 12)
    names = ("field", "portrait", "seal", "tamper") if kind == "documents" else ("text",) if kind == "targets" else ()
    x = 6
    d.text((x, y), f"docray.synth {kind}", font=font("sans-bold", 13), fill=(0, 0, 0))
    x += 170
    for n in names:
        d.rectangle([x, y + 2, x + 12, y + 14], outline=CLASS_COLORS[n], width=3)
        d.text((x + 16, y), n, font=f, fill=(0, 0, 0))
        x += 24 + int(f.getlength(n))


def contact_sheet(table: pa.Table, kind: str, n: int = 24) -> Image.Image:
    """A grid of the first n rows of `table` (of `kind`) with their labels drawn."""
    rows = table.slice(0, n).to_pylist()
    if not rows:
        raise ValueError("contact_sheet: the table has no rows")
    width = {"documents": 256, "targets": 192, "faces": 128, "masks": 128}[kind]
    tiles = [_tile(r, kind, width) for r in rows]
    cols = min(len(tiles), max(1, 1536 // (width + 6)))
    th = max(t.height for t, _ in tiles) + CAPTION_H
    sheet = Image.new("RGB", (cols * (width + 6) + 6, 22 + math.ceil(len(tiles) / cols) * (th + 6)), (250, 250, 250))
    d = ImageDraw.Draw(sheet)
    _legend(d, kind, 4)
    f, cjk = font("sans", 10), font("cjk-sans", 10)  # captions in Chinese (targets' mix) need a CJK font
    for k, (img, lines) in enumerate(tiles):
        x, y = 6 + (k % cols) * (width + 6), 22 + (k // cols) * (th + 6)
        sheet.paste(img, (x, y))
        for j, line in enumerate(lines):
            d.text((x, y + img.height + 1 + 12 * j), line, font=f if line.isascii() else cjk, fill=(0, 0, 0))
    return sheet
