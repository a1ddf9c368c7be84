"""Scores for calibrating the screening threshold on a user's held-out pictures.

    pos, neg = screening_scores("~/data/pictures/val", "registry:descriptor", queries=200)
    docray.calibration.operating_point(pos, neg, max_fpr=0.005)

The pictures (the `targets` contract, `is_target` required here) split in two: the sensitive ones
are cut into a temporary library as `data_jobs.screening_library` does; a positive query is one
of their tiles after a copy edit (crop, rescale, recolour, text, JPEG) whose best match names its
own picture; a negative is an edited tile of a benign picture. Each query is screened as
`Screener` does (regions -> descriptor -> search -> normalised score); the query's score is its
best region's.
"""
from __future__ import annotations

import os
import tempfile

import numpy as np
from tqdm import tqdm

from docray.imageio import decode_image
from docray.screening.augment import copy_edit, jpeg
from docray.screening.embed import Embedder
from docray.screening.library import Library, TileBatch, cut_target, to_day
from docray.screening.matching import Screener, ScreenConfig
from docray.screening.templates import DEFAULT_TEMPLATES, cut
from docray.storage.datasets import read_table


def _tile(pic, rng):
    tiles = [t.image for t in cut(pic, DEFAULT_TEMPLATES[int(rng.integers(len(DEFAULT_TEMPLATES)))], None)
             if np.asarray(t.image.convert("L"), np.float32).std() >= 12]
    return tiles[int(rng.integers(len(tiles)))] if tiles else None


def screening_scores(pictures: str, descriptor: str = "registry:descriptor", queries: int = 200,
                     seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(scores of the positive queries, a miss scoring -1; scores of the negative queries)."""
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
    embed = Embedder.load(descriptor)
    scratch = tempfile.mkdtemp(prefix="docray-calibrate-")  # a throw-away library: its versions in its own folder
    lib = Library.create(scratch, dim=embed.dim, tile_size=64, descriptor=descriptor, db_url=f"sqlite:///{scratch}/versions.db")
    batch = TileBatch()
    for i in np.flatnonzero(is_t):
        batch.extend(cut_target(images[i], ids[i], sources[i] or ids[i], to_day(times[i]) if times[i] else 0, 64))
    lib.append(batch, embed(batch.tiles))
    screener = Screener(lib, embed, ScreenConfig(learn=False, text_finder="none"))
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
                regions = screener.regions([jpeg(copy_edit(tile, rng), rng, 50, 90)])
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
    return np.array(out[True]), np.array(out[False])
