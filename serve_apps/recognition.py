"""The unified recognition model behind Ray Serve (`POST /v1/recognize` on the gateway).

    serve run configs/serve/gateway.yaml                        # every method behind one gateway
    serve run configs/serve/recognition.yaml                    # the gateway with this method only
    serve run serve_apps.gateway:build_app recognition='{"select": "classifier"}'   # other settings

`Recognizer` loads the model and answers `recognize(image, frames, tasks, attrs)` through a
`@serve.batch` (many requests, one model call). The HTTP side (multipart parsing, auth, limits) is
the gateway's (`serve_apps/gateway.py`). Request (multipart): `image`; optional `frames[]` (files)
with `frame_kinds` (JSON list, one of "flash" | "angles" per frame; default: the first frame is the
flash frame, the rest angle views); `tasks` (JSON list of task names; none: chosen from the predicted
document type, or by the task classifier with select=classifier); `user_attrs` (JSON object, see
tasks.yaml). Response: `{"results": {task: {"type": ..., ...}}, "skipped": [...], "model": "name/version",
"models": {name: version}}` with masks as base64 PNG (`mask_png`) and boxes in the uploaded image's
pixels. Bad input -> 4xx JSON. `version` pins a registry version (a redeploy with an earlier one rolls
back); `latest` is pinned to the newest when the app is built (`backend`), so every replica loads the
same version, and the answer names it (a `folder` is named by its path).
"""

import base64

import torch
from pydantic import Field
from ray import serve

from docray.config import Config
from docray.recognition.predictor import MissingFrames, RecognitionPredictor
from docray.recognition.tasks import UnknownTask
from serve_apps.http import ApiError
from serve_apps.observe import record_batch, set_batching


class RecognitionAppConfig(Config):
    model: str = Field("recognition-unified", description="model registry name")
    version: str = Field("latest", description="registry version: vNNNN, or latest (the newest when the app is built)")
    folder: str | None = Field(None, description="a save_pretrained folder instead of the registry")
    select: str = Field("doc_type", description="task selection without `tasks`: doc_type | classifier | all")
    max_batch_size: int = Field(8, ge=1)
    batch_wait_timeout_s: float = Field(0.02, ge=0)


def _jsonable(result: dict) -> dict:
    return {k: base64.b64encode(v).decode() if isinstance(v, bytes) else v for k, v in result.items()}


ERRORS = {UnknownTask: "unknown_task", MissingFrames: "missing_frames", ValueError: "bad_request"}


@serve.deployment(ray_actor_options={"num_cpus": 0.25})
class Recognizer:
    def __init__(self, cfg: dict | None = None):
        self.cfg = pinned(RecognitionAppConfig.model_validate(cfg or {}))
        self.predictor = RecognitionPredictor(self.cfg.model, self.cfg.version, self.cfg.folder,
                                              device="cuda" if torch.cuda.is_available() else "cpu",
                                              select=self.cfg.select)
        set_batching(self.recognize_batch, {"max_batch_size": self.cfg.max_batch_size,
                                            "batch_wait_timeout_s": self.cfg.batch_wait_timeout_s})
        self.model_id = self.cfg.folder or f"{self.cfg.model}/{self.cfg.version}"
        self.models = {self.cfg.model: self.cfg.folder or self.cfg.version}  # in every answer

    def reconfigure(self, user_config: dict) -> None:
        set_batching(self.recognize_batch, user_config)

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.02)
    async def recognize_batch(self, requests: list[dict]) -> list:
        """Many requests, one model call; a request's own error is returned to it alone."""
        record_batch("Recognizer", len(requests))
        try:
            return self.predictor.recognize([r["image"] for r in requests], [r["frames"] for r in requests],
                                            [r["tasks"] for r in requests], [r["attrs"] for r in requests])
        except tuple(ERRORS):
            return [self._one(r) for r in requests]  # isolate the failing request(s)

    def _one(self, r: dict):
        try:
            return self.predictor.recognize([r["image"]], [r["frames"]], [r["tasks"]], [r["attrs"]])[0]
        except tuple(ERRORS) as e:
            return e

    async def recognize(self, image, frames: dict, tasks: list | None, attrs: dict | None) -> dict:
        """image: PIL; frames: {"flash"|"angles": [PIL, ...]} -> the /v1/recognize response body."""
        out = await self.recognize_batch({"image": image, "frames": frames, "tasks": tasks, "attrs": attrs})
        if isinstance(out, Exception):
            raise ApiError(400, next(c for t, c in ERRORS.items() if isinstance(out, t)), str(out))
        skipped = out.pop("_skipped", [])
        return {"results": {k: _jsonable(v) for k, v in out.items()}, "skipped": skipped, "model": self.model_id,
                "models": self.models}

    def info(self) -> dict:
        return {"model": self.model_id, "models": self.models, "tasks": self.predictor.cat.names()}


def pinned(cfg: RecognitionAppConfig) -> RecognitionAppConfig:
    """`cfg` with `latest` turned into the registry's newest version (`ModelRegistry.pin`; a folder: as is)."""
    if cfg.folder:
        return cfg
    from docray.storage.registry import ModelRegistry

    return cfg.model_copy(update={"version": ModelRegistry().pin(cfg.model, cfg.version)})


def backend(cfg: RecognitionAppConfig) -> serve.Application:
    """The bound `Recognizer` for the gateway, its version pinned now: every replica loads the same one."""
    return Recognizer.bind(pinned(cfg).model_dump())
