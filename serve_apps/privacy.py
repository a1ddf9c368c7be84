"""Private recognition on Ray Serve: enrol, verify, identify through the target masks (gateway routes).

    serve run configs/serve/gateway.yaml                  # every method behind one gateway
    serve run configs/serve/privacy.yaml                  # the gateway with this method only
    serve run serve_apps.gateway:build_app privacy='{"targets": "/path/targets.parquet"}'
                                        # default: masked recogniser from the registry, targets and
                                        # calibration.json from DOCRAY_HOME/reports/privacy/grid

    curl -H "Authorization: Bearer $USER" localhost:8000/v1/privacy/masks        # the target masks
    curl -H "Authorization: Bearer $ADMIN" -F identity_id=alice -F mask_id=msk-7-0000041 \
         -F image=@masked.png localhost:8000/v1/privacy/enrol
    curl -F identity_id=alice -F mask_id=msk-7-0000041 -F image=@masked2.png localhost:8000/v1/privacy/verify
    curl -F mask_id=msk-7-0000041 -F image=@masked2.png -F top_k=3 localhost:8000/v1/privacy/identify
    curl -X DELETE -H "Authorization: Bearer $ADMIN" localhost:8000/v1/privacy/identities/alice
    # docray.client.DocrayClient.enrol / verify / identify mask on the client: the raw face never leaves

Every upload is a face masked on the client with a served target mask and named by `mask_id`: the
model's size and black under the mask (else 400 `missing_field` / `unknown_mask` / `bad_size` /
`mask_mismatch`). The masked recogniser embeds it (batched across requests, `@serve.batch`); the
gallery is the repository database's `enrolments` table (`ImageRepository.enrol`, `gallery`,
`delete_identity`): one embedding per enrolled image, never the image. Answers name the model
(`models`) and the threshold; a training class label is never an answer.

Verification serves only when `docray.privacy.verification.serving_policy` allows it: target masks
that meet the funnel's stage-5 bounds and a threshold calibrated for this model and these masks.
Otherwise enrol, verify, identify and the masks answer 503 `verification_refused` naming what failed,
unless `dev_override: true` (development only: logged at start, shown by /healthz, and every answer
carries `dev_override: true`). Deleting an identity always works.
"""
import asyncio
import logging
import os

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
    calibration: str = Field("", description="the verification threshold ('' -> calibration.json beside the targets; "
                             "docray privacy calibrate writes it)")
    dev_override: bool = Field(False, description="DEVELOPMENT ONLY: serve even when no target mask meets the attacker "
                               "bounds or no threshold is calibrated (logged, shown by /healthz and in every answer)")
    dev_threshold: float = Field(0.5, ge=-1, le=1, description="the cosine threshold under dev_override when none is "
                                 "calibrated")
    repository_url: str = Field("", description="the gallery's database ('' -> DOCRAY_DB_URL or SQLite in DOCRAY_HOME)")
    max_top_k: int = Field(20, ge=1, description="identify: the most identities one answer lists")
    image_size: int = 64
    max_batch_size: int = Field(32, description="images per model call")
    batch_wait_timeout_s: float = Field(0.01, description="how long a batch waits to fill")


@serve.deployment(ray_actor_options={"num_cpus": 0.25})
class Privacy:
    def __init__(self, cfg: dict | None = None):
        from docray.privacy.recognize import PrivateRecognizer
        from docray.storage.repository import ImageRepository

        self.cfg = pinned(PrivacyAppConfig(**(cfg or {})))
        self.models = models_of(self.cfg)  # in every answer
        self.policy, masks = load_policy(self.cfg)
        self.rec = PrivateRecognizer(self.cfg.masked, {k: masks[k] for k in self.policy.masks}, self.cfg.image_size)
        self.repo = ImageRepository(self.cfg.repository_url or None)
        if not self.policy.serving:
            log.error("private verification REFUSES to serve: %s", self.policy.refusal)
        elif self.policy.refusal:
            log.warning("DEVELOPMENT OVERRIDE (privacy.dev_override): serving although %s; threshold %s",
                        self.policy.refusal, self.policy.threshold_source)
        set_batching(self.embed_batch, {"max_batch_size": self.cfg.max_batch_size,
                                        "batch_wait_timeout_s": self.cfg.batch_wait_timeout_s})

    def reconfigure(self, user_config: dict) -> None:
        set_batching(self.embed_batch, user_config)

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.01)
    async def embed_batch(self, images: list[torch.Tensor]) -> list[np.ndarray]:
        record_batch("Privacy", len(images))
        out = await asyncio.to_thread(self.rec, {"image": torch.stack(images)})
        return list(out["embedding"])

    def info(self) -> dict:
        return {**self.policy.info(), "models": self.models}

    def _serving(self) -> None:
        if not self.policy.serving:
            raise ApiError(503, "verification_refused", f"private verification refuses to serve: {self.policy.refusal}. "
                           "(privacy.dev_override: true serves anyway, for development only)")

    def _answer(self, body: dict) -> dict:
        body["models"] = self.models
        if self.policy.dev_override:
            body["dev_override"] = True
        return body

    async def _embed(self, image, mask_id: str | None) -> tuple[np.ndarray, torch.Tensor]:
        from docray.privacy.recognize import MaskError

        self._serving()
        try:
            x = self.rec.prepare(image, mask_id)
        except MaskError as e:
            raise ApiError(400, e.code, str(e)) from None
        return await self.embed_batch(x), x

    def masks(self) -> dict:
        """The served target masks (PNG base64, 255 kept / 0 hidden), for clients that mask locally."""
        import base64

        from docray.privacy.masks import encode_mask

        self._serving()
        return self._answer({"image_size": self.cfg.image_size, "masks": [
            {"mask_id": k, "png": base64.b64encode(encode_mask(m)).decode()} for k, m in self.rec.masks.items()]})

    async def enrol(self, image, identity_id: str, mask_id: str | None, actor: str | None = None,
                    route: str | None = None) -> dict:
        """Store the embedding of a masked image of `identity_id` (409 `already_enrolled`: the same image)."""
        from docray.privacy.recognize import pixels_sha256
        from docray.storage.repository import AlreadyEnrolled

        emb, x = await self._embed(image, mask_id)
        try:
            out = await asyncio.to_thread(self.repo.enrol, identity_id, emb, pixels_sha256(x), mask_id, self.cfg.masked,
                                          actor=actor, route=route)
        except AlreadyEnrolled as e:
            raise ApiError(409, "already_enrolled", str(e)) from None
        return self._answer({**out, "mask_id": mask_id})

    async def verify(self, image, identity_id: str, mask_id: str | None) -> dict:
        """Is the masked face `identity_id`? {identity_id, match, score, threshold, mask_id}; 404 when not enrolled."""
        from docray.privacy.verification import match

        emb, _ = await self._embed(image, mask_id)
        ids, embs = await asyncio.to_thread(self.repo.gallery, self.cfg.masked)
        mine = embs[np.asarray([i == identity_id for i in ids], bool)] if ids else embs
        if not len(mine):
            raise ApiError(404, "unknown_identity", f"identity {identity_id!r} is not enrolled (with the served model "
                           f"{self.cfg.masked}); enrol it first (POST /v1/privacy/enrol)")
        return self._answer({"identity_id": identity_id, **match(emb, mine, self.policy.threshold), "mask_id": mask_id})

    async def identify(self, image, mask_id: str | None, k: int) -> dict:
        """The gallery's `k` best identities for the masked face: {candidates: [{identity_id, score, match}], ...}."""
        from docray.privacy.verification import top_k

        if not 1 <= k <= self.cfg.max_top_k:
            raise ApiError(400, "bad_top_k", f"top_k is a number from 1 to {self.cfg.max_top_k}, got {k}")
        emb, _ = await self._embed(image, mask_id)
        ids, embs = await asyncio.to_thread(self.repo.gallery, self.cfg.masked)
        return self._answer({"candidates": top_k(emb, ids, embs, k, self.policy.threshold),
                             "threshold": self.policy.threshold, "gallery_identities": len(set(ids)), "mask_id": mask_id})

    async def delete_identity(self, identity_id: str, actor: str | None = None, route: str | None = None) -> dict:
        """Every enrolment of the identity, with its audit entry (404 `not_found` when there is none)."""
        from docray.storage.blobs import NotFound

        try:
            return await asyncio.to_thread(self.repo.delete_identity, identity_id, actor=actor, route=route)
        except NotFound as e:
            raise ApiError(404, "not_found", str(e)) from None


def load_policy(cfg: PrivacyAppConfig):
    """(the serving policy, {mask_id: (s, s) mask} of every target) from the targets, their funnel.json and
    the calibration file; a missing or empty targets file is a refusal, not a failed start."""
    import io
    import json

    import pandas as pd

    from docray import paths
    from docray.privacy.masks import decode_mask
    from docray.privacy.verification import CALIBRATION, load_calibration, serving_policy
    from docray.storage.blobs import exists, read_file

    # a local path or a URI (an s3:// DOCRAY_HOME): every file through docray.storage.blobs
    path = os.path.expanduser(cfg.targets or paths.sub("reports", "privacy", "grid", "targets.parquet"))
    targets, missing = None, f"no target masks at {path} (run data_jobs.privacy_grid first)"
    if exists(path):
        targets = pd.read_parquet(io.BytesIO(read_file(path))).reset_index(drop=True)
        funnel = os.path.join(os.path.dirname(path), "funnel.json")
        reason = json.loads(read_file(funnel)).get("empty_reason") if exists(funnel) else None
        missing = f"{path} holds no target mask" + (f": {reason}" if reason else "")
    masks = {} if targets is None else {str(r.mask_id): decode_mask(r.mask, size=cfg.image_size) for r in targets.itertuples()}
    calibration = load_calibration(cfg.calibration or os.path.join(os.path.dirname(path), CALIBRATION))
    policy = serving_policy(targets, calibration, cfg.masked, dev_override=cfg.dev_override,
                            dev_threshold=cfg.dev_threshold, missing=missing)
    return policy, masks


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
