"""Synthetic documents -> arrays for unified recognition: images, frames, attributes, per-task targets.

    table = documents_table(2000, seed=0)                 # cached Parquet under $DOCRAY_HOME/datasets
    arrays = prepare(table, catalogue, image_size=64)      # numpy, decoded and resized once
    ds = DocumentSet(arrays, split="train")                # torch Dataset of dicts; default collate

Images are resized to a square `image_size` (documents are 256x160; the tasks do not need the
aspect). Targets, per task type: cls int64 class; reg float32; seg uint8 label map at
`image_size / 2`; det float32 (n_classes, 5) = [present, cx, cy, w, h] normalised to [0, 1].
User attributes are synthetic (drawn from the document id) so that the plumbing is exercised.
"""
from __future__ import annotations

import hashlib
import io
import json
import zlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute  # noqa: F401  (pa.compute)
import pyarrow.parquet as pq
import torch
from PIL import Image
from tqdm import tqdm

from docray import paths
from docray.imageio import decode_image
from docray.recognition.tasks import Catalogue

# Balanced binary tasks (chance = 50%: half screen recaptures, half substituted angle views) and
# one angle view (the angle task's frames); see DESIGN.md.
DOC_OPTIONS = dict(n_angles=1, recapture_rate=0.5, swap_rate=0.5)
CACHE_VERSION = 2  # part of the cache key: bump when docray.synth's documents change
IMAGE_COLUMNS = ("image", "flash", "angles")


def _generate(start: int, stop: int, seed: int, options: dict) -> pa.Table:
    from docray import synth

    if hasattr(synth, "generate"):
        return synth.generate("documents", start, stop, seed=seed, **options)
    from docray.synth import documents as d  # until docray.synth.generate lands: the same rows
    from docray.synth.common import row_rng

    cfg = d.DocumentsConfig(**options)
    cfg.check()
    rows = [d.make_row(i, row_rng(seed, d.KIND_NO, i), seed, cfg) for i in range(start, stop)]
    return pa.Table.from_pylist(rows, schema=d.SCHEMA)


def documents_table(n: int, seed: int = 0, options: dict | None = None, cache: bool = True) -> pa.Table:
    """Rows [0, n) of the synthetic documents (splits by `split`), generated once and cached."""
    options = {**DOC_OPTIONS, **(options or {})}
    key = hashlib.sha256(json.dumps([n, seed, options, CACHE_VERSION], sort_keys=True).encode()).hexdigest()[:12]
    path = Path(paths.sub("datasets", "recognition", f"documents-{key}.parquet"))
    if cache and path.exists():
        return pq.read_table(path)
    step = 50
    parts = [_generate(s, min(s + step, n), seed, options)
             for s in tqdm(range(0, n, step), desc="synth documents", unit="block", disable=n <= step)]
    table = pa.concat_tables(parts)
    if cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, path.with_suffix(".tmp"))
        path.with_suffix(".tmp").rename(path)
    return table


def load_rgb(data: bytes, size: int) -> np.ndarray:
    """Image bytes -> (3, size, size) uint8."""
    img = data if isinstance(data, Image.Image) else decode_image(data)
    return np.asarray(img.convert("RGB").resize((size, size), Image.BILINEAR)).transpose(2, 0, 1).copy()


def _box01(box, w: int, h: int) -> list[float]:
    x0, y0, x1, y1 = box
    return [1.0, (x0 + x1) / 2 / w, (y0 + y1) / 2 / h, (x1 - x0) / w, (y1 - y0) / h]


def task_target(task, row: dict, seg_size: int, wh: tuple[int, int]) -> np.ndarray | int | float:
    """The target of one task for one document row (a dict of the documents' columns)."""
    if task.type == "cls":
        v = row[task.label]
        if task.values is not None:
            return task.values.index(v)
        return int(v)
    if task.type == "reg":
        return float(row[task.label])
    if task.type == "seg":
        seg = Image.open(io.BytesIO(row[task.label])).resize((seg_size, seg_size), Image.NEAREST)
        return np.asarray(seg, np.uint8).clip(0, len(task.classes) - 1)
    out = np.zeros((len(task.classes), 5), np.float32)  # det
    for c, name in enumerate(task.classes):
        col = row[task.label[name]]
        if col and isinstance(col[0], dict):  # a list of fields: the union of their boxes
            boxes = [f["box"] for f in col if f["box"]]
            col = [min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes),
                   max(b[3] for b in boxes)] if boxes else []
        if col:
            out[c] = _box01(col, *wh)
    return out


def synthetic_attrs(doc_id: str, cat: Catalogue) -> dict:
    """Deterministic user attributes for a document id (no signal: they exercise the fusion)."""
    rng = np.random.default_rng(zlib.crc32(doc_id.encode()))
    cats, nums = cat.attr_spec()
    out = {k: v[int(rng.integers(len(v)))] for k, v in cats.items()}
    out.update({k: float(s["mean"] + s["std"] * rng.standard_normal()) for k, s in nums.items()})
    return out


def prepare(table: pa.Table, cat: Catalogue, image_size: int, seg_size: int | None = None,
            with_frames: bool = True) -> dict:
    """Decode and resize every image once; compute every task's target. Returns numpy arrays."""
    seg_size = seg_size or image_size // 2
    rows = table.to_pylist()
    out: dict = {"image": [], "flash": [], "angles": [], "attr_cat": [], "attr_num": [],
                 "targets": {t.name: [] for t in cat.tasks}}
    for row in tqdm(rows, desc="decode documents", unit="doc", disable=len(rows) < 500):
        img = decode_image(row["image"])
        out["image"].append(load_rgb(img, image_size))
        if with_frames:
            out["flash"].append(load_rgb(row["flash"], image_size)[None])
            out["angles"].append(np.stack([load_rgb(a, image_size) for a in row["angles"]]))
        ci, nv = cat.encode_attrs(synthetic_attrs(row["id"], cat))
        out["attr_cat"].append(ci)
        out["attr_num"].append(nv)
        for t in cat.tasks:
            out["targets"][t.name].append(task_target(t, row, seg_size, img.size))
    arrays = {
        "image": np.stack(out["image"]),  # (n, 3, s, s) uint8
        "attr_cat": np.asarray(out["attr_cat"], np.int64).reshape(len(rows), -1),
        "attr_num": np.asarray(out["attr_num"], np.float32).reshape(len(rows), -1),
        "targets": {k: np.asarray(v) for k, v in out["targets"].items()},
        "split": np.asarray(table.column("split").to_pylist(), dtype=object),
        "doc_type_name": table.column("doc_type_name").to_pylist(),
    }
    if with_frames:
        arrays["flash"] = np.stack(out["flash"])  # (n, 1, 3, s, s)
        arrays["angles"] = np.stack(out["angles"])  # (n, a, 3, s, s)
    arrays["task_set"] = cat.task_set_matrix(arrays["doc_type_name"])  # (n, n_tasks) 0/1
    return arrays


class DocumentSet(torch.utils.data.Dataset):
    """Rows of `prepare()` output in one split (or all): dicts of tensors, uint8 pixels."""

    def __init__(self, arrays: dict, split: str | list[str] | None = None):
        splits = [split] if isinstance(split, str) else split
        self.idx = np.arange(len(arrays["image"])) if split is None else np.flatnonzero(np.isin(arrays["split"], splits))
        if len(self.idx) == 0:
            raise ValueError(f"no documents in split {split!r}")
        self.a = arrays

    def __len__(self) -> int:
        return len(self.idx)

    def __getitem__(self, i: int) -> dict:
        j = self.idx[i]
        item = {k: torch.from_numpy(np.asarray(self.a[k][j])) for k in ("image", "flash", "angles", "attr_cat",
                                                                         "attr_num", "task_set") if k in self.a}
        item["targets"] = {k: torch.as_tensor(v[j]) for k, v in self.a["targets"].items()}
        return item


def to_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 pixels -> float in [0, 1] (the models normalise inside)."""
    return x.float() / 255.0


def load_images(table: pa.Table, image_size: int, split: str | None = "train", with_frames: bool = True) -> np.ndarray:
    """(n, 3, s, s) uint8: the captures of `split` (all rows for None), plus their flash and angle
    frames when `with_frames` (more views of the same documents for MAE pre-training)."""
    if split is not None:
        table = table.filter(pa.compute.equal(table.column("split"), split))
    cols = ["image"] + (["flash"] if with_frames else [])
    out = [load_rgb(b, image_size) for c in cols for b in table.column(c).to_pylist()]
    if with_frames:
        out += [load_rgb(b, image_size) for views in table.column("angles").to_pylist() for b in views]
    return np.stack(out)


def image_grid(rows: list[list[np.ndarray]], scale: int = 2) -> bytes:
    """PNG of a grid: rows of (3, s, s) float images in [0, 1] (e.g. original | masked | reconstruction)."""
    from docray.imageio import encode_png

    lines = [np.concatenate([np.asarray(im).transpose(1, 2, 0) for im in r], 1) for r in rows]
    arr = (np.clip(np.concatenate(lines, 0), 0, 1) * 255).astype(np.uint8)
    return encode_png(Image.fromarray(arr).resize((arr.shape[1] * scale, arr.shape[0] * scale), Image.NEAREST))
