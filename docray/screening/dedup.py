"""Tile de-duplication: exact (content hash), near (perceptual hash or descriptor similarity),
and dropping tiles that carry almost nothing (blank background matches everything).

All functions are pure over arrays; `dedup` keeps the first occurrence of each group (greedy, in
input order), so appending to a library keeps the tiles already there.
"""
from __future__ import annotations

import hashlib

import numpy as np
from PIL import Image


def exact_hash(img: Image.Image) -> str:
    """SHA-1 of the RGB pixels and size: equal only for identical tiles."""
    rgb = img.convert("RGB")
    return hashlib.sha1(f"{rgb.size}".encode() + rgb.tobytes()).hexdigest()


def phash(img: Image.Image, hash_size: int = 8) -> int:
    """64-bit perceptual hash (DCT of a 32x32 grey picture, low 8x8 band against its median)."""
    import cv2

    g = np.asarray(img.convert("L").resize((hash_size * 4, hash_size * 4), Image.BILINEAR), np.float32)
    low = cv2.dct(g)[:hash_size, :hash_size].ravel()
    bits = low > np.median(low[1:])  # the DC term skews the median
    return int(sum(1 << i for i, b in enumerate(bits) if b))


def hamming(a: np.ndarray | int, b: np.ndarray | int) -> np.ndarray:
    """Bit distance between 64-bit hashes (broadcasts)."""
    x = np.ascontiguousarray(np.bitwise_xor(np.asarray(a, np.uint64), np.asarray(b, np.uint64)))
    return np.unpackbits(x.reshape(*x.shape, 1).view(np.uint8), axis=-1).sum(-1)


def detail(img: Image.Image) -> float:
    """How much a tile carries: std of its grey levels (0 for a flat tile, ~60+ for text)."""
    return float(np.asarray(img.convert("L"), np.float32).std())


def dedup(
    hashes: list[str],
    phashes: np.ndarray | None = None,
    vectors: np.ndarray | None = None,
    *,
    max_hamming: int = 4,
    min_similarity: float = 0.95,
    seen_hashes: set[str] | frozenset = frozenset(),
) -> np.ndarray:
    """Indices of the tiles to keep: first of each exact/near-duplicate group, none already seen.

    hashes: exact hashes (n,); phashes: uint64 (n,) near-dup by Hamming distance <= max_hamming;
    vectors: L2-normalised (n, d) near-dup by cosine >= min_similarity. Either near test may be None.
    """
    n = len(hashes)
    keep = np.ones(n, bool)
    first: dict[str, int] = {}
    for i, h in enumerate(hashes):
        if h in seen_hashes or h in first:
            keep[i] = False
        else:
            first[h] = i
    for near in _near_pairs(phashes, vectors, max_hamming, min_similarity):
        i, j = near  # i < j: j duplicates i; drop j unless i is already dropped by an earlier j'
        if keep[i] and keep[j]:
            keep[j] = False
    return np.flatnonzero(keep)


def _near_pairs(phashes, vectors, max_hamming, min_similarity, chunk: int = 2048):
    """(i, j), i < j, sorted by j then i: pairs that are near-duplicates by either test."""
    pairs = set()
    if phashes is not None and len(phashes):
        ph = np.asarray(phashes, np.uint64)
        for s in range(0, len(ph), chunk):
            d = hamming(ph[s:s + chunk, None], ph[None, :])  # (chunk, n)
            for a, b in zip(*np.nonzero(d <= max_hamming)):
                if a + s > b:
                    pairs.add((int(b), int(a + s)))
    if vectors is not None and len(vectors):
        v = np.asarray(vectors, np.float32)
        for s in range(0, len(v), chunk):
            sim = v[s:s + chunk] @ v.T  # (chunk, n) cosine
            for a, b in zip(*np.nonzero(sim >= min_similarity)):
                if a + s > b:
                    pairs.add((int(b), int(a + s)))
    return sorted(pairs, key=lambda p: (p[1], p[0]))
