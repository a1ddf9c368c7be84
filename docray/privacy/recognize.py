"""Private recognition: a face masked on the client -> the masked recogniser's embedding.

    rec = PrivateRecognizer("registry:mask_recognizer_masked", {"msk-7-12": mask, ...})
    x = rec.prepare(masked_img, "msk-7-12")        # checked: a served mask, the model's size, black under it
    emb = rec({"image": x[None]})["embedding"]     # (1, d), L2-normalised: verified or identified against
                                                   # the gallery (docray.privacy.verification)

The client masks locally (docray.client.mask_locally) and sends only the masked image and the mask
id; the server never masks a raw face. `check_masked` verifies that the declared mask's hidden pixels
really are black, so a mislabelled or unmasked upload is refused rather than embedded under a false
mask id. The answer is an embedding, never a training class label: the service verifies people it
never trained on.
"""
from __future__ import annotations

import hashlib
import os

import numpy as np
import pandas as pd
import torch
from PIL import Image

from docray.privacy.models import load_model


class MaskError(ValueError):
    """A request whose mask does not fit: unknown id, wrong size, or hidden pixels not hidden."""

    def __init__(self, message: str, code: str):
        super().__init__(message)
        self.code = code


def load_targets(path: str) -> pd.DataFrame:
    """The target masks (targets.parquet of a grid run), best first; needs mask_id and mask."""
    import io

    from docray.storage.blobs import exists, read_file

    path = os.path.expanduser(path)  # a local path or a URI (an s3:// DOCRAY_HOME)
    if not exists(path):
        raise FileNotFoundError(f"no target masks at {path} (run data_jobs.privacy_grid first)")
    t = pd.read_parquet(io.BytesIO(read_file(path)))
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
    """The served masked recogniser and target masks: checks a masked upload, embeds a batch."""

    def __init__(self, masked: torch.nn.Module | str, masks: dict[str, np.ndarray], image_size: int = 64,
                 device: str | None = None):
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model = load_model(masked, self.device)
        self.masks, self.size = dict(masks), image_size

    def prepare(self, image: Image.Image, mask_id: str | None) -> torch.Tensor:
        """An image masked on the client with `mask_id` -> (3, s, s) masked pixels in [0, 1]; MaskError
        when the mask id is missing or not served, the size is not the model's, or it is not masked."""
        if not mask_id:
            raise MaskError("form field 'mask_id' is required: mask the face on the client with a target mask "
                            "(GET /v1/privacy/masks) and name it; the server never masks a raw face", "missing_field")
        if mask_id not in self.masks:
            raise MaskError(f"unknown mask_id {mask_id[:80]!r}; the served target masks: {', '.join(self.masks)}",
                            "unknown_mask")
        if image.size != (self.size, self.size):
            raise MaskError(f"a masked upload must be {self.size}x{self.size} (as the client helper makes it), "
                            f"got {image.size[0]}x{image.size[1]}", "bad_size")
        arr = np.asarray(image.convert("RGB"))
        check_masked(arr, self.masks[mask_id])
        x = torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(255)  # (3, s, s)
        return x * torch.from_numpy(self.masks[mask_id])[None]  # the overlay (idempotent: it is masked)

    @torch.inference_mode()
    def __call__(self, batch: dict) -> dict:
        """{"image": (b, 3, s, s) masked pixels} -> {"embedding": (b, d) float32, L2-normalised}."""
        x = torch.as_tensor(np.asarray(batch["image"]), dtype=torch.float32, device=self.device)
        e = self.model.embed(x).float()
        return {"embedding": torch.nn.functional.normalize(e, dim=1).cpu().numpy()}


def pixels_sha256(x: torch.Tensor) -> str:
    """The identity of a masked upload: SHA-256 of its (3, s, s) pixels as uint8 (a re-encoded copy of
    the same picture has the same pixels)."""
    return hashlib.sha256(x.mul(255).round().to(torch.uint8).numpy().tobytes()).hexdigest()
