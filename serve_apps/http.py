"""The HTTP layer every Serve app shares: one JSON error model, safe uploads, roles.

Errors are always `{"error": {"code": ..., "message": ...}}` with a 4xx/5xx status; clients never
see a stack trace. A backend that is lost or full is a 503 with `Retry-After` (`remote`): code
`unavailable` when the replica answering died (the request may have run: the client retries only
what is safe to repeat), `overloaded` when Serve refused the request before any replica ran it.
Uploaded images go through `docray.imageio.decode_image` (byte and pixel limits, format sniffing,
truncated data), so a bad upload is a 4xx and nothing is stored.

Roles: API keys map to 'user' or 'admin', from `DOCRAY_API_KEYS` ("key1=admin,key2=user") or the
YAML file named by `DOCRAY_API_KEYS_FILE` ({key: role}). With no keys configured (a laptop), auth
is off and every caller is 'admin'; the app logs that once at start-up.
"""
from __future__ import annotations

import json
import logging
import os
from typing import Any

import yaml
from fastapi import FastAPI, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from docray.imageio import MAX_BYTES, MAX_PIXELS, ImageDecodeError, decode_image

log = logging.getLogger("docray.http")
ROLES = ("user", "admin")


RETRY_AFTER_S = 1  # the Retry-After of a 503 from a lost or full backend: Serve replaces a replica in seconds


class ApiError(Exception):
    """An error a client should see: HTTP status, stable code, readable message (and extra headers)."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers

    def __reduce__(self):  # crosses process boundaries (a backend replica raises it, the gateway answers)
        return ApiError, (self.status, self.code, self.message, self.headers)


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    if len(message) > 1000:  # messages quote what was sent: bounded, whatever a client sends
        message = message[:1000] + "..."
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status, headers=headers)


def make_api(title: str, description: str = "") -> FastAPI:
    """A FastAPI app with docray's error handlers installed (use with `@serve.ingress`)."""
    api = FastAPI(title=title, description=description)

    @api.exception_handler(ApiError)
    async def _api_error(_: Request, e: ApiError):
        return error_response(e.status, e.code, e.message, e.headers)

    @api.exception_handler(ImageDecodeError)
    async def _bad_image(_: Request, e: ImageDecodeError):
        return error_response(e.status, e.code, str(e))

    @api.exception_handler(RequestValidationError)
    async def _invalid(_: Request, e: RequestValidationError):
        parts = [f"{'.'.join(str(p) for p in err['loc'] if p != 'body')}: {err['msg']}" for err in e.errors()]
        return error_response(400, "bad_request", "; ".join(parts) or "invalid request")

    @api.exception_handler(StarletteHTTPException)
    async def _http(_: Request, e: StarletteHTTPException):
        return error_response(e.status_code, {404: "not_found", 405: "method_not_allowed"}.get(e.status_code, "http_error"),
                              str(e.detail))

    @api.exception_handler(Exception)
    async def _internal(_: Request, e: Exception):
        log.exception("unhandled error")
        return error_response(500, "internal", "internal error; see the server log")

    return api


async def read_upload(upload: UploadFile | None, name: str = "image", *, max_bytes: int = MAX_BYTES) -> bytes:
    """The bytes of an uploaded file, read safely (never more than max_bytes + 1 bytes)."""
    if upload is None:
        raise ApiError(400, "missing_field", f"multipart field {name!r} is required")
    if not hasattr(upload, "read"):  # a plain form field where a file belongs (FastAPI passes the string on)
        raise ApiError(400, "missing_field", f"multipart field {name!r} must be a file upload, not a text field")
    data = await upload.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise ApiError(413, "too_many_bytes", f"{name}: over the limit of {max_bytes:,} bytes")
    return data


async def read_image(upload: UploadFile | None, name: str = "image", *, max_bytes: int = MAX_BYTES,
                     max_pixels: int = MAX_PIXELS, min_side: int = 1, mode: str | None = "RGB"):
    """Read an uploaded file safely and decode it as a viewer shows it (EXIF orientation, transparency
    over white); a picture with a side below `min_side` is a 422 `too_small`."""
    data = await read_upload(upload, name, max_bytes=max_bytes)
    return decode_image(data, mode=mode, max_bytes=max_bytes, max_pixels=max_pixels, min_side=min_side,
                        as_displayed=True, name=name)


def parse_json_field(raw: str | None, name: str, default: Any = None) -> Any:
    """A JSON value sent as a multipart form field; a clear 400 when it is not JSON."""
    if raw is None or raw == "":
        return default
    try:
        return json.loads(raw)
    except json.JSONDecodeError as e:
        raise ApiError(400, "bad_json", f"field {name!r} is not valid JSON: {e.msg} at position {e.pos}") from None


def _lost_types() -> tuple[type, ...]:
    """Ray's errors for a process that died under a call: the replica's actor, its worker, its node,
    or an object it awaited (a replica of a deployment it calls)."""
    from ray.exceptions import NodeDiedError, ObjectLostError, RayActorError, WorkerCrashedError

    return RayActorError, WorkerCrashedError, NodeDiedError, ObjectLostError


def unavailable(e: BaseException) -> ApiError:
    """A 503 the client may retry: the replica answering was lost (`Retry-After` seconds)."""
    return ApiError(503, "unavailable", f"a backend replica was lost while answering ({type(e).__name__}); "
                    f"Serve replaces it: retry", headers={"Retry-After": str(RETRY_AFTER_S)})


async def remote(response):
    """Await a deployment call; the backend's ApiError / ImageDecodeError reaches the client as itself.

    Serve wraps a replica's exception in a RayTaskError (`.cause` is the original). A replica that
    dies with the request in flight (or a replica of a deployment it awaited) is a 503 `unavailable`,
    an overloaded or missing backend a 503 `overloaded`, both with `Retry-After`; never a 500.
    """
    from ray.exceptions import RayTaskError
    from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError, RayServeException

    lost = _lost_types()
    try:
        return await response
    except RayTaskError as e:
        if isinstance(e.cause, (ApiError, ImageDecodeError)):
            raise e.cause from None
        if isinstance(e.cause, lost):  # the backend awaited a replica of its own that died
            raise unavailable(e.cause) from None
        raise
    except lost as e:
        raise unavailable(e) from None
    except (BackPressureError, DeploymentUnavailableError) as e:
        raise ApiError(503, "overloaded", f"the backend cannot take the request now ({type(e).__name__}); retry",
                       headers={"Retry-After": str(RETRY_AFTER_S)}) from None
    except RayServeException as e:  # Serve's "an upstream actor died" wraps the Ray error
        if isinstance(e.__cause__, lost):
            raise unavailable(e.__cause__) from None
        raise


def load_api_keys() -> dict[str, str]:
    """{api key: role} from DOCRAY_API_KEYS or DOCRAY_API_KEYS_FILE; empty means auth is off."""
    keys: dict[str, str] = {}
    if os.environ.get("DOCRAY_API_KEYS_FILE"):
        with open(os.environ["DOCRAY_API_KEYS_FILE"]) as f:
            keys.update({str(k): str(v) for k, v in (yaml.safe_load(f) or {}).items()})
    for item in filter(None, (os.environ.get("DOCRAY_API_KEYS") or "").split(",")):
        key, _, role = item.partition("=")
        keys[key.strip()] = role.strip()
    bad = {k: r for k, r in keys.items() if r not in ROLES}
    if bad:
        raise ValueError(f"unknown role(s) {sorted(set(bad.values()))} in API keys; roles are {ROLES}")
    return keys


def role_of(request: Request, keys: dict[str, str]) -> str:
    """The caller's role from `Authorization: Bearer <key>`; 401 when keys are set and it is missing/wrong."""
    if not keys:
        return "admin"
    auth = request.headers.get("authorization", "")
    scheme, _, token = auth.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise ApiError(401, "unauthorized", "missing 'Authorization: Bearer <api key>' header")
    if token.strip() not in keys:
        raise ApiError(401, "unauthorized", "unknown API key")
    return keys[token.strip()]


def require_role(request: Request, keys: dict[str, str], role: str) -> str:
    """Raise 403 unless the caller has `role` (admin includes user)."""
    have = role_of(request, keys)
    if role == "admin" and have != "admin":
        raise ApiError(403, "forbidden", "this route needs the admin role")
    return have
