"""Mask sets, the overlay convention, area bins and the per-run mask placement.

THE CONVENTION (stated once, used everywhere in docray.privacy):
    a mask is a float array in {0, 1}, 1 = pixel kept, 0 = pixel hidden;
    overlay(image, mask) = image * mask, with image pixels in [0, 1] (hidden pixels become black).
Mask PNGs store the same thing as 255 = kept, 0 = hidden (docray.synth.masks writes them so).
NVIDIA's irregular mask set ships white holes on black, i.e. the inverse: load it with
`load_mask_folder(root, invert=True)`.

What varies between the R repeated runs of the grid (`place_mask`): run 0 uses the mask as drawn;
run r > 0 flips it left-right with probability 1/2 and rolls it cyclically by up to `max_shift`
of its side in x and y, from a generator seeded by (seed, mask_no, r). A cyclic roll and a flip
keep the hidden area exactly, so a mask stays in its bin in every run.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
from PIL import Image

from docray.imageio import decode_image, encode_png
from docray.privacy.bins import BIN_EDGES, area_bin, bin_label

__all__ = ["BIN_EDGES", "area_bin", "bin_label", "overlay", "decode_mask", "encode_mask", "hole_ratio",
           "synthetic_masks", "load_mask_folder", "masks_table", "place_mask", "mask_stack"]

MASK_SCHEMA = pa.schema([("mask_no", pa.int64()), ("mask_id", pa.string()), ("mask", pa.binary()),
                         ("hole_ratio", pa.float32()), ("bin", pa.int32())])


def overlay(images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """images (b, 3, h, w) in [0, 1] x masks (b or 1, 1, h, w) in {0, 1} -> masked images (b, 3, h, w)."""
    if masks.shape[-2:] != images.shape[-2:]:
        raise ValueError(f"mask size {tuple(masks.shape[-2:])} != image size {tuple(images.shape[-2:])}")
    return images * masks


def decode_mask(data: bytes, size: int | None = None, invert: bool = False) -> np.ndarray:
    """PNG bytes (255 kept, 0 hidden; `invert` for white-hole sets) -> float32 (h, w) in {0, 1}."""
    img = decode_image(data, mode="L", name="mask")
    if size is not None and img.size != (size, size):
        img = img.resize((size, size), Image.Resampling.NEAREST)
    kept = np.asarray(img) >= 128
    return (~kept if invert else kept).astype(np.float32)


def encode_mask(mask: np.ndarray) -> bytes:
    """float (h, w) in {0, 1} -> PNG bytes, 255 kept, 0 hidden."""
    return encode_png(Image.fromarray((np.asarray(mask) > 0.5).astype(np.uint8) * 255, mode="L"))


def hole_ratio(mask: np.ndarray) -> float:
    """Fraction of hidden pixels of a {0, 1} mask."""
    return float(1.0 - np.asarray(mask, np.float32).mean())


def masks_table(masks: list[np.ndarray], ids: list[str], edges=BIN_EDGES) -> pa.Table:
    """The grid's mask side: mask_no (row number), mask_id, mask PNG, hole_ratio, bin (-1: no bin)."""
    ratios = [hole_ratio(m) for m in masks]
    return pa.Table.from_pydict({
        "mask_no": list(range(len(masks))), "mask_id": list(ids), "mask": [encode_mask(m) for m in masks],
        "hole_ratio": ratios, "bin": [area_bin(r, edges) for r in ratios]}, schema=MASK_SCHEMA)


def synthetic_masks(n: int, seed: int = 0, size: int = 64, edges=BIN_EDGES) -> pa.Table:
    """n synthetic irregular masks (docray.synth 'masks'; row i aims at bin i % 6), binned by `edges`."""
    from docray.synth import generate  # the synthetic world only where it is asked for

    t = generate("masks", 0, n, seed=seed, size=size)
    masks = [decode_mask(b) for b in t.column("mask").to_pylist()]
    return masks_table(masks, t.column("id").to_pylist(), edges)


def load_mask_folder(root: str | Path, size: int = 64, invert: bool = False, edges=BIN_EDGES) -> pa.Table:
    """Every PNG under `root` (sorted; NVIDIA's set: invert=True), resized to size x size."""
    files = sorted(p for p in Path(root).rglob("*.png") if not p.name.startswith("."))
    if not files:
        raise FileNotFoundError(f"{root}: no .png mask files")
    masks = [decode_mask(p.read_bytes(), size, invert) for p in files]
    return masks_table(masks, [str(p.relative_to(root)) for p in files], edges)


def mask_stack(table: pa.Table) -> np.ndarray:
    """The masks of a masks table as float32 (m, h, w)."""
    return np.stack([decode_mask(b) for b in table.column("mask").to_pylist()])


def place_mask(mask: np.ndarray, seed: int, mask_no: int, run: int, max_shift: float = 0.125) -> np.ndarray:
    """The mask as placed in run `run` (see the module docstring); hidden area is unchanged."""
    if run == 0:
        return mask
    rng = np.random.default_rng([int(seed), int(mask_no), int(run)])
    out = mask[:, ::-1] if rng.random() < 0.5 else mask
    h, w = mask.shape
    dy, dx = (rng.integers(-int(max_shift * s), int(max_shift * s) + 1) for s in (h, w))
    return np.ascontiguousarray(np.roll(out, (int(dy), int(dx)), axis=(0, 1)))


def random_masks(bank: np.ndarray, n: int, rng: np.random.Generator, max_shift: float = 0.125) -> np.ndarray:
    """n masks drawn from a (m, h, w) bank with a random placement each: (n, h, w) (masked-model training)."""
    picks = rng.integers(0, len(bank), n)
    return np.stack([place_mask(bank[k], int(rng.integers(1 << 30)), int(k), 1, max_shift) for k in picks])
