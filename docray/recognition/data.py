"""Documents (the `documents` contract) -> the tensors unified recognition trains on.

    collate = DocumentBatch(catalogue, image_size=64)               # a Ray Data collate_fn (numpy columns in)
    for batch in shard.iter_torch_batches(batch_size=32, collate_fn=collate): ...
    batch = collate(ds.take_batch(8))                               # try it on a few rows first
    views = DocumentImages(64)(rows)                                # MAE: every view, (n', 3, s, s) uint8
    counts = check_labels(ds, catalogue)                            # driver: rows labelling each task, or a clear error

The per-image steps are those inference runs (`load_rgb`, `stack_frames`, `to_float`; see
predictor.py). Images are resized to a square `image_size` (the tasks do not need the aspect).
Targets, per task type: cls int64 class; reg float; seg uint8 label map at `image_size / 2`; det
float32 (n_classes, 5) = [present, cx, cy, w, h] normalised to [0, 1]. A user's dataset may lack a
task's columns in some rows or all: `labelled` (b, n_tasks) says which (row, task) pairs have every
column the task reads (its label columns and its frames); the others are never asked in training
(their slot is -1, so no loss) nor scored. User attributes are synthetic (drawn from the document
id, no signal) so that the fusion is exercised.

The old in-memory path, for benchmarks/unified_vs_separate.py and the model tests: `documents_table`
(synthetic rows, cached) -> `prepare` (every row through `DocumentBatch` at once) -> `DocumentSet`.
"""
from __future__ import annotations

import hashlib
import json
import zlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from PIL import Image
from ray.data.collate_fn import NumpyBatchCollateFn
from tqdm import tqdm

from docray import paths
from docray.imageio import decode_image
from docray.recognition.tasks import Catalogue, Task

# Balanced binary tasks (chance = 50%: half screen recaptures, half substituted angle views) and
# one angle view (the angle task's frames); see DESIGN.md.
DOC_OPTIONS = dict(n_angles=1, recapture_rate=0.5, swap_rate=0.5)
CACHE_VERSION = 2  # part of the cache key: bump when docray.synth's documents change
FRAME_KINDS = ("flash", "angles")  # each is also the column holding those frames


# -- per image (shared with inference) ------------------------------------------------------------


def load_rgb(data, size: int, name: str = "image") -> np.ndarray:
    """Image bytes (or a PIL image, or (3, size, size) uint8 pixels: returned as they are) -> (3, size, size) uint8."""
    if isinstance(data, np.ndarray) and data.shape == (3, size, size) and data.dtype == np.uint8:
        return data
    img = data if isinstance(data, Image.Image) else decode_image(data, name=name)
    return np.asarray(img.convert("RGB").resize((size, size), Image.BILINEAR)).transpose(2, 0, 1).copy()


def stack_frames(frames: list[list], size: int, name: str = "frame") -> np.ndarray:
    """Per row a list of frames (bytes or PIL) -> (b, f, 3, size, size) uint8, f the most any row has;
    a row with fewer repeats its last frame, a row with none is zeros."""
    per = [[load_rgb(im, size, name) for im in row] for row in frames]
    out = np.zeros((len(per), max((len(p) for p in per), default=0), 3, size, size), np.uint8)
    for b, p in enumerate(per):
        for j in range(out.shape[1]):
            if p:
                out[b, j] = p[min(j, len(p) - 1)]
    return out


def to_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 pixels -> float in [0, 1] (the models normalise inside)."""
    return x.float() / 255.0


# -- labels of one row ----------------------------------------------------------------------------


def is_null(v) -> bool:
    """A missing cell as pyarrow / Ray Data give it: None, or NaN in a float column."""
    return v is None or (isinstance(v, (float, np.floating)) and bool(np.isnan(v)))


def doc_types(cat: Catalogue) -> list[str]:
    """The document types a model tells apart, in class order: the catalogue's doc_type classes.
    (The one place to swap in the template registry, docray.doctypes, when it lands.)"""
    return list(cat.get("doc_type").classes)


def task_columns(task: Task) -> list[str]:
    """The columns a task reads: its label column(s) and, for a multi-frame task, its frames."""
    cols = list(task.label.values()) if isinstance(task.label, dict) else [task.label]
    return cols + ([task.frames] if task.frames != "none" else [])


def has_label(task: Task, row: dict) -> bool:
    """Whether a row (column -> cell; absent columns are missing) has everything `task` reads."""
    for col in task_columns(task):
        v = row.get(col)
        if is_null(v) or (col in FRAME_KINDS and len(v) == 0):
            return False
    return True


def _class_index(task: Task, options: list, v) -> int:
    if v not in options:
        raise ValueError(f"task {task.name!r}: column {task.label!r} holds {v!r}, not one of {list(options)}")
    return list(options).index(v)


def _box01(box, w: int, h: int) -> list[float]:
    x0, y0, x1, y1 = (float(v) for v in box)
    return [1.0, (x0 + x1) / 2 / w, (y0 + y1) / 2 / h, (x1 - x0) / w, (y1 - y0) / h]


def task_target(task: Task, row: dict, seg_size: int, wh: tuple[int, int]) -> np.ndarray | int | float:
    """The target of one task for one labelled row (column -> cell; `wh` = the image's size).

    cls: an int class index, a bool, a value listed in `values`, or a class name (a string);
    reg: a float; seg: a PNG label map; det: per class a box [x0, y0, x1, y1] ([] = absent) or a list
    of fields (the union of their boxes)."""
    if task.type == "cls":
        v = row[task.label]
        if task.values is not None:
            return _class_index(task, task.values, v)
        if isinstance(v, str):
            return _class_index(task, task.classes, v)
        return int(v)
    if task.type == "reg":
        return float(row[task.label])
    if task.type == "seg":
        seg = decode_image(row[task.label], mode=None, name=f"{task.label} label map").resize((seg_size, seg_size), Image.NEAREST)
        return np.asarray(seg, np.uint8).clip(0, len(task.classes) - 1)
    out = np.zeros((len(task.classes), 5), np.float32)  # det
    for c, name in enumerate(task.classes):
        col = row[task.label[name]]
        if len(col) and isinstance(col[0], dict):  # a list of fields: the union of their boxes
            boxes = [f["box"] for f in col if f["box"] is not None and len(f["box"])]
            col = [min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes),
                   max(b[3] for b in boxes)] if boxes else []
        if len(col):
            out[c] = _box01(col, *wh)
    return out


def _blank(task: Task, seg_size: int):
    """The placeholder target of an unlabelled (row, task): never used by a loss or a metric."""
    return {"cls": 0, "reg": 0.0, "seg": np.zeros((seg_size, seg_size), np.uint8),
            "det": np.zeros((len(task.classes), 5), np.float32)}[task.type]


def synthetic_attrs(doc_id: str, cat: Catalogue) -> dict:
    """Deterministic user attributes for a document id (no signal: they exercise the fusion)."""
    rng = np.random.default_rng(zlib.crc32(doc_id.encode()))
    cats, nums = cat.attr_spec()
    out = {k: v[int(rng.integers(len(v)))] for k, v in cats.items()}
    out.update({k: float(s["mean"] + s["std"] * rng.standard_normal()) for k, s in nums.items()})
    return out


# -- batches of rows ------------------------------------------------------------------------------


class DocumentBatch(NumpyBatchCollateFn):
    """A batch of documents-contract rows (column -> numpy array, as Ray Data's `iter_torch_batches`
    hands a collate_fn) -> {"image" (b, 3, s, s) uint8, "flash" / "angles" (b, f, 3, s, s) uint8 (when
    the batch carries them), "attr_cat", "attr_num", "task_set" (b, n_tasks), "labelled" (b, n_tasks)
    bool, "targets" {task: (b, ...)}}. Columns it does not need are ignored; absent ones are missing."""

    def __init__(self, cat: Catalogue, image_size: int, seg_size: int | None = None, frames: bool = True):
        self.cat, self.size, self.frames = cat, image_size, frames
        self.seg_size = seg_size or image_size // 2

    @property
    def columns(self) -> list[str]:
        """Every column it reads (select these from a dataset; a dataset may lack the optional ones)."""
        cols = ["id", "image", "doc_type_name"] + [c for t in self.cat.tasks for c in task_columns(t)]
        return list(dict.fromkeys(c for c in cols if self.frames or c not in FRAME_KINDS))

    def __call__(self, rows: dict[str, np.ndarray]) -> dict:
        ids, n = rows["id"], len(rows["id"])
        cell = lambda col, i: rows[col][i] if col in rows else None  # noqa: E731
        if "image_w" in rows:  # DocumentPixels rows: decoded once already, raw (3, s, s) buffers
            shape = (3, self.size, self.size)
            sizes = list(zip(rows["image_w"].tolist(), rows["image_h"].tolist()))
            pixels = lambda b: np.frombuffer(b, np.uint8).reshape(shape)  # noqa: E731
            out = {"image": torch.from_numpy(np.stack([pixels(b) for b in rows["image"]]))}
        else:
            images = [decode_image(rows["image"][i], name=f"image of document {ids[i]!r}") for i in range(n)]
            sizes, pixels = [im.size for im in images], lambda v: v  # noqa: E731  (stack_frames decodes)
            out = {"image": torch.from_numpy(np.stack([load_rgb(im, self.size) for im in images]))}
        for kind in FRAME_KINDS if self.frames else ():
            if kind in rows:
                per = [[] if is_null(v) else [v] if kind == "flash" else list(v) for v in rows[kind]]
                out[kind] = torch.from_numpy(stack_frames([[pixels(v) for v in p] for p in per], self.size, f"{kind} frame"))
        enc = [self.cat.encode_attrs(synthetic_attrs(str(i), self.cat)) for i in ids]
        out["attr_cat"] = torch.tensor([e[0] for e in enc], dtype=torch.long).view(n, -1)
        out["attr_num"] = torch.tensor([e[1] for e in enc], dtype=torch.float32).view(n, -1)
        out["task_set"] = torch.from_numpy(self.cat.task_set_matrix([str(d) for d in rows["doc_type_name"]]))
        labelled = np.zeros((n, len(self.cat.tasks)), bool)
        out["targets"] = {}
        for j, task in enumerate(self.cat.tasks):
            if task.frames != "none" and not self.frames:
                continue
            values = []
            for i in range(n):
                row = {c: cell(c, i) for c in task_columns(task)}
                labelled[i, j] = has_label(task, row)
                values.append(task_target(task, row, self.seg_size, sizes[i]) if labelled[i, j]
                              else _blank(task, self.seg_size))
            out["targets"][task.name] = torch.as_tensor(np.asarray(values))
        out["labelled"] = torch.from_numpy(labelled)
        return out


class DocumentPixels:
    """Ray Data step (`ds.map_batches(DocumentPixels(s), batch_format="pyarrow")`): each document's
    capture and frames decoded and resized once, as raw (3, s, s) uint8 buffers, with the capture's
    size (`image_w`, `image_h`: box targets are normalised by it); other columns pass through
    untouched. `DocumentBatch` reads these rows as it reads encoded ones, without decoding, so an
    epoch over a dataset cached in Ray's object store decodes nothing (unified training)."""

    def __init__(self, image_size: int, frames: bool = True):
        self.size, self.frames = image_size, frames

    def __call__(self, table: pa.Table) -> pa.Table:
        raw = lambda v: load_rgb(v, self.size, "frame").tobytes()  # noqa: E731
        images = [decode_image(b, name=f"image of document {i!r}")
                  for b, i in zip(table.column("image").to_pylist(), table.column("id").to_pylist())]
        table = table.set_column(table.schema.get_field_index("image"), "image",
                                 pa.array([load_rgb(im, self.size).tobytes() for im in images], pa.binary()))
        table = table.append_column("image_w", pa.array([im.width for im in images], pa.int32()))
        table = table.append_column("image_h", pa.array([im.height for im in images], pa.int32()))
        for kind in FRAME_KINDS:
            if kind not in table.column_names:
                continue
            at = table.schema.get_field_index(kind)
            if not self.frames:
                table = table.remove_column(at)
            elif kind == "flash":
                table = table.set_column(at, kind, pa.array([None if v is None else raw(v) for v in table.column(kind).to_pylist()], pa.binary()))
            else:
                table = table.set_column(at, kind, pa.array([None if v is None else [raw(b) for b in v] for v in table.column(kind).to_pylist()],
                                                            pa.list_(pa.binary())))
        return table


class DocumentImages(NumpyBatchCollateFn):
    """Documents -> every view as one batch of images (n', 3, s, s) uint8: each capture, then (with
    `frames`) its flash and angle frames, more views of the same documents for MAE pre-training."""

    def __init__(self, image_size: int, frames: bool = True):
        self.size, self.frames = image_size, frames

    @property
    def columns(self) -> list[str]:
        return ["image", *(FRAME_KINDS if self.frames else ())]

    def __call__(self, rows: dict[str, np.ndarray]) -> torch.Tensor:
        views = list(rows["image"])
        for kind in FRAME_KINDS if self.frames else ():
            for v in rows.get(kind, ()):
                views += [] if is_null(v) else [v] if kind == "flash" else list(v)
        return torch.from_numpy(np.stack([load_rgb(v, self.size) for v in views]))


class DocumentViews:
    """Ray Data step (`ds.map_batches(DocumentViews(s), batch_format="numpy")`): documents -> column
    `views`, per document its views (as DocumentImages picks them) decoded and resized once, each a raw
    (3, s, s) uint8 buffer. Decoding then happens once per dataset, in Ray Data's tasks, not in the
    training worker on every epoch; `ViewBatch` stacks the buffers. With `per_view`, a row per view
    (`views` holds one buffer): a shuffle then mixes the views of different documents, as MAE
    pre-training's batches of independent images want."""

    def __init__(self, image_size: int, frames: bool = True, per_view: bool = False):
        self.images, self.per_view = DocumentImages(image_size, frames), per_view

    def __call__(self, rows: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        docs = []
        for i in range(len(rows["image"])):
            one = {k: rows[k][i:i + 1] for k in self.images.columns if k in rows}
            docs.append([v.tobytes() for v in self.images(one).numpy()])
        groups = [[v] for views in docs for v in views] if self.per_view else docs
        out = np.empty(len(groups), dtype=object)
        out[:] = groups
        return {"views": out}


def count_views(ds, frames: bool = True) -> int:
    """The views DocumentImages takes from a documents Ray Dataset (a capture each, plus its flash and
    angle frames with `frames`), counted from the frame columns: nothing is decoded."""
    docs = ds.count()
    kinds = [k for k in FRAME_KINDS if frames and k in ds.schema().names]
    if not kinds:
        return docs

    def frames_of(b: dict) -> dict:
        return {"n": [sum(0 if is_null(v) else 1 if k == "flash" else len(v) for k in kinds for v in b[k])]}

    return docs + int(ds.select_columns(kinds).map_batches(frames_of, batch_format="numpy").sum("n") or 0)


class ViewBatch(NumpyBatchCollateFn):
    """collate_fn over DocumentViews rows: every view of the batch's documents, (n', 3, s, s) uint8."""

    def __init__(self, image_size: int):
        self.size = image_size

    def __call__(self, rows: dict[str, np.ndarray]) -> torch.Tensor:
        shape = (3, self.size, self.size)
        return torch.from_numpy(np.stack([np.frombuffer(b, np.uint8).reshape(shape) for row in rows["views"] for b in row]))


def check_labels(ds, cat: Catalogue, require: bool = True) -> dict[str, int]:
    """Rows of a documents Ray Dataset that label each task of `cat` (`has_label`), in one pass over
    the label and frame columns. Raises ValueError naming the values when doc_type_name holds types
    the model does not know, and, with `require` (a training set), naming the columns when a task's
    column is absent or no row labels it."""
    have = set(ds.schema().names)
    for task in cat.tasks if require else ():
        absent = [c for c in task_columns(task) if c not in have]
        if absent:
            raise ValueError(f"task {task.name!r} needs column(s) {absent}, which the dataset lacks; train the "
                             "tasks your data labels (tasks=[...]) or add the column(s)")
    cols = [c for c in dict.fromkeys(["doc_type_name"] + [c for t in cat.tasks for c in task_columns(t)]) if c in have]

    def tally(rows: dict) -> dict:  # one row per batch: labelled rows per task, the type names seen
        n = len(rows["doc_type_name"])
        out = {t.name: [sum(has_label(t, {c: rows[c][i] for c in cols}) for i in range(n))] for t in cat.tasks}
        return {**out, "types": [json.dumps(sorted({str(v) for v in rows["doc_type_name"]}))]}

    counts, types = dict.fromkeys(cat.names(), 0), set()
    for r in ds.select_columns(cols).map_batches(tally, batch_format="numpy").iter_rows():
        counts = {k: v + int(r[k]) for k, v in counts.items()}
        types |= set(json.loads(r["types"]))
    unknown = sorted(types - set(doc_types(cat))) if "doc_type" in cat.names() else []
    if unknown:
        raise ValueError(f"doc_type_name holds unknown document type(s) {unknown}; known: {doc_types(cat)}")
    unlabelled = [t for t in cat.tasks if counts[t.name] == 0]
    if require and unlabelled:
        raise ValueError("no row labels task(s) " + ", ".join(f"{t.name!r} (columns {task_columns(t)})" for t in unlabelled)
                         + "; train the tasks your data labels (tasks=[...])")
    return counts


# -- the old in-memory path (benchmarks, model tests) ----------------------------------------------


def _generate(start: int, stop: int, seed: int, options: dict) -> pa.Table:
    from docray import synth

    return synth.generate("documents", start, stop, seed=seed, **options)


def documents_table(n: int, seed: int = 0, options: dict | None = None, cache: bool = True) -> pa.Table:
    """Rows [0, n) of the synthetic documents (splits by `split`), generated once and cached.
    Not for trainers: they read datasets (train_jobs.common.synth_dataset)."""
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


def prepare(table: pa.Table, cat: Catalogue, image_size: int, seg_size: int | None = None,
            with_frames: bool = True) -> dict:
    """Every row of `table` through `DocumentBatch` at once, as numpy arrays, plus `split` and
    `doc_type_name` (for `DocumentSet`)."""
    collate = DocumentBatch(cat, image_size, seg_size, with_frames)
    cols = {c: table.column(c).to_numpy(zero_copy_only=False) for c in collate.columns if c in table.column_names}
    batch = collate(cols)
    arrays = {k: v.numpy() for k, v in batch.items() if k != "targets"}
    arrays["targets"] = {k: v.numpy() for k, v in batch["targets"].items()}
    arrays["split"] = np.asarray(table.column("split").to_pylist(), dtype=object)
    arrays["doc_type_name"] = table.column("doc_type_name").to_pylist()
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
                                                                         "attr_num", "task_set", "labelled") if k in self.a}
        item["targets"] = {k: torch.as_tensor(v[j]) for k, v in self.a["targets"].items()}
        return item


def image_grid(rows: list[list[np.ndarray]], scale: int = 2) -> bytes:
    """PNG of a grid: rows of (3, s, s) float images in [0, 1] (e.g. original | masked | reconstruction)."""
    from docray.imageio import encode_png

    lines = [np.concatenate([np.asarray(im).transpose(1, 2, 0) for im in r], 1) for r in rows]
    arr = (np.clip(np.concatenate(lines, 0), 0, 1) * 255).astype(np.uint8)
    return encode_png(Image.fromarray(arr).resize((arr.shape[1] * scale, arr.shape[0] * scale), Image.NEAREST))
