"""Client of the private endpoint: the mask is laid over the image here, so the raw face never leaves.

    client = PrivateRecognitionClient("http://localhost:8000", api_key="...")
    client.recognize("face.png")                 # best target mask, overlaid locally, then sent
    client.recognize(img, mask_id="msk-7-0000041", embedding=True)

The target masks come from `GET /v1/recognize-private/masks` once (cached). The image is resized
to the server's size, overlaid (image x mask, 0 hidden), encoded as PNG (lossless, so the hidden
pixels stay exactly black for the server's check) and sent with its `mask_id`.
"""
from __future__ import annotations

import base64
import io
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from docray.imageio import encode_png
from docray.masking.masks import decode_mask


class PrivateRecognitionError(RuntimeError):
    """The server refused a request: `status`, `code` and its message."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code = status, code


def mask_locally(image: Image.Image, mask: np.ndarray) -> bytes:
    """Resize to the mask's size, overlay (hidden pixels black), PNG bytes."""
    s = mask.shape[0]
    arr = np.asarray(image.convert("RGB").resize((s, s), Image.Resampling.BILINEAR)).astype(np.float32)
    return encode_png((arr * mask[..., None]).round().astype(np.uint8))


class PrivateRecognitionClient:
    def __init__(self, base_url: str, api_key: str | None = None, client: httpx.Client | None = None, timeout: float = 30.0):
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = client or httpx.Client(base_url=base_url, timeout=timeout)
        self.http.headers.update(headers)
        self._masks: dict[str, np.ndarray] | None = None

    def _check(self, r: httpx.Response) -> dict:
        if r.status_code >= 400:
            try:
                err = r.json()["error"]
            except Exception:
                err = {"code": "http_error", "message": r.text[:200]}
            raise PrivateRecognitionError(r.status_code, err["code"], err["message"])
        return r.json()

    def masks(self) -> dict[str, np.ndarray]:
        """{mask_id: (s, s) {0, 1} mask}, best first (fetched once)."""
        if self._masks is None:
            body = self._check(self.http.get("/v1/recognize-private/masks"))
            self._masks = {m["mask_id"]: decode_mask(base64.b64decode(m["png"])) for m in body["masks"]}
        return self._masks

    def recognize(self, image: Image.Image | bytes | str | Path, mask_id: str | None = None, embedding: bool = False) -> dict:
        """Mask `image` here with `mask_id` (default: the best target), send it; returns the server's answer."""
        if isinstance(image, (str, Path)):
            image = Image.open(image)
        elif isinstance(image, bytes):
            image = Image.open(io.BytesIO(image))
        masks = self.masks()
        mask_id = mask_id or next(iter(masks))
        if mask_id not in masks:
            raise KeyError(f"unknown mask_id {mask_id!r}; target masks: {', '.join(masks)}")
        data = {"mask_id": mask_id, "embedding": "true" if embedding else "false"}
        files = {"image": ("masked.png", mask_locally(image, masks[mask_id]), "image/png")}
        return self._check(self.http.post("/v1/recognize-private", data=data, files=files))
