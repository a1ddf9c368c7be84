"""A small dataset of every kind that the synthetic world did NOT draw, in the layouts users bring.

Drawn here with its own fonts (DejaVu Serif and Noto Sans CJK for values), its own sizes (320x200
flat renders photographed onto 400x264 frames), its own backgrounds (noise, stripes, a random
paper colour), its own value texts, faces that are coloured shapes, posters and masks of its own.
What it shares with docray is what any user's data of a type shares: the type's template (title,
captions and where each value is printed). Written as image folders with a `labels.jsonl` sidecar
(documents, targets), an LFW tree (faces) and a folder of PNG masks, for `docray data import`.
"""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageDraw

from docray.regen import layout
from docray.doctypes import doc_rect, draw_static, registry
from docray.fonts import font

CLEAN, PHOTO = (320, 200), (400, 264)
HANZI = "王李张刘陈杨黄赵吴周徐孙马朱胡郭何林高罗明华国建平文海军伟芳秀英北京上海广州路街号区市省"
LATIN = "ABCDEFGHJKLMNPRSTUVWXYZ"


def _value(rng, zh: bool, k: int) -> str:
    if zh and k % 3 != 2:
        return "".join(rng.choice(list(HANZI), int(rng.integers(2, 6))))
    if k % 2:
        return "".join(str(d) for d in rng.integers(0, 10, int(rng.integers(6, 11))))
    return "".join(rng.choice(list(LATIN), int(rng.integers(3, 9))))


def _paper(rng, size) -> Image.Image:
    w, h = size
    base = rng.integers(170, 250, 3)
    arr = np.clip(base + rng.normal(0, 6, (h, w, 3)), 0, 255)
    arr[:, :, :] += (8 * np.sin(np.arange(w) / rng.uniform(3, 9)))[None, :, None]  # stripes
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def _box(d, xy, text, f) -> list[int]:
    x0, y0, x1, y1 = d.textbbox(xy, text, font=f)
    return [int(np.floor(x0)), int(np.floor(y0)), int(np.ceil(x1)), int(np.ceil(y1))]


def document(rng, doc_type: str) -> dict:
    """One document: a flat render (own paper, the template's print, own values) and a photo of it."""
    t = registry()[doc_type]
    zh = t.language == "zh"
    clean = _paper(rng, CLEAN)
    ox, oy, dw, dh = doc_rect(CLEAN, t.aspect)
    clean.paste(_paper(rng, (dw, dh)), (ox, oy))
    d = ImageDraw.Draw(clean)
    draw_static(d, t, (ox, oy, dw, dh))
    slot = layout.slot_box(doc_type, CLEAN)
    if slot is not None:  # a portrait: an oval face on a plain ground
        d.rectangle(slot, fill=tuple(int(v) for v in rng.integers(120, 220, 3)))
        x0, y0, x1, y1 = slot
        d.ellipse([x0 + (x1 - x0) // 5, y0 + (y1 - y0) // 6, x1 - (x1 - x0) // 5, y1 - (y1 - y0) // 4], fill=(205, 160, 130))
    ink = tuple(int(v) for v in rng.integers(0, 60, 3))
    fields = []
    for k, (spec, (x, y, fs, _right)) in enumerate(zip(t.fields, layout.value_slots(doc_type, CLEAN))):
        text = _value(rng, zh, k)
        f = font("cjk-sans" if zh else "serif", fs)
        d.text((x, y), text, font=f, fill=ink)
        fields.append({"name": spec.name, "text": text, "box": _box(d, (x, y), text, f)})
    # the photo: the document's corners jittered onto a noisy table, perspective-warped
    src = np.float32([[ox, oy], [ox + dw, oy], [ox + dw, oy + dh], [ox, oy + dh]])
    sx, sy = PHOTO[0] / CLEAN[0], PHOTO[1] / CLEAN[1]
    dst = np.float32(src * [sx, sy] + rng.uniform(-8, 8, (4, 2)))
    H = cv2.getPerspectiveTransform(src, dst)
    table = np.asarray(_paper(rng, PHOTO).convert("L").convert("RGB"))
    photo = cv2.warpPerspective(np.asarray(clean), H, PHOTO, borderMode=cv2.BORDER_TRANSPARENT, dst=table.copy())

    def warp_box(b):
        pts = cv2.perspectiveTransform(np.float32([[[b[0], b[1]], [b[2], b[1]], [b[2], b[3]], [b[0], b[3]]]]), H)[0]
        lo, hi = np.floor(pts.min(0)), np.ceil(pts.max(0))
        return [int(max(0, lo[0])), int(max(0, lo[1])), int(min(PHOTO[0], hi[0])), int(min(PHOTO[1], hi[1]))]

    return {"doc_type_name": doc_type, "clean": clean, "image": Image.fromarray(photo),
            "fields": [{**f, "box": warp_box(f["box"])} for f in fields], "clean_fields": fields,
            "portrait_box": warp_box(slot) if slot is not None else [], "seal_box": [],
            "doc_quad": [float(v) for v in dst.ravel()]}


def write_documents(root: Path, types: list[str], per_type: int, seed: int = 0) -> Path:
    """An image folder (`photos/`, `flat/`) with a labels.jsonl sidecar; ids split 80/20 by the importer."""
    rng = np.random.default_rng(seed)
    (root / "photos").mkdir(parents=True, exist_ok=True)
    (root / "flat").mkdir(exist_ok=True)
    rows = []
    for i in range(per_type * len(types)):
        doc = document(rng, types[i % len(types)])
        doc["image"].save(root / "photos" / f"{i:04d}.jpg", quality=90)
        doc["clean"].save(root / "flat" / f"{i:04d}.png")
        rows.append({"file": f"photos/{i:04d}.jpg", "clean": f"flat/{i:04d}.png", "split": "val" if i % 5 == 4 else "train",
                     **{k: doc[k] for k in ("doc_type_name", "fields", "clean_fields", "doc_quad", "portrait_box", "seal_box")}})
    (root / "labels.jsonl").write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n")
    return root


def write_faces(root: Path, identities: int, per_identity: int, seed: int = 0) -> Path:
    """An LFW tree: each identity a fixed arrangement of coloured shapes, each sample moved and lit anew."""
    rng = np.random.default_rng(seed)
    for p in range(identities):
        look = [(tuple(int(v) for v in rng.integers(0, 256, 3)), rng.uniform(8, 40, 2), rng.uniform(8, 20)) for _ in range(4)]
        (root / f"person_{p:02d}").mkdir(parents=True, exist_ok=True)
        for s in range(per_identity):
            img = Image.new("RGB", (56, 56), tuple(int(v) for v in rng.integers(0, 80, 3)))
            d = ImageDraw.Draw(img)
            dx, dy = rng.uniform(-3, 3, 2)
            for colour, (cx, cy), r in look:
                d.ellipse([cx + dx, cy + dy, cx + dx + r, cy + dy + r], fill=colour)
            arr = np.asarray(img, np.float32) * rng.uniform(0.8, 1.2) + rng.normal(0, 5, (56, 56, 3))
            Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(root / f"person_{p:02d}" / f"{s:03d}.png")
    return root


def write_targets(root: Path, n: int, seed: int = 0) -> Path:
    """Posters carrying a URL (targets) and plain shape pictures (benign), with a labels.jsonl sidecar."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        target = i % 2 == 0
        img = Image.new("RGB", (128, 128), tuple(int(v) for v in rng.integers(0, 256, 3)))
        d = ImageDraw.Draw(img)
        for _ in range(6):
            x, y = rng.integers(0, 110, 2)
            d.rectangle([x, y, x + rng.integers(10, 50), y + rng.integers(10, 50)], fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
        text = f"www.site{i}.example" if target else ""
        if target:
            d.text((6, 100), text, font=font("serif", 12), fill=(0, 0, 0))
        img.save(root / f"{i:03d}.png")
        rows.append({"file": f"{i:03d}.png", "is_target": target, "text": text, "split": "val" if i % 8 >= 6 else "train"})  # val: a target and a benign picture of every 8
    (root / "labels.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return root


def write_masks(root: Path, n: int, seed: int = 0) -> Path:
    """PNG masks, 255 kept and 0 hidden: a few random rectangles hidden each."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        m = np.full((64, 64), 255, np.uint8)
        for _ in range(int(rng.integers(1, 4))):
            x, y = rng.integers(0, 48, 2)
            m[y:y + rng.integers(6, 20), x:x + rng.integers(6, 20)] = 0
        Image.fromarray(m).save(root / f"{i:03d}.png")
    return root
