"""Geometric verification with local features (OpenCV SIFT or ORB + RANSAC), the second stage of matching.

The descriptor index proposes candidate targets; their keypoints, stored with the library when the
targets were added (`FeatureSpec`, `extract`, `pack`), are matched to the keypoints of the whole
upload (ratio test) and a RANSAC fit of one geometric transform counts the inliers. A rotated,
rescaled, recoloured or re-encoded copy of any part of a target keeps many inliers; a different
picture of similar statistics keeps few.

    spec = FeatureSpec()                                  # sift, 512 keypoints, targets at 512 px
    stored = pack(extract(target_picture, spec.kind, spec.keypoints, spec.side))   # bytes, with the library
    up = extract(upload, "sift", 1500, 1024)
    n = inliers(up, unpack(stored), VerifyConfig())
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Literal

import numpy as np
from PIL import Image
from pydantic import Field

from docray.config import Config

Kind = Literal["sift", "orb"]


class FeatureSpec(Config):
    """How a library describes its target pictures (fixed when the library is created; in its manifest)."""

    kind: Kind = Field("sift", description="OpenCV SIFT (128 bytes a keypoint) or ORB (32 bytes, Hamming)")
    keypoints: int = Field(512, ge=16, description="strongest keypoints kept per target (~68 KB a target for SIFT)")
    side: int = Field(512, ge=64, description="targets are described at this longer side (small ones scaled up: "
                                              "a 3x3 tile of a 192 px picture keeps enough keypoints)")


class VerifyConfig(Config):
    """Query side of verification (`ScreenConfig.verify`)."""

    enabled: bool = Field(False, description="verify the descriptor's candidates with local features + RANSAC; "
                                             "see docs/screening.md for the measurement that sets the default")
    k: int = Field(20, ge=1, description="tiles fetched per region to propose candidates")
    candidates: int = Field(3, ge=1, description="candidate targets verified per picture (best descriptor score first)")
    keypoints: int = Field(1500, ge=16, description="keypoints of an upload at most (bounds the cost)")
    max_side: int = Field(1024, ge=64, description="uploads are scaled down to this longer side before features")
    min_side: int = Field(384, ge=32, description="smaller uploads are scaled up to this longer side")
    ratio: float = Field(0.8, gt=0, le=1, description="Lowe's ratio test")
    ransac_px: float = Field(5.0, gt=0, description="RANSAC reprojection tolerance, in upload pixels")
    model: Literal["homography", "similarity"] = Field("similarity", description="the transform RANSAC fits: a "
                                                       "similarity (rotation, scale, shift; 2 points) or a homography (4)")
    min_inliers: int = Field(12, ge=3, description="inliers at or above which a candidate is confirmed")
    decide: Literal["inliers", "either"] = Field("inliers", description="'inliers': a verified candidate matches by "
                                                 "its inliers alone (the descriptor only proposes); 'either': by its "
                                                 "inliers or by its descriptor score (verification only adds matches)")
    propose: Literal["descriptor", "descriptor+local"] = Field(
        "descriptor", description="where candidates come from: the descriptor index only, or also the targets most "
        "voted for by the upload's keypoints (an exact index of every target's keypoints in memory: finds tiles pasted "
        "where no region proposal isolates them; its cost grows with the library)")


@dataclass
class Features:
    xy: np.ndarray  # (n, 2) float32 keypoint positions, in the described picture's pixels (after scaling)
    desc: np.ndarray  # (n, 128) uint8 for SIFT, (n, 32) uint8 for ORB
    kind: str

    def __len__(self) -> int:
        return len(self.xy)


def _detector(kind: str, n: int):
    import cv2

    if kind == "sift":
        return cv2.SIFT_create(nfeatures=n)
    if kind == "orb":
        return cv2.ORB_create(nfeatures=n, fastThreshold=10, edgeThreshold=15, patchSize=15)
    raise ValueError(f"unknown local features {kind!r}; known: sift, orb")


def extract(img: Image.Image, kind: str = "sift", keypoints: int = 512, max_side: int = 512,
            min_side: int | None = None) -> Features:
    """Keypoints and descriptors of `img` scaled so its longer side is `max_side` (up to `min_side`
    when given: then only larger pictures are scaled down, smaller ones up to `min_side`)."""
    import cv2

    g = np.asarray(img.convert("L"))
    side = max(g.shape)
    target = max_side if min_side is None else min(max_side, max(side, min_side))
    if side != target:
        s = target / side
        g = cv2.resize(g, (max(1, round(g.shape[1] * s)), max(1, round(g.shape[0] * s))),
                       interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR)
    kps, desc = _detector(kind, keypoints).detectAndCompute(g, None)
    if desc is None or not kps:
        return Features(np.zeros((0, 2), np.float32), np.zeros((0, 128 if kind == "sift" else 32), np.uint8), kind)
    order = np.argsort([-k.response for k in kps])[:keypoints]  # SIFT may return a few more than nfeatures
    xy = np.array([kps[i].pt for i in order], np.float32)
    desc = desc[order]
    if kind == "sift":  # SIFT values lie in [0, 255] after OpenCV's normalisation: stored as bytes
        desc = np.clip(np.round(desc), 0, 255).astype(np.uint8)
    return Features(xy, desc, kind)


def pack(f: Features) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, xy=f.xy.astype(np.float16), desc=f.desc, kind=np.array(f.kind))
    return buf.getvalue()


def unpack(data: bytes) -> Features:
    z = np.load(io.BytesIO(data))
    return Features(z["xy"].astype(np.float32), z["desc"], str(z["kind"]))


def good_matches(q: Features, t: Features, ratio: float) -> tuple[np.ndarray, np.ndarray]:
    """(query points, target points) of the matches that pass the ratio test, each (m, 2)."""
    import cv2

    if len(q) < 2 or len(t) < 2:
        return np.zeros((0, 2), np.float32), np.zeros((0, 2), np.float32)
    if q.kind == "sift":
        m = cv2.BFMatcher(cv2.NORM_L2).knnMatch(q.desc.astype(np.float32), t.desc.astype(np.float32), k=2)
    else:
        m = cv2.BFMatcher(cv2.NORM_HAMMING).knnMatch(q.desc, t.desc, k=2)
    pairs = [(a.queryIdx, a.trainIdx) for a, b in (p for p in m if len(p) == 2) if a.distance < ratio * b.distance]
    if not pairs:
        return np.zeros((0, 2), np.float32), np.zeros((0, 2), np.float32)
    qi, ti = np.array(pairs).T
    return q.xy[qi], t.xy[ti]


def fit_inliers(src: np.ndarray, dst: np.ndarray, cfg: VerifyConfig) -> int:
    """Inliers of one RANSAC transform from target points `src` to upload points `dst`. Many-to-one
    matches count once (a repeated texture cannot pile up inliers on one upload point)."""
    import cv2

    need = 2 if cfg.model == "similarity" else 4
    if len(src) < max(need, 3):
        return 0
    if cfg.model == "similarity":
        _, mask = cv2.estimateAffinePartial2D(src, dst, method=cv2.RANSAC, ransacReprojThreshold=cfg.ransac_px,
                                              maxIters=2000, confidence=0.995)
    else:
        _, mask = cv2.findHomography(src, dst, cv2.RANSAC, cfg.ransac_px, maxIters=2000, confidence=0.995)
    if mask is None:
        return 0
    keep = mask.ravel().astype(bool)
    return min(len(np.unique(np.round(dst[keep]), axis=0)), len(np.unique(np.round(src[keep]), axis=0)))


def inliers(upload: Features, target: Features, cfg: VerifyConfig) -> int:
    """How many of the upload's keypoints one geometric transform of the target explains."""
    if upload.kind != target.kind:
        raise ValueError(f"upload described with {upload.kind} but the target with {target.kind}")
    src_dst = good_matches(upload, target, cfg.ratio)
    return fit_inliers(src_dst[1], src_dst[0], cfg)


class FeatureIndex:
    """Local features alone, no descriptor: every target's keypoints in one exact faiss index; an
    upload's keypoints vote (ratio test against the whole library) for targets, and the `top` most
    voted are verified with RANSAC. The benchmark's 'local features alone' baseline."""

    def __init__(self, targets: dict[str, Features]):
        import faiss

        self.ids = list(targets)
        kinds = {f.kind for f in targets.values()}
        if len(kinds) > 1:
            raise ValueError(f"targets described with several kinds of features: {sorted(kinds)}")
        self.kind = kinds.pop() if kinds else "sift"
        self.targets = targets
        desc = [targets[t].desc for t in self.ids]
        self.owner = np.concatenate([np.full(len(d), i) for i, d in enumerate(desc)]) if desc else np.zeros(0, int)
        d = desc[0].shape[1] if desc else 128
        if self.kind == "sift":
            self.index = faiss.IndexFlatL2(d)
            self.index.add(np.concatenate(desc).astype(np.float32) if desc else np.zeros((0, d), np.float32))
        else:
            self.index = faiss.IndexBinaryFlat(d * 8)
            self.index.add(np.concatenate(desc) if desc else np.zeros((0, d), np.uint8))

    def vote(self, upload: Features, cfg: VerifyConfig, top: int = 3, min_votes: int = 3) -> list[str]:
        """The `top` targets the most upload keypoints match (ratio test against the whole index), most first."""
        if len(upload) < 2 or self.index.ntotal < 2:
            return []
        q = upload.desc.astype(np.float32) if self.kind == "sift" else upload.desc
        dist, idx = self.index.search(q, 2)
        if self.kind == "sift":
            dist = np.sqrt(np.maximum(dist, 0))
        ok = dist[:, 0] < cfg.ratio * dist[:, 1]
        votes = np.bincount(self.owner[idx[ok, 0]], minlength=len(self.ids))
        return [self.ids[t] for t in np.argsort(-votes, kind="stable")[:top] if votes[t] >= min_votes]

    def search(self, upload: Features, cfg: VerifyConfig, top: int = 3) -> tuple[str | None, int]:
        """(best target id, its inliers) among the `top` most voted, or (None, 0)."""
        best, best_n = None, 0
        for t in self.vote(upload, cfg, top):
            n = inliers(upload, self.targets[t], cfg)
            if n > best_n:
                best, best_n = t, n
        return best, best_n
