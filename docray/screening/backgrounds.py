"""Procedural photo-like and textured backgrounds, and tiles pasted into them (uploads where the
picture is not laid out on a plain page: a photo, a collage, a screenshot).

    bg = background(rng, (640, 480))                  # one of BACKGROUNDS, chosen at random
    up = paste_upload(tile, rng)                     # {"image", "box", "background"}
    up = paste_upload(tile, rng, group="texture")    # a background of GROUPS["texture"]

Every picture is drawn from the generator alone (dead-leaves, 1/f spectral noise, gradients,
collages of the synthetic world's benign pictures, periodic patterns); nothing is read from the sample images that ship
inside packages (those are kept for independent checks).
"""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

BACKGROUNDS = ("dead_leaves", "spectral_noise", "gradient", "collage", "pattern")
# photo-like: natural-image statistics, skies and walls, photos of things; textured: noise and repeated motifs
GROUPS = {"photo": ("dead_leaves", "gradient", "collage"), "texture": ("spectral_noise", "pattern")}


def dead_leaves(rng: np.random.Generator, size: tuple[int, int], n: int = 400) -> Image.Image:
    """Occluding discs with power-law radii (the dead-leaves model of natural image statistics)."""
    w, h = size
    img = Image.new("RGB", size, tuple(int(c) for c in rng.integers(0, 256, 3)))
    d = ImageDraw.Draw(img)
    rmin, rmax = 0.01 * max(w, h), 0.25 * max(w, h)
    u = rng.random(n)  # radii ~ r^-3 between rmin and rmax (inverse CDF)
    radii = (rmin ** -2 - u * (rmin ** -2 - rmax ** -2)) ** -0.5
    for r in np.sort(radii)[::-1]:  # large leaves first: small ones fall on top
        x, y = rng.uniform(-r, w + r), rng.uniform(-r, h + r)
        d.ellipse((x - r, y - r, x + r, y + r), fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
    return img.filter(ImageFilter.GaussianBlur(float(rng.uniform(0, 1.5))))


def spectral_noise(rng: np.random.Generator, size: tuple[int, int]) -> Image.Image:
    """Coloured noise with a 1/f^alpha amplitude spectrum (alpha 1-2.5: from grainy to cloud-like)."""
    w, h = size
    fy, fx = np.meshgrid(np.fft.fftfreq(h), np.fft.rfftfreq(w), indexing="ij")  # (h, w//2+1)
    f = np.sqrt(fx ** 2 + fy ** 2)
    f[0, 0] = 1.0
    amp = f ** -rng.uniform(1.0, 2.5)
    chans = []
    for _ in range(3):
        phase = np.exp(2j * np.pi * rng.random(amp.shape))
        x = np.fft.irfft2(amp * phase, s=(h, w))
        chans.append((x - x.mean()) / (x.std() + 1e-8))
    a = np.stack(chans, -1) @ rng.normal(0, 1, (3, 3))  # mix channels: correlated colours
    a = 128 + 50 * a / (a.std() + 1e-8) + rng.uniform(-40, 40, 3)
    return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))


def gradient(rng: np.random.Generator, size: tuple[int, int]) -> Image.Image:
    """A linear colour gradient at a random angle, with mild grain (a sky, a wall, a screenshot backdrop)."""
    w, h = size
    t = rng.uniform(0, np.pi)
    yy, xx = np.mgrid[0:h, 0:w]
    s = (np.cos(t) * xx + np.sin(t) * yy)
    s = (s - s.min()) / (np.ptp(s) + 1e-8)
    c0, c1 = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    a = c0 + s[..., None] * (c1 - c0) + rng.normal(0, rng.uniform(0, 6), (h, w, 1))
    return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))


def collage(rng: np.random.Generator, size: tuple[int, int]) -> Image.Image:
    """The synthetic world's benign pictures (landscapes, shapes, products, text posters) scaled and
    overlapping edge to edge: a busy photo-like backdrop with straight edges of its own."""
    from docray.synth.targets import BENIGN_CATEGORIES, render_picture

    w, h = size
    img = dead_leaves(rng, size, 60)
    for _ in range(int(rng.integers(3, 7))):
        s = int(rng.uniform(0.3, 0.7) * min(w, h))
        pic = render_picture(rng, BENIGN_CATEGORIES[int(rng.integers(len(BENIGN_CATEGORIES)))], (s, s))[0]
        img.paste(pic, (int(rng.integers(-s // 3, w - s // 2)), int(rng.integers(-s // 3, h - s // 2))))
    return img


def pattern(rng: np.random.Generator, size: tuple[int, int]) -> Image.Image:
    """A repeated motif in two colours with grain: stripes or a checker of gratings at a random angle
    and period, or a brick wall (axis-aligned, so full of straight edges of its own), or a grid of dots."""
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    style = ("stripes", "checker", "bricks", "dots")[int(rng.integers(4))]
    period = rng.uniform(6, 40)
    t = rng.uniform(0, np.pi)
    u, v = np.cos(t) * xx + np.sin(t) * yy, -np.sin(t) * xx + np.cos(t) * yy
    if style == "stripes":
        m = 0.5 + 0.5 * np.sin(2 * np.pi * u / period)
    elif style == "checker":
        m = (np.sin(2 * np.pi * u / period) * np.sin(2 * np.pi * v / period) > 0).astype(np.float64)
    elif style == "bricks":
        bh = round(period)
        bw = 2 * bh
        row = (yy // bh).astype(int)
        m = ((yy % bh < 2) | ((xx + (row % 2) * bw / 2) % bw < 2)).astype(np.float64)  # mortar lines
    else:
        m = ((u % period - period / 2) ** 2 + (v % period - period / 2) ** 2 < (rng.uniform(0.15, 0.4) * period) ** 2)
        m = m.astype(np.float64)
    c0, c1 = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    a = c0 + m[..., None] * (c1 - c0) + rng.normal(0, rng.uniform(2, 12), (h, w, 1))
    img = Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))
    return img.filter(ImageFilter.GaussianBlur(float(rng.uniform(0, 1.0))))


def background(rng: np.random.Generator, size: tuple[int, int], kind: str | None = None) -> Image.Image:
    """One background of `kind` (one of BACKGROUNDS; None: chosen at random)."""
    kind = kind or BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
    draw = {"dead_leaves": dead_leaves, "spectral_noise": spectral_noise, "gradient": gradient, "collage": collage,
            "pattern": pattern}
    if kind not in draw:
        raise ValueError(f"unknown background {kind!r}; known: {', '.join(BACKGROUNDS)}")
    return draw[kind](rng, size)


def paste_upload(tile: Image.Image, rng: np.random.Generator, kind: str | None = None,
                 size_range: tuple[int, int] = (320, 720), scale: tuple[float, float] = (0.15, 0.5),
                 group: str | None = None) -> dict:
    """`tile` pasted at a random position into a background picture of `kind` (None: one of `group`'s
    kinds, GROUPS, or of all), its longer side a random share (`scale`) of the background's shorter
    side. Returns {"image", "box" (x0, y0, x1, y1), "background"}."""
    if group is not None and group not in GROUPS:
        raise ValueError(f"unknown background group {group!r}; known: {', '.join(GROUPS)}")
    kinds = GROUPS[group] if group is not None else BACKGROUNDS
    kind = kind or kinds[int(rng.integers(len(kinds)))]
    w, h = (int(v) for v in rng.integers(size_range[0], size_range[1] + 1, 2))
    img = background(rng, (w, h), kind)
    s = rng.uniform(*scale) * min(w, h) / max(tile.size)
    t = tile.convert("RGB").resize((max(8, round(tile.width * s)), max(8, round(tile.height * s))), Image.BILINEAR)
    x, y = int(rng.integers(0, w - t.width + 1)), int(rng.integers(0, h - t.height + 1))
    img.paste(t, (x, y))
    return {"image": img, "box": (x, y, x + t.width, y + t.height), "background": kind}
