"""Training and benchmark data for screening, from the synthetic world (`docray.synth` targets)."""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from docray.imageio import decode_image
from docray.screening.augment import copy_edit, region_jitter, to_tensor
from docray.screening.dedup import detail
from docray.screening.templates import DEFAULT_TEMPLATES, cut


def synth_pictures(start: int, stop: int, seed: int = 0, split: str | None = None, size: int = 192):
    """(PIL pictures, table) of synthetic targets rows [start, stop), optionally one split only."""
    from docray.synth import generate

    table = generate("targets", start, stop, seed=seed, size=size)
    if split is not None:
        keep = np.flatnonzero(np.asarray(table.column("split").to_pylist()) == split)
        table = table.take(keep)
    return [decode_image(b) for b in table.column("image").to_pylist()], table


def raw_tiles(pictures, templates=DEFAULT_TEMPLATES, min_detail: float = 12.0) -> list[Image.Image]:
    """Every template's tiles of every picture at their own size, flat ones (nothing to match) left out."""
    return [t.image for p in pictures for tpl in templates for t in cut(p, tpl, None) if detail(t.image) >= min_detail]


def distractor(rng: np.random.Generator) -> Image.Image:
    """A fresh whole picture of any category at a random size and aspect, as uploads carry them
    beside (or instead of) a tile: the descriptor must keep these away from library tiles too."""
    from docray.synth.targets import BENIGN_CATEGORIES, TARGET_CATEGORIES, render_picture

    cats = BENIGN_CATEGORIES + TARGET_CATEGORIES
    size = tuple(int(v) for v in rng.integers(64, 224, 2))
    return render_picture(rng, cats[int(rng.integers(len(cats)))], size)[0]


class CopyPairs(torch.utils.data.Dataset):
    """Pairs (library view, edited copy as an upload's region) of tile i; the library view is clean
    half of the time, and a `grey_rate` share of the copies are turned grey. A `distractor_rate`
    share of the items are fresh whole pictures instead (`distractor`), each its own instance
    (key >= len(tiles))."""

    def __init__(self, tiles: list[Image.Image], image_size: int, length: int, seed: int = 0,
                 distractor_rate: float = 0.0, grey_rate: float = 0.0):
        self.tiles, self.size, self.length, self.seed = tiles, image_size, length, seed
        self.distractor_rate, self.grey_rate = distractor_rate, grey_rate
        self.epoch = 0

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int):
        rng = np.random.default_rng([self.seed, self.epoch, i])
        if rng.random() < self.distractor_rate:
            k, tile = len(self.tiles) + i, distractor(rng)
        else:
            k = int(rng.integers(len(self.tiles)))
            tile = self.tiles[k]
        a = tile if rng.random() < 0.5 else copy_edit(tile, rng, strength=0.5)
        b = region_jitter(copy_edit(tile, rng), rng)
        if rng.random() < self.grey_rate:  # the edit the descriptor finds hardest (measured): more of it
            b = b.convert("L").convert("RGB")
        x = to_tensor([a, b], self.size)  # (2, 3, s, s)
        return x[0], x[1], k


def background_bank(embed, pictures: list[Image.Image], n_distractors: int, seed: int = 0) -> np.ndarray:
    """Descriptors of ordinary content, no library's targets: every template's tiles of `pictures`
    and `n_distractors` whole pictures (`distractor`). Saved with a trained descriptor."""
    rng = np.random.default_rng([seed, 2])
    return embed(raw_tiles(pictures) + [distractor(rng) for _ in range(n_distractors)])
