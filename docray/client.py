"""The docray client library: one method per gateway route, sync and async.

    from docray.client import DocrayClient, AsyncDocrayClient, DocrayError

    with DocrayClient("http://127.0.0.1:8000", api_key="...") as dc:
        dc.healthz()                                        # {"status": "ok", "apps": {...}}
        dc.recognize("id.png", frames=["flash.png"], tasks=["doc_type"])
        dc.screen(["a.jpg", "b.jpg"], release_time="2024-05-01")
        dc.enrol("alice", face)                             # admin; masked HERE: the raw face never leaves
        dc.verify(face2, "alice")                           # {"match", "score", "threshold", ...}
        dc.identify(face2, top_k=3)                         # {"candidates": [{"identity_id", "score", "match"}]}
        data, answer = dc.compress_split("scan.png")        # server regenerates, terminal compresses + uploads
        dc.attachment(answer["record_id"], 2)               # a seal crop (the answer lists the attachments)
        dc.delete_record(answer["record_id"])               # admin: the record, every image and attachment
        dc.audit(record_id=answer["record_id"])             # admin: who read, deleted or purged it

    async with AsyncDocrayClient(url, api_key="...") as dc:  # same methods, awaited
        await dc.library()

Images may be a path, bytes, a PIL image or a uint8 numpy array (PIL/numpy are sent as PNG).
Every server error is a `DocrayError(status, code, message)` from the gateway's JSON error model;
no gateway at the URL is `DocrayError(0, "unreachable", ...)`.

Retries (`RetryPolicy`, default 4 retries, exponential backoff with jitter from 0.25 s to 4 s, at
least the answer's `Retry-After`): a request is sent again only when repeating it is safe.
- Any request, when the server did not run it: a 503 `overloaded` (Serve refused it before a
  replica took it) or a 503 from Serve's proxy itself (not the JSON error model: the gateway never saw it).
- Idempotent requests, also when it may have run: a 503 `unavailable` (the replica answering died
  with the request in flight), a 502 or 504 from a proxy in front, a connection dropped before the
  answer, a read timeout. Idempotent: every GET; the POSTs that only compute (`/v1/recognize`,
  `/v1/screen`, `/v1/privacy/verify`, `/v1/privacy/identify`: nothing is stored); `PUT /v1/file-types`
  (a replacement).
- Never repeated after it may have run: the requests that store something once (`POST /v1/compress`
  writes a repository record, `POST /v1/screen/targets` adds a target, `POST /v1/privacy/enrol` an
  embedding, `PUT .../compressed`, `DELETE /v1/repository/{id}`, `DELETE /v1/privacy/identities/{id}`):
  a repeat could store twice or answer 409/404 for the first
  attempt's success. Their 503 `unavailable` reaches the caller, who checks before repeating.
A refused connection (no gateway at the URL) is not retried. `RetryPolicy(retries=0)`: no retries.

How it is built: each route is an *operation*, a generator that yields `Call`s (method, path,
httpx arguments, response parser) and receives the parsed answers. Requests and parsing are
written once here; `DocrayClient` and `AsyncDocrayClient` only differ in how they send a `Call`.
Operations with two requests (private recognition fetches the target masks once; split
compression fetches the file-type library) are ordinary generator code.

Kept for existing callers: `fetch_file_types(url)` and `compress_on_terminal(png, type, lib)`.
"""
from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Generator, Iterable
from urllib.parse import quote

import httpx
import numpy as np
from PIL import Image

from docray.regen.file_types import FileTypeLibrary, load_file_types
from docray.regen.quality import compress_for_type
from docray.imageio import decode_image, encode_png, sniff_format

DEFAULT_URL = "http://127.0.0.1:8000"
START_HINT = "start one with `serve deploy configs/serve/gateway.yaml` (or `serve run` it) and check DOCRAY_URL"
MEDIA = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp"}


class DocrayError(RuntimeError):
    """A refused or failed request: HTTP `status` (0: no answer), stable `code`, readable `message`;
    `retry_after`: the answer's Retry-After in seconds, when it gave one."""

    def __init__(self, status: int, code: str, message: str, retry_after: float | None = None):
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message, self.retry_after = status, code, message, retry_after


# -- requests: image uploads and form fields ----------------------------------------------------
def image_bytes(image) -> tuple[str, bytes]:
    """(file name, bytes) of an image given as a path, bytes, a PIL image or a uint8 array."""
    if isinstance(image, (str, Path)):
        path = Path(image)
        if not path.is_file():
            raise FileNotFoundError(f"no image file at {path}")
        return path.name, path.read_bytes()
    if isinstance(image, (bytes, bytearray, memoryview)):
        return "image", bytes(image)
    if isinstance(image, (Image.Image, np.ndarray)):
        return "image.png", encode_png(image)
    raise TypeError(f"an image is a path, bytes, a PIL image or a numpy array, not {type(image).__name__}")


def upload(field_name: str, image) -> tuple[str, tuple[str, bytes, str]]:
    """One multipart file part; the content type follows the bytes' magic, not the name."""
    name, data = image_bytes(image)
    return field_name, (name, data, MEDIA.get(sniff_format(data) or "", "application/octet-stream"))


def json_fields(**values) -> dict[str, str]:
    """Multipart form fields, JSON-encoded; None values are left out."""
    return {k: json.dumps(v) for k, v in values.items() if v is not None}


def as_pil(image) -> Image.Image:
    if isinstance(image, Image.Image):
        return image
    if isinstance(image, np.ndarray):
        return Image.fromarray(image)
    return decode_image(image_bytes(image)[1])


def mask_locally(image, mask: np.ndarray) -> bytes:
    """Resize to the mask's size, overlay (hidden pixels exactly 0), PNG bytes (lossless, so the hidden
    pixels stay exactly black for the server's check). The one implementation of the client's overlay."""
    s = mask.shape[0]
    arr = np.asarray(as_pil(image).convert("RGB").resize((s, s), Image.Resampling.BILINEAR)).astype(np.float32)
    return encode_png((arr * mask[..., None]).round().astype(np.uint8))


# -- responses ----------------------------------------------------------------------------------
def raise_for_error(r: httpx.Response) -> httpx.Response:
    """`DocrayError` from the gateway's `{"error": {"code", "message"}}`; a fallback for other bodies."""
    if r.status_code < 400:
        return r
    try:
        err = r.json()["error"]
        code, message = str(err["code"]), str(err["message"])
    except (ValueError, KeyError, TypeError):
        code, message = f"http_{r.status_code}", (r.text.strip()[:200] or r.reason_phrase)
    raise DocrayError(r.status_code, code, message, _seconds(r.headers.get("retry-after")))


def _seconds(value: str | None) -> float | None:
    """A Retry-After given in seconds (the HTTP-date form is not used by docray or Serve)."""
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


def parse_json(r: httpx.Response) -> Any:
    return raise_for_error(r).json()


def parse_bytes(r: httpx.Response) -> bytes:
    return raise_for_error(r).content


def parse_text(r: httpx.Response) -> str:
    return raise_for_error(r).text


def parse_health(r: httpx.Response) -> dict:
    """A degraded gateway may answer 503 with its status body: that is an answer, not an error."""
    if r.status_code == 503:
        with contextlib.suppress(ValueError):
            body = r.json()
            if isinstance(body, dict) and "status" in body:
                return body
    return parse_json(r)


def parse_compress(r: httpx.Response) -> dict:
    """The compress answer with its image (`compressed` in server mode, `processed` in split) as bytes."""
    body = parse_json(r)
    for key in ("compressed", "processed"):
        if isinstance(body.get(key), str):
            body[key] = base64.b64decode(body[key])
    return body


def parse_masks(r: httpx.Response) -> dict:
    """The target masks with each `png` decoded to bytes (255 kept, 0 hidden), best first."""
    body = parse_json(r)
    for m in body.get("masks", []):
        m["png"] = base64.b64decode(m["png"])
    return body


# -- operations: generators of Calls ------------------------------------------------------------
SAFE_POSTS = frozenset({"/v1/recognize", "/v1/screen", "/v1/privacy/verify", "/v1/privacy/identify"})  # compute only


def idempotent(method: str, path: str) -> bool:
    """Whether sending the request twice does what sending it once does (the module docstring lists them)."""
    return method in ("GET", "HEAD", "OPTIONS") or (method == "POST" and path in SAFE_POSTS) or \
        (method == "PUT" and path == "/v1/file-types")


@dataclass
class Call:
    """One HTTP request of an operation and how to read its answer."""
    method: str
    path: str
    parse: Callable[[httpx.Response], Any] = parse_json
    kwargs: dict = field(default_factory=dict)  # httpx request arguments: files, data, params, json

    @property
    def idempotent(self) -> bool:
        return idempotent(self.method, self.path)


NOT_RUN = frozenset({(503, "overloaded"), (503, "http_503")})  # refused before a replica ran it (http_503: Serve's proxy)
MAYBE_RUN = frozenset({(503, "unavailable"), (502, "http_502"), (504, "http_504"), (0, "timeout"), (0, "transport")})


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long to wait before sending a failed request again (module docstring: which)."""
    retries: int = 4  # sends after the first; 0: none
    backoff_s: float = 0.25  # the first wait; doubled after each retry, with full jitter down to half
    max_backoff_s: float = 4.0  # no wait longer than this, a Retry-After included

    def delay(self, call: Call, error: DocrayError, attempt: int) -> float | None:
        """Seconds to wait before retry number `attempt` (0-based) of `call`, or None: do not retry."""
        key = (error.status, error.code)
        if attempt >= self.retries or not (key in NOT_RUN or (call.idempotent and key in MAYBE_RUN)):
            return None
        wait = self.backoff_s * 2 ** attempt * random.uniform(0.5, 1.0)
        return min(self.max_backoff_s, max(wait, error.retry_after or 0.0))


Operation = Generator[Call, Any, Any]


def one(method: str, path: str, parse=parse_json, **kwargs) -> Operation:
    """An operation of a single request."""
    return (yield Call(method, path, parse, kwargs))


def advance(op: Operation, answer: Any) -> tuple[Call | None, Any]:
    """Send the previous answer in: (the next Call, None) or (None, the operation's result)."""
    try:
        return op.send(answer), None
    except StopIteration as stop:
        return None, stop.value


@contextlib.contextmanager
def transport_errors(url: str):
    """httpx's connection failures as `DocrayError` with status 0."""
    try:
        yield
    except (httpx.ConnectError, httpx.ConnectTimeout) as e:
        raise DocrayError(0, "unreachable", f"no docray gateway at {url} ({e}): {START_HINT}") from None
    except httpx.TimeoutException as e:
        raise DocrayError(0, "timeout", f"{url} did not answer in time ({type(e).__name__})") from None
    except httpx.TransportError as e:
        raise DocrayError(0, "transport", f"{url}: {type(e).__name__}: {e}") from None


class Endpoints:
    """One method per route. On `AsyncDocrayClient` every method returns an awaitable."""

    def __init__(self, base_url: str, api_key: str | None, http, own: bool, retry: RetryPolicy | None = None):
        self.base_url, self.api_key, self.http, self._own = base_url.rstrip("/"), api_key, http, own
        self.retry = retry if retry is not None else RetryPolicy()
        self._masks: dict[str, np.ndarray] | None = None  # the private targets, fetched once

    def _run(self, op: Operation):  # DocrayClient: the result; AsyncDocrayClient: a coroutine
        raise NotImplementedError

    def _headers(self) -> dict:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    # recognition ------------------------------------------------------------------------------
    def recognize(self, image, frames: Iterable | None = None, frame_kinds: list[str] | None = None,
                  tasks: list[str] | None = None, user_attrs: dict | None = None):
        """`POST /v1/recognize`: the capture plus optional frames (flash, angles) -> {"results", "skipped", "model"}."""
        files = [upload("image", image)] + [upload("frames[]", f) for f in (frames or [])]
        data = json_fields(frame_kinds=frame_kinds, tasks=tasks, user_attrs=user_attrs)
        return self._run(one("POST", "/v1/recognize", files=files, data=data))

    # screening --------------------------------------------------------------------------------
    def screen(self, pictures, release_time: str | None = None, cut_type: str | None = None):
        """`POST /v1/screen`: one upload's pictures -> {"abnormal", "matches", ...}."""
        pictures = pictures if isinstance(pictures, (list, tuple)) else [pictures]
        data = {k: v for k, v in {"release_time": release_time, "cut_type": cut_type}.items() if v is not None}
        return self._run(one("POST", "/v1/screen", files=[upload("pictures", p) for p in pictures], data=data))

    def add_target(self, image, release_time: str, source_id: str, target_id: str | None = None):
        """`POST /v1/screen/targets` (admin): cut a sensitive target into the library."""
        data = {"release_time": release_time, "source_id": source_id}
        if target_id is not None:
            data["target_id"] = target_id
        return self._run(one("POST", "/v1/screen/targets", files=[upload("image", image)], data=data))

    def library(self):
        """`GET /v1/screen/library` -> {"version", "tiles", "index", "descriptor"}."""
        return self._run(one("GET", "/v1/screen/library"))

    # private recognition ----------------------------------------------------------------------
    def private_masks(self):
        """`GET /v1/privacy/masks` -> {"image_size", "masks": [{"mask_id", "png": bytes}], "models"}: the served
        target masks (a secret of the service: authenticated callers only)."""
        return self._run(one("GET", "/v1/privacy/masks", parse_masks))

    def enrol(self, identity_id: str, image, mask_id: str | None = None):
        """`POST /v1/privacy/enrol` (admin): the face, masked HERE, joins `identity_id`'s gallery entries
        -> {"identity_id", "enrolment_id", "enrolments", "mask_id"}; the same image twice: 409 already_enrolled."""
        return self._run(self._masked_op("/v1/privacy/enrol", image, mask_id, {"identity_id": identity_id}))

    def verify(self, image, identity_id: str, mask_id: str | None = None):
        """`POST /v1/privacy/verify`: is the face (masked HERE) `identity_id`? -> {"identity_id", "match",
        "score", "threshold", "mask_id"}; 404 unknown_identity when it is not enrolled."""
        return self._run(self._masked_op("/v1/privacy/verify", image, mask_id, {"identity_id": identity_id}))

    def identify(self, image, top_k: int = 5, mask_id: str | None = None):
        """`POST /v1/privacy/identify`: the gallery's best identities for the face (masked HERE) ->
        {"candidates": [{"identity_id", "score", "match"}], "threshold", "gallery_identities", "mask_id"}."""
        return self._run(self._masked_op("/v1/privacy/identify", image, mask_id, {"top_k": str(int(top_k))}))

    def delete_identity(self, identity_id: str):
        """`DELETE /v1/privacy/identities/{identity_id}` (admin): every enrolment of the identity, audited
        -> {"identity_id", "deleted", "enrolments"}; 404 when there is none."""
        return self._run(one("DELETE", "/v1/privacy/identities/" + quote(str(identity_id), safe="")))

    def _masked_op(self, path: str, image, mask_id: str | None, data: dict) -> Operation:
        """Fetch the target masks once, mask `image` here (default: a served mask drawn at random per
        request, so the masks rotate), send only the masked PNG and its mask id."""
        if self._masks is None:
            from docray.privacy.masks import decode_mask

            body = yield Call("GET", "/v1/privacy/masks", parse_masks)
            self._masks = {m["mask_id"]: decode_mask(m["png"]) for m in body["masks"]}
        if mask_id is None and self._masks:
            mask_id = random.choice(list(self._masks))
        if mask_id not in self._masks:
            raise ValueError(f"unknown mask_id {mask_id!r}; the server's target masks: {', '.join(self._masks) or 'none'}")
        part = ("image", ("masked.png", mask_locally(image, self._masks[mask_id]), "image/png"))
        return (yield Call("POST", path, parse_json, {"files": [part], "data": {**data, "mask_id": mask_id}}))

    # compression ------------------------------------------------------------------------------
    def compress(self, image, mode: str = "server"):
        """`POST /v1/compress?mode=`: server mode -> answer with `compressed` bytes; split -> `processed` bytes."""
        return self._run(one("POST", "/v1/compress", parse_compress, params={"mode": mode}, files=[upload("image", image)]))

    def compress_split(self, image, store: bool = True):
        """Split mode end to end: the server recognises and regenerates, this side compresses with
        the server's file-type library and (`store`) uploads the file into the record
        (`PUT /v1/repository/{id}/compressed`; its answer in the returned answer's `stored`).
        Returns (compressed bytes, the server's answer)."""
        return self._run(self._split_op(image, store))

    def _split_op(self, image, store: bool) -> Operation:
        lib = yield Call("GET", "/v1/file-types")
        body = yield Call("POST", "/v1/compress", parse_compress, {"params": {"mode": "split"}, "files": [upload("image", image)]})
        data = compress_on_terminal(body["processed"], body["type"], lib)
        if store and body.get("record_id"):
            body["stored"] = yield Call("PUT", _record_path(body["record_id"], "compressed"), parse_json,
                                        {"files": [upload("image", data)]})
        return data, body

    def upload_compressed(self, record_id: str, data: bytes):
        """`PUT /v1/repository/{record_id}/compressed`: a split-mode record's compressed file (its type's
        format, within its second threshold, once) -> {"record_id", "type", "format", "sizes"}."""
        return self._run(one("PUT", _record_path(record_id, "compressed"), files=[upload("image", data)]))

    def attachment(self, record_id: str, n: int):
        """`GET /v1/repository/{record_id}/attachments/{n}` -> bytes (seals: users; portrait, document: admin)."""
        return self._run(one("GET", _record_path(record_id, "attachments", str(int(n))), parse_bytes))

    def file_types(self):
        """`GET /v1/file-types` -> the file-type library (JSON)."""
        return self._run(one("GET", "/v1/file-types"))

    def update_file_types(self, lib: dict | FileTypeLibrary):
        """`PUT /v1/file-types` (admin) -> the validated new library; 400 on invalid thresholds."""
        body = lib.to_json() if isinstance(lib, FileTypeLibrary) else lib
        return self._run(one("PUT", "/v1/file-types", json=body))

    def repository(self, record_id: str, which: str = "processed"):
        """`GET /v1/repository/{record_id}/{which}` -> image bytes (which=original: admin only)."""
        return self._run(one("GET", _record_path(record_id, which), parse_bytes))

    def delete_record(self, record_id: str):
        """`DELETE /v1/repository/{record_id}` (admin): the record with its original, processed and compressed
        images and every attachment, blobs and rows -> {"record_id", "deleted", "blobs"}; 404 when there is none."""
        return self._run(one("DELETE", _record_path(record_id)))

    def audit(self, record_id: str | None = None, action: str | None = None, limit: int | None = None):
        """`GET /v1/audit` (admin) -> {"entries": [{"at", "actor", "role", "action", "record_id", "what", "route"}]},
        newest first: reads of originals, deletes, purges."""
        params = {k: v for k, v in {"record_id": record_id, "action": action, "limit": limit}.items() if v is not None}
        return self._run(one("GET", "/v1/audit", params=params))

    # operations -------------------------------------------------------------------------------
    def healthz(self):
        """`GET /healthz` -> {"status": "ok"|"degraded", "apps": {...}}."""
        return self._run(one("GET", "/healthz", parse_health))

    def metrics(self):
        """`GET /metrics` -> Prometheus text."""
        return self._run(one("GET", "/metrics", parse_text))


def _record_path(record_id: str, *parts: str) -> str:
    return "/".join(["/v1/repository", quote(str(record_id), safe=""), *(quote(p, safe="") for p in parts)])


class DocrayClient(Endpoints):
    """Blocking client; `http` lets a caller pass its own httpx.Client (e.g. FastAPI's TestClient);
    `retry`: when to send a failed request again (`RetryPolicy`; the module docstring says which)."""

    def __init__(self, base_url: str = DEFAULT_URL, api_key: str | None = None, timeout: float = 60.0,
                 http: httpx.Client | None = None, retry: RetryPolicy | None = None):
        super().__init__(base_url, api_key, http or httpx.Client(base_url=base_url, timeout=timeout), http is None, retry)

    def _run(self, op: Operation):
        call, result = advance(op, None)
        while call is not None:
            call, result = advance(op, self._send(call))
        return result

    def _send(self, call: Call):
        attempt = 0
        while True:
            try:
                with transport_errors(self.base_url):
                    r = self.http.request(call.method, call.path, headers=self._headers(), **call.kwargs)
                return call.parse(r)
            except DocrayError as e:
                wait = self.retry.delay(call, e, attempt)
                if wait is None:
                    raise
            time.sleep(wait)
            attempt += 1

    def close(self) -> None:
        if self._own:
            self.http.close()

    def __enter__(self) -> "DocrayClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class AsyncDocrayClient(Endpoints):
    """The same methods, awaited; `http` lets a caller pass its own httpx.AsyncClient.

    The CPU work of `enrol` / `verify` / `identify` (masking) and `compress_split` (terminal compression) runs
    in the event loop; both are small (one image), but offload them in a busy loop."""

    def __init__(self, base_url: str = DEFAULT_URL, api_key: str | None = None, timeout: float = 60.0,
                 http: httpx.AsyncClient | None = None, retry: RetryPolicy | None = None):
        super().__init__(base_url, api_key, http or httpx.AsyncClient(base_url=base_url, timeout=timeout), http is None,
                         retry)

    async def _run(self, op: Operation):
        call, result = advance(op, None)
        while call is not None:
            call, result = advance(op, await self._send(call))
        return result

    async def _send(self, call: Call):
        attempt = 0
        while True:
            try:
                with transport_errors(self.base_url):
                    r = await self.http.request(call.method, call.path, headers=self._headers(), **call.kwargs)
                return call.parse(r)
            except DocrayError as e:
                wait = self.retry.delay(call, e, attempt)
                if wait is None:
                    raise
            await asyncio.sleep(wait)
            attempt += 1

    async def aclose(self) -> None:
        if self._own:
            await self.http.aclose()

    async def __aenter__(self) -> "AsyncDocrayClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()


# -- terminal side of split-mode compression (used by tests and serve_apps.regen's docs) ---
def fetch_file_types(base_url: str, api_key: str | None = None, timeout: float = 30.0) -> FileTypeLibrary:
    """The server's file-type library (`GET /v1/file-types`), validated (second < first)."""
    with DocrayClient(base_url, api_key=api_key, timeout=timeout) as dc:
        return load_file_types(dc.file_types())


def compress_on_terminal(processed_png: bytes, doc_type: str | None, file_types: FileTypeLibrary | dict) -> bytes:
    """Compress a processed image (split mode) for `doc_type` (None: the codec path's entry); the
    result meets its second threshold and keeps the processed image's provenance stamp."""
    lib = file_types if isinstance(file_types, FileTypeLibrary) else load_file_types(file_types)
    img: Image.Image = decode_image(processed_png)
    return compress_for_type(img, lib.get(doc_type) if doc_type else lib.codec_entry()).data
