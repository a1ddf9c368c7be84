"""Identity images for mask privacy: the synthetic faces, or an ImageFolder / Parquet a user brings.

`load_identities(source)` returns {split: Identities} with images as uint8 (n, h, w, 3) arrays
(compact enough to broadcast to actors with ray.put) and integer labels.
    source = "synth"          docray.synth faces: identity = label, split by sample (80/10/10)
    source = <folder>         root/<identity>/<image>, e.g. LFW; split by file order per identity
    source = <parquet dir>    columns image (bytes) and label_id (or identity), optional split
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
from PIL import Image

from docray.imageio import decode_image
from docray.synth import generate
from docray.synth.common import split_of


@dataclass
class Identities:
    images: np.ndarray  # uint8 (n, h, w, 3)
    labels: np.ndarray  # int64 (n,)

    def __len__(self) -> int:
        return len(self.labels)

    def tensors(self, device="cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """(n, 3, h, w) float pixels in [0, 1] and (n,) int64 labels."""
        x = torch.from_numpy(self.images).to(device).permute(0, 3, 1, 2).float().div_(255)
        return x, torch.from_numpy(self.labels).to(device)

    def take(self, n: int | None) -> "Identities":
        return self if n is None or n >= len(self) else Identities(self.images[:n], self.labels[:n])


def _decode_all(blobs: list[bytes], size: int) -> np.ndarray:
    out = []
    for b in blobs:
        img = decode_image(b, mode="RGB")
        out.append(np.asarray(img if img.size == (size, size) else img.resize((size, size), Image.Resampling.BILINEAR)))
    return np.stack(out).astype(np.uint8)


def _by_split(table: pa.Table, labels: np.ndarray, splits: list[str], size: int) -> dict[str, Identities]:
    images = _decode_all(table.column("image").to_pylist(), size)
    splits = np.asarray(splits)
    return {s: Identities(images[splits == s], labels[splits == s].astype(np.int64)) for s in ("train", "val", "test")}


def synth_identities(n_identities: int = 64, samples: int = 40, seed: int = 0, size: int = 64) -> dict[str, Identities]:
    """n_identities x samples synthetic faces; sample % 10 == 8 -> val, 9 -> test, else train."""
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
        from docray.storage.datasets import read_image_folder

        table = read_image_folder(str(path)).table
        labels = np.asarray(table.column("label_id").to_pylist())
        counts: dict[int, int] = {}
        splits = []
        for lab in labels:  # k-th image of an identity -> split_of(k)
            splits.append(split_of(counts.get(lab, 0)))
            counts[lab] = counts.get(lab, 0) + 1
        return _by_split(table, labels, splits, size)
    from docray.storage.datasets import read_table

    table = read_table(str(path))
    col = "label_id" if "label_id" in table.column_names else "identity"
    if col not in table.column_names:
        raise ValueError(f"{source}: needs a 'label_id' or 'identity' column, has {table.column_names}")
    labels = np.asarray(table.column(col).to_pylist())
    splits = table.column("split").to_pylist() if "split" in table.column_names else [split_of(i) for i in range(len(labels))]
    return _by_split(table, labels, splits, size)
