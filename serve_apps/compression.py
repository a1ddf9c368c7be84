"""Regen compression on Ray Serve: `POST /v1/compress`, `GET /v1/file-types`, `GET /v1/repository/...`.

    serve run serve_apps.compression:app                               # model: registry 'regen' latest
    serve run serve_apps.compression:build_app model_dir=/path/to/regen-run/model

    curl -F image=@capture.png "localhost:8000/v1/compress?mode=server"    # compressed image (base64)
    curl -F image=@capture.png "localhost:8000/v1/compress?mode=split"     # processed image + type
    curl localhost:8000/v1/file-types                                       # for terminal compression
    curl -H "Authorization: Bearer $ADMIN" localhost:8000/v1/repository/<id>/original -o o.png

Composed deployments (`Compression` is the ingress and holds handles to the three others):
`TypeModel` and `ContentModel` run in parallel on the document without its portrait (both calls are
sent before either is awaited), then `Generator` renders the processed image, then `Compression`
pastes the portrait and seals back, compresses per type (server mode) and stores the record.
Model calls are `@serve.batch`ed across requests. Split mode returns the processed image and its
type; the terminal compresses it with `docray.client.compress_on_terminal` and the library from
`GET /v1/file-types`.
"""

import asyncio
import base64
from typing import Literal

from fastapi import File, Query, Request, UploadFile
from fastapi.responses import Response
from pydantic import Field
from ray import serve

from docray.compression.file_types import ThresholdError
from docray.config import Config
from docray.imageio import MAX_BYTES, decode_image, sniff_format
from serve_apps.http import ApiError, load_api_keys, make_api, require_role

api = make_api("docray regen compression", "recognise -> generate -> compress, with the image repository")


class CompressionAppConfig(Config):
    model_dir: str = Field("", description="regen model folder (train_regen's <out>/model); '' -> registry 'regen'")
    untrained: str = Field("", description="build this factory with random weights instead (tests, demos)")
    file_types: str = Field("", description="file-type library YAML ('' -> the packaged one)")
    fill: Literal["background", "blank"] = Field("background", description="how the portrait's hole is filled")
    steps: int | None = Field(None, description="DDIM steps (None: the model's sample_steps)")
    composite_seals: bool = True
    repository_url: str = Field("", description="image repository DB URL ('' -> DOCRAY_DB_URL or SQLite)")
    blob_root: str = Field("", description="blob root ('' -> DOCRAY_BLOB_ROOT or DOCRAY_HOME/repository/blobs)")
    seed: int = 0


def load_compressor(cfg: CompressionAppConfig):
    """The library pipeline object every deployment wraps (one model load per replica)."""
    from docray.compression.pipeline import RegenCompressor

    return RegenCompressor.from_source(cfg.model_dir, cfg.untrained, cfg.file_types, cfg.seed, fill=cfg.fill,
                                       steps=cfg.steps, composite_seals=cfg.composite_seals)


@serve.deployment(ray_actor_options={"num_cpus": 0.25})
class TypeModel:
    def __init__(self, config: dict):
        self.rc = load_compressor(CompressionAppConfig(**config))

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.02)
    async def classify(self, images: list) -> list[tuple[str, float]]:
        return self.rc.predict_types(images)


@serve.deployment(ray_actor_options={"num_cpus": 0.25})
class ContentModel:
    def __init__(self, config: dict):
        self.rc = load_compressor(CompressionAppConfig(**config))

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.02)
    async def read(self, images: list) -> list[str]:
        return self.rc.read_contents(images)


@serve.deployment(ray_actor_options={"num_cpus": 0.25})
class Generator:
    def __init__(self, config: dict):
        self.rc = load_compressor(CompressionAppConfig(**config))

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.02)
    async def generate(self, requests: list[tuple[str, str]]) -> list:
        return self.rc.generate([t for t, _ in requests], [c for _, c in requests])


@serve.deployment(ray_actor_options={"num_cpus": 0.25})
@serve.ingress(api)
class Compression:
    def __init__(self, type_model, content_model, generator, config: dict):
        from docray.storage.repository import ImageRepository

        self.cfg = CompressionAppConfig(**config)
        self.type_model, self.content_model, self.generator = type_model, content_model, generator
        self.rc = load_compressor(self.cfg)  # geometry, seals, compression; its models stay idle here
        self.repo = ImageRepository(self.cfg.repository_url or None, self.cfg.blob_root or None)
        self.keys = load_api_keys()

    async def compress(self, data: bytes, mode: str) -> dict:
        """The composed flow; mirrors `RegenCompressor.run` with the model calls on other replicas."""
        from docray.compression import layout
        from docray.compression.quality import compress_for_type

        rc = self.rc
        img = decode_image(data, name="image")
        try:
            rc.lib.check_original(img.width, img.height, len(data))
        except ThresholdError as e:
            raise ApiError(422, "below_first_threshold", str(e)) from None
        hint, _ = await self.type_model.classify.remote(img)
        box = await asyncio.to_thread(rc.portrait_box, img, hint)
        rest, face, split = await asyncio.to_thread(rc.split_at, img, box)
        seals = await asyncio.to_thread(rc.find_seals, img, split)
        type_ref, content_ref = self.type_model.classify.remote(rest), self.content_model.read.remote(rest)
        (doc_type, score), content = await type_ref, await content_ref  # both ran in parallel
        processed = await self.generator.generate.remote((doc_type, content))
        processed, split = await asyncio.to_thread(rc.finish, processed, rest, face, split, seals, img)
        out = rc.assemble(data, img, doc_type, score, content, processed, face, split, seals)
        if mode == "server":
            c = await asyncio.to_thread(compress_for_type, processed, rc.lib.get(doc_type))
            out.update(compressed=c.data, quality=c.quality, format=c.format)
            out["sizes"]["compressed"] = len(c.data)
        out["record_id"] = await asyncio.to_thread(rc.store, self.repo, data, out, mode)
        out["fields"] = dict(zip(layout.field_names(doc_type), layout.split_content(content, doc_type)))
        return out

    @api.post("/v1/compress")
    async def compress_route(self, request: Request, image: UploadFile | None = File(None),
                             mode: str = Query("server", description="server | split")) -> dict:
        require_role(request, self.keys, "user")
        if mode not in ("server", "split"):
            raise ApiError(400, "bad_mode", f"mode must be 'server' or 'split', got {mode!r}")
        if image is None:
            raise ApiError(400, "missing_field", "multipart field 'image' is required")
        data = await image.read(MAX_BYTES + 1)
        out = await self.compress(data, mode)
        body = {k: out[k] for k in ("record_id", "type", "type_score", "content", "fields", "split", "seals",
                                    "attachments", "sizes", "quality")}
        key = "compressed" if mode == "server" else "processed"
        body[key] = base64.b64encode(out[key]).decode()
        body["format"] = out.get("format", "png") if mode == "server" else "png"
        return body

    @api.get("/v1/file-types")
    async def file_types(self, request: Request) -> dict:
        require_role(request, self.keys, "user")
        return self.rc.lib.to_json()

    @api.get("/v1/repository/{record_id}/{which}")
    async def repository(self, request: Request, record_id: str, which: str) -> Response:
        from docray.storage.blobs import NotFound
        from docray.storage.repository import IMAGES

        role = require_role(request, self.keys, "admin" if which == "original" else "user")
        if which not in IMAGES:
            raise ApiError(400, "bad_image_kind", f"which must be one of {list(IMAGES)}, got {which!r}")
        try:
            data = await asyncio.to_thread(self.repo.get, record_id, which, role)
        except NotFound as e:
            raise ApiError(404, "not_found", str(e)) from None
        media = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp"}.get(sniff_format(data), "application/octet-stream")
        return Response(content=data, media_type=media)

    @api.get("/healthz")
    async def healthz(self) -> dict:
        return {"ok": True}


def build_app(args: dict | None = None) -> serve.Application:
    """`serve run serve_apps.compression:build_app model_dir=...` (args are CompressionAppConfig keys)."""
    cfg = CompressionAppConfig(**(args or {})).model_dump()
    return Compression.bind(TypeModel.bind(cfg), ContentModel.bind(cfg), Generator.bind(cfg), cfg)


app = build_app
