"""Regen compression on Ray Serve: `POST /v1/compress`, `GET|PUT /v1/file-types`, `/v1/repository/...`, `/v1/audit`.

    serve run configs/serve/gateway.yaml                               # every method behind one gateway
    serve run configs/serve/regen.yaml                           # the gateway with this method only

    curl -F image=@capture.png "localhost:8000/v1/compress?mode=server"    # compressed image (base64)
    curl -F image=@capture.png "localhost:8000/v1/compress?mode=split"     # processed image + type
    curl localhost:8000/v1/file-types                                       # for terminal compression
    curl -H "Authorization: Bearer $ADMIN" localhost:8000/v1/repository/<id>/original -o o.png
    curl -X PUT -F image=@terminal.jpg localhost:8000/v1/repository/<id>/compressed   # split mode's file
    curl localhost:8000/v1/repository/<id>/attachments/2 -o seal.jpg             # n: the answer's attachments
    curl -X DELETE -H "Authorization: Bearer $ADMIN" localhost:8000/v1/repository/<id>   # the record, every blob and row
    curl -H "Authorization: Bearer $ADMIN" "localhost:8000/v1/audit?record_id=<id>"      # who read, deleted, purged

Composed deployments (the gateway calls `Regen`, which holds handles to the three others):
`TypeModel` is the document gate on the whole capture (not a known document, an unsure type or an
uncalibrated model: the codec path, `method: "codec"` and its `reason`); `Regen` finds the
document's corners (the content model's corner head, its own copy) and the portrait through them;
`ContentModel` reads the document without its portrait through those corners as the gate's type,
each field with a confidence; `Generator` renders the processed image from the confident fields;
`Regen` pastes the portrait and seals back through the corners, re-reads the result (the round
trip, with its own copy of the reader and, where that reads a field otherwise, the second reader),
keeps the original's pixels for every untrusted field, stamps the provenance, compresses per type
(server mode) and stores the record (`RegenCompressor.run` is the same flow in one process).
Model calls are `@serve.batch`ed across requests. Split mode returns the processed image and its
type; the terminal compresses it with `docray.client.compress_on_terminal` and the library from
`GET /v1/file-types`, and uploads the file (`PUT /v1/repository/{id}/compressed`,
`RegenCompressor.accept_compressed`: format and second threshold checked, stored once). Attachments
are served by number (`GET /v1/repository/{id}/attachments/{n}`): seals to users, the portrait and
the document without it (the original's pixels) to admins. The library is one file (`file_types`, default DOCRAY_HOME/regen/
file_types.yaml; `FileTypesFile`): the gateway serves and edits it (`GET`/`PUT /v1/file-types`, the edit
validated: second < first for every type, the first threshold fixed) and `Regen` reads it again
when it changes. `version` pins the registry's regen model (`latest` is pinned to the newest when the
app is built, so the four deployments load the same one); every `/v1/compress` answer names it (`models`).

Data protection (`docray.storage.repository`): `DELETE /v1/repository/{id}` (admin) removes a record
with every image and attachment, blobs and rows (`ImageRepository.delete`); with `retention_days` set,
each `Regen` replica runs `ImageRepository.purge` every `purge_interval_s` on a daemon thread of its
own (`Retention`; never on the replica's event loop), so originals older than the period go and
reading one answers 410 `purged`; every admin read of an original, every delete and every purge is
written to the repository's audit table, read back by `GET /v1/audit` (admin).
"""

import asyncio
import logging
import os
import threading
from datetime import timedelta
from pathlib import Path
from typing import Literal

import yaml
from pydantic import Field, ValidationError
from ray import serve

from docray import paths
from docray.regen.file_types import FileTypeLibrary, ThresholdError, load_file_types
from docray.config import Config
from docray.imageio import decode_image, sniff_format
from serve_apps.http import ApiError
from serve_apps.observe import record_batch, set_batching

log = logging.getLogger("ray.serve")


class RegenAppConfig(Config):
    model_dir: str = Field("", description="regen model folder (train_regen's <out>/model); '' -> registry 'regen'")
    version: str = Field("latest", description="registry version of 'regen': vNNNN, or latest (the newest when the "
                                               "app is built)")
    untrained: str = Field("", description="build this factory with random weights instead (tests, demos)")
    file_types: str = Field("", description="file-type library YAML ('' -> DOCRAY_HOME/regen/file_types.yaml "
                                            "when an admin has edited it, else the packaged one)")
    fill: Literal["background", "blank"] = Field("background", description="how the portrait's hole is filled")
    steps: int | None = Field(None, description="DDIM steps (None: the model's sample_steps)")
    composite_seals: bool = True
    repository_url: str = Field("", description="image repository DB URL ('' -> DOCRAY_DB_URL or SQLite)")
    blob_root: str = Field("", description="blob root ('' -> DOCRAY_BLOB_ROOT or DOCRAY_HOME/repository/blobs)")
    retention_days: float | None = Field(None, gt=0, description="purge the originals of records older than this many "
                                         "days (and the attachments holding their pixels; processed, compressed and "
                                         "seals stay), every purge_interval_s; null: keep them")
    purge_interval_s: float = Field(3600.0, gt=0, description="how often each Regen replica runs the retention purge")
    seed: int = 0
    ungated: bool = Field(False, description="regenerate even with an uncalibrated model (tests, demos); "
                          "false: an uncalibrated model answers every upload by the codec path")


def file_types_path(cfg: RegenAppConfig) -> Path:
    """Where the served file-type library lives (and where admin edits go)."""
    return Path(cfg.file_types) if cfg.file_types else Path(paths.sub("regen")) / "file_types.yaml"


class FileTypesFile:
    """The served file-type library: one YAML file every replica reads (read again when its mtime
    moves; the packaged library while none was written). Edits are validated and renamed into place."""

    def __init__(self, path: Path):
        self.path, self._stamp, self._lib = Path(path), None, None

    def get(self) -> FileTypeLibrary:
        stamp = self.path.stat().st_mtime_ns if self.path.exists() else 0
        if stamp != self._stamp:
            self._lib, self._stamp = load_file_types(self.path if stamp else None), stamp
        return self._lib

    def set(self, data: dict) -> FileTypeLibrary:
        """Validate (second < first for every type; the first threshold is the generator's output and
        cannot change here) and store atomically; every replica picks it up on its next read."""
        try:
            lib = load_file_types(data)
        except (ThresholdError, ValidationError) as e:
            raise ApiError(400, "bad_file_types", str(e).splitlines()[0] if isinstance(e, ValidationError) else str(e)) from None
        from docray.doctypes import registry

        uncovered = [t for t in registry().names if t not in lib.types] if lib.default is None else []
        if uncovered:  # compress would have no entry for these types
            raise ApiError(400, "bad_file_types", f"no entry for document type(s) {uncovered} and no default: "
                           "add them under types, or a default entry")
        if lib.first != self.get().first:
            raise ApiError(400, "bad_file_types", f"the first threshold ({self.get().first}) is the generator's "
                           "output size and cannot change through the API")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(yaml.safe_dump(lib.to_json(), sort_keys=False))
        os.replace(tmp, self.path)  # atomic: readers see the old or the new file, never half of one
        return self.get()


def load_compressor(cfg: RegenAppConfig):
    """The library pipeline object every deployment wraps (one model load per replica)."""
    from docray.regen.pipeline import RegenCompressor

    lib = file_types_path(cfg)
    return RegenCompressor.from_source(cfg.model_dir, cfg.untrained, str(lib) if lib.exists() else "", cfg.seed,
                                       version=cfg.version, fill=cfg.fill,
                                       steps=cfg.steps, composite_seals=cfg.composite_seals, ungated=cfg.ungated)


class Retention:
    """`ImageRepository.purge(retention)` now and then every `interval_s`, on a daemon thread of its own (the
    repository's database and blob calls block: never on a replica's event loop). Two replicas purging at
    once is safe: each record is marked by one conditional update, blob removal is idempotent."""

    def __init__(self, repo, days: float, interval_s: float):
        self.repo, self.days, self.interval_s = repo, days, interval_s
        self.last: dict | None = None  # a summary of the latest run, for /healthz
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def run_once(self) -> dict:
        out = self.repo.purge(timedelta(days=self.days), actor="retention")
        self.last = {"cutoff": out["cutoff"], "purged": len(out["purged"]), "deleted": len(out["deleted"]),
                     "pending": len(out["pending"])}
        if out["purged"] or out["deleted"] or out["pending"]:
            log.info("retention purge (older than %s days): %s", self.days, self.last)
        return out

    def _loop(self) -> None:
        while True:
            try:
                self.run_once()
            except Exception:  # noqa: BLE001 -- a failed run is logged; the next one retries
                log.exception("retention purge failed; retrying in %.0f s", self.interval_s)
            if self._stop.wait(self.interval_s):
                return

    def start(self) -> "Retention":
        self._thread = threading.Thread(target=self._loop, name="docray-retention", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def info(self) -> dict:
        return {"days": self.days, "interval_s": self.interval_s, "last": self.last}


class _ModelStage:
    """One model of the pipeline on its own replicas: loads it, takes its batch settings from user_config."""
    batched = ""  # the name of the subclass's @serve.batch method

    def __init__(self, config: dict):
        self.rc = load_compressor(RegenAppConfig(**config))

    def reconfigure(self, user_config: dict) -> None:  # batch settings from the Serve config
        set_batching(getattr(self, self.batched), user_config)


@serve.deployment(ray_actor_options={"num_cpus": 0.25})
class TypeModel(_ModelStage):
    batched = "classify"

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.02)
    async def classify(self, images: list) -> list[dict]:
        """The document gate per image (`RegenCompressor.gate`)."""
        record_batch("TypeModel", len(images))
        return self.rc.gate(images)


@serve.deployment(ray_actor_options={"num_cpus": 0.25})
class ContentModel(_ModelStage):
    batched = "read"

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.02)
    async def read(self, requests: list[tuple]) -> list[dict]:
        """(image, document type, its corners) -> its fields with their confidences (`RegenCompressor.read_fields`)."""
        record_batch("ContentModel", len(requests))
        return self.rc.read_fields([r[0] for r in requests], [r[1] for r in requests], [r[2] for r in requests])


@serve.deployment(ray_actor_options={"num_cpus": 0.25})
class Generator(_ModelStage):
    batched = "generate"

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.02)
    async def generate(self, requests: list[tuple[str, str]]) -> list:
        record_batch("Generator", len(requests))
        return self.rc.generate([t for t, _ in requests], [c for _, c in requests])


@serve.deployment(ray_actor_options={"num_cpus": 0.25})
class Regen:
    def __init__(self, type_model, content_model, generator, config: dict):
        from docray.storage.repository import ImageRepository

        self.cfg = pinned(RegenAppConfig(**config))
        self.models = models_of(self.cfg)  # in every answer
        self.type_model, self.content_model, self.generator = type_model, content_model, generator
        self.rc = load_compressor(self.cfg)  # geometry, seals, compression; its models stay idle here
        self.repo = ImageRepository(self.cfg.repository_url or None, self.cfg.blob_root or None)
        self.file_types = FileTypesFile(file_types_path(self.cfg))
        self.retention = Retention(self.repo, self.cfg.retention_days, self.cfg.purge_interval_s).start() \
            if self.cfg.retention_days else None

    def __del__(self):
        if getattr(self, "retention", None) is not None:
            self.retention.stop()

    async def compress(self, data: bytes, mode: str) -> dict:
        """The composed flow; mirrors `RegenCompressor.run` with the model calls on other replicas."""
        from docray.regen.pipeline import regen_content

        rc = self.rc
        rc.lib = lib = self.file_types.get()  # an admin may have edited it
        img = decode_image(data, name="image", as_displayed=True)  # as the gateway checked it: upright, over white
        try:
            lib.check_original(img.width, img.height, len(data))
        except ThresholdError as e:
            raise ApiError(422, "below_first_threshold", str(e)) from None
        gate, quad = await self.type_model.classify.remote(img), None
        if gate["passed"]:
            quad = (await asyncio.to_thread(rc.locate, [img]))[0]  # the corner head: one small forward pass
            [gate], [quad] = await asyncio.to_thread(rc.check_layout, [img], [gate], [quad])
        if not gate["passed"]:
            out = rc.codec(data, img, gate)
        else:
            doc_type = gate["type"]
            rest, face, split = await asyncio.to_thread(rc.split, img, doc_type, quad)
            seals = await asyncio.to_thread(rc.find_seals, img, split)
            reading = await self.content_model.read.remote((rest, doc_type, quad))
            fs = rc.plan_fields(reading, gate)
            processed = await self.generator.generate.remote((doc_type, regen_content(fs)))
            processed, split = await asyncio.to_thread(rc.finish, processed, split, seals, img, quad, doc_type)
            processed, fs = await asyncio.to_thread(rc.hybrid, processed, img, reading["quad"], doc_type, fs)
            out = rc.assemble(data, img, gate, fs, processed, face, split, seals, rest)
        try:
            out = await asyncio.to_thread(rc.deliver, out, data, mode, self.repo)
        except ThresholdError as e:  # the processed image cannot fit the first threshold: nothing stored
            raise ApiError(422, "over_first_threshold", str(e)) from None
        return {**rc.response(out, mode), "models": self.models}  # the gateway base64-encodes the image bytes

    async def store_compressed(self, record_id: str, data: bytes) -> dict:
        """Split mode's terminal file into its record (`RegenCompressor.accept_compressed`), once."""
        from docray.regen.pipeline import UploadRefused
        from docray.storage.blobs import NotFound

        self.rc.lib = self.file_types.get()
        try:
            return await asyncio.to_thread(self.rc.accept_compressed, self.repo, record_id, data)
        except UploadRefused as e:
            raise ApiError(e.status, e.code, str(e)) from None
        except NotFound as e:
            raise ApiError(404, "not_found", str(e)) from None

    async def attachment(self, record_id: str, n: int, role: str, actor: str | None = None,
                         route: str | None = None) -> tuple[bytes, str]:
        """(bytes, media type) of attachment `n`; the repository decides by its kind whether `role` reads it
        (and audits a read of one holding the original's pixels, naming `actor` and `route`)."""
        from docray.storage.repository import AccessDenied

        try:
            a = await asyncio.to_thread(self.repo.attachment, record_id, n, role, actor=actor, route=route)
        except AccessDenied as e:
            raise ApiError(403, "forbidden", str(e)) from None
        except Exception as e:  # noqa: BLE001 -- repository_error re-raises what is not the client's
            raise repository_error(e) from None
        return a["data"], media_type(a["data"])

    async def repository(self, record_id: str, which: str, role: str, actor: str | None = None,
                         route: str | None = None) -> tuple[bytes, str]:
        """(image bytes, media type); `role` was checked by the gateway, the repository checks it again
        and audits a read of the original (`actor`: the API key's id, `route`)."""
        from docray.storage.repository import IMAGES

        if which not in IMAGES:
            raise ApiError(400, "bad_image_kind", f"which must be one of {list(IMAGES)}, got {which!r}")
        try:
            data = await asyncio.to_thread(self.repo.get, record_id, which, role, actor=actor, route=route)
        except Exception as e:  # noqa: BLE001
            raise repository_error(e) from None
        return data, media_type(data)

    async def delete_record(self, record_id: str, actor: str | None = None, route: str | None = None) -> dict:
        """`ImageRepository.delete`: the record with its images and attachments, blobs and rows; audited."""
        try:
            return await asyncio.to_thread(self.repo.delete, record_id, actor=actor, role="admin", route=route)
        except Exception as e:  # noqa: BLE001
            raise repository_error(e) from None

    async def audit(self, record_id: str | None = None, action: str | None = None, limit: int = 100) -> dict:
        """The repository's audit entries, newest first."""
        entries = await asyncio.to_thread(self.repo.audit_log, record_id, action, limit)
        return {"entries": entries}

    def info(self) -> dict:
        out = {"types": len(self.rc.lib.types), "models": self.models}
        if self.retention is not None:
            out["retention"] = self.retention.info()
        return out


def repository_error(e: Exception) -> Exception:
    """The client's view of a repository error: 410 purged, 404 not_found, 503 delete_incomplete (the
    record is already unreadable; a retry finishes it); anything else as it is (a 500)."""
    from docray.storage.blobs import NotFound
    from docray.storage.repository import DeletionIncomplete, Purged

    if isinstance(e, Purged):
        return ApiError(410, "purged", str(e))
    if isinstance(e, NotFound):
        return ApiError(404, "not_found", str(e))
    if isinstance(e, DeletionIncomplete):
        return ApiError(503, "delete_incomplete", str(e))
    return e


def media_type(data: bytes) -> str:
    return {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp"}.get(sniff_format(data), "application/octet-stream")


def pinned(cfg: RegenAppConfig) -> RegenAppConfig:
    """`cfg` with `latest` turned into the registry's newest 'regen' (`ModelRegistry.pin`; a folder or an
    untrained factory: as is)."""
    if cfg.model_dir or cfg.untrained:
        return cfg
    from docray.storage.registry import ModelRegistry

    return cfg.model_copy(update={"version": ModelRegistry().pin("regen", cfg.version)})


def models_of(cfg: RegenAppConfig) -> dict:
    """{"regen": version}; a folder is named by its path, random weights by `untrained:<factory>`."""
    return {"regen": f"untrained:{cfg.untrained}" if cfg.untrained else cfg.model_dir or cfg.version}


def backend(cfg: RegenAppConfig) -> serve.Application:
    """The bound composed deployments for the gateway, the registry version pinned now: all four load the same one."""
    args = pinned(cfg).model_dump()
    return Regen.bind(TypeModel.bind(args), ContentModel.bind(args), Generator.bind(args), args)
