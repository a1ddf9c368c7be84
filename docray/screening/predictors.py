"""Batch predictors shared by the Ray Data jobs and the Serve app (`__init__` loads, `__call__(batch) -> batch`)."""
from __future__ import annotations

import json

import numpy as np

from docray.imageio import ImageDecodeError, decode_image
from docray.screening.embed import Embedder
from docray.screening.library import Library, cut_target, png, to_day
from docray.screening.matching import Screener, ScreenConfig
from docray.screening.templates import DEFAULT_TEMPLATES


def cut_targets(batch: dict, tile_size: int, templates=DEFAULT_TEMPLATES, min_detail: float = 12.0,
                skip_ids: frozenset = frozenset(), features: dict | None = None) -> dict:
    """Target pictures -> one row per tile (scaled, flat tiles dropped); targets in `skip_ids` are left out.
    With `features` (the library's FeatureSpec as a dict), each target's first row carries the whole
    target's packed local features in `features` (b"" on the other rows). A plain function: Ray Data runs it as tasks."""
    cols = {k: [] for k in ("tile", "target_id", "source_id", "cut_type", "cut_code", "position", "release_day", "features")}
    for img_bytes, tid, src, rt in zip(batch["image"], batch["id"], batch["source_id"], batch["release_time"]):
        if str(tid) in skip_ids:
            continue
        b = cut_target(decode_image(bytes(img_bytes)), str(tid), str(src), to_day(rt), tile_size,
                       templates, min_detail, features)
        for k, (tile, row) in enumerate(zip(b.tiles, b.rows)):
            cols["features"].append(b.features.get(str(tid), b"") if k == 0 else b"")
            cols["tile"].append(png(tile))
            for k, v in row.items():
                if k in cols:
                    cols[k].append(v)
    out = {k: np.array(v, dtype=object if k in ("tile", "target_id", "source_id", "cut_type", "features") else None)
           for k, v in cols.items()}
    if not cols["tile"]:
        out = {k: np.array([], dtype=object) for k in cols}
    return out


class TileEmbedder:
    """Rows with a `tile` (PNG) -> plus `vector` (dim floats, unit length). On GPU when there is one."""

    def __init__(self, descriptor: str = "registry:descriptor", batch_size: int = 256):
        self.embed = Embedder.load(descriptor, batch_size=batch_size)

    def __call__(self, batch: dict) -> dict:
        tiles = [decode_image(bytes(b)) for b in batch["tile"]]
        batch["vector"] = self.embed(tiles)
        return batch


class DocumentScreener:
    """Archive rows (`id`, `pictures` list of image bytes, optional `release_time`, `cut_type`) ->
    `abnormal`, `stage`, `n_matches`, `evidence` (JSON list), `error` (bad pictures are reported, not fatal)."""

    def __init__(self, library_root: str, descriptor: str | None = None, screen: dict | None = None):
        library = Library.open(library_root)
        cfg = ScreenConfig(**(screen or {}))
        self.screener = Screener(library, Embedder.load(descriptor or library.manifest["descriptor"]), cfg)

    def __call__(self, batch: dict) -> dict:
        n = len(batch["id"])
        out = {"id": list(batch["id"]), "abnormal": [], "stage": [], "n_matches": [], "evidence": [], "error": [],
               "library_version": []}
        times = batch.get("release_time", [None] * n)
        cuts = batch.get("cut_type", [None] * n)
        for pics, rt, ct in zip(batch["pictures"], times, cuts):
            try:
                images = [decode_image(bytes(p)) for p in pics]
                v = self.screener.screen(images, None if rt is None else to_day(rt), ct or None)
                out["abnormal"].append(v["abnormal"])
                out["stage"].append(v["stage"] or "")
                out["n_matches"].append(len(v["matches"]))
                out["evidence"].append(json.dumps(v["matches"]))
                out["error"].append("")
            except (ImageDecodeError, ValueError) as e:
                out["abnormal"].append(False)
                out["stage"].append("")
                out["n_matches"].append(0)
                out["evidence"].append("[]")
                out["error"].append(str(e))
            out["library_version"].append(self.screener.library.version)
        return {k: np.array(v, dtype=object if k in ("id", "stage", "evidence", "error") else None) for k, v in out.items()}
