"""Screening targets: text posters carrying an address or URL, and benign distractor pictures.

Kind "targets" (about half targets). Columns:
    id            str      "tgt-<seed>-<i>"
    image         binary   PNG, size x size RGB
    is_target     bool     a poster carrying an address or URL
    category      str      address_poster | url_poster (targets); landscape | shapes | product |
                           text_poster (benign; text_poster carries harmless text); with `mix`, a
                           procedural family (docray.synth.procedural.FAMILIES)
    text          str      the address/URL; the harmless text of a text_poster or a procedural
                           picture's overlay; '' otherwise
    text_box      list<int32>  box of `text` in image px, [] without text
    release_time  timestamp[s, tz=UTC]  spread over 2024
    source_id     str      "src-NNN", one of 64 sources
    split         str      'train' | 'val' | 'test' (i % 10: 8 -> val, 9 -> test)

Option `mix` (default 0: posters only, as always) draws that share of the rows from procedural
families instead (`families`, default all of docray.synth.procedural.FAMILIES): random shapes,
Voronoi cells, waves, fractal noise, IFS fractals, faces and documents, each a target when it
carries an address or URL overlaid (a `target_rate` share, in Latin or Chinese), else a harmless
overlay or none. Whether row i is procedural and what it shows come from their own stream
(seed, kind, i, 1), so the other rows are the posters they are without the mix.

`make_upload(tile, rng)` composes an "upload" (a post with a caption and a few pictures) that
carries one given tile among ordinary distractor pictures.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
from PIL import Image, ImageDraw

from docray.datasets import contracts
from docray.fonts import CJK_STYLES
from docray.synth import procedural
from docray.synth import text as texts
from docray.synth.common import FONT_STYLES, font, mix, png, rand_color, split_of

KIND_NO = 3
EPOCH_2024 = 1_704_067_200  # 2024-01-01T00:00:00Z
N_SOURCES = 64
TARGET_CATEGORIES = ("address_poster", "url_poster")
BENIGN_CATEGORIES = ("landscape", "shapes", "product", "text_poster")
HARMLESS = ("SUMMER SALE", "Happy Birthday", "Welcome home", "Fresh bread daily", "Open 7 days", "Thank you",
            "Good morning", "Best coffee", "New arrivals", "Keep calm", "Team outing", "Garden party")
SCHEMA = contracts.TARGETS  # the dataset contract (docray.datasets.contracts), written exactly


@dataclass
class TargetsConfig:
    size: int = 192  # pictures are size x size
    target_rate: float = 0.5  # fraction of sensitive posters
    mix: float = 0.0  # share of rows drawn from procedural families instead of posters (0: posters only)
    families: tuple = ()  # the procedural families drawn (docray.synth.procedural.FAMILIES); () = all

    def check(self):
        if not 32 <= int(self.size) <= 2048:
            raise ValueError(f"targets: size must be in [32, 2048], got {self.size}")
        if not 0 <= self.target_rate <= 1:
            raise ValueError(f"targets: target_rate must be in [0, 1], got {self.target_rate}")
        if not 0 <= self.mix <= 1:
            raise ValueError(f"targets: mix must be in [0, 1], got {self.mix}")
        unknown = sorted(set(self.families) - set(procedural.FAMILIES))
        if unknown:
            raise ValueError(f"targets: unknown families {unknown}; known: {', '.join(procedural.FAMILIES)}")


def _luma(c) -> float:
    return 0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2]


def _background(rng: np.random.Generator, w: int, h: int) -> Image.Image:
    """Solid, two-colour gradient or stripes."""
    c1, c2 = rand_color(rng), rand_color(rng)
    kind = int(rng.integers(3))
    if kind == 0:
        return Image.new("RGB", (w, h), c1)
    t = np.linspace(0, 1, h, dtype=np.float32)[:, None] * np.ones((1, w), np.float32)
    if kind == 2:
        y, x = np.mgrid[0:h, 0:w]
        t = ((x + y) // max(4, int(rng.integers(6, 24))) % 2).astype(np.float32) * 0.35
    arr = np.float32(c1) * (1 - t[..., None]) + np.float32(c2) * t[..., None]
    return Image.fromarray(arr.astype(np.uint8))


def _shapes(d: ImageDraw.ImageDraw, rng: np.random.Generator, w: int, h: int, n: int):
    """n random graphic elements: discs, boxes, triangles, thick lines, stars."""
    for _ in range(n):
        c, k = rand_color(rng), int(rng.integers(5))
        x, y = rng.uniform(0, w), rng.uniform(0, h)
        r = rng.uniform(0.05, 0.25) * min(w, h)
        if k == 0:
            d.ellipse([x - r, y - r, x + r, y + r], fill=c)
        elif k == 1:
            d.rectangle([x - r, y - r * 0.6, x + r, y + r * 0.6], fill=c)
        elif k == 2:
            d.polygon([(x, y - r), (x - r, y + r), (x + r, y + r)], fill=c)
        elif k == 3:
            d.line([(x, y), (rng.uniform(0, w), rng.uniform(0, h))], fill=c, width=max(1, int(r / 5)))
        else:
            d.polygon([(x + r * (1 if j % 2 == 0 else 0.45) * math.sin(j * math.pi / 5),
                        y - r * (1 if j % 2 == 0 else 0.45) * math.cos(j * math.pi / 5)) for j in range(10)], fill=c)


def _wrap(s: str, f, width: float) -> list[str] | None:
    """Greedy wrap at spaces and before URL path slashes; None if one piece alone is too wide."""
    pieces = [p for tok in re.findall(r"\S+\s*", s) for p in re.split(r"(?<=[^/:])(?=/[^/])|(?<=\.)(?=\w{3})", tok)]
    lines, cur = [], ""
    for p in pieces:
        if f.getlength(p.strip()) > width:
            return None
        if cur and f.getlength((cur + p).strip()) > width:
            lines.append(cur.strip())
            cur = ""
        cur += p
    return lines + [cur.strip()]


def _text_block(img: Image.Image, rng: np.random.Generator, s: str, big: bool, styles=FONT_STYLES) -> list[int]:
    """Draw `s` wrapped and large in one of `styles`, on a panel when contrast is low; returns its box."""
    w, h = img.size
    d = ImageDraw.Draw(img)
    style = styles[int(rng.integers(len(styles)))]
    size = int(min(w, h) * rng.uniform(0.10, 0.16 if big else 0.13))
    while True:
        f = font(style, size)
        lines = _wrap(s, f, w * 0.88)
        if (lines is not None and len(lines) <= 3) or size <= 6:
            break
        size -= 1
    lines = lines or [s]
    lh = int(size * 1.2)
    x0, y0 = rng.uniform(0.04, 0.1) * w, rng.uniform(0.05, max(0.06, 0.95 - len(lines) * lh / h)) * h
    x1, y1 = min(w, x0 + max(f.getlength(t) for t in lines)), min(h, y0 + lh * len(lines))
    under = np.asarray(img.crop((int(x0), int(y0), int(x1) + 1, int(y1) + 1)), np.float32).reshape(-1, 3)
    bg, busy = under.mean(0), float(under.std(0).mean()) > 40
    color = rand_color(rng)
    if busy or abs(_luma(color) - _luma(bg)) < 90:  # not readable as is: plain colour, maybe a panel
        color = (255, 255, 255) if _luma(bg) < 128 else (15, 15, 15)
        if busy or rng.random() < 0.5:
            panel = (25, 25, 35) if color[0] > 128 else (235, 235, 225)
            d.rectangle([x0 - 4, y0 - 3, x1 + 4, y1 + 3], fill=panel)
    boxes = []
    for k, line in enumerate(lines):
        d.text((x0, y0 + k * lh), line, font=f, fill=color)
        boxes.append(d.textbbox((x0, y0 + k * lh), line, font=f))
    b = [min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes), max(b[3] for b in boxes)]
    return [max(0, int(b[0])), max(0, int(b[1])), min(w, int(math.ceil(b[2]))), min(h, int(math.ceil(b[3])))]


def _landscape(rng, w, h) -> Image.Image:
    sky_top, sky_bot = rand_color(rng, 60, 200), rand_color(rng, 150, 256)
    t = np.linspace(0, 1, h, dtype=np.float32)[:, None, None]
    img = Image.fromarray((np.float32(sky_top) * (1 - t) + np.float32(sky_bot) * t).repeat(w, 1).astype(np.uint8))
    d = ImageDraw.Draw(img)
    sx, sy, sr = rng.uniform(0.1, 0.9) * w, rng.uniform(0.1, 0.4) * h, rng.uniform(0.05, 0.12) * w
    d.ellipse([sx - sr, sy - sr, sx + sr, sy + sr], fill=rand_color(rng, 200, 256))
    for layer in range(int(rng.integers(1, 4))):  # mountain ridges, darker in front
        base = h * (0.45 + 0.15 * layer)
        xs = np.linspace(0, w, int(rng.integers(4, 9)))
        pts = [(0, h)] + [(float(x), float(base - rng.uniform(0, 0.3) * h)) for x in xs] + [(w, h)]
        d.polygon(pts, fill=mix(rand_color(rng, 40, 160), (0, 0, 0), 0.2 * layer))
    return img


def _product(rng, w, h) -> Image.Image:
    img = Image.new("RGB", (w, h), rand_color(rng, 190, 256))
    d = ImageDraw.Draw(img)
    cx, bw, bh = w / 2 + rng.uniform(-0.1, 0.1) * w, rng.uniform(0.2, 0.35) * w, rng.uniform(0.35, 0.6) * h
    top, c = h * 0.85 - bh, rand_color(rng, 0, 220)
    d.ellipse([cx - bw * 1.2, h * 0.82, cx + bw * 1.2, h * 0.9], fill=mix(img.getpixel((0, 0)), (0, 0, 0), 0.3))  # shadow
    if rng.random() < 0.5:  # bottle
        d.rounded_rectangle([cx - bw / 2, top, cx + bw / 2, h * 0.86], radius=bw / 3, fill=c)
        d.rectangle([cx - bw / 6, top - bh * 0.3, cx + bw / 6, top + 2], fill=c)
    else:  # box
        d.rectangle([cx - bw / 2, top, cx + bw / 2, h * 0.86], fill=c)
        d.polygon([(cx - bw / 2, top), (cx - bw / 4, top - bw / 4), (cx + bw * 0.75, top - bw / 4), (cx + bw / 2, top)],
                  fill=mix(c, (255, 255, 255), 0.3))
    d.rectangle([cx - bw * 0.4, top + bh * 0.35, cx + bw * 0.4, top + bh * 0.6], fill=rand_color(rng))  # label
    return img


def render_picture(rng: np.random.Generator, category: str, size=(192, 192)) -> tuple[Image.Image, str, list[int]]:
    """(picture, text, text_box) of one category (see the module docstring)."""
    w, h = size
    if category == "landscape":
        return _landscape(rng, w, h), "", []
    if category == "product":
        return _product(rng, w, h), "", []
    img = _background(rng, w, h)
    _shapes(ImageDraw.Draw(img), rng, w, h, int(rng.integers(1, 5) if category != "shapes" else rng.integers(4, 10)))
    if category == "shapes":
        return img, "", []
    s = {"address_poster": texts.address, "url_poster": texts.url}.get(category, lambda r: HARMLESS[int(r.integers(len(HARMLESS)))])(rng)
    return img, s, _text_block(img, rng, s, big=category != "text_poster")


def make_upload(tile: Image.Image, rng: np.random.Generator, n_pictures: int = 3, size=(384, 256)) -> dict:
    """An upload (a post with a caption and `n_pictures` pictures) that carries `tile` as one of them.

    Returns {"image": RGB PIL image of `size`, "boxes": every picture's box, "tile_box": the tile's box}.
    """
    if n_pictures < 1:
        raise ValueError(f"make_upload: n_pictures must be >= 1, got {n_pictures}")
    w, h = size
    img = Image.new("RGB", (w, h), rand_color(rng, 225, 256))
    d = ImageDraw.Draw(img)
    cap_h = int(0.14 * h)
    caption = f"{texts.name(rng)}: {HARMLESS[int(rng.integers(len(HARMLESS)))].lower()} in {texts.city(rng)}"
    d.text((0.03 * w, 0.03 * h), caption, font=font("sans", max(6, int(cap_h * 0.45))), fill=(30, 30, 40))
    cols = math.ceil(n_pictures / (1 if n_pictures <= 3 else 2))
    rows = math.ceil(n_pictures / cols)
    sw, sh = (w - 8) / cols, (h - cap_h - 8) / rows
    which, boxes, tile_box = int(rng.integers(n_pictures)), [], []
    for k in range(n_pictures):
        r, c = divmod(k, cols)
        if k == which:
            pic = tile.convert("RGB")
        else:
            pic = render_picture(rng, BENIGN_CATEGORIES[int(rng.integers(3))], (int(sw), int(sh)))[0]
        s = min(sw / pic.width, sh / pic.height) * rng.uniform(0.75, 0.95)
        pic = pic.resize((max(1, int(pic.width * s)), max(1, int(pic.height * s))), Image.Resampling.BILINEAR)
        x = int(4 + c * sw + rng.uniform(0, sw - pic.width))
        y = int(cap_h + 4 + r * sh + rng.uniform(0, sh - pic.height))
        img.paste(pic, (x, y))
        boxes.append([x, y, x + pic.width, y + pic.height])
        if k == which:
            tile_box = boxes[-1]
    return {"image": img, "boxes": boxes, "tile_box": tile_box}


def procedural_picture(rng: np.random.Generator, family: str, is_target: bool,
                       size=(192, 192)) -> tuple[Image.Image, str, list[int]]:
    """(picture, text, text_box) of a procedural `family` with an address or URL overlaid (a target),
    else a harmless text or a name half of the time; a third of the texts are Chinese (CJK fonts)."""
    img = procedural.draw(family, rng, size)
    if not is_target and rng.random() < 0.5:
        return img, "", []
    zh = rng.random() < 1 / 3
    if is_target:
        make = (texts.zh_address,) if zh else (texts.address, texts.url)
    else:
        make = (texts.zh_name,) if zh else (texts.name, lambda r: HARMLESS[int(r.integers(len(HARMLESS)))])
    s = make[int(rng.integers(len(make)))](rng)
    return img, s, _text_block(img, rng, s, big=is_target, styles=CJK_STYLES if zh else FONT_STYLES)


def _procedural_row(i: int, rng: np.random.Generator, seed: int, cfg: TargetsConfig) -> dict:
    families = tuple(cfg.families) or procedural.FAMILIES
    is_target = bool(rng.random() < cfg.target_rate)
    family = families[int(rng.integers(len(families)))]
    img, s, box = procedural_picture(rng, family, is_target, (cfg.size, cfg.size))
    return {
        "id": f"tgt-{seed}-{i:07d}", "image": png(img), "is_target": is_target, "category": family, "text": s,
        "text_box": box, "release_time": EPOCH_2024 + int(rng.integers(0, 366 * 86400)),
        "source_id": f"src-{int(rng.integers(N_SOURCES)):03d}", "split": split_of(i),
    }


def make_row(i: int, rng: np.random.Generator, seed: int, cfg: TargetsConfig) -> dict:
    """Row i of the targets set: a poster, or (a `mix` share) a procedural picture."""
    if cfg.mix > 0:
        own = np.random.default_rng([int(seed), KIND_NO, int(i), 1])  # its own stream: posters unchanged
        if own.random() < cfg.mix:
            return _procedural_row(i, own, seed, cfg)
    is_target = bool(rng.random() < cfg.target_rate)
    cats = TARGET_CATEGORIES if is_target else BENIGN_CATEGORIES
    category = cats[int(rng.integers(len(cats)))]
    img, s, box = render_picture(rng, category, (cfg.size, cfg.size))
    return {
        "id": f"tgt-{seed}-{i:07d}", "image": png(img), "is_target": is_target, "category": category, "text": s,
        "text_box": box, "release_time": EPOCH_2024 + int(rng.integers(0, 366 * 86400)),
        "source_id": f"src-{int(rng.integers(N_SOURCES)):03d}", "split": split_of(i),
    }
