"""Calibrating the screening threshold of a descriptor on held-out pictures; the operating point
travels with the descriptor as calibration.json beside its weights (what `ScreenConfig.threshold`
None reads).

    pos, neg = screening_scores("~/data/pictures/val", "registry:descriptor", queries=200)
    docray.calibration.operating_point(pos, neg, max_fpr=0.005)
    op, record = docray.calibration.calibrate_screening("~/data/pictures/val", "registry:descriptor@v0003")
    write_calibration("registry:descriptor@v0003", record)      # or a folder, local or s3://
    rr, op = docray.calibration.fit_reranker(FIT_PICTURES, CAL_PICTURES, Embedder.load("registry:descriptor@v0003"))
    write_reranker("registry:descriptor@v0003", rr)               # rerank.pkl: ScreenConfig.rerank uses it

The pictures (the `targets` contract, `is_target` required here) split in two: the sensitive ones
are cut into a temporary library as `data_jobs.screening_library` does; a positive query is one
of their tiles after a copy edit (crop, rescale, recolour, text, JPEG), posted as uploads come
(`docray.screening.postings`: alone, in a post on a plain page, pasted into a photo-like or a
textured background; the postings in turn, equal shares), whose best match names its own picture;
a negative is a benign picture's tile posted the same ways. Each query is screened as `Screener`
does (regions -> descriptor -> search -> normalised score; with `rerank`, the re-ranker's probability);
the query's score is its best region's. The re-ranker (`docray.screening.rerank`) is fitted on the
pairs of such queries of other pictures, then calibrated the same way.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass

import numpy as np
from PIL import Image
from tqdm import tqdm

from docray.imageio import decode_image
from docray.screening.embed import CALIBRATION, Embedder
from docray.screening.library import Library, TileBatch, cut_target, to_day
from docray.screening.matching import Screener, ScreenConfig
from docray.screening.rules import ExtensionRule
from docray.screening.postings import POSTINGS, upload
from docray.screening.proposals import iou
from docray.screening.rerank import FEATURES
from docray.screening.templates import DEFAULT_TEMPLATES, Tile, cut, grid, tile_boxes
from docray.storage.datasets import read_table


def _tile(pic, rng):
    tiles = [t for t in cut(pic, DEFAULT_TEMPLATES[int(rng.integers(len(DEFAULT_TEMPLATES)))], None)
             if np.asarray(t.image.convert("L"), np.float32).std() >= 12]
    return tiles[int(rng.integers(len(tiles)))] if tiles else None


@dataclass
class Query:
    upload: Image.Image
    target: str | None  # the sensitive picture whose tile it carries; None for a benign one
    tile: Tile  # the tile posted (its template, position, box in the picture)
    size: tuple[int, int]  # the picture's (width, height)
    posting: str = "alone"  # how the tile was posted (POSTINGS)


def _check_postings(postings) -> None:
    bad = [p for p in postings if p not in POSTINGS]
    if bad or not postings:
        raise ValueError(f"postings must be some of {', '.join(POSTINGS)}, got {list(postings)}")


def _pictures(uri: str):
    """(table, ids, decoded images, source ids, release times) of a Parquet dataset of pictures (id, image)."""
    table = read_table(os.path.expanduser(uri))
    for col in ("id", "image"):
        if col not in table.column_names:
            raise ValueError(f"{uri}: pictures need the column {col!r} (targets contract)")
    ids = table.column("id").to_pylist()
    images = [decode_image(b, name=i) for b, i in zip(table.column("image").to_pylist(), ids)]
    sources = table.column("source_id").to_pylist() if "source_id" in table.column_names else ids
    times = table.column("release_time").to_pylist() if "release_time" in table.column_names else [None] * len(ids)
    return table, ids, images, sources, times


def _sensitive(table, *columns):
    """The columns' rows of the sensitive pictures (is_target) when the table says which; all of them if not."""
    if "is_target" not in table.column_names:
        return columns
    keep = table.column("is_target").to_pylist()
    return tuple([v for v, k in zip(col, keep) if k] for col in columns)


def posted_queries(pictures: str, embed: Embedder, queries: int, seed: int, postings: tuple[str, ...] = POSTINGS,
                   library_pictures: str = ""):
    """Yield (library, Query) for `queries` positive, then `queries` negative queries of `pictures` (targets
    contract with is_target), query i of each class posted as postings[i % n]; the library is a throw-away
    one of the sensitive pictures' tiles, removed at the end. `library_pictures`: more pictures (id, image;
    only the sensitive ones when it has is_target) whose tiles join it, never a query's own: a library the
    size of the one served, whose many tiles lure a query the way the served one's do (a threshold calibrated
    against 50 pictures' tiles lets more benign uploads through against thousands)."""
    _check_postings(postings)
    table, ids, images, sources, times = _pictures(pictures)
    if "is_target" not in table.column_names:
        raise ValueError(f"{pictures}: calibration needs the column 'is_target' (targets contract)")
    is_t = np.asarray(table.column("is_target").to_pylist(), dtype=bool)
    if is_t.sum() == 0 or (~is_t).sum() == 0:
        raise ValueError(f"{pictures}: needs sensitive (is_target) and benign pictures, got {is_t.sum()} and {(~is_t).sum()}")
    extra = _sensitive(*_pictures(library_pictures)) if library_pictures else ([], [], [], [])
    if set(extra[0]) & set(ids):
        raise ValueError(f"{library_pictures}: shares picture ids with {pictures}; the library's pictures must be others")
    scratch = tempfile.mkdtemp(prefix="docray-calibrate-")  # a throw-away library: its versions in its own folder
    try:
        lib = Library.create(scratch, dim=embed.dim, tile_size=64, descriptor="calibration",
                             db_url=f"sqlite:///{scratch}/versions.db")
        batch = TileBatch()
        chosen = [(ids[i], images[i], sources[i], times[i]) for i in np.flatnonzero(is_t)] + list(zip(*extra))
        for pid, img, src, t in chosen:
            batch.extend(cut_target(img, pid, src or pid, to_day(t) if t else 0, 64))
        lib.append(batch, embed(batch.tiles))
        rng = np.random.default_rng(seed)
        for positive, pool in ((True, np.flatnonzero(is_t)), (False, np.flatnonzero(~is_t))):
            with tqdm(total=queries, desc=f"queries {'targets' if positive else 'benign'}", unit="query") as bar:
                made = tries = 0
                while made < queries and tries < 20 * queries:
                    tries += 1
                    k = int(pool[int(rng.integers(len(pool)))])
                    tile = _tile(images[k], rng)
                    if tile is None:
                        continue
                    posting = postings[made % len(postings)]
                    yield lib, Query(upload(tile.image, posting, rng), ids[k] if positive else None, tile,
                                     images[k].size, posting)
                    made += 1
                    bar.update(1)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def screening_scores(pictures: str, descriptor: str | Embedder = "registry:descriptor", queries: int = 200,
                     seed: int = 0, postings: tuple[str, ...] = POSTINGS, cfg: ScreenConfig | None = None,
                     reranker=None, library_pictures: str = "") -> tuple[np.ndarray, np.ndarray]:
    """(scores of the positive queries, a miss scoring -1; scores of the negative queries). `descriptor`:
    a source `Embedder.load` reads, or an `Embedder`; query i of each class is posted as postings[i % n].
    Each query is screened as `Screener` does with `cfg` (default: the descriptor alone; with `rerank`,
    `reranker` or the descriptor's own scores), its score its best region's; `library_pictures`: more pictures for the
    library (`posted_queries`)."""
    embed = descriptor if isinstance(descriptor, Embedder) else Embedder.load(descriptor)
    # no attribute filter, no second match, nothing learnt; the threshold decides nothing here (set, so none is looked for)
    cfg = (cfg or ScreenConfig(rerank=False)).model_copy(update={"learn": False, "text_finder": "none", "threshold": 1.0,
                                                     "rule": ExtensionRule(enabled=False)})
    out = {True: [], False: []}
    screener = None
    for lib, q in posted_queries(pictures, embed, queries, seed, postings, library_pictures):
        screener = screener or Screener(lib, embed, cfg, reranker=reranker)
        best = screener.screen([q.upload])["best"][0]
        positive = q.target is not None
        hit = best is not None and best["target_id"] == q.target
        out[positive].append(best["score"] if best is not None and (hit or not positive) else -1.0)  # a wrong match is a miss
    return np.array(out[True]), np.array(out[False])


def rerank_examples(pictures: str, embed: Embedder, cfg: ScreenConfig, queries: int = 200, seed: int = 0,
                    k: int = 3, postings: tuple[str, ...] = POSTINGS,
                    library_pictures: str = "") -> tuple[np.ndarray, np.ndarray]:
    """The re-ranker's training pairs on `pictures` (`docray.screening.rerank`): features of the `k` best
    candidates of every region of every posted query (regions as `cfg` finds them), and whether the
    candidate shows what was posted: a tile of the query's own target covering mostly the same part of
    it (IoU >= 0.5 with the posted tile; never, for a benign query). `library_pictures`: as `posted_queries`."""
    cfg = cfg.model_copy(update={"learn": False, "text_finder": "none", "threshold": 1.0, "rerank": False})
    X, y, screener = [], [], None
    for lib, q in posted_queries(pictures, embed, queries, seed, postings, library_pictures):
        screener = screener or Screener(lib, embed, cfg)
        regions = screener.regions([q.upload])
        if not regions:
            continue
        vectors = embed([r.crop for r in regions])
        sims, ids = lib.index.search(vectors, max(k, cfg.k))
        _, feats, pairs = screener.candidates(regions, {0: q.upload.size}, vectors, sims, ids, k)
        found = np.unique(ids[ids >= 0])
        shows = {int(i): q.target is not None and r["target_id"] == q.target
                 and iou(tile_boxes(*q.size, *grid(r["cut_type"]))[r["position"]], q.tile.box) >= 0.5
                 for i, r in zip(found, lib.rows(found))}
        X.append(feats)
        y.extend(shows[int(ids[r, j])] for r, j in pairs)
    return (np.concatenate(X) if X else np.zeros((0, len(FEATURES)), np.float32)), np.asarray(y, int)


def write_beside(descriptor: str, filename: str, data: bytes) -> str:
    """Write `data` as `filename` beside the weights of `descriptor`: `registry:NAME[@VERSION]` (that
    version's folder, the latest when none is named, through the registry's filesystem) or a saved model
    folder (local or s3://). Returns the file's path or URI."""
    from docray.storage.registry import parse_ref

    found = parse_ref(descriptor)
    if found is not None:
        from docray.storage.registry import ModelRegistry

        reg = ModelRegistry()
        path = f"{reg.path(*found)}/{filename}"
        reg.fs.pipe_file(path, data)
        return path
    if descriptor.startswith("build:"):
        raise ValueError(f"{descriptor}: random weights have nowhere to keep a calibration; save the model first")
    from docray.storage.blobs import write_file

    return write_file(f"{descriptor.rstrip('/')}/{filename}", data)


def write_calibration(descriptor: str, record: dict) -> str:
    """Write `record` as calibration.json beside the weights of `descriptor` (`write_beside`)."""
    return write_beside(descriptor, CALIBRATION, json.dumps(record, indent=1).encode())


def write_reranker(descriptor: str, reranker) -> str:
    """Write `reranker` as rerank.pkl beside the weights of `descriptor` (`write_beside`): Embedder.load then
    carries it, and ScreenConfig.rerank uses it."""
    from docray.screening.rerank import RERANK

    return write_beside(descriptor, RERANK, reranker.to_bytes())
