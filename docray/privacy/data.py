"""Identity images for mask privacy: preprocessing (training and inference share it) and the sources.

Pixels: `face_pixels(blobs, size)` decodes encoded images to uint8 (n, size, size, 3) (RGB,
bilinear resize) and `to_tensor` makes them (n, 3, size, size) floats in [0, 1]: the recognisers
see exactly this in training (`FacePreprocess`, `MaskedFaces`) and in evaluation (`Identities`).

Training reads datasets of the `faces` contract (id, image, identity; split optional) through Ray
Data; a batch of rows goes through a callable class used as `iter_torch_batches(collate_fn=...)`:

    FacePreprocess(size, classes)(batch)        -> images (b, 3, s, s), labels (b,)
    MaskedFaces(size, classes, bank)(batch)     -> images, labels, masks (b, 1, s, s) from the bank

`classes` is the sorted list of identity values the recogniser knows (class id = index), fixed on
the driver from the training set. An ImageFolder of identities (root/<identity>/<image>, e.g. LFW)
becomes a faces dataset with `import_image_folder` (split by file order per identity, 80/10/10).

`load_identities(source)` gives whole in-memory splits {split: Identities} for the grid evaluation:
    source = "synth"          docray.synth faces: identity = label, split by sample (80/10/10)
    source = <folder>         root/<identity>/<image>, e.g. LFW; split by file order per identity
    source = <parquet dir>    columns image (bytes) and label_id (or identity), optional split
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
from PIL import Image

from docray.imageio import decode_image
from docray.privacy.masks import decode_mask, random_masks


def face_pixels(blobs, size: int) -> np.ndarray:
    """Encoded images -> uint8 (n, size, size, 3): RGB, bilinear resize where the size differs."""
    out = []
    for b in blobs:
        img = decode_image(b, mode="RGB", name="face")
        out.append(np.asarray(img if img.size == (size, size) else img.resize((size, size), Image.Resampling.BILINEAR)))
    return np.stack(out).astype(np.uint8) if out else np.zeros((0, size, size, 3), np.uint8)


def to_tensor(pixels: np.ndarray, device="cpu") -> torch.Tensor:
    """uint8 (n, h, w, 3) -> float (n, 3, h, w) in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(pixels)).to(device).permute(0, 3, 1, 2).float().div_(255)


class FacePreprocess:
    """collate_fn for rows of the faces contract: {"image", "identity"} -> (images, labels).

    Identities outside `classes` are an error (the driver checks the val set before training)."""

    def __init__(self, size: int, classes: list[int]):
        self.size, self.classes = int(size), np.asarray(sorted(classes), np.int64)

    def labels(self, identity) -> torch.Tensor:
        ident = np.asarray(identity, np.int64)
        idx = np.searchsorted(self.classes, ident).clip(0, max(len(self.classes) - 1, 0))
        unknown = self.classes[idx] != ident
        if unknown.any():
            raise ValueError(f"identity {int(ident[unknown][0])} is not one of the {len(self.classes)} training identities")
        return torch.from_numpy(idx.astype(np.int64))

    def __call__(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        return to_tensor(face_pixels(batch["image"], self.size)), self.labels(batch["identity"])


class MaskedFaces(FacePreprocess):
    """FacePreprocess plus a mask per row from a bank of mask PNGs: (images, labels, masks (b, 1, s, s)).

    The images stay whole (the inpainter needs them as its target); `overlay(images, masks)` hides
    the pixels. With a `seed`, every row gets a mask drawn at random from the bank with a random
    placement (training); without, row `id` always gets the same mask as drawn (validation: the same
    masks on every rank and in every epoch, however the rows are split)."""

    def __init__(self, size: int, classes: list[int], bank: list[bytes], seed=None, max_shift: float = 0.125):
        super().__init__(size, classes)
        if not bank:
            raise ValueError("the mask bank is empty")
        self.bank = np.stack([decode_mask(b, size=self.size) for b in bank])  # float32 (m, s, s)
        self.rng = None if seed is None else np.random.default_rng(seed)
        self.max_shift = max_shift

    def masks(self, ids) -> np.ndarray:
        if self.rng is not None:
            return random_masks(self.bank, len(ids), self.rng, self.max_shift)
        return self.bank[[zlib.crc32(str(i).encode()) % len(self.bank) for i in ids]]

    def __call__(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x, y = super().__call__(batch)
        return x, y, torch.from_numpy(np.ascontiguousarray(self.masks(batch["id"])))[:, None]


# -- sources -------------------------------------------------------------------------------------

def faces_from_image_folder(root: str) -> pa.Table:
    """An ImageFolder of identities as a faces table: id = path under root, identity = the folder's
    index (sorted names), sample = its file's rank in that folder, split by sample (80/10/10)."""
    from docray.datasets.contracts import conform
    from docray.storage.datasets import read_image_folder
    from docray.synth.common import split_of

    table = read_image_folder(str(root)).table
    labels = table.column("label_id").to_pylist()
    counts: dict[int, int] = {}
    samples = []
    for lab in labels:  # the k-th image of an identity is sample k
        samples.append(counts.get(lab, 0))
        counts[lab] = samples[-1] + 1
    return conform("faces", pa.table({"id": table.column("path"), "image": table.column("image"), "identity": labels,
                                      "sample": samples, "split": [split_of(k) for k in samples]}))


def import_image_folder(root: str, out: str) -> str:
    """Write `faces_from_image_folder(root)` as Parquet shards in `out` (replacing any); returns `out`."""
    from docray.storage.datasets import write_shards

    write_shards(faces_from_image_folder(root), out, overwrite=True)
    return out


@dataclass
class Identities:
    images: np.ndarray  # uint8 (n, h, w, 3)
    labels: np.ndarray  # int64 (n,)

    def __len__(self) -> int:
        return len(self.labels)

    def tensors(self, device="cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """(n, 3, h, w) float pixels in [0, 1] and (n,) int64 labels."""
        return to_tensor(self.images, device), torch.from_numpy(self.labels).to(device)

    def take(self, n: int | None) -> "Identities":
        return self if n is None or n >= len(self) else Identities(self.images[:n], self.labels[:n])


def _by_split(table: pa.Table, labels: np.ndarray, splits: list[str], size: int) -> dict[str, Identities]:
    images = face_pixels(table.column("image").to_pylist(), size)
    splits = np.asarray(splits)
    return {s: Identities(images[splits == s], labels[splits == s].astype(np.int64)) for s in ("train", "val", "test")}


def synth_identities(n_identities: int = 64, samples: int = 40, seed: int = 0, size: int = 64) -> dict[str, Identities]:
    """n_identities x samples synthetic faces; sample % 10 == 8 -> val, 9 -> test, else train."""
    from docray.synth import generate

    t = generate("faces", 0, n_identities * samples, seed=seed, size=size, n_identities=n_identities)
    return _by_split(t, np.asarray(t.column("identity").to_pylist()), t.column("split").to_pylist(), size)


def load_identities(source: str = "synth", *, n_identities: int = 64, samples: int = 40, seed: int = 0,
                    size: int = 64) -> dict[str, Identities]:
    """See the module docstring. n_identities/samples/seed apply to "synth" only."""
    if source == "synth":
        return synth_identities(n_identities, samples, seed, size)
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"identity source {source!r}: not 'synth' and no such path")
    if path.is_dir() and not any(path.glob("*.parquet")):
        table = faces_from_image_folder(str(path))
        return _by_split(table, np.asarray(table.column("identity").to_pylist()), table.column("split").to_pylist(), size)
    from docray.storage.datasets import read_table
    from docray.synth.common import split_of

    table = read_table(str(path))
    col = "label_id" if "label_id" in table.column_names else "identity"
    if col not in table.column_names:
        raise ValueError(f"{source}: needs a 'label_id' or 'identity' column, has {table.column_names}")
    labels = np.asarray(table.column(col).to_pylist())
    splits = table.column("split").to_pylist() if "split" in table.column_names else [split_of(i) for i in range(len(labels))]
    return _by_split(table, labels, splits, size)
