"""Private recognition on Ray Serve: `POST /v1/recognize-private`, `GET /v1/recognize-private/masks`.

    serve run serve_apps.private_recognition:app          # masked recogniser from the registry,
                                                          # targets from DOCRAY_HOME/reports/masking/grid
    serve run serve_apps.private_recognition:build_app targets=/path/targets.parquet choice=random

    curl -F image=@face.png localhost:8000/v1/recognize-private                # raw: the server masks it
    curl -F image=@masked.png -F mask_id=msk-7-0000041 localhost:8000/v1/recognize-private
    # docray.masking.client.PrivateRecognitionClient masks on the client, so the raw face never leaves it

Multipart `image` (raw, or already masked with the target `mask_id`), optional `embedding=true`.
Response: `label`, `score`, `mask_id`, and `embedding` when asked. A masked upload must be the
model's size and black under the declared mask (else 400 `mask_mismatch` / `bad_size`); an
unknown mask id is 400 `unknown_mask`. The model call is batched across requests (`@serve.batch`).
"""
# no `from __future__ import annotations`: FastAPI must resolve UploadFile in the handler signatures

import asyncio
import base64
import logging

import numpy as np
import torch
from fastapi import File, Form, Request, UploadFile
from pydantic import Field
from ray import serve

from docray.config import Config
from serve_apps.http import ApiError, load_api_keys, make_api, read_image, require_role

log = logging.getLogger("docray.private_recognition")
api = make_api("docray private recognition", "Recognition of masked faces with the masked recogniser.")


class PrivateRecognitionConfig(Config):
    masked: str = Field("registry:mask_recognizer_masked", description="the masked recogniser")
    targets: str = Field("", description="target masks ('' -> DOCRAY_HOME/reports/masking/grid/targets.parquet)")
    choice: str = Field("best", description="mask for raw uploads: 'best' (highest masked accuracy) or 'random'")
    image_size: int = 64
    max_batch_size: int = Field(32, description="images per model call")
    batch_wait_timeout_s: float = Field(0.01, description="how long a batch waits to fill")


def _flag(raw: str | None) -> bool:
    if raw is None or raw == "":
        return False
    if raw.lower() in ("1", "true", "yes"):
        return True
    if raw.lower() in ("0", "false", "no"):
        return False
    raise ApiError(400, "bad_request", f"field 'embedding' must be true or false, got {raw!r}")


@serve.deployment(ray_actor_options={"num_cpus": 0.25})
@serve.ingress(api)
class PrivateRecognition:
    def __init__(self, cfg: dict | None = None):
        from docray import paths
        from docray.masking.private import PrivateRecognizer

        self.cfg = PrivateRecognitionConfig(**(cfg or {}))
        targets = self.cfg.targets or paths.sub("reports", "masking", "grid", "targets.parquet")
        self.rec = PrivateRecognizer(self.cfg.masked, targets, self.cfg.choice, self.cfg.image_size)
        self.keys = load_api_keys()
        if not self.keys:
            log.warning("no API keys configured: auth is off, every caller is admin")
        self.recognize_batch.set_max_batch_size(self.cfg.max_batch_size)
        self.recognize_batch.set_batch_wait_timeout_s(self.cfg.batch_wait_timeout_s)

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.01)
    async def recognize_batch(self, images: list[torch.Tensor]) -> list[dict]:
        out = await asyncio.to_thread(self.rec, {"image": torch.stack(images)})
        return [{k: v[i] for k, v in out.items()} for i in range(len(images))]

    @api.get("/healthz")
    async def healthz(self):
        return {"status": "ok", "target_masks": len(self.rec.masks)}

    @api.get("/v1/recognize-private/masks")
    async def masks(self, request: Request):
        """The target masks (PNG base64, 255 kept / 0 hidden), best first, for clients that mask locally."""
        require_role(request, self.keys, "user")
        from docray.masking.masks import encode_mask

        return {"image_size": self.cfg.image_size, "choice": self.cfg.choice,
                "masks": [{"mask_id": k, "png": base64.b64encode(encode_mask(m)).decode()} for k, m in self.rec.masks.items()]}

    @api.post("/v1/recognize-private")
    async def recognize(self, request: Request, image: UploadFile = File(None), mask_id: str | None = Form(None),
                        embedding: str | None = Form(None)):
        from docray.masking.private import MaskError

        require_role(request, self.keys, "user")
        want_emb = _flag(embedding)
        img = await read_image(image, "image")
        try:
            x, used = self.rec.prepare(img, mask_id or None)
        except MaskError as e:
            raise ApiError(400, e.code, str(e)) from None
        out = await self.recognize_batch(x)
        res = {"label": int(out["label"]), "score": float(out["score"]), "mask_id": used}
        if want_emb:
            res["embedding"] = np.asarray(out["embedding"], np.float32).round(5).tolist()
        return res


def build_app(args: dict | None = None) -> serve.Application:
    """`serve run serve_apps.private_recognition:build_app targets=... choice=random` (PrivateRecognitionConfig keys)."""
    return PrivateRecognition.bind(PrivateRecognitionConfig(**(args or {})).model_dump())


app = build_app
