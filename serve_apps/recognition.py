"""`POST /v1/recognize`: the unified recognition model behind Ray Serve.

    serve run serve_apps.recognition:app                        # latest "recognition-unified"
    serve run serve_apps.recognition:build_app model=recognition-unified select=classifier

Request (multipart): `image`; optional `frames[]` (files) with `frame_kinds` (JSON list, one of
"flash" | "angles" per frame; default: the first frame is the flash frame, the rest angle views);
`tasks` (JSON list of task names; none: chosen from the predicted document type, or by the task
classifier with select=classifier); `user_attrs` (JSON object, see tasks.yaml). Response:
`{"results": {task: {"type": ..., ...}}, "skipped": [...], "model": "name/version"}` with
masks as base64 PNG (`mask_png`) and boxes in the uploaded image's pixels. Bad input -> 4xx JSON.
"""

import base64

import torch
from fastapi import File, Form, Request, UploadFile
from pydantic import Field
from ray import serve

from docray.config import Config
from docray.recognition.predictor import MissingFrames, RecognitionPredictor
from docray.recognition.tasks import FRAME_KINDS, UnknownTask
from serve_apps.http import ApiError, load_api_keys, make_api, parse_json_field, read_image, require_role

api = make_api("docray recognition", "Unified recognition: one model, many document tasks chosen by task queries.")
MAX_FRAMES = 8


class RecognitionAppConfig(Config):
    model: str = Field("recognition-unified", description="model registry name")
    version: str = Field("latest", description="registry version (vNNNN or latest)")
    folder: str | None = Field(None, description="a save_pretrained folder instead of the registry")
    select: str = Field("doc_type", description="task selection without `tasks`: doc_type | classifier | all")
    max_batch_size: int = Field(8, ge=1)
    batch_wait_timeout_s: float = Field(0.02, ge=0)


def _jsonable(result: dict) -> dict:
    return {k: base64.b64encode(v).decode() if isinstance(v, bytes) else v for k, v in result.items()}


@serve.deployment(ray_actor_options={"num_cpus": 0.25})
@serve.ingress(api)
class Recognizer:
    def __init__(self, cfg: dict | None = None):
        self.cfg = RecognitionAppConfig.model_validate(cfg or {})
        self.predictor = RecognitionPredictor(self.cfg.model, self.cfg.version, self.cfg.folder,
                                              device="cuda" if torch.cuda.is_available() else "cpu",
                                              select=self.cfg.select)
        self.keys = load_api_keys()
        self.recognize_batch.set_max_batch_size(self.cfg.max_batch_size)
        self.recognize_batch.set_batch_wait_timeout_s(self.cfg.batch_wait_timeout_s)
        self.model_id = self.cfg.folder or f"{self.cfg.model}/{self.cfg.version}"

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.02)
    async def recognize_batch(self, requests: list[dict]) -> list:
        """Many requests, one model call; a request's own error is returned to it alone."""
        try:
            return self.predictor.recognize([r["image"] for r in requests], [r["frames"] for r in requests],
                                            [r["tasks"] for r in requests], [r["attrs"] for r in requests])
        except (MissingFrames, UnknownTask, ValueError):
            return [self._one(r) for r in requests]  # isolate the failing request(s)

    def _one(self, r: dict):
        try:
            return self.predictor.recognize([r["image"]], [r["frames"]], [r["tasks"]], [r["attrs"]])[0]
        except (MissingFrames, UnknownTask, ValueError) as e:
            return e

    @api.post("/v1/recognize")
    async def recognize(self, request: Request, image: UploadFile | None = File(None),
                        frames: list[UploadFile] | None = File(None, alias="frames[]"),
                        frame_kinds: str | None = Form(None), tasks: str | None = Form(None),
                        user_attrs: str | None = Form(None)):
        require_role(request, self.keys, "user")
        img = await read_image(image, "image")
        task_list = parse_json_field(tasks, "tasks")
        if task_list is not None and (not isinstance(task_list, list) or not task_list):
            raise ApiError(400, "bad_tasks", "tasks must be a non-empty JSON list of task names")
        attrs = parse_json_field(user_attrs, "user_attrs")
        frames = frames or []
        if len(frames) > MAX_FRAMES:
            raise ApiError(400, "too_many_frames", f"at most {MAX_FRAMES} frames")
        default_kinds = (["flash"] + ["angles"] * (len(frames) - 1)) if frames else []
        kinds = parse_json_field(frame_kinds, "frame_kinds") or default_kinds
        if len(kinds) != len(frames) or any(k not in FRAME_KINDS[1:] for k in kinds):
            raise ApiError(400, "bad_frame_kinds", f"frame_kinds must list one of {list(FRAME_KINDS[1:])} per frame")
        by_kind: dict[str, list] = {}
        for i, (f, k) in enumerate(zip(frames, kinds)):
            by_kind.setdefault(k, []).append(await read_image(f, f"frames[{i}]"))
        out = await self.recognize_batch({"image": img, "frames": by_kind, "tasks": task_list, "attrs": attrs})
        if isinstance(out, UnknownTask):
            raise ApiError(400, "unknown_task", str(out))
        if isinstance(out, MissingFrames):
            raise ApiError(400, "missing_frames", str(out))
        if isinstance(out, ValueError):
            raise ApiError(400, "bad_request", str(out))
        skipped = out.pop("_skipped", [])
        return {"results": {k: _jsonable(v) for k, v in out.items()}, "skipped": skipped, "model": self.model_id}

    @api.get("/healthz")
    async def healthz(self):
        return {"status": "ok", "model": self.model_id, "tasks": self.predictor.cat.names()}


def build_app(args: dict | None = None):
    """`serve run serve_apps.recognition:build_app key=value ...` (keys of RecognitionAppConfig)."""
    cfg = RecognitionAppConfig.model_validate(args or {})
    return Recognizer.bind(cfg.model_dump())


app = Recognizer.bind()
