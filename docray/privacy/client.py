"""Client side of private recognition: the mask is laid over the image here, so the raw face never leaves.

    client = PrivacyClient("http://localhost:8000", api_key="...")
    client.recognize("face.png")                 # best target mask, overlaid locally, then sent
    client.recognize(img, mask_id="msk-7-0000041", embedding=True)

`mask_locally` (from `docray.client`) is the overlay (image x mask, 0 hidden) at the server's size,
encoded as PNG. The HTTP side is `docray.client.DocrayClient` (`recognize_private`, `private_masks`);
this class keeps the method-specific names.
"""
from __future__ import annotations

import numpy as np

from docray.client import DocrayClient, DocrayError, mask_locally  # noqa: F401  (mask_locally: the overlay)

PrivacyError = DocrayError  # the server refused a request: `status`, `code`, message


class PrivacyClient(DocrayClient):
    def masks(self) -> dict[str, np.ndarray]:
        """{mask_id: (s, s) {0, 1} mask}, best first (fetched once)."""
        if self._masks is None:
            from docray.privacy.masks import decode_mask

            self._masks = {m["mask_id"]: decode_mask(m["png"]) for m in self.private_masks()["masks"]}
        return self._masks

    def recognize(self, image, mask_id: str | None = None, embedding: bool = False) -> dict:
        """Mask `image` here with `mask_id` (default: the best target), send it; the server's answer."""
        return self.recognize_private(image, mask_id=mask_id, embedding=embedding)
