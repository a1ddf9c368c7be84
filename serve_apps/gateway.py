"""The docray gateway: one HTTP entry for every method (the Serve application `docray`, route prefix `/`).

    serve run configs/serve/gateway.yaml                        # embedded: starts Ray, deploys, blocks
    ray start --head && serve deploy configs/serve/gateway.yaml # against a running cluster (:8265)
    serve run configs/serve/recognition.yaml                    # one method: recognition, screening, privacy, regen
    serve run serve_apps.gateway:build_app recognition='{}' screening='{"library": "/data/lib"}'

`Gateway` is the FastAPI ingress. It does the HTTP work once for every method: API keys and roles,
request byte limits and safe image decoding (bytes, pixels, the smallest side, truncation), the JSON error model,
Prometheus metrics and request logs, `/healthz`, `/metrics` and `/docs` (one OpenAPI for all routes).
It then calls the method deployments through handles with decoded inputs:

    /v1/recognize                     -> Recognizer          (serve_apps/recognition.py)
    /v1/screen, /v1/screen/*          -> Screening, Descriptor (serve_apps/screening.py)
    /v1/privacy/*                     -> Privacy  (serve_apps/privacy.py): masks, enrol, verify, identify, identities
    /v1/recognize-private[/masks]     -> 410 deprecated (they answered training class labels): /v1/privacy/*
    /v1/compress, /v1/repository/*    -> Regen, TypeModel, ContentModel, Generator (serve_apps/regen.py)
    /v1/audit                         -> Regen (the repository's audit table)
    /v1/file-types                    -> the gateway itself (a static file: regen.FileTypesFile)

Each method deployment scales on its own (`autoscaling_config` in the YAML); a method left out of the
args is not deployed and its routes answer 404 `not_deployed`. Each method's `backend(cfg)` pins its
registry models (`latest` becomes the newest version when the app is built; a version in the args
stays), and every answer names them (`models: {registry name: version}`): docs/serving.md.
The method modules never import this one: the gateway is composed from them (`build_app`).
"""
# no `from __future__ import annotations`: FastAPI must see the route annotations as real types

import asyncio
import base64
import hashlib
import json
import logging
import re

from fastapi import Body, File, Form, Query, Request, UploadFile
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from pydantic import Field, field_validator
from ray import serve

from docray.config import Config
from docray.imageio import MAX_BYTES, MAX_PIXELS, decode_image
from docray.recognition.tasks import FRAME_KINDS
from docray.screening.library import to_day
from docray.screening.templates import CUT_TYPES
from serve_apps import observe, privacy, recognition, regen, screening
from serve_apps.regen import RegenAppConfig, FileTypesFile, file_types_path
from serve_apps.http import (ApiError, load_api_keys, make_api, parse_json_field, read_image, read_upload, remote,
                              require_role)
from serve_apps.privacy import PrivacyAppConfig
from serve_apps.recognition import RecognitionAppConfig
from serve_apps.screening import ScreeningAppConfig

log = logging.getLogger("ray.serve")
APPS = ("recognition", "screening", "privacy", "regen")
MAX_FRAMES = 8
MIN_IMAGE_SIDE = 32
ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")  # source and target ids: names, never paths


class GatewayConfig(Config):
    recognition: RecognitionAppConfig | None = Field(None, description="unified recognition; null: not deployed")
    screening: ScreeningAppConfig | None = Field(None, description="cut-out screening; null: not deployed")
    privacy: PrivacyAppConfig | None = Field(None, description="private (masked) recognition; null: not deployed")
    regen: RegenAppConfig | None = Field(None, description="regen compression; null: not deployed")
    max_request_bytes: int = Field(64 * 2**20, gt=0, description="a request body over this (Content-Length) is a 413")
    max_image_bytes: int = Field(MAX_BYTES, gt=0, description="one uploaded image at most this many bytes")
    max_image_pixels: int = Field(MAX_PIXELS, gt=0, description="one decoded image at most this many pixels")
    min_image_side: int = Field(MIN_IMAGE_SIDE, ge=1, description="every uploaded image (any route, frames and "
                                "pictures too) at least this many pixels wide and tall; smaller: 422 too_small, "
                                "before any method sees it")
    max_pictures: int = Field(16, gt=0, description="pictures per /v1/screen request")
    health_timeout_s: float = Field(5.0, gt=0, description="how long /healthz waits for each method")

    @field_validator(*APPS, mode="before")
    @classmethod
    def _json_string(cls, v):  # `serve run ... recognition='{}'` passes strings
        return json.loads(v) if isinstance(v, str) else v


api = make_api("docray", "One gateway for regen compression, unified recognition, cut-out screening and private "
                         "recognition. Authorization: Bearer <api key> (roles user, admin).")
api.add_middleware(observe.Edge)


def _form_value(raw: str | None):
    """A form field that may be JSON (`2024`, `"3x3"`) or a plain string (`2024-05-01`)."""
    if raw is None or raw == "":
        return None
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw


def _day(raw: str | None, required: bool = False):
    value = _form_value(raw)
    if value is None:
        if required:
            raise ApiError(400, "missing_field", "form field 'release_time' is required")
        return None
    try:
        return to_day(value)
    except ValueError as e:
        raise ApiError(400, "bad_release_time", str(e)) from None


def _id(raw: str | None, name: str, required: bool = False) -> str | None:
    """A source or target id: a name (letters, digits, . _ : -; at most 128), never a path."""
    if not raw:
        if required:
            raise ApiError(400, "missing_field", f"form field {name!r} is required")
        return None
    if not ID_PATTERN.fullmatch(raw):
        raise ApiError(400, "bad_id", f"{name} must be 1-128 letters, digits, '.', '_', ':' or '-' (starting with a "
                       f"letter or digit), got {raw[:60]!r}")
    return raw


def actor_of(request: Request, keys: dict[str, str]) -> str:
    """Who the audit log names: the API key's id (`key:` and its SHA-256's first 12 hex digits, never
    the key itself), or `role:admin` when auth is off (no keys: every caller is admin)."""
    if not keys:
        return "role:admin"
    token = request.headers.get("authorization", "").partition(" ")[2].strip()
    return "key:" + hashlib.sha256(token.encode()).hexdigest()[:12]


def route_of(request: Request) -> str:
    return f"{request.method} {request.url.path}"[:255]


def _audit_query(record_id: str | None, action: str | None, limit: str | None) -> tuple[str | None, str | None, int]:
    """`GET /v1/audit`'s filters, each a 400 when present and wrong (an empty value included)."""
    from docray.storage.repository import AUDIT_ACTIONS, is_record_id

    if record_id is not None and not is_record_id(record_id):
        raise ApiError(400, "bad_id", f"record_id is a record's id (32 lowercase hex digits), got {record_id[:60]!r}")
    if action is not None and action not in AUDIT_ACTIONS:
        raise ApiError(400, "bad_action", f"action must be one of {list(AUDIT_ACTIONS)}, got {action[:60]!r}")
    if limit is None:
        return record_id, action, 100
    if not (limit.isascii() and limit.isdigit() and len(limit) <= 4 and 1 <= int(limit) <= 1000):
        raise ApiError(400, "bad_limit", f"limit is a number from 1 to 1000, got {limit[:60]!r}")
    return record_id, action, int(limit)


def _mask_id(raw: str | None) -> str:
    """The target mask a face was masked with on the client (the Privacy deployment checks it is served)."""
    if not raw:
        raise ApiError(400, "missing_field", "form field 'mask_id' is required: mask the face on the client with a "
                       "target mask (GET /v1/privacy/masks) and name it; the server never masks a raw face")
    return raw


def _count(raw: str, name: str, most: int = 1000) -> int:
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 4 and 1 <= int(raw) <= most):
        raise ApiError(400, f"bad_{name}", f"{name} is a number from 1 to {most}, got {raw[:60]!r}")
    return int(raw)


@serve.deployment(ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=64)
@serve.ingress(api)
class Gateway:
    def __init__(self, cfg: dict, recognition=None, screening=None, privacy=None, regen=None):
        self.cfg = GatewayConfig.model_validate(cfg)
        handles = dict(recognition=recognition, screening=screening, privacy=privacy, regen=regen)
        self.apps = {k: h for k, h in handles.items() if h is not None}
        self.file_types = FileTypesFile(file_types_path(self.cfg.regen)) \
            if self.cfg.regen is not None else None  # a static file: served here, no backend hop
        self.keys = load_api_keys()
        if not self.keys:
            log.warning("no API keys configured (DOCRAY_API_KEYS / DOCRAY_API_KEYS_FILE): auth is off, every caller is admin")
        observe.STATE.update(max_request_bytes=self.cfg.max_request_bytes, metrics=observe.RequestMetrics())

    def _app(self, name: str):
        if name not in self.apps:
            raise ApiError(404, "not_deployed", f"the {name} method is not deployed on this gateway "
                           f"(deployed: {', '.join(self.apps) or 'none'})")
        return self.apps[name]

    async def _image(self, upload: UploadFile | None, name: str):
        return await read_image(upload, name, max_bytes=self.cfg.max_image_bytes, max_pixels=self.cfg.max_image_pixels,
                                min_side=self.cfg.min_image_side)

    # -- health and metrics ------------------------------------------------------------------------
    @api.get("/healthz")
    async def healthz(self):
        """Each deployed method's answer to `info()`; 503 when one does not answer in time."""
        async def probe(name, handle):
            try:
                info = await asyncio.wait_for(remote(handle.info.remote()), self.cfg.health_timeout_s)
                return name, {"ok": True, **info}
            except Exception as e:  # noqa: BLE001 -- reported, not raised: this is the health page
                return name, {"ok": False, "error": f"{type(e).__name__}: {e}"[:300]}

        apps = dict(await asyncio.gather(*(probe(n, h) for n, h in self.apps.items())))
        ok = all(a["ok"] for a in apps.values())
        return JSONResponse({"status": "ok" if ok else "degraded", "apps": apps}, status_code=200 if ok else 503)

    @api.get("/metrics", response_class=PlainTextResponse)
    async def metrics(self):
        """Prometheus text: this node's Ray exporter (Serve's `ray_serve_*` and docray's `ray_docray_*`)."""
        try:
            return PlainTextResponse(await asyncio.to_thread(observe.node_metrics_text))
        except Exception as e:  # noqa: BLE001
            raise ApiError(503, "metrics_unavailable", f"Ray's metrics exporter did not answer: {type(e).__name__}") from None

    # -- unified recognition -----------------------------------------------------------------------
    @api.post("/v1/recognize")
    async def recognize(self, request: Request, image: UploadFile | None = File(None),
                        frames: list[UploadFile] | None = File(None, alias="frames[]"),
                        frame_kinds: str | None = Form(None), tasks: str | None = Form(None),
                        user_attrs: str | None = Form(None)):
        require_role(request, self.keys, "user")
        handle = self._app("recognition")
        img = await self._image(image, "image")
        task_list = parse_json_field(tasks, "tasks")
        if task_list is not None and (not isinstance(task_list, list) or not task_list):
            raise ApiError(400, "bad_tasks", "tasks must be a non-empty JSON list of task names")
        attrs = parse_json_field(user_attrs, "user_attrs")
        frames = frames or []
        if len(frames) > MAX_FRAMES:
            raise ApiError(400, "too_many_frames", f"at most {MAX_FRAMES} frames")
        default_kinds = (["flash"] + ["angles"] * (len(frames) - 1)) if frames else []
        kinds = parse_json_field(frame_kinds, "frame_kinds") or default_kinds
        if not isinstance(kinds, list) or len(kinds) != len(frames) or any(k not in FRAME_KINDS[1:] for k in kinds):
            raise ApiError(400, "bad_frame_kinds", f"frame_kinds must list one of {list(FRAME_KINDS[1:])} per frame")
        by_kind: dict[str, list] = {}
        for i, (f, k) in enumerate(zip(frames, kinds)):
            by_kind.setdefault(k, []).append(await self._image(f, f"frames[{i}]"))
        return await remote(handle.recognize.remote(img, by_kind, task_list, attrs))

    # -- cut-out screening -------------------------------------------------------------------------
    @api.post("/v1/screen")
    async def screen(self, request: Request, pictures: list[UploadFile] = File(None),
                     release_time: str | None = Form(None), cut_type: str | None = Form(None)):
        require_role(request, self.keys, "user")
        handle = self._app("screening")
        if not pictures:
            raise ApiError(400, "missing_field", "multipart field 'pictures' is required (one or more images)")
        if len(pictures) > self.cfg.max_pictures:
            raise ApiError(413, "too_many_pictures", f"{len(pictures)} pictures; at most {self.cfg.max_pictures}")
        day = _day(release_time)
        cut = _form_value(cut_type)
        if cut is not None and cut not in CUT_TYPES:
            raise ApiError(400, "bad_cut_type", f"cut_type {cut!r} is not one of {', '.join(CUT_TYPES)}")
        images = [await self._image(p, f"pictures[{i}]") for i, p in enumerate(pictures)]
        return await remote(handle.screen.remote(images, day, cut))

    @api.post("/v1/screen/targets")
    async def add_target(self, request: Request, image: UploadFile = File(None), release_time: str | None = Form(None),
                         source_id: str | None = Form(None), target_id: str | None = Form(None)):
        require_role(request, self.keys, "admin")
        handle = self._app("screening")
        day = _day(release_time, required=True)
        source_id, target_id = _id(source_id, "source_id", required=True), _id(target_id, "target_id")
        img = await self._image(image, "image")
        return await remote(handle.add_target.remote(img, day, source_id, target_id))

    @api.get("/v1/screen/library")
    async def library(self, request: Request):
        require_role(request, self.keys, "user")
        return await remote(self._app("screening").library_info.remote())

    # -- private recognition -----------------------------------------------------------------------
    @api.get("/v1/privacy/masks")
    async def privacy_masks(self, request: Request):
        """The served target masks (PNG base64, 255 kept / 0 hidden), for clients that mask locally: a
        secret of the service, handed to authenticated callers only."""
        require_role(request, self.keys, "user")
        return await remote(self._app("privacy").masks.remote())

    @api.post("/v1/privacy/enrol")
    async def privacy_enrol(self, request: Request, image: UploadFile = File(None), identity_id: str | None = Form(None),
                            mask_id: str | None = Form(None)):
        """Enrol a face masked on the client (admin): its embedding joins the identity's gallery entries
        (several images per identity; the same image twice is a 409 already_enrolled). The image is not kept."""
        require_role(request, self.keys, "admin")
        handle = self._app("privacy")
        img = await self._image(image, "image")
        identity_id = _id(identity_id, "identity_id", required=True)
        return await remote(handle.enrol.remote(img, identity_id, _mask_id(mask_id), actor_of(request, self.keys),
                                                route_of(request)))

    @api.post("/v1/privacy/verify")
    async def privacy_verify(self, request: Request, image: UploadFile = File(None), identity_id: str | None = Form(None),
                             mask_id: str | None = Form(None)):
        """Is this masked face the claimed identity? match, score (cosine to its template), threshold."""
        require_role(request, self.keys, "user")
        handle = self._app("privacy")
        img = await self._image(image, "image")
        identity_id = _id(identity_id, "identity_id", required=True)
        return await remote(handle.verify.remote(img, identity_id, _mask_id(mask_id)))

    @api.post("/v1/privacy/identify")
    async def privacy_identify(self, request: Request, image: UploadFile = File(None), mask_id: str | None = Form(None),
                               top_k: str | None = Form(None)):
        """The gallery's best identities for this masked face (top_k, default 5): identity_id, score, match."""
        require_role(request, self.keys, "user")
        handle = self._app("privacy")
        img = await self._image(image, "image")
        k = 5 if top_k in (None, "") else _count(top_k, "top_k")
        return await remote(handle.identify.remote(img, _mask_id(mask_id), k))

    @api.delete("/v1/privacy/identities/{identity_id}")
    async def privacy_delete_identity(self, request: Request, identity_id: str):
        """Delete an enrolled identity (admin): every enrolment of it, audited. 404 when there is none."""
        require_role(request, self.keys, "admin")
        handle = self._app("privacy")
        identity_id = _id(identity_id, "identity_id", required=True)
        return await remote(handle.delete_identity.remote(identity_id, actor_of(request, self.keys), route_of(request)))

    @api.post("/v1/recognize-private", deprecated=True)
    async def recognize_private(self, request: Request):
        """Removed (410): it answered training class labels. Use /v1/privacy/enrol, /verify, /identify."""
        require_role(request, self.keys, "user")
        raise ApiError(410, "deprecated", "POST /v1/recognize-private was removed: it answered with training class "
                       "labels. Enrol with POST /v1/privacy/enrol (admin), then POST /v1/privacy/verify (a claimed "
                       "identity_id) or POST /v1/privacy/identify, each with a face masked on the client (mask_id "
                       "from GET /v1/privacy/masks)")

    @api.get("/v1/recognize-private/masks", deprecated=True)
    async def recognize_private_masks(self, request: Request):
        """Moved (410): GET /v1/privacy/masks."""
        require_role(request, self.keys, "user")
        raise ApiError(410, "deprecated", "GET /v1/recognize-private/masks moved to GET /v1/privacy/masks (with "
                       "/v1/privacy/enrol, /v1/privacy/verify and /v1/privacy/identify)")

    # -- regen compression -------------------------------------------------------------------------
    @api.post("/v1/compress")
    async def compress(self, request: Request, image: UploadFile | None = File(None),
                       mode: str = Query("server", description="server | split")):
        require_role(request, self.keys, "user")
        handle = self._app("regen")
        if mode not in ("server", "split"):
            raise ApiError(400, "bad_mode", f"mode must be 'server' or 'split', got {mode!r}")
        data = await read_upload(image, "image", max_bytes=self.cfg.max_image_bytes)
        decode_image(data, max_bytes=self.cfg.max_image_bytes, max_pixels=self.cfg.max_image_pixels,  # the same checks
                     min_side=self.cfg.min_image_side, as_displayed=True)  # as every route; the bytes go on, as stored
        body = await remote(handle.compress.remote(data, mode))
        key = "compressed" if mode == "server" else "processed"
        body[key] = base64.b64encode(body[key]).decode()
        return body

    def file_types_json(self) -> dict:
        """The file-type library (`GET /v1/file-types`; also what a deployment handle gets)."""
        self._app("regen")
        return self.file_types.get().to_json()

    @api.get("/v1/file-types")
    async def get_file_types(self, request: Request):
        require_role(request, self.keys, "user")
        return self.file_types_json()

    @api.put("/v1/file-types")
    async def set_file_types(self, request: Request, library: dict = Body(...)):
        """Replace the file-type library (admin): validated, stored, picked up by every replica."""
        require_role(request, self.keys, "admin")
        self._app("regen")
        return self.file_types.set(library).to_json()

    @api.get("/v1/repository/{record_id}/{which}")
    async def repository(self, request: Request, record_id: str, which: str):
        """One image of a record: processed or compressed (user), original (admin; every read audited;
        410 purged once the retention period has removed it)."""
        role = require_role(request, self.keys, "admin" if which == "original" else "user")
        data, media = await remote(self._app("regen").repository.remote(record_id, which, role, actor_of(request, self.keys),
                                                                        route_of(request)))
        return Response(content=data, media_type=media)

    @api.delete("/v1/repository/{record_id}")
    async def delete_record(self, request: Request, record_id: str):
        """Delete a record (admin) with its original, processed and compressed images and every attachment,
        blobs and rows; audited. 404 when there is none (a second delete); 503 delete_incomplete when a
        blob could not be removed (the record is already unreadable; the same DELETE again finishes it)."""
        require_role(request, self.keys, "admin")
        return await remote(self._app("regen").delete_record.remote(record_id, actor_of(request, self.keys),
                                                                    route_of(request)))

    @api.get("/v1/audit")
    async def audit(self, request: Request, record_id: str | None = Query(None, description="one record's entries"),
                    action: str | None = Query(None, description="read | delete | purge | enrol"),
                    limit: str | None = Query(None, description="at most this many entries, 1-1000 (default 100)")):
        """The repository's audit log (admin), newest first: every admin read of an original (or of an
        attachment holding its pixels), every delete and purge: UTC time, actor (API-key id), role, action,
        record, what, route."""
        require_role(request, self.keys, "admin")
        handle = self._app("regen")
        return await remote(handle.audit.remote(*_audit_query(record_id, action, limit)))

    @api.put("/v1/repository/{record_id}/{which}")
    async def upload_compressed(self, request: Request, record_id: str, which: str,
                                image: UploadFile | None = File(None)):
        """Split mode: the terminal's compressed file for its record (`which` is `compressed`, the only
        image a client uploads): its type's format, within its second threshold, stored once."""
        require_role(request, self.keys, "user")
        handle = self._app("regen")
        data = await read_upload(image, "image", max_bytes=self.cfg.max_image_bytes)
        decode_image(data, max_bytes=self.cfg.max_image_bytes, max_pixels=self.cfg.max_image_pixels,
                     min_side=self.cfg.min_image_side)  # the same checks as every upload, before the record is read
        if which != "compressed":
            raise ApiError(400, "bad_image_kind", f"only the compressed image is uploaded (PUT .../compressed), "
                           f"got {which[:60]!r}")
        return await remote(handle.store_compressed.remote(record_id, data))

    @api.get("/v1/repository/{record_id}/attachments/{n}")
    async def attachment(self, request: Request, record_id: str, n: str):
        """Attachment `n` of a record (the compress answer lists them): seals for users; the portrait and
        the document without it, pieces of the original, for admins."""
        role = require_role(request, self.keys, "user")  # the key first: a caller without one learns nothing
        if not (n.isascii() and n.isdigit() and len(n) <= 6):
            raise ApiError(400, "bad_attachment", f"n is an attachment's number (0, 1, ...), got {n[:60]!r}")
        data, media = await remote(self._app("regen").attachment.remote(record_id, int(n), role, actor_of(request, self.keys),
                                                                        route_of(request)))
        return Response(content=data, media_type=media)


def build_app(args: dict | None = None) -> serve.Application:
    """The gateway over the methods named in `args` (GatewayConfig keys; `{}` for a method: its defaults)."""
    cfg = GatewayConfig.model_validate(args or {})
    handles = {}
    if cfg.recognition is not None:
        handles["recognition"] = recognition.backend(cfg.recognition)
    if cfg.screening is not None:
        handles["screening"] = screening.backend(cfg.screening)
    if cfg.privacy is not None:
        handles["privacy"] = privacy.backend(cfg.privacy)
    if cfg.regen is not None:
        handles["regen"] = regen.backend(cfg.regen)
    if not handles:
        raise ValueError(f"the gateway config enables no method: give at least one of {', '.join(APPS)}")
    return Gateway.bind(cfg.model_dump(), **handles)


app = build_app
