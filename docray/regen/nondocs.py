"""Images that are not documents: the negatives the document gate is calibrated (and checked) on.

    imgs = non_documents(200, split="calibration")            # 40 of each family, PIL RGB images
    imgs = non_documents(200, split="evaluation", size=(512, 320))

Families (`FAMILIES`), each drawn with PIL/numpy from a seed only:
    noise      uniform, Gaussian or salt-and-pepper noise, grey or colour, at a random grain
    texture    sums of oriented sinusoids (wood, cloth, ripples) and smoothed noise, in two colours
    gradient   linear and radial gradients between random colours
    text_page  a plain page of printed text lines (random words, fonts, sizes), flat or slightly
               turned on a table
    shapes     random rectangles, ellipses, polygons and lines on a plain or gradient ground
    card       a card of no registered type: a coloured or patterned ground, a title band, a photo
               box, label/value lines in a random layout, sometimes a round stamp, lying turned on a
               table (a document the gate must not take for one it knows)
    other_type a document of a random template no registry holds (`docray.synth.documents.
               random_doctype`: its own page, title, captions, fields, portrait and seal slots, English
               or Chinese), drawn and captured by the synthetic world's own code, so only its layout
               tells it from the known types (the benchmark's unknown type is a template file, never drawn here)

Image i of family f in `split` is drawn from `np.random.default_rng([SPLITS[split], FAMILY_NO[f], i])`:
the training, calibration and evaluation splits are different seed streams, never the same image.
The type model learns "none of the known types" on "training" (train_regen's outlier exposure),
thresholds are fitted on "calibration"; tests and benchmarks judge the gate on "evaluation" (and on
images from elsewhere, e.g. the sample pictures packaged with scikit-learn, which are never trained or
calibrated on).
"""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from docray.fonts import font

FAMILIES = ("noise", "texture", "gradient", "text_page", "shapes", "card", "other_type")
FAMILY_NO = {f: i for i, f in enumerate(FAMILIES)}
SPLITS = {"training": 7000, "calibration": 7001, "evaluation": 7002}  # training: train_regen's outlier exposure
WORDS = ("the of and to in is that for it as was with be by on not he this are or his from at which but have an "
         "they you were her she there all one been their has more will would if can when who some out into only "
         "report annual meeting council minutes budget section page table figure results summary notes review "
         "chapter water energy market policy project service system total value number date period account").split()


def _colour(rng) -> np.ndarray:
    return rng.integers(0, 256, 3).astype(np.float32)


def _rgb(rng, lo: int = 0, hi: int = 256) -> tuple[int, int, int]:
    """A random colour for PIL, each channel in [lo, hi)."""
    return tuple(int(v) for v in rng.integers(lo, hi, 3))


def _grid(w: int, h: int) -> tuple[np.ndarray, np.ndarray]:
    return np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))


def _two_tone(t: np.ndarray, rng) -> np.ndarray:
    """(h, w) values in [0, 1] -> (h, w, 3) between two random colours."""
    a, b = _colour(rng), _colour(rng)
    return a + (b - a) * t[..., None]


def noise(rng, w: int, h: int) -> Image.Image:
    grain = int(rng.choice([1, 1, 2, 4, 8]))
    sw, sh = max(1, w // grain), max(1, h // grain)
    c = 3 if rng.random() < 0.6 else 1
    kind = rng.integers(3)
    if kind == 0:
        x = rng.uniform(0, 255, (sh, sw, c))
    elif kind == 1:
        x = rng.normal(rng.uniform(60, 200), rng.uniform(20, 70), (sh, sw, c))
    else:
        x = np.where(rng.random((sh, sw, c)) < rng.uniform(0.05, 0.5), 255.0, 0.0)
        x = np.where(rng.random((sh, sw, c)) < 0.5, x, rng.uniform(0, 255))
    img = Image.fromarray(np.clip(np.broadcast_to(x, (sh, sw, 3)), 0, 255).astype(np.uint8))
    return img.resize((w, h), Image.Resampling.NEAREST if rng.random() < 0.5 else Image.Resampling.BILINEAR)


def texture(rng, w: int, h: int) -> Image.Image:
    x, y = _grid(w, h)
    if rng.random() < 0.7:  # oriented sinusoids: wood grain, cloth, ripples
        t = np.zeros((h, w), np.float32)
        for _ in range(int(rng.integers(1, 4))):
            a, f = rng.uniform(0, np.pi), rng.uniform(0.02, 0.4)
            warp = rng.uniform(0, 8) * np.sin(y * rng.uniform(0.01, 0.05) + rng.uniform(0, 6))
            t += np.sin((x * np.cos(a) + y * np.sin(a) + warp) * f + rng.uniform(0, 6))
        t = (t - t.min()) / max(1e-6, float(t.max() - t.min()))
    else:  # smoothed noise (clouds, stone)
        s = int(rng.integers(4, 24))
        small = rng.random((h // s + 2, w // s + 2)).astype(np.float32)
        t = np.asarray(Image.fromarray((small * 255).astype(np.uint8)).resize((w, h), Image.Resampling.BICUBIC),
                       np.float32) / 255
    rgb = _two_tone(t, rng) + rng.normal(0, rng.uniform(0, 12), (h, w, 1))
    return Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8))


def gradient(rng, w: int, h: int) -> Image.Image:
    x, y = _grid(w, h)
    if rng.random() < 0.5:
        a = rng.uniform(0, 2 * np.pi)
        t = x * np.cos(a) + y * np.sin(a)
    else:
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        t = np.hypot(x - cx, y - cy)
    t = (t - t.min()) / max(1e-6, float(t.max() - t.min()))
    rgb = _two_tone(t ** rng.uniform(0.5, 2), rng) + rng.normal(0, 2, (h, w, 1))
    return Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8))


def text_page(rng, w: int, h: int) -> Image.Image:
    """A plain page of printed text: no template, captions, portrait or seal."""
    pw, ph = (w, h) if rng.random() < 0.5 else (int(w * rng.uniform(0.6, 0.85)), int(h * rng.uniform(0.75, 0.95)))
    paper = _rgb(rng, 225)
    page = Image.new("RGB", (pw, ph), paper)
    d = ImageDraw.Draw(page)
    style = str(rng.choice(["sans", "serif", "mono", "sans-bold", "serif-bold"]))
    size = int(rng.integers(7, 16))
    ink = _rgb(rng, 0, 70)
    y, margin = int(rng.integers(4, 16)), int(rng.integers(4, 24))
    while y < ph - size:
        words = " ".join(str(v) for v in rng.choice(WORDS, int(rng.integers(3, 14))))
        d.text((margin, y), words.capitalize() if rng.random() < 0.5 else words.upper(), font=font(style, size), fill=ink)
        y += int(size * rng.uniform(1.2, 2.2))
    if (pw, ph) == (w, h):
        return page
    table = texture(rng, w, h).filter(ImageFilter.GaussianBlur(2))
    turned = page.convert("RGBA").rotate(float(rng.uniform(-12, 12)), expand=True, resample=Image.Resampling.BICUBIC)
    x0, y0 = int(rng.integers(0, max(1, w - turned.width + 1))), int(rng.integers(0, max(1, h - turned.height + 1)))
    table.paste(turned, (x0, y0), turned)
    return table


def shapes(rng, w: int, h: int) -> Image.Image:
    img = gradient(rng, w, h) if rng.random() < 0.4 else Image.new("RGB", (w, h), _rgb(rng))
    d = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(3, 25))):
        fill = _rgb(rng)
        x0, y0 = rng.uniform(-0.1, 1, 2) * (w, h)
        x1, y1 = x0 + rng.uniform(0.05, 0.6) * w, y0 + rng.uniform(0.05, 0.6) * h
        kind = rng.integers(4)
        if kind == 0:
            d.rectangle([x0, y0, x1, y1], fill=fill)
        elif kind == 1:
            d.ellipse([x0, y0, x1, y1], fill=fill if rng.random() < 0.7 else None, outline=fill, width=3)
        elif kind == 2:
            d.polygon([tuple(p) for p in rng.uniform(0, 1, (int(rng.integers(3, 7)), 2)) * (w, h)], fill=fill)
        else:
            d.line([x0, y0, x1, y1], fill=fill, width=int(rng.integers(1, 8)))
    return img


def card(rng, w: int, h: int) -> Image.Image:
    cw, ch = int(w * rng.uniform(0.7, 0.95)), int(h * rng.uniform(0.7, 0.95))
    ground = gradient(rng, cw, ch) if rng.random() < 0.4 else texture(rng, cw, ch) if rng.random() < 0.3 else \
        Image.new("RGB", (cw, ch), _rgb(rng, 150))
    img = Image.blend(ground, Image.new("RGB", (cw, ch), (255, 255, 255)), float(rng.uniform(0.3, 0.8)))
    d = ImageDraw.Draw(img)
    ink, style = _rgb(rng, 0, 90), str(rng.choice(["sans", "serif", "sans-bold", "mono"]))
    band = int(ch * rng.uniform(0.1, 0.22))
    if rng.random() < 0.7:
        d.rectangle([0, 0, cw, band], fill=_rgb(rng))
    d.text((int(cw * rng.uniform(0.03, 0.3)), band // 4), " ".join(rng.choice(WORDS, 3)).upper(),
           font=font("sans-bold", max(8, band // 2)), fill=ink)
    left = rng.random() < 0.5  # the photo box on the left or the right
    pw, ph = int(cw * rng.uniform(0.2, 0.32)), int(ch * rng.uniform(0.4, 0.6))
    px = int(cw * 0.04) if left else cw - pw - int(cw * 0.04)
    py = int(band + (ch - band - ph) * rng.uniform(0.2, 0.8))
    d.rectangle([px, py, px + pw, py + ph], fill=_rgb(rng, 60, 220))
    d.ellipse([px + pw * 0.25, py + ph * 0.15, px + pw * 0.75, py + ph * 0.6], fill=_rgb(rng, 120, 240))
    x0 = int(cw * 0.06) if not left else px + pw + int(cw * 0.05)
    size, y = int(rng.integers(8, 14)), band + int(rng.integers(6, 18))
    while y < ch - size - 4:
        label = " ".join(rng.choice(WORDS, int(rng.integers(1, 3)))).upper()
        value = " ".join(rng.choice(WORDS, int(rng.integers(1, 4)))).title() if rng.random() < 0.6 else \
            "".join(str(v) for v in rng.integers(0, 10, int(rng.integers(4, 12))))
        d.text((x0, y), f"{label}: {value}" if rng.random() < 0.5 else label, font=font(style, size), fill=ink)
        y += int(size * rng.uniform(1.3, 2.4))
    if rng.random() < 0.4:  # a round stamp
        r, cx, cy = ch * rng.uniform(0.12, 0.2), cw * rng.uniform(0.5, 0.9), ch * rng.uniform(0.5, 0.85)
        d.ellipse([cx - r, cy - r, cx + r, cy + r], outline=_rgb(rng), width=3)
    table = texture(rng, w, h).filter(ImageFilter.GaussianBlur(2))
    turned = img.convert("RGBA").rotate(float(rng.uniform(-10, 10)), expand=True, resample=Image.Resampling.BICUBIC)
    turned = turned.resize((min(w, turned.width), min(h, turned.height)))
    table.paste(turned, (int(rng.integers(0, w - turned.width + 1)), int(rng.integers(0, h - turned.height + 1))), turned)
    return table


def other_type(rng, w: int, h: int) -> Image.Image:
    from docray.synth.documents import unregistered_capture  # here: the other families need no docray.synth

    return unregistered_capture(rng, (w, h))


_DRAW = {"noise": noise, "texture": texture, "gradient": gradient, "text_page": text_page, "shapes": shapes,
         "card": card, "other_type": other_type}


def non_document(family: str, i: int, split: str = "calibration", size: tuple[int, int] = (384, 240)) -> Image.Image:
    """Image `i` of `family` in `split` (w, h = `size`), an RGB PIL image."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {list(SPLITS)}, got {split!r}")
    if family not in FAMILY_NO:
        raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")
    rng = np.random.default_rng([SPLITS[split], FAMILY_NO[family], int(i)])
    return _DRAW[family](rng, int(size[0]), int(size[1]))


def family_names(n: int, families: tuple[str, ...] = FAMILIES) -> list[str]:
    """The family of each image `non_documents(n, families=families)` draws (for the calibration report)."""
    return [families[k % len(families)] for k in range(n)]


def non_documents(n: int, split: str = "calibration", size: tuple[int, int] = (384, 240),
                  families: tuple[str, ...] = FAMILIES, start: int = 0) -> list[Image.Image]:
    """`n` images, the families taking turns (image k is `non_document(families[k % F], start + k // F)`)."""
    return [non_document(families[k % len(families)], start + k // len(families), split, size) for k in range(n)]
