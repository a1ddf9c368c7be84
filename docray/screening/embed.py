"""The descriptor at inference: load it (folder, registry, or a fresh tiny one for tests) and embed tiles.

A trained descriptor carries a background bank beside its weights (`background.npy`: descriptors
of ordinary synthetic pictures and tiles, none of them targets of any library), which matching
uses to normalise scores (SSCD's score normalisation; `docray.screening.matching`), and its
operating point (`calibration.json`: the match threshold `docray calibrate screening --write` and
the trainer chose for it; `ScreenConfig.threshold` None uses it) and, when one was fitted, its
re-ranker (`rerank.pkl`, `ScreenConfig.rerank`).
"""
from __future__ import annotations

import io
import json

import numpy as np
import torch
from PIL import Image

from docray.screening.augment import to_tensor
from docray.storage.registry import parse_ref


def load_descriptor(source: str = "registry:descriptor", device: str | None = None) -> torch.nn.Module:
    """A descriptor in eval mode from a `save_pretrained` folder, `registry:NAME[@VERSION]`,
    or `build:<factory>` (random weights; tests and smoke runs only)."""
    from docray.models import build_model, from_pretrained

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if source.startswith("build:"):
        torch.manual_seed(0)
        model = build_model(source.split(":", 1)[1])
    elif source.startswith("registry:"):
        from docray.storage.registry import ModelRegistry

        state, config, _ = ModelRegistry().load(*parse_ref(source))
        model = build_model(config["name"], **config.get("overrides", {}))
        model.load_state_dict(state)
    else:
        model = from_pretrained(source)
    return model.to(device).eval()


BACKGROUND = "background.npy"
CALIBRATION = "calibration.json"


def descriptor_file(source: str, filename: str) -> bytes | None:
    """A file saved beside the weights of the descriptor `source` (`registry:NAME[@VERSION]`, or a
    folder, local or s3://), or None when it has none (`build:...` has none)."""
    if source.startswith("build:"):
        return None
    found = parse_ref(source)
    if found is not None:
        from docray.storage.blobs import NotFound
        from docray.storage.registry import ModelRegistry

        name, version = found
        try:
            return ModelRegistry().read_file(name, filename, version)
        except NotFound:
            return None
    from docray.storage.blobs import read_file

    try:
        return read_file(f"{source.rstrip('/')}/{filename}")
    except FileNotFoundError:
        return None


def load_background(source: str) -> np.ndarray | None:
    """The background bank (n, dim) saved with the descriptor `source`, or None when it has none."""
    data = descriptor_file(source, BACKGROUND)
    return None if data is None else np.load(io.BytesIO(data)).astype(np.float32)


def load_calibration(source: str) -> dict | None:
    """The operating point saved with the descriptor `source` (`calibration.json`: threshold, max_fpr,
    tpr, fpr, ...), or None when it was never calibrated."""
    data = descriptor_file(source, CALIBRATION)
    if data is None:
        return None
    cal = json.loads(data)
    if not isinstance(cal, dict) or not isinstance(cal.get("threshold"), (int, float)):
        raise ValueError(f"{source}: {CALIBRATION} has no numeric 'threshold'; rewrite it with "
                         f"docray calibrate screening PICTURES --descriptor {source} --write")
    return cal


def load_reranker(source: str):
    """The re-ranker fitted for the descriptor `source` (rerank.pkl beside its weights, a pickle: trust the
    source as you trust its weights; docray.screening.rerank), or None when it has none."""
    from docray.screening.rerank import RERANK, Reranker

    data = descriptor_file(source, RERANK)
    return None if data is None else Reranker.from_bytes(data, f"{source}: {RERANK}")


def npy_bytes(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.asarray(a, np.float32))
    return buf.getvalue()


class Embedder:
    """PIL tiles -> L2-normalised float32 vectors (n, dim), in batches, on the model's device."""

    def __init__(self, model: torch.nn.Module, batch_size: int = 256, background: np.ndarray | None = None,
                 calibration: dict | None = None, reranker=None):
        self.model, self.batch_size, self.background = model, batch_size, background
        self.calibration = calibration  # the descriptor's calibration.json (its match threshold), None if never calibrated
        self.reranker = reranker  # its re-ranker (rerank.pkl), None if it has none
        self.size, self.dim = model.cfg.image_size, model.cfg.dim
        self.device = next(model.parameters()).device

    @classmethod
    def load(cls, source: str = "registry:descriptor", **kw) -> "Embedder":
        return cls(load_descriptor(source), background=load_background(source), calibration=load_calibration(source),
                   reranker=load_reranker(source), **kw)

    @torch.inference_mode()
    def __call__(self, tiles: list[Image.Image]) -> np.ndarray:
        if not tiles:
            return np.zeros((0, self.dim), np.float32)
        out = []
        for i in range(0, len(tiles), self.batch_size):
            x = to_tensor(tiles[i:i + self.batch_size], self.size).to(self.device)
            out.append(self.model(x).float().cpu().numpy())
        return np.concatenate(out)
