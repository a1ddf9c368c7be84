"""A learned re-ranker: the descriptor proposes, a small gradient-boosted model decides.

The descriptor's score of a region against a tile says how alike their embeddings are; it cannot
say whether the region *is* the tile, moved and edited. The re-ranker looks: each region's `k`
best candidate tiles are aligned to it (OpenCV's ECC, an affine warp at 64 px grey) and described
by how well they align (the ECC correlation, normalised cross-correlation of pixels and of
gradients before and after the warp, how far the warp stretches and shifts) beside the descriptor's
own figures (score, similarity, rank, gap to the next candidate) and the region's (a layout-free
proposal or not, its share of the picture). A scikit-learn `HistGradientBoostingClassifier` turns
those into the probability that the pair is a true match; a picture's best pair is its answer, and
it matches when that probability reaches the re-ranker's calibrated threshold.

    X, y = rerank_examples("targets.parquet", embed, ScreenConfig(proposals="edges"), queries=400)
    rr = Reranker.fit(X, y)                         # then calibrate its threshold on other pictures
    rr.threshold = operating_point(pos, neg, 0.005).threshold
    write_reranker(descriptor_dir, rr)              # rerank.pkl beside the descriptor's weights
    Screener(lib, Embedder.load(descriptor_dir), ScreenConfig(rerank=True))

`rerank.pkl` is a pickle (scikit-learn's models have no other format): load it only from a
registry or folder you trust, as you would the weights beside it.
"""
from __future__ import annotations

import io
import pickle
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

RERANK = "rerank.pkl"
SIZE = 64  # side of the grey squares aligned (the library's tiles are stored at 64 px)
FEATURES = ("score", "similarity", "rank", "gap", "proposal", "area", "whole", "ecc", "ncc_warp", "gncc_warp",
            "ncc", "gncc", "tile_std", "region_std", "stretch_min", "stretch_max", "shift")


def grey(img: Image.Image, size: int = SIZE) -> np.ndarray:
    """`img` as a size x size float32 grey square in [0, 1] (its aspect ratio is the warp's to undo)."""
    return np.asarray(img.convert("L").resize((size, size), Image.BILINEAR), np.float32) / 255.0


def _ncc(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    d = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / d) if d > 1e-8 else 0.0


def _gradient(a: np.ndarray) -> np.ndarray:
    gy, gx = np.gradient(a)
    return np.hypot(gx, gy)


def align(region: np.ndarray, tile: np.ndarray) -> list[float]:
    """How well the grey square `region` aligns with the grey square `tile`: the affine ECC fit (its
    correlation, 0 when it does not converge), NCC of pixels and of gradient magnitudes after and before
    the warp, the tile's and the region's contrast, the warp's smallest and largest stretch and its
    largest shift (in sides)."""
    import cv2

    warp = np.eye(2, 3, dtype=np.float32)
    try:
        cc, warp = cv2.findTransformECC(tile, region, warp, cv2.MOTION_AFFINE,
                                        (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 50, 1e-4), None, 3)
    except cv2.error:  # flat pictures, or no convergence: no alignment
        cc, warp = 0.0, np.eye(2, 3, dtype=np.float32)
    n = tile.shape[0]
    warped = cv2.warpAffine(region, warp, (n, n), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                            borderMode=cv2.BORDER_REPLICATE)
    s = np.linalg.svd(warp[:, :2].astype(np.float64), compute_uv=False)
    return [float(cc), _ncc(warped, tile), _ncc(_gradient(warped), _gradient(tile)), _ncc(region, tile),
            _ncc(_gradient(region), _gradient(tile)), float(tile.std()), float(region.std()), float(s.min()),
            float(s.max()), float(np.abs(warp[:, 2]).max() / n)]


def candidate_features(regions, sizes: dict[int, tuple[int, int]], scores: np.ndarray, sims: np.ndarray,
                       ids: np.ndarray, tiles: dict[int, np.ndarray], k: int) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """(features (pairs, len(FEATURES)), the pairs (region, column)) of the `k` best candidates of every
    region (`scores`, `sims`, `ids`: the search's (regions, >= k) arrays, ids -1 for none; `tiles`: tile id
    -> its grey square; `sizes`: picture -> (width, height))."""
    rows, pairs = [], []
    for r, reg in enumerate(regions):
        w, h = sizes[reg.picture]
        x0, y0, x1, y1 = reg.box
        area = (x1 - x0) * (y1 - y0) / max(1, w * h)
        g = grey(reg.crop)
        cols = [j for j in range(min(k, ids.shape[1])) if ids[r, j] >= 0]
        for j in cols:
            nxt = scores[r, j + 1] if j + 1 < ids.shape[1] and ids[r, j + 1] >= 0 else scores[r, j] - 1.0
            rows.append([float(scores[r, j]), float(sims[r, j]), j, float(scores[r, j] - nxt),
                         float(reg.source == "proposal"), area, float(area > 0.999),
                         *align(g, tiles[int(ids[r, j])])])
            pairs.append((r, j))
    return np.asarray(rows, np.float32).reshape(-1, len(FEATURES)), pairs


class NoTruePairs(ValueError):
    """The fitting queries gave no true pair (or no false one): nothing to learn from."""


@dataclass
class Reranker:
    """The fitted model, how many candidates of each region it re-scores, and its match threshold
    (None until calibrated), with what it was fitted and calibrated on (`record`)."""

    model: object
    k: int = 3
    threshold: float | None = None
    features: tuple[str, ...] = FEATURES
    record: dict = field(default_factory=dict)

    @classmethod
    def fit(cls, X: np.ndarray, y: np.ndarray, k: int = 3, seed: int = 0, **record) -> "Reranker":
        from sklearn.ensemble import HistGradientBoostingClassifier

        y = np.asarray(y, int)
        if len(np.unique(y)) < 2:
            raise NoTruePairs(f"the re-ranker needs true and false pairs to fit, got {int(y.sum())} of {len(y)} true "
                              "(more queries, or a descriptor that proposes the posted tiles)")
        model = HistGradientBoostingClassifier(max_leaf_nodes=15, learning_rate=0.05, max_iter=300,
                                               l2_regularization=1.0, early_stopping=True, random_state=seed)
        model.fit(X, y)
        return cls(model, k, record={"pairs": len(y), "true_pairs": int(y.sum()), **record})

    def predict(self, X: np.ndarray) -> np.ndarray:
        """P(true match) of each pair."""
        if len(X) == 0:
            return np.zeros(0, np.float32)
        return self.model.predict_proba(X)[:, 1].astype(np.float32)

    def to_bytes(self) -> bytes:
        return pickle.dumps({"model": self.model, "k": self.k, "threshold": self.threshold,
                             "features": list(self.features), "record": self.record})

    @classmethod
    def from_bytes(cls, data: bytes, source: str = "rerank.pkl") -> "Reranker":
        d = pickle.load(io.BytesIO(data))
        if tuple(d.get("features", ())) != FEATURES:
            raise ValueError(f"{source}: fitted on features {d.get('features')}, this docray computes {list(FEATURES)}; "
                             "fit it again (train_jobs.train_screening rerank_queries=...)")
        return cls(d["model"], int(d["k"]), d.get("threshold"), FEATURES, d.get("record", {}))
