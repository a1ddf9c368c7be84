"""Calibrating the screening threshold of a descriptor on held-out pictures; the operating point
travels with the descriptor as calibration.json beside its weights (what `ScreenConfig.threshold`
None reads).

    pos, neg = screening_scores("~/data/pictures/val", "registry:descriptor", queries=200)
    docray.calibration.operating_point(pos, neg, max_fpr=0.005)
    op, record = docray.calibration.calibrate_screening("~/data/pictures/val", "registry:descriptor@v0003")
    write_calibration("registry:descriptor@v0003", record)      # or a folder, local or s3://

The pictures (the `targets` contract, `is_target` required here) split in two: the sensitive ones
are cut into a temporary library as `data_jobs.screening_library` does; a positive query is one
of their tiles after a copy edit (crop, rescale, recolour, text, JPEG), posted as uploads come
(`docray.screening.postings`: alone, in a post on a plain page, pasted into a photo-like or a
textured background; the postings in turn, equal shares), whose best match names its own picture;
a negative is a benign picture's tile posted the same ways. Each query is screened as `Screener`
does (regions -> descriptor -> search -> normalised score); the query's score is its best region's.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile

import numpy as np
from tqdm import tqdm

from docray.imageio import decode_image
from docray.screening.embed import CALIBRATION, Embedder
from docray.screening.library import Library, TileBatch, cut_target, to_day
from docray.screening.matching import Screener, ScreenConfig
from docray.screening.postings import POSTINGS, upload
from docray.screening.templates import DEFAULT_TEMPLATES, cut
from docray.storage.datasets import read_table


def _tile(pic, rng):
    tiles = [t.image for t in cut(pic, DEFAULT_TEMPLATES[int(rng.integers(len(DEFAULT_TEMPLATES)))], None)
             if np.asarray(t.image.convert("L"), np.float32).std() >= 12]
    return tiles[int(rng.integers(len(tiles)))] if tiles else None


def screening_scores(pictures: str, descriptor: str | Embedder = "registry:descriptor", queries: int = 200,
                     seed: int = 0, postings: tuple[str, ...] = POSTINGS) -> tuple[np.ndarray, np.ndarray]:
    """(scores of the positive queries, a miss scoring -1; scores of the negative queries). `descriptor`:
    a source `Embedder.load` reads, or an `Embedder`; query i of each class is posted as postings[i % n]."""
    bad = [p for p in postings if p not in POSTINGS]
    if bad or not postings:
        raise ValueError(f"postings must be some of {', '.join(POSTINGS)}, got {list(postings)}")
    table = read_table(os.path.expanduser(pictures))
    for col in ("id", "image", "is_target"):
        if col not in table.column_names:
            raise ValueError(f"{pictures}: calibration needs the column {col!r} (targets contract)")
    ids = table.column("id").to_pylist()
    is_t = np.asarray(table.column("is_target").to_pylist(), dtype=bool)
    if is_t.sum() == 0 or (~is_t).sum() == 0:
        raise ValueError(f"{pictures}: needs sensitive (is_target) and benign pictures, got {is_t.sum()} and {(~is_t).sum()}")
    images = [decode_image(b, name=i) for b, i in zip(table.column("image").to_pylist(), ids)]
    sources = table.column("source_id").to_pylist() if "source_id" in table.column_names else ids
    times = table.column("release_time").to_pylist() if "release_time" in table.column_names else [None] * len(ids)
    embed = descriptor if isinstance(descriptor, Embedder) else Embedder.load(descriptor)
    name = "trained" if isinstance(descriptor, Embedder) else descriptor
    scratch = tempfile.mkdtemp(prefix="docray-calibrate-")  # a throw-away library: its versions in its own folder
    try:
        lib = Library.create(scratch, dim=embed.dim, tile_size=64, descriptor=name, db_url=f"sqlite:///{scratch}/versions.db")
        batch = TileBatch()
        for i in np.flatnonzero(is_t):
            batch.extend(cut_target(images[i], ids[i], sources[i] or ids[i], to_day(times[i]) if times[i] else 0, 64))
        lib.append(batch, embed(batch.tiles))
        # only the screener's regions and scores: its threshold decides nothing here (set, so none is looked for)
        screener = Screener(lib, embed, ScreenConfig(learn=False, text_finder="none", threshold=1.0))
        rng = np.random.default_rng(seed)
        out = {True: [], False: []}
        for positive, pool in ((True, np.flatnonzero(is_t)), (False, np.flatnonzero(~is_t))):
            with tqdm(total=queries, desc=f"calibrate {'targets' if positive else 'benign'}", unit="query") as bar:
                tries = 0
                while len(out[positive]) < queries and tries < 20 * queries:
                    tries += 1
                    k = int(pool[int(rng.integers(len(pool)))])
                    tile = _tile(images[k], rng)
                    if tile is None:
                        continue
                    regions = screener.regions([upload(tile, postings[len(out[positive]) % len(postings)], rng)])
                    score = -1.0
                    if regions:
                        v = embed([r.crop for r in regions])
                        sims, idx = lib.index.search(v, 1)
                        sc = screener.scores(v, sims)[:, 0]
                        b = int(np.argmax(sc))
                        hit = lib.rows([idx[b, 0]])[0]["target_id"] == ids[k]
                        score = float(sc[b]) if hit or not positive else -1.0  # a wrong match is a miss
                    out[positive].append(score)
                    bar.update(1)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return np.array(out[True]), np.array(out[False])


def write_calibration(descriptor: str, record: dict) -> str:
    """Write `record` as calibration.json beside the weights of `descriptor`: `registry:NAME[@VERSION]`
    (that version's folder, the latest when none is named, through the registry's filesystem) or a
    saved model folder (local or s3://). Returns the file's path or URI."""
    from docray.storage.registry import parse_ref

    data = json.dumps(record, indent=1).encode()
    found = parse_ref(descriptor)
    if found is not None:
        from docray.storage.registry import ModelRegistry

        reg = ModelRegistry()
        path = f"{reg.path(*found)}/{CALIBRATION}"
        reg.fs.pipe_file(path, data)
        return path
    if descriptor.startswith("build:"):
        raise ValueError(f"{descriptor}: random weights have nowhere to keep a calibration; save the model first")
    from docray.storage.blobs import write_file

    return write_file(f"{descriptor.rstrip('/')}/{CALIBRATION}", data)
