"""Matching, the method: picture -> its regions (the whole picture and the pictures laid out in it;
with `proposals`, also rectangles of straight edges or sliding windows that need no layout, scored
less `proposal_margin`; with `text_finder="ocr"`, only those in which OCR finds text; with
`ocr_crop`, also the picture cropped to the text OCR finds in it, with a margin) -> crops scaled to
tile size -> descriptor -> candidates whose attributes equal the query's -> score (the similarity,
less the background term) >= threshold is a match; no match -> extension rule -> second match; a
document is abnormal when any picture matches; every content picture of a document found abnormal by
the second match (and the region that matched, when it is not a whole picture) joins the library as
a wild tile. The threshold is the descriptor's calibrated one (calibration.json beside its weights),
unless `ScreenConfig.threshold` sets one (`resolve_threshold`).

    screener = Screener(library, Embedder.load(), ScreenConfig())
    verdict = screener.screen([pic1, pic2], release_time="2024-05-01", cut_type=None)
    verdict["abnormal"], verdict["matches"]   # evidence: picture, region, tile_id, source, similarity, score, stage
    verdict["threshold"], verdict["threshold_source"]   # "calibrated" | "config" | "uncalibrated-default"

Two-stage matching (`verify.enabled`): the index's top-k tiles of every region, grouped by target,
are the candidates of a picture; the best `verify.candidates` of them are verified with local
features of the whole picture against the whole target (`docray.screening.verify`) and a candidate
matches when RANSAC keeps `verify.min_inliers` (the evidence adds `inliers`), whatever its
descriptor score; a candidate without inliers enough is rejected (`verify.decide="either"`: unless
its descriptor score reaches the threshold, so verification only adds matches). Targets the library holds no
local features for (a library built before they were stored) are decided by the descriptor alone,
and the verdict's `verification` says so. With `verify.propose="descriptor+local"` the targets most
voted for by the picture's keypoints (among those whose tiles pass the stage's attribute filter) are
candidates too: a tile pasted into a busy photo, which no region isolates, is still proposed.

The learned re-ranker (`rerank`, on by default; `docray.screening.rerank`): each region's best
candidates are aligned to it and re-scored by a small gradient-boosted model fitted beside the
descriptor (rerank.pkl); a picture matches when its best pair's probability reaches the re-ranker's
calibrated threshold, and the edge-rectangle proposals join the regions (`proposals: auto`). A
descriptor without one decides alone on the layout's regions; `verdict["rerank"]` says which.

The three steps are separate (`regions`, embedding, `match`) so the Serve app can batch the
descriptor across requests between them.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Literal

import numpy as np
from PIL import Image
from pydantic import Field

from docray.config import Config
from docray.screening.library import Library, TileBatch, to_day, wild_tile
from docray.screening.rules import ExtensionRule, extended_filter, mask, primary_filter
from docray.screening.proposals import Proposals, iou, propose
from docray.screening.rerank import Reranker, candidate_features, grey
from docray.screening.templates import CUT_TYPES
from docray.screening.verify import FeatureIndex, VerifyConfig, extract, inliers

Box = tuple[int, int, int, int]


# The threshold of a descriptor never calibrated: 0.55 was hand-calibrated once, for the first registered
# descriptor; it holds for no other (docs/screening.md). Used with a warning, and the verdict says so.
UNCALIBRATED_THRESHOLD = 0.55
THRESHOLD_SOURCES = ("calibrated", "config", "uncalibrated-default")
log = logging.getLogger("docray.screening")
_warned = False  # the uncalibrated default is warned about once a process


class ScreenConfig(Config):
    threshold: float | None = Field(None, description="score at or above which a region matches a tile (the cosine "
                                    "similarity, less the background term when the descriptor has a bank); None: "
                                    "the descriptor's calibrated one (calibration.json beside its weights, written "
                                    "by its trainer or `docray calibrate screening --write`); a number overrides it")
    norm_beta: float = Field(0.5, ge=0, description="weight of the background term: the mean similarity of the region "
                                                    "to its norm_k nearest background descriptors (0: raw similarity)")
    norm_k: int = Field(10, ge=1, description="background neighbours averaged")
    k: int = Field(5, ge=1, description="candidates fetched per region")
    rule: ExtensionRule = ExtensionRule()
    text_finder: Literal["ocr", "none"] = Field("none", description="'ocr': only regions in which OCR finds text are "
                                                                    "searched (the design's gate; it misses 10-16% of "
                                                                    "tiles, see the benchmark); 'none': every region is")
    ocr_crop: bool = Field(False, description="also match each picture cropped to the text OCR finds in it (the "
                                              "method's OCR step: the union of the text lines, widened by ocr_margin)")
    ocr_margin: float = Field(0.25, ge=0, description="margin added on each side of the OCR crop, as a fraction of "
                                                      "the picture's short side")
    whole_picture: bool = Field(True, description="the whole picture is a candidate region too (a tile posted alone)")
    min_region: int = Field(16, description="smallest region side in pixels")
    max_regions: int = Field(8, description="regions per picture at most from the layout (the whole picture and the "
                                            "pictures laid out on a plain background)")
    proposals: Proposals | Literal["auto"] = Field(
        "auto", description="more regions that do not depend on a layout (docray.screening.proposals): 'edges', "
        "rectangles of straight edges (a picture pasted into a photo or a texture); 'windows', multi-scale sliding "
        "windows; 'edges+windows'; 'layout': none; 'auto': 'edges' when the re-ranker scores the regions, else "
        "'layout' (alone, the descriptor's scores do not gain from them at a low false-positive rate). See "
        "docs/screening.md for the measurements")
    max_proposals: int = Field(16, ge=1, description="layout-free regions per picture at most (each is embedded: the "
                                                     "cost per picture grows with it)")
    proposal_margin: float = Field(0.0, ge=0, description="subtracted from the score of a layout-free region: many "
                                                          "more regions give a benign picture more chances to match")
    learn: bool = Field(True, description="add pictures of documents found abnormal by the second match to the library")
    dedup_similarity: float = Field(0.95, description="near-duplicate similarity when tiles are added")
    verify: VerifyConfig = VerifyConfig()
    rerank: bool = Field(True, description="re-score each region's best candidates with the learned re-ranker saved "
                                           "beside the descriptor (rerank.pkl, docray.screening.rerank): a picture "
                                           "matches when the re-ranker's probability reaches its calibrated threshold "
                                           "(`threshold`, when set, overrides it); a descriptor without one decides "
                                           "alone, and the verdict says so. verify.enabled, when on, decides instead")


@dataclass
class Region:
    picture: int  # index of the picture in the document
    box: Box  # in the picture's pixels
    crop: Image.Image
    source: str = "layout"  # "layout" (the picture, the pictures laid out in it, the OCR crop) or "proposal"


def picture_boxes(img: Image.Image, min_side: int = 16, tols: tuple[int, ...] = (18, 40), reach: int = 5) -> list[Box]:
    """Boxes of the pictures laid out on a plain background (a post, a collage).

    Connected components of the pixels that differ from the border colour, at a loose tolerance
    (keeps a picture whole) and a strict one (separates pictures that JPEG ringing joined); each
    box's sides then snap to the strongest straight edge within `reach` pixels (the pasted
    picture's border, not the ringing around it). Near-duplicate boxes (IoU >= 0.9) are dropped.
    """
    import cv2

    a = np.asarray(img.convert("RGB"), np.int16)
    border = np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]])
    bg = np.median(border, 0)
    diff = np.abs(a - bg).max(-1)
    boxes: list[Box] = []
    for k, tol in enumerate(tols):
        fg = (diff > tol).astype(np.uint8)
        if k == 0:
            fg = cv2.morphologyEx(fg, cv2.MORPH_CLOSE, np.ones((3, 3), np.uint8))
        _, _, stats, _ = cv2.connectedComponentsWithStats(fg, connectivity=8)
        for x, y, w, h, _area in stats[1:]:
            if w >= min_side and h >= min_side and (w, h) != img.size:
                b = snap_box(a, (int(x), int(y), int(x + w), int(y + h)), reach, min_side)
                if all(_iou(b, o) < 0.9 for o in boxes):
                    boxes.append(b)
    return boxes


def snap_box(a: np.ndarray, box: Box, reach: int = 5, min_side: int = 16) -> Box:
    """Move each side of `box` to the row/column within `reach` pixels across which the image
    (`a`, (h, w, 3)) changes most on average along that side."""
    h, w = a.shape[:2]
    x0, y0, x1, y1 = box
    col = lambda x: np.abs(a[y0:y1, x] - a[y0:y1, x - 1]).sum(-1).mean()  # edge between columns x-1 and x
    row = lambda y: np.abs(a[y, x0:x1] - a[y - 1, x0:x1]).sum(-1).mean()
    side = lambda c, score, n: max((v for v in range(c - reach, c + reach + 1) if 1 <= v < n), key=score, default=c)
    out = (side(x0, col, w), side(y0, row, h), side(x1, col, w), side(y1, row, h))
    return out if out[2] - out[0] >= min_side and out[3] - out[1] >= min_side else box


_iou = iou


def resolve_threshold(configured: float | None, calibration: dict | None) -> tuple[float, str]:
    """(threshold, its source, one of THRESHOLD_SOURCES): `configured` when it is a number, else the
    descriptor's `calibration` (its calibration.json), else UNCALIBRATED_THRESHOLD (warned once a process)."""
    global _warned
    if configured is not None:
        return float(configured), "config"
    if calibration is not None:
        return float(calibration["threshold"]), "calibrated"
    if not _warned:
        _warned = True
        log.warning("the descriptor has no calibration.json: matching at the uncalibrated default threshold %s, "
                    "calibrated for another descriptor (its false-positive rate is unknown); run docray calibrate "
                    "screening PICTURES --descriptor SOURCE --write, or set ScreenConfig.threshold",
                    UNCALIBRATED_THRESHOLD)
    return UNCALIBRATED_THRESHOLD, "uncalibrated-default"


def find_regions(img: Image.Image, cfg: ScreenConfig) -> list[Box]:
    """Candidate tile regions of one picture: the whole picture (a tile posted alone) and the
    pictures laid out in it, largest first, at most `cfg.max_regions`; then, with `cfg.proposals`,
    at most `cfg.max_proposals` layout-free ones (edge rectangles first) that are not near-duplicates."""
    return _find_regions(img, cfg)[0]


def _find_regions(img: Image.Image, cfg: ScreenConfig) -> tuple[list[Box], int]:
    """(boxes, how many of them, first, come from the layout)."""
    out: list[Box] = [(0, 0, img.width, img.height)] if cfg.whole_picture else []
    for b in sorted(picture_boxes(img, cfg.min_region), key=lambda b: -(b[2] - b[0]) * (b[3] - b[1])):
        if all(_iou(b, o) < 0.9 for o in out):
            out.append(b)
    out = out[: cfg.max_regions]
    n = len(out)
    if cfg.proposals not in ("layout", "auto"):  # 'auto' without a Screener to resolve it: the layout's
        for b in propose(img, cfg.proposals, cfg.max_proposals, cfg.min_region):
            if all(_iou(b, o) < 0.9 for o in out):
                out.append(b)
    return out[: n + cfg.max_proposals], n


def picture_sizes(regions: list[Region], pictures: list[Image.Image] | None = None) -> dict[int, tuple[int, int]]:
    """Picture -> (width, height): the pictures' own, or without them the largest extent of a picture's regions
    (its whole region, when it was one)."""
    if pictures is not None:
        return {i: pic.size for i, pic in enumerate(pictures)}
    sizes: dict[int, tuple[int, int]] = {}
    for r in regions:
        w, h = sizes.get(r.picture, (0, 0))
        sizes[r.picture] = (max(w, r.box[2]), max(h, r.box[3]))
    return sizes


class Screener:
    def __init__(self, library: Library, embed: Callable[[list[Image.Image]], np.ndarray] | None, cfg: ScreenConfig,
                 text_finder: Callable[[Image.Image], list[Box]] | None = None, background: np.ndarray | None = None,
                 text_boxes: Callable[[Image.Image], list[Box]] | None = None, calibration: dict | None = None,
                 reranker: Reranker | None = None):
        self.library, self.embed, self.cfg = library, embed, cfg
        self.background = background if background is not None else getattr(embed, "background", None)
        calibration = calibration if calibration is not None else getattr(embed, "calibration", None)
        self.reranker = reranker if reranker is not None else getattr(embed, "reranker", None)
        self.reranking = "off"
        if cfg.rerank and cfg.verify.enabled:
            self.reranking = "off: verification decides"
        elif cfg.rerank:  # the re-ranker's threshold is on its probability: the descriptor's calibration is not it
            self.reranking = "on" if self.reranker is not None else "unavailable: the descriptor has no rerank.pkl"
            if self.reranker is not None:
                calibration = None if self.reranker.threshold is None else {"threshold": self.reranker.threshold}
        if cfg.proposals == "auto":
            self.cfg = cfg = cfg.model_copy(update={"proposals": "edges" if self.reranking == "on" else "layout"})
        self.threshold, self.threshold_source = resolve_threshold(cfg.threshold, calibration)
        self._tiles: dict[int, np.ndarray] = {}  # tile id -> its grey square, for the re-ranker (bounded)
        if text_finder is None and cfg.text_finder == "ocr":
            from docray.screening.ocr import text_boxes as text_finder
        if text_boxes is None and cfg.ocr_crop:
            from docray.screening.ocr import text_boxes
        self.text_finder = text_finder  # the gate: a region is searched only when this finds text in it
        self.text_boxes = text_boxes  # the OCR crop's text lines
        self._local: tuple[int, FeatureIndex, np.ndarray] | None = None  # (library version, index, tiles' target ids)

    def local_index(self) -> tuple[FeatureIndex, np.ndarray]:
        """Every target's keypoints in one index, and the tiles' target ids (rebuilt when the library moves on)."""
        if self._local is None or self._local[0] != self.library.version:
            lib = self.library
            index = FeatureIndex({t: lib.target_features(t) for t in lib.feature_targets()})
            self._local = (lib.version, index, np.asarray(lib.meta.column("target_id").to_pylist(), object))
        return self._local[1], self._local[2]

    # step 1: regions of every picture
    def regions(self, pictures: list[Image.Image]) -> list[Region]:
        """The candidate regions of every picture; with a text finder (OCR), those in which it finds text;
        with `ocr_crop`, each picture's text crop too."""
        out = []
        for i, pic in enumerate(pictures):
            boxes, n_layout = _find_regions(pic, self.cfg)
            for k, b in enumerate(boxes):
                crop = pic.crop(b)
                if self.text_finder is None or self.text_finder(crop):
                    out.append(Region(i, b, crop, "layout" if k < n_layout else "proposal"))
            b = self.ocr_crop(pic) if self.cfg.ocr_crop else None
            if b is not None and all(_iou(b, o) < 0.9 for o in boxes):
                out.append(Region(i, b, pic.crop(b)))
        return out

    def ocr_crop(self, pic: Image.Image) -> Box | None:
        """The box around every text line OCR finds in `pic`, widened by `ocr_margin` of its short side on each
        side (the sensitive pictures carry an address or a URL: a tile cut from one holds part of it); None
        without text, or when the crop would be smaller than `min_region`."""
        lines = self.text_boxes(pic) if self.text_boxes is not None else []
        if not lines:
            return None
        m = round(self.cfg.ocr_margin * min(pic.size))
        x0, y0 = max(0, min(b[0] for b in lines) - m), max(0, min(b[1] for b in lines) - m)
        x1, y1 = min(pic.width, max(b[2] for b in lines) + m), min(pic.height, max(b[3] for b in lines) + m)
        return (x0, y0, x1, y1) if min(x1 - x0, y1 - y0) >= self.cfg.min_region else None

    def scores(self, vectors: np.ndarray, sims: np.ndarray) -> np.ndarray:
        """Similarities (regions, k) -> scores: less `norm_beta` x each region's mean similarity to its
        `norm_k` nearest background descriptors (SSCD's score normalisation: a region that looks
        like much ordinary content needs a closer match). Unchanged without a background bank."""
        if self.background is None or self.cfg.norm_beta == 0 or len(vectors) == 0:
            return sims
        bg = vectors @ self.background.T  # (regions, n_background)
        k = min(self.cfg.norm_k, bg.shape[1])
        return sims - self.cfg.norm_beta * np.partition(bg, -k, axis=1)[:, -k:].mean(1, keepdims=True)

    def region_scores(self, regions: list[Region], vectors: np.ndarray, sims: np.ndarray) -> np.ndarray:
        """`scores`, less `proposal_margin` for the layout-free regions."""
        sc = self.scores(vectors, sims)
        if self.cfg.proposal_margin and regions:
            sc = sc - self.cfg.proposal_margin * np.array([[r.source == "proposal"] for r in regions], np.float32)
        return sc

    # step 3: search and decide
    def verification(self, pictures) -> str:
        """'off', 'on', or why verification cannot run ('unavailable: ...')."""
        if not self.cfg.verify.enabled:
            return "off"
        if self.library.feature_spec is None:
            return ("unavailable: this library was built before local features were stored with it; "
                    "rebuild it (screening_library fresh=true) to verify")
        if pictures is None:
            return "unavailable: the pictures were not passed to match()"
        return "on"

    def match(self, regions: list[Region], vectors: np.ndarray, n_pictures: int, release_time=None,
              cut_type: str | None = None, pictures: list[Image.Image] | None = None) -> dict:
        """Search, decide, learn. `pictures` (the decoded pictures) are needed for verification only."""
        day = None if release_time is None else to_day(release_time)
        if cut_type is not None and cut_type not in CUT_TYPES:
            raise ValueError(f"unknown cut type {cut_type!r}; known: {', '.join(CUT_TYPES)}")
        verification = self.verification(pictures)
        verdict = {"abnormal": False, "stage": None, "matches": [], "pictures": n_pictures, "regions": len(regions),
                   "best": [None] * n_pictures, "library_version": self.library.version, "added_tiles": 0,
                   "verification": verification, "rerank": self.reranking, "threshold": self.threshold,
                   "threshold_source": self.threshold_source}
        if not regions:
            return verdict
        upload_features: dict[int, object] = {}  # picture -> its local features, described once per call
        stages = [("primary", primary_filter(day, cut_type))]
        ext = extended_filter(self.cfg.rule, day, cut_type)
        if ext is not None:
            stages.append(("extended", ext))
        for stage, filt in stages:
            if verification == "on":
                sims, ids = self.library.index.search(vectors, max(self.cfg.k, self.cfg.verify.k), filt)
                matches = self._verified(regions, self.region_scores(regions, vectors, sims), sims, ids, stage, verdict,
                                         pictures, upload_features, filt)
            elif self.reranking == "on":
                sims, ids = self.library.index.search(vectors, max(self.cfg.k, self.reranker.k), filt)
                scores, sims, ids = self.rerank(regions, picture_sizes(regions, pictures), vectors, sims, ids)
                matches = self._evidence(regions, scores, sims, ids, stage, verdict)
            else:
                sims, ids = self.library.index.search(vectors, self.cfg.k, filt)
                matches = self._evidence(regions, self.region_scores(regions, vectors, sims), sims, ids, stage, verdict)
            if matches:
                verdict.update(abnormal=True, stage=stage, matches=matches)
                break
        if verdict["stage"] == "extended" and self.cfg.learn:
            verdict["added_tiles"] = self._learn(regions, vectors, verdict["matches"], day, cut_type, n_pictures, pictures)
            verdict["library_version"] = self.library.version
        return verdict

    def tile_squares(self, ids) -> dict[int, np.ndarray]:
        """Tile id -> the tile as the re-ranker's grey square, for the ids given (read once, then cached; Serve
        matches in several threads, so a call keeps what it found and read in its own dict)."""
        cache = self._tiles
        out = {int(i): cache.get(int(i)) for i in np.ravel(ids) if i >= 0}
        missing = sorted(i for i, v in out.items() if v is None)
        if missing:
            read = {i: grey(img) for i, img in self.library.tile_images(missing).items()}
            out.update(read)
            if len(cache) + len(read) > 20_000:  # bounded: start again
                self._tiles = read
            else:
                cache.update(read)
        return out

    def candidates(self, regions: list[Region], sizes: dict[int, tuple[int, int]], vectors: np.ndarray,
                   sims: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, list[tuple[int, int]]]:
        """(descriptor scores (regions, columns), the re-ranker's features of the `k` best candidates of every
        region, those pairs (region, column)): what the re-ranker scores and its training examples."""
        scores = self.region_scores(regions, vectors, sims)
        X, pairs = candidate_features(regions, sizes, scores, sims, ids, self.tile_squares(ids[:, :k]), k)
        return scores, X, pairs

    def rerank(self, regions, sizes, vectors, sims, ids) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(scores, similarities, ids) of each region's `reranker.k` best candidates, re-scored by the re-ranker
        (P(true match)) and re-ordered, best first; -inf and id -1 where a region had fewer."""
        k = self.reranker.k
        _, X, pairs = self.candidates(regions, sizes, vectors, sims, ids, k)
        p = np.full((len(regions), k), -np.inf, np.float32)
        for (r, j), v in zip(pairs, self.reranker.predict(X)):
            p[r, j] = v
        order = np.argsort(-p, axis=1, kind="stable")
        ids = np.where(np.isfinite(p), ids[:, :k], -1)
        return (np.take_along_axis(p, order, 1), np.take_along_axis(sims[:, :k], order, 1),
                np.take_along_axis(ids, order, 1))

    @staticmethod
    def _one(reg: Region, tile: dict, i, s, sc, stage) -> dict:
        return {"picture": reg.picture, "region": list(reg.box), "tile_id": int(i), "source_id": tile["source_id"],
                "target_id": tile["target_id"], "cut_type": tile["cut_type"], "position": tile["position"],
                "release_day": tile["release_day"], "similarity": round(float(s), 4), "score": round(float(sc), 4),
                "stage": stage}

    def _evidence(self, regions, scores, sims, ids, stage, verdict) -> list[dict]:
        best: dict[int, dict] = {}
        rows = self.library.rows(ids[:, 0][ids[:, 0] >= 0])
        row_of = {r["tile_id"]: r for r in rows}
        for r, (sc, s, i) in enumerate(zip(scores[:, 0], sims[:, 0], ids[:, 0])):
            if i < 0:
                continue
            reg = regions[r]
            ev = self._one(reg, row_of[int(i)], i, s, sc, stage)
            b = verdict["best"][reg.picture]
            if b is None or ev["score"] > b["score"]:
                verdict["best"][reg.picture] = ev
            if sc >= self.threshold and (reg.picture not in best or sc > best[reg.picture]["score"]):
                best[reg.picture] = ev
        return [best[p] for p in sorted(best)]

    def _features(self, pictures, p, upload_features):
        v, spec = self.cfg.verify, self.library.feature_spec
        if p not in upload_features:
            upload_features[p] = extract(pictures[p], spec.kind, v.keypoints, v.max_side, v.min_side)
        return upload_features[p]

    def _local_candidates(self, pictures, p: int, upload_features, filt, exclude) -> list[tuple[str, int]]:
        """(target, one of its tiles passing `filt`) for the targets picture p's keypoints vote for most."""
        index, tile_targets = self.local_index()
        out = []
        for t in index.vote(self._features(pictures, p, upload_features), self.cfg.verify, self.cfg.verify.candidates):
            if t in exclude:
                continue
            tiles = np.flatnonzero(tile_targets == t)
            ok = tiles[mask(filt, self.library.index.times[tiles], self.library.index.cuts[tiles])]
            if len(ok):
                out.append((t, int(ok[0])))
        return out

    def _verified(self, regions, scores, sims, ids, stage, verdict, pictures, upload_features, filt) -> list[dict]:
        """Two-stage decision: candidates (targets of the top-k tiles of a picture's regions, best score
        first; with local proposals, the targets its keypoints vote for too) confirmed by RANSAC inliers
        of the whole picture against the whole target."""
        v = self.cfg.verify
        row_of = {r["tile_id"]: r for r in self.library.rows(np.unique(ids[ids >= 0]))}
        cands: dict[int, dict[str, tuple]] = {}  # picture -> target -> (score, similarity, region, tile id)
        for r in range(len(regions)):
            for j in np.flatnonzero(ids[r] >= 0):
                t = row_of[int(ids[r, j])]["target_id"]
                c = cands.setdefault(regions[r].picture, {})
                if t not in c or scores[r, j] > c[t][0]:
                    c[t] = (float(scores[r, j]), float(sims[r, j]), r, int(ids[r, j]))
        matches = []
        for p in sorted(set(cands) | (set(range(len(pictures))) if v.propose == "descriptor+local" else set())):
            ranked = sorted(cands.get(p, {}).items(), key=lambda kv: -kv[1][0])
            evs = []
            for rank, (t, (sc, s, r, i)) in enumerate(ranked):
                ev = self._one(regions[r], row_of[i], i, s, sc, stage)
                if rank == 0:
                    b = verdict["best"][p]
                    if b is None or ev["score"] > b["score"]:
                        verdict["best"][p] = ev
                if rank < v.candidates:
                    evs.append(dict(ev, proposal="descriptor"))
            if v.propose == "descriptor+local":
                pic = pictures[p]
                for t, i in self._local_candidates(pictures, p, upload_features, filt, {e["target_id"] for e in evs}):
                    reg = Region(p, (0, 0, pic.width, pic.height), pic)
                    evs.append(dict(self._one(reg, self.library.rows([i])[0], i, float("nan"), float("nan"), stage),
                                    similarity=None, score=None, proposal="local"))
            found = None
            for ev in evs:
                t = ev["target_id"]
                target = self.library.target_features(t) if t else None
                if target is None:  # no stored features for this target: the descriptor decides
                    ev["inliers"], ok = None, ev["score"] is not None and ev["score"] >= self.threshold
                else:
                    ev["inliers"] = inliers(self._features(pictures, p, upload_features), target, v)
                    ok = ev["inliers"] >= v.min_inliers or (v.decide == "either" and ev["score"] is not None
                                                            and ev["score"] >= self.threshold)
                rank_key = lambda e: (e["inliers"] or 0, -1e9 if e["score"] is None else e["score"])
                if ok and (found is None or rank_key(ev) > rank_key(found)):
                    found = ev
            if found is not None:
                matches.append(found)
        return matches

    def _learn(self, regions, vectors, matches, day, cut_type, n_pictures, pictures=None) -> int:
        """A document found by the second match: every content picture of it joins the library as a wild tile
        (the method's library update), and so does each matched region that is not a whole picture. A picture
        is added whole with its region's vector when it was a region, else embedded here when this screener
        has an embedder (`pictures` given); the de-duplication of `append` drops what the library holds."""
        first = matches[0]
        batch, vecs = TileBatch(), []
        size = self.library.manifest["tile_size"]

        def add(img, vec, m):
            batch.extend(wild_tile(img, f"wild:{m['source_id']}", day if day is not None else m["release_day"], size,
                                   cut_type or "wild", m["target_id"]))
            vecs.append(vec)

        by_box = {(r.picture, tuple(r.box)): k for k, r in enumerate(regions)}
        sizes = picture_sizes(regions, pictures)
        whole = {r.picture: k for k, r in enumerate(regions) if tuple(r.box) == (0, 0, *sizes[r.picture])}
        match_of = {m["picture"]: m for m in matches}
        missing = []
        for p in range(n_pictures):
            if p in whole:
                add(regions[whole[p]].crop, vectors[whole[p]], match_of.get(p, first))
            elif pictures is not None and self.embed is not None:
                missing.append(p)
        if missing:
            for p, vec in zip(missing, self.embed([pictures[p] for p in missing])):
                add(pictures[p], vec, match_of.get(p, first))
        for m in matches:
            k = by_box[(m["picture"], tuple(m["region"]))]
            if k not in whole.values():
                add(regions[k].crop, vectors[k], m)
        return self.library.append(batch, np.stack(vecs), min_similarity=self.cfg.dedup_similarity)["added"]

    # all three steps
    def screen(self, pictures: list[Image.Image], release_time=None, cut_type: str | None = None) -> dict:
        regions = self.regions(pictures)
        vectors = self.embed([r.crop for r in regions]) if regions else np.zeros((0, self.library.index.dim), np.float32)
        return self.match(regions, vectors, len(pictures), release_time, cut_type, pictures=pictures)
