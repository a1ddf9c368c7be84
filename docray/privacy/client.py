"""Client side of private recognition: the mask is laid over the image here, so the raw face never leaves.

    client = PrivacyClient("http://localhost:8000", api_key="...")
    client.enrol("alice", "face.png")            # admin: a target mask overlaid locally, then sent
    client.verify("face2.png", "alice")          # {"match", "score", "threshold", ...}
    client.identify(img, top_k=3, mask_id="msk-7-0000041")
    client.masks()                               # {mask_id: (s, s) {0, 1} mask}

`mask_locally` (from `docray.client`) is the overlay (image x mask, 0 hidden) at the server's size,
encoded as PNG. The HTTP side is `docray.client.DocrayClient` (`enrol`, `verify`, `identify`,
`delete_identity`, `private_masks`); this class adds the masks as arrays.
"""
from __future__ import annotations

import numpy as np

from docray.client import DocrayClient, DocrayError, mask_locally  # noqa: F401  (mask_locally: the overlay)

PrivacyError = DocrayError  # the server refused a request: `status`, `code`, message


class PrivacyClient(DocrayClient):
    def masks(self) -> dict[str, np.ndarray]:
        """{mask_id: (s, s) {0, 1} mask} of the served target masks (fetched once)."""
        if self._masks is None:
            from docray.privacy.masks import decode_mask

            self._masks = {m["mask_id"]: decode_mask(m["png"]) for m in self.private_masks()["masks"]}
        return self._masks
