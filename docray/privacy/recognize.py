"""Private recognition: overlay a target mask, recognise with the masked recogniser.

    rec = PrivateRecognizer("registry:mask_recognizer_masked", "~/.docray/reports/privacy/grid/targets.parquet")
    x, mask_id = rec.prepare(img)                      # raw image: resize, overlay the best (or a random) target
    x, mask_id = rec.prepare(masked_img, "msk-7-12")   # already masked on the client: the mask is checked
    out = rec({"image": x[None]})                      # label, score, embedding

A client that masks locally (docray.privacy.client) sends only the masked image and the mask id;
`check_masked` then verifies that the declared mask's hidden pixels really are black, so a
mislabelled or unmasked upload is refused rather than recognised under a false mask id.
"""
from __future__ import annotations

import os

import numpy as np
import pandas as pd
import torch
from PIL import Image

from docray.privacy.masks import decode_mask
from docray.privacy.models import load_model


class MaskError(ValueError):
    """A request whose mask does not fit: unknown id, wrong size, or hidden pixels not hidden."""

    def __init__(self, message: str, code: str):
        super().__init__(message)
        self.code = code


def load_targets(path: str) -> pd.DataFrame:
    """The target masks (targets.parquet of a grid run), best first; needs mask_id and mask."""
    path = os.path.expanduser(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no target masks at {path} (run data_jobs.privacy_grid first)")
    t = pd.read_parquet(path)
    if t.empty:
        raise ValueError(f"{path}: the funnel produced no target mask; see funnel.json beside it")
    return t.reset_index(drop=True)


def check_masked(image: np.ndarray, mask: np.ndarray, tol: int = 12, max_bad: float = 0.02) -> float:
    """Fraction of the mask's hidden pixels that are not black (> tol) in uint8 (h, w, 3) `image`.

    Raises MaskError when it exceeds `max_bad` (allows for a little JPEG bleed, nothing more)."""
    hidden = mask < 0.5
    if not hidden.any():
        return 0.0
    bad = float((image[hidden].max(axis=-1) > tol).mean())
    if bad > max_bad:
        raise MaskError(f"the image is not masked with the declared mask: {bad:.1%} of its hidden pixels are not black",
                        "mask_mismatch")
    return bad


class PrivateRecognizer:
    """Batch predictor of the private endpoint (shared by Serve and any batch job)."""

    def __init__(self, masked: torch.nn.Module | str, targets: str | pd.DataFrame, choice: str = "best",
                 image_size: int = 64, seed: int = 0, device: str | None = None):
        if choice not in ("best", "random"):
            raise ValueError(f"choice must be 'best' or 'random', got {choice!r}")
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model = load_model(masked, self.device)
        self.targets = targets if isinstance(targets, pd.DataFrame) else load_targets(targets)
        self.masks = {r.mask_id: decode_mask(r.mask, size=image_size) for r in self.targets.itertuples()}
        self.choice, self.size, self.rng = choice, image_size, np.random.default_rng(seed)

    def pick(self) -> str:
        ids = list(self.masks)
        return ids[0] if self.choice == "best" else ids[int(self.rng.integers(len(ids)))]

    def prepare(self, image: Image.Image, mask_id: str | None = None) -> tuple[torch.Tensor, str]:
        """A raw image (mask_id None) or one masked with `mask_id` -> (3, s, s) masked pixels, the mask id."""
        if mask_id is None:
            mask_id = self.pick()
            arr = np.asarray(image.convert("RGB").resize((self.size, self.size), Image.Resampling.BILINEAR))
        else:
            if mask_id not in self.masks:
                raise MaskError(f"unknown mask_id {mask_id!r}; target masks: {', '.join(self.masks)}", "unknown_mask")
            if image.size != (self.size, self.size):
                raise MaskError(f"a masked upload must be {self.size}x{self.size} (as the client helper makes it), "
                                f"got {image.size[0]}x{image.size[1]}", "bad_size")
            arr = np.asarray(image.convert("RGB"))
            check_masked(arr, self.masks[mask_id])
        x = torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(255)  # (3, s, s)
        return x * torch.from_numpy(self.masks[mask_id])[None], mask_id  # the overlay (idempotent if masked)

    @torch.inference_mode()
    def __call__(self, batch: dict) -> dict:
        """{"image": (b, 3, s, s) masked pixels} -> label (b,), score (b,), embedding (b, d)."""
        x = torch.as_tensor(np.asarray(batch["image"]), dtype=torch.float32, device=self.device)
        emb = self.model.embed(x)
        prob = self.model.classifier(emb).softmax(1)
        score, label = prob.max(1)
        return {"label": label.cpu().numpy(), "score": score.cpu().numpy(), "embedding": emb.cpu().numpy()}
