"""Private recognition on Ray Serve: `POST /v1/recognize-private`, `GET /v1/recognize-private/masks` (gateway).

    serve run configs/serve/gateway.yaml                  # every method behind one gateway
    serve run configs/serve/privacy.yaml                  # the gateway with this method only
    serve run serve_apps.gateway:build_app privacy='{"targets": "/path/targets.parquet", "choice": "random"}'
                                        # default: masked recogniser from the registry, targets from
                                        # DOCRAY_HOME/reports/privacy/grid

    curl -F image=@face.png localhost:8000/v1/recognize-private                # raw: the server masks it
    curl -F image=@masked.png -F mask_id=msk-7-0000041 localhost:8000/v1/recognize-private
    # docray.privacy.client.PrivacyClient masks on the client, so the raw face never leaves it

Multipart `image` (raw, or already masked with the target `mask_id`), optional `embedding=true`.
Response: `label`, `score`, `mask_id`, `models` ({registry name: version}: the masked recogniser that
answered; `masked: registry:NAME@vNNNN` pins it, plain `registry:NAME` is pinned to the newest when the
app is built), and `embedding` when asked. A masked upload must be the
model's size and black under the declared mask (else 400 `mask_mismatch` / `bad_size`); an
unknown mask id is 400 `unknown_mask`. The model call is batched across requests (`@serve.batch`).
The gateway (`serve_apps/gateway.py`) parses the upload; `Privacy` masks and recognises.
"""
import asyncio
import base64
import logging

import numpy as np
import torch
from pydantic import Field
from ray import serve

from docray.config import Config
from docray.storage.registry import ModelRegistry, parse_ref, ref
from serve_apps.http import ApiError
from serve_apps.observe import record_batch, set_batching

log = logging.getLogger("docray.privacy")


class PrivacyAppConfig(Config):
    masked: str = Field("registry:mask_recognizer_masked", description="the masked recogniser: registry:NAME[@vNNNN] "
                        "(no version: the newest when the app is built) or a save_pretrained folder")
    targets: str = Field("", description="target masks ('' -> DOCRAY_HOME/reports/privacy/grid/targets.parquet)")
    choice: str = Field("best", description="mask for raw uploads: 'best' (highest masked accuracy) or 'random'")
    image_size: int = 64
    max_batch_size: int = Field(32, description="images per model call")
    batch_wait_timeout_s: float = Field(0.01, description="how long a batch waits to fill")


@serve.deployment(ray_actor_options={"num_cpus": 0.25})
class Privacy:
    def __init__(self, cfg: dict | None = None):
        from docray import paths
        from docray.privacy.recognize import PrivateRecognizer

        self.cfg = pinned(PrivacyAppConfig(**(cfg or {})))
        self.models = models_of(self.cfg)  # in every answer
        targets = self.cfg.targets or paths.sub("reports", "privacy", "grid", "targets.parquet")
        self.rec = PrivateRecognizer(self.cfg.masked, targets, self.cfg.choice, self.cfg.image_size)
        set_batching(self.recognize_batch, {"max_batch_size": self.cfg.max_batch_size,
                                            "batch_wait_timeout_s": self.cfg.batch_wait_timeout_s})

    def reconfigure(self, user_config: dict) -> None:
        set_batching(self.recognize_batch, user_config)

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.01)
    async def recognize_batch(self, images: list[torch.Tensor]) -> list[dict]:
        record_batch("Privacy", len(images))
        out = await asyncio.to_thread(self.rec, {"image": torch.stack(images)})
        return [{k: v[i] for k, v in out.items()} for i in range(len(images))]

    def info(self) -> dict:
        return {"target_masks": len(self.rec.masks), "models": self.models}

    def masks(self) -> dict:
        """The target masks (PNG base64, 255 kept / 0 hidden), best first, for clients that mask locally."""
        from docray.privacy.masks import encode_mask

        return {"image_size": self.cfg.image_size, "choice": self.cfg.choice, "models": self.models,
                "masks": [{"mask_id": k, "png": base64.b64encode(encode_mask(m)).decode()} for k, m in self.rec.masks.items()]}

    async def recognize(self, image, mask_id: str | None, embedding: bool) -> dict:
        """image: PIL, raw or masked with `mask_id` -> label, score, mask_id[, embedding]."""
        from docray.privacy.recognize import MaskError

        try:
            x, used = self.rec.prepare(image, mask_id or None)
        except MaskError as e:
            raise ApiError(400, e.code, str(e)) from None
        out = await self.recognize_batch(x)
        res = {"label": int(out["label"]), "score": float(out["score"]), "mask_id": used, "models": self.models}
        if embedding:
            res["embedding"] = np.asarray(out["embedding"], np.float32).round(5).tolist()
        return res


def pinned(cfg: PrivacyAppConfig) -> PrivacyAppConfig:
    """`cfg` with a registry reference's version made explicit (`ModelRegistry.pin`; a folder: as is)."""
    found = parse_ref(cfg.masked)
    if found is None:
        return cfg
    return cfg.model_copy(update={"masked": ref(found[0], ModelRegistry().pin(*found))})


def models_of(cfg: PrivacyAppConfig) -> dict:
    """{registry name: version} of the masked recogniser; a folder is named by its path."""
    from docray.privacy.models import NAMES

    found = parse_ref(cfg.masked)
    return {found[0]: found[1]} if found else {NAMES["masked"]: cfg.masked}


def backend(cfg: PrivacyAppConfig) -> serve.Application:
    """The bound `Privacy` for the gateway, its version pinned now: every replica loads the same one."""
    return Privacy.bind(pinned(cfg).model_dump())
