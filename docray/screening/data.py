"""Training data of the descriptor: pictures (the `targets` contract: id, image) -> tiles -> pairs of views.

    for p in range(passes_per_epoch(2)):            # 18 passes: every tile of a picture once an epoch
        pairs = CopyPairBatch(image_size=64, distractor_rate=0.2, grey_rate=0.2, seed=0, epoch=e,
                              tiles_per_picture=2, part=p)
        for xa, xb, keys in shard.iter_torch_batches(batch_size=64, collate_fn=pairs): ...

A batch is some pictures (numpy columns `id`, `image` bytes, as Ray Data hands them over); of each,
`tiles_per_picture` of its textured template tiles are cut at their own size (`tile_boxes`, the
grid the library build cuts by; flat tiles left out as `dedup.detail` finds them), and each gives
two views: the library view and an edited copy as an upload's region. A tile's key (`tile_key`)
hashes its picture's id and its index among the picture's tiles, so keys are the same on every
rank and in every epoch. `background_bank` embeds ordinary pictures for matching's score
normalisation.
"""
from __future__ import annotations

import hashlib
import math

import numpy as np
import torch
from PIL import Image

from docray.imageio import decode_image
from docray.screening.augment import EDITS, copy_edit, region_jitter, sscd_edit, to_tensor
from docray.screening.templates import DEFAULT_TEMPLATES, grid, tile_boxes

WHOLE = -1  # tile index of a whole picture (a distractor)


def tile_count(templates=DEFAULT_TEMPLATES) -> int:
    """Tiles a picture has under `templates` (35 for the default ones), flat ones included."""
    return sum(r * c for r, c in map(grid, templates))


def textured_boxes(picture: Image.Image, templates=DEFAULT_TEMPLATES,
                   min_detail: float = 12.0) -> list[tuple[int, tuple[int, int, int, int]]]:
    """(index, box) of every template's tiles that are not flat (`dedup.detail` >= min_detail, taken
    on the picture's grey levels once). The index counts all tiles of all templates, row-major in
    template order (as `cut` gives them), flat ones too, so it names a tile whatever is dropped."""
    grey = np.asarray(picture.convert("RGB").convert("L"), np.float32)
    boxes = [b for tpl in templates for b in tile_boxes(picture.width, picture.height, *grid(tpl))]
    return [(i, b) for i, b in enumerate(boxes) if grey[b[1]:b[3], b[0]:b[2]].std() >= min_detail]


def tiles_of(picture: Image.Image, templates=DEFAULT_TEMPLATES,
             min_detail: float = 12.0) -> list[tuple[int, Image.Image]]:
    """(index, tile) of every template's tiles at their own size, as `cut` makes them; flat ones left out."""
    return [(i, picture.crop(b).convert("RGB")) for i, b in textured_boxes(picture, templates, min_detail)]


def passes_per_epoch(tiles_per_picture: int, templates=DEFAULT_TEMPLATES) -> int:
    """Passes over the pictures in an epoch: enough for `tiles_per_picture` a pass to take each of a
    picture's tiles once (pictures with flat tiles take some twice)."""
    return math.ceil(tile_count(templates) / tiles_per_picture) if tiles_per_picture else 1


def raw_tiles(pictures, templates=DEFAULT_TEMPLATES, min_detail: float = 12.0) -> list[Image.Image]:
    """Every template's tiles of every picture at their own size, flat ones left out."""
    return [t for p in pictures for _, t in tiles_of(p, templates, min_detail)]


def tile_key(picture_id: str, index: int) -> int:
    """A 63-bit key of tile `index` of picture `picture_id` (WHOLE: the whole picture), the same on every rank."""
    digest = hashlib.blake2b(f"{picture_id}/{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def whole_picture(picture: Image.Image, rng: np.random.Generator) -> Image.Image:
    """The whole picture at a random size and aspect, as uploads carry pictures beside (or instead
    of) a tile: the descriptor must keep these away from library tiles too."""
    size = tuple(int(v) for v in rng.integers(64, 224, 2))
    return picture.convert("RGB").resize(size, Image.BILINEAR)


class CopyPairBatch:
    """collate_fn for `iter_torch_batches`: a batch of pictures -> (xa, xb, keys), one item per tile:
    `tiles_per_picture` of each picture's textured tiles (0: all of them), part `part` of the
    epoch's shuffle of them (cycled), so the `passes_per_epoch` parts 0, 1, ... take every tile.

    xa: the library view (clean half of the time, else lightly edited), xb: the edited copy as a
    region finder crops it from an upload (`copy_edit` then `region_jitter`), a `grey_rate` share
    turned grey; both (n, 3, image_size, image_size) in [0, 1]. `edits` picks the copy's edits:
    "default" (`copy_edit`) or "sscd" (`sscd_edit`: crops down to a ninth, blur, collages with the
    batch's other pictures, ...; a collage depends on which pictures share the batch, the one
    exception to the rule below). A `distractor_rate` share of the
    items are the tile's whole picture instead (`whole_picture`, key `tile_key(id, WHOLE)`). Each
    item's randomness comes from (seed, epoch, part, key) only, so a batch is the same however the
    rows were split over workers. Few tiles of many pictures make a better batch than many tiles of a
    few: the other pictures are the negatives a tile must be told apart from (benchmarks/train_paths,
    descriptor_small, 128-144 steps of 64 tiles: 8 tiles of each of 8 pictures a step gave ~2 points
    less val top-1 than the old path's tiles drawn from all pictures at once; 2 of each of 32 did
    not lose).
    """

    def __init__(self, image_size: int, distractor_rate: float = 0.0, grey_rate: float = 0.0, seed: int = 0,
                 epoch: int = 0, tiles_per_picture: int = 0, part: int = 0, templates=DEFAULT_TEMPLATES,
                 edits: str = "default"):
        if edits not in EDITS:
            raise ValueError(f"unknown edits {edits!r}; known: {', '.join(EDITS)}")
        self.size, self.distractor_rate, self.grey_rate = image_size, distractor_rate, grey_rate
        self.seed, self.epoch, self.k, self.part, self.templates = seed, epoch, tiles_per_picture, part, templates
        self.edits = edits

    def tiles(self, picture_id: str, picture: Image.Image) -> list[tuple[int, Image.Image]]:
        """This part's (index, tile) of one picture."""
        boxes = textured_boxes(picture, self.templates)
        if self.k and len(boxes) > self.k:
            order = np.random.default_rng([self.seed, self.epoch, tile_key(picture_id, WHOLE)]).permutation(len(boxes))
            boxes = [boxes[order[(self.part * self.k + j) % len(boxes)]] for j in range(self.k)]
        return [(i, picture.crop(b).convert("RGB")) for i, b in boxes]

    def views(self, tile: Image.Image, rng: np.random.Generator, others=()) -> tuple[Image.Image, Image.Image]:
        """(library view, upload view) of a tile; `others`: the batch's other pictures, for collages."""
        a = tile if rng.random() < 0.5 else copy_edit(tile, rng, strength=0.5)
        b = region_jitter(sscd_edit(tile, rng, others) if self.edits == "sscd" else copy_edit(tile, rng), rng)
        if rng.random() < self.grey_rate:  # the edit the descriptor finds hardest (measured): more of it
            b = b.convert("L").convert("RGB")
        return a, b

    def __call__(self, batch: dict[str, np.ndarray]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        a, b, keys = [], [], []
        pictures = [decode_image(bytes(data)) for data in batch["image"]]
        for n, (pid, picture) in enumerate(zip(batch["id"], pictures)):
            others = pictures[:n] + pictures[n + 1:] if self.edits == "sscd" else []
            for i, tile in self.tiles(str(pid), picture):
                key = tile_key(str(pid), i)
                rng = np.random.default_rng([self.seed, self.epoch, self.part, key])
                if rng.random() < self.distractor_rate:
                    key, tile = tile_key(str(pid), WHOLE), whole_picture(picture, rng)
                va, vb = self.views(tile, rng, others)
                a.append(va)
                b.append(vb)
                keys.append(key)
        if not keys:  # every tile drawn was flat: an empty batch (the trainer steps with a zero loss)
            empty = torch.zeros(0, 3, self.size, self.size)
            return empty, empty, torch.zeros(0, dtype=torch.int64)
        x = to_tensor(a + b, self.size)  # (2n, 3, s, s)
        return x[: len(a)], x[len(a):], torch.tensor(keys, dtype=torch.int64)


class EditedTileBatch(CopyPairBatch):
    """Validation's collate_fn: every tile clean and one edited copy (`copy_edit`, no region jitter,
    no grey, no distractors); the same edits every epoch (from `seed` and the tile's key)."""

    def __init__(self, image_size: int, seed: int = 1, templates=DEFAULT_TEMPLATES):
        super().__init__(image_size, seed=seed, templates=templates)

    def views(self, tile: Image.Image, rng: np.random.Generator, others=()) -> tuple[Image.Image, Image.Image]:
        return tile, copy_edit(tile, rng)


def background_bank(embed, tiled: list[Image.Image], whole: list[Image.Image], seed: int = 0) -> np.ndarray:
    """Descriptors of ordinary content, no library's targets: every template's tiles of the pictures
    `tiled` and each picture of `whole` at a random size (`whole_picture`). Saved with a trained
    descriptor."""
    rng = np.random.default_rng([seed, 2])
    return embed(raw_tiles(tiled) + [whole_picture(p, rng) for p in whole])


def synth_pictures(start: int, stop: int, seed: int = 0, split: str | None = None, size: int = 192):
    """(PIL pictures, table) of synthetic targets rows [start, stop), optionally one split only.
    For benchmarks, on the driver: training reads datasets instead."""
    from docray.synth import generate

    table = generate("targets", start, stop, seed=seed, size=size)
    if split is not None:
        keep = np.flatnonzero(np.asarray(table.column("split").to_pylist()) == split)
        table = table.take(keep)
    return [decode_image(b) for b in table.column("image").to_pylist()], table
