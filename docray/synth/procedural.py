"""Procedural pictures for training the tile descriptor past the drawn world of posters.

    img = draw("voronoi", rng, (192, 192))     # one family's RGB picture
    FAMILIES                                   # every family's name

Families: random polygon compositions with transparency, Voronoi cells, wave interference,
fractal value noise (Perlin-like), iterated-function-system fractals, each coloured by a random
palette, and the synthetic world's faces and documents. Procedural images train descriptors that
transfer to real ones ("Learning to See by Looking at Noise", NeurIPS 2021). These are kept apart
from the screening benchmark's upload backgrounds (`docray.screening.backgrounds.BACKGROUNDS`:
dead leaves, spectral noise, gradients, collages, patterns), so the benchmark's backdrops stay
pictures the descriptor never saw. Every picture is drawn from `rng` alone.
"""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from docray.synth.common import rand_color

FAMILIES = ("polygons", "voronoi", "waves", "value_noise", "ifs", "faces", "documents")


def palette(rng: np.random.Generator, t: np.ndarray, n: int = 5) -> np.ndarray:
    """Values `t` in [0, 1] (any shape) coloured through `n` random colours: uint8 (..., 3)."""
    stops, colours = np.linspace(0, 1, n), rng.integers(0, 256, (n, 3)).astype(np.float32)
    t = np.clip(t, 0, 1)
    return np.stack([np.interp(t, stops, colours[:, c]) for c in range(3)], -1).astype(np.uint8)


def _normalise(x: np.ndarray) -> np.ndarray:
    return (x - x.min()) / (np.ptp(x) + 1e-8)


def polygons(rng: np.random.Generator, size: tuple[int, int]) -> Image.Image:
    """10-40 random polygons and ellipses, half-transparent, over a plain colour."""
    w, h = size
    img = Image.new("RGBA", size, rand_color(rng) + (255,))
    for _ in range(int(rng.integers(10, 41))):
        layer = Image.new("RGBA", size, (0, 0, 0, 0))
        d = ImageDraw.Draw(layer)
        fill = rand_color(rng) + (int(rng.integers(90, 256)),)
        cx, cy, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(0.03, 0.35) * min(w, h)
        if rng.random() < 0.3:
            d.ellipse([cx - r, cy - r * rng.uniform(0.3, 1), cx + r, cy + r * rng.uniform(0.3, 1)], fill=fill)
        else:
            k = int(rng.integers(3, 8))
            angles = np.sort(rng.uniform(0, 2 * np.pi, k))
            radii = r * rng.uniform(0.4, 1.0, k)
            d.polygon([(float(cx + a * np.cos(t)), float(cy + a * np.sin(t))) for a, t in zip(radii, angles)], fill=fill)
        img = Image.alpha_composite(img, layer)
    return img.convert("RGB")


def voronoi(rng: np.random.Generator, size: tuple[int, int]) -> Image.Image:
    """Cells of the nearest of 8-80 random seeds, coloured by a palette, shaded by the distance to the seed."""
    w, h = size
    n = int(rng.integers(8, 81))
    seeds = rng.uniform(0, 1, (n, 2)) * [w, h]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    best, nearest = np.full((h, w), np.inf, np.float32), np.zeros((h, w), np.int64)
    for k, (sx, sy) in enumerate(seeds):  # one seed at a time: memory of one picture, whatever n
        d = (xx - sx) ** 2 + (yy - sy) ** 2
        closer = d < best
        best[closer], nearest[closer] = d[closer], k
    colours = palette(rng, rng.random(n))  # (n, 3)
    shade = 1 - rng.uniform(0, 0.6) * _normalise(np.sqrt(best))
    return Image.fromarray((colours[nearest] * shade[..., None]).astype(np.uint8))


def waves(rng: np.random.Generator, size: tuple[int, int]) -> Image.Image:
    """2-5 plane or circular waves at random orientations and wavelengths, summed and coloured by a palette."""
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    total = np.zeros((h, w), np.float32)
    for _ in range(int(rng.integers(2, 6))):
        period = rng.uniform(4, 0.7 * max(w, h))
        if rng.random() < 0.3:  # circular, from a random centre
            s = np.hypot(xx - rng.uniform(0, w), yy - rng.uniform(0, h))
        else:
            t = rng.uniform(0, np.pi)
            s = np.cos(t) * xx + np.sin(t) * yy
        total += rng.uniform(0.3, 1) * np.sin(2 * np.pi * s / period + rng.uniform(0, 2 * np.pi))
    return Image.fromarray(palette(rng, _normalise(total), int(rng.integers(2, 7))))


def value_noise(rng: np.random.Generator, size: tuple[int, int]) -> Image.Image:
    """Fractal value noise (Perlin-like): octaves of random grids upsampled smoothly, each at half the
    amplitude of the last, optionally turbulent (|noise|) or banded, coloured by a palette."""
    w, h = size
    total, amp, cells = np.zeros((h, w), np.float32), 1.0, int(rng.integers(2, 6))
    for _ in range(int(rng.integers(3, 7))):
        grid = Image.fromarray(rng.uniform(-1, 1, (cells + 1, cells + 1)).astype(np.float32), mode="F")
        total += amp * np.asarray(grid.resize((w, h), Image.BICUBIC), np.float32)
        amp, cells = amp * rng.uniform(0.4, 0.65), cells * 2
    style = int(rng.integers(3))
    t = np.abs(total) if style == 1 else (np.sin(total * rng.uniform(4, 16)) if style == 2 else total)
    return Image.fromarray(palette(rng, _normalise(t), int(rng.integers(3, 8))))


def ifs(rng: np.random.Generator, size: tuple[int, int], points: int = 4000, steps: int = 24) -> Image.Image:
    """An iterated-function-system fractal: the chaos game of 2-5 random contracting affine maps, its
    log density coloured by a palette."""
    w, h = size
    k = int(rng.integers(2, 6))
    lin, shift = rng.uniform(-1, 1, (k, 2, 2)), rng.uniform(-1, 1, (k, 2))
    lin *= (rng.uniform(0.3, 0.9, k) / np.linalg.norm(lin, 2, axis=(1, 2)))[:, None, None]  # contracting
    p, seen = rng.uniform(-1, 1, (points, 2)), []
    for step in range(steps):
        m = rng.integers(k, size=points)
        p = np.einsum("nij,nj->ni", lin[m], p) + shift[m]
        if step >= 6:  # on the attractor by now
            seen.append(p)
    q = np.concatenate(seen)
    lo, hi = np.percentile(q, 1, 0), np.percentile(q, 99, 0)
    xy = ((q - lo) / (hi - lo + 1e-8) * 0.9 + 0.05) * [w - 1, h - 1]
    xy = xy[((xy >= 0) & (xy <= [w - 1, h - 1])).all(1)].astype(int)
    hist = np.zeros((h, w), np.float32)
    np.add.at(hist, (xy[:, 1], xy[:, 0]), 1)
    t = np.log1p(hist) / (np.log1p(hist.max()) + 1e-8)
    img = Image.fromarray(palette(rng, t if rng.random() < 0.5 else 1 - t, int(rng.integers(3, 6))))
    return img.filter(ImageFilter.GaussianBlur(float(rng.uniform(0, 0.8))))


def face(rng: np.random.Generator, size: tuple[int, int]) -> Image.Image:
    """One of the synthetic world's faces (docray.synth.faces), any of 4096 identities, posed and lit at random."""
    from docray.synth import faces

    return faces.render_face(faces.face_geometry(int(rng.integers(4096))), faces.sample_pose(rng), size, rng)


def document(rng: np.random.Generator, size: tuple[int, int]) -> Image.Image:
    """One of the synthetic world's documents (docray.synth.documents, a built-in type with fields,
    portrait and seal) flat on a table surface, at 60, 80 or 100% of the picture's size."""
    from docray.doctypes import doc_rect, registry
    from docray.synth import documents
    from docray.synth.captures import table_texture
    from docray.synth.templates import N_VARIANTS, static_layer

    w, h = size
    cfg = documents.DocumentsConfig(tamper_rate=0.0)
    reg = registry()
    type_no = reg.index(cfg.names[int(rng.integers(len(cfg.names)))])
    s = (0.6, 0.8, 1.0)[int(rng.integers(3))]  # few sizes: the types' static layers are cached by size
    _, _, dw, dh = doc_rect((max(16, int(w * s)), max(16, int(h * s))), reg[type_no].aspect)
    layer = static_layer(type_no, int(rng.integers(N_VARIANTS)), dw, dh)
    doc = documents._flat_document(reg[type_no], layer, cfg, rng)[0].image
    img = Image.fromarray(np.array(table_texture(int(rng.integers(documents.N_TABLES)), w, h), np.uint8))
    img.paste(doc, (int(rng.integers(0, w - dw + 1)), int(rng.integers(0, h - dh + 1))))
    return img


_DRAW = {"polygons": polygons, "voronoi": voronoi, "waves": waves, "value_noise": value_noise, "ifs": ifs,
         "faces": face, "documents": document}


def draw(family: str, rng: np.random.Generator, size: tuple[int, int]) -> Image.Image:
    """An RGB picture of `size` (w, h) of one of FAMILIES, drawn from `rng` alone."""
    if family not in _DRAW:
        raise ValueError(f"unknown procedural family {family!r}; known: {', '.join(FAMILIES)}")
    return _DRAW[family](rng, tuple(int(v) for v in size)).convert("RGB")
