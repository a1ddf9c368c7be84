"""The descriptor at inference: load it (folder, registry, or a fresh tiny one for tests) and embed tiles.

A trained descriptor carries a background bank beside its weights (`background.npy`: descriptors
of ordinary synthetic pictures and tiles, none of them targets of any library), which matching
uses to normalise scores (SSCD's score normalisation; `docray.screening.matching`).
"""
from __future__ import annotations

import io
import os

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


def load_background(source: str) -> np.ndarray | None:
    """The background bank (n, dim) saved with the descriptor `source`, or None when it has none."""
    if source.startswith("build:"):
        return None
    if source.startswith("registry:"):
        from docray.storage.blobs import NotFound
        from docray.storage.registry import ModelRegistry

        name, version = parse_ref(source)
        try:
            data = ModelRegistry().read_file(name, BACKGROUND, version)
        except NotFound:
            return None
    else:
        path = os.path.join(source, BACKGROUND)
        if not os.path.isfile(path):
            return None
        with open(path, "rb") as f:
            data = f.read()
    return np.load(io.BytesIO(data)).astype(np.float32)


def npy_bytes(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.asarray(a, np.float32))
    return buf.getvalue()


class Embedder:
    """PIL tiles -> L2-normalised float32 vectors (n, dim), in batches, on the model's device."""

    def __init__(self, model: torch.nn.Module, batch_size: int = 256, background: np.ndarray | None = None):
        self.model, self.batch_size, self.background = model, batch_size, background
        self.size, self.dim = model.cfg.image_size, model.cfg.dim
        self.device = next(model.parameters()).device

    @classmethod
    def load(cls, source: str = "registry:descriptor", **kw) -> "Embedder":
        return cls(load_descriptor(source), background=load_background(source), **kw)

    @torch.inference_mode()
    def __call__(self, tiles: list[Image.Image]) -> np.ndarray:
        if not tiles:
            return np.zeros((0, self.dim), np.float32)
        out = []
        for i in range(0, len(tiles), self.batch_size):
            x = to_tensor(tiles[i:i + self.batch_size], self.size).to(self.device)
            out.append(self.model(x).float().cpu().numpy())
        return np.concatenate(out)
