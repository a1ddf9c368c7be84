"""Cut-out screening on Ray Serve: `POST /v1/screen`, `POST /v1/screen/targets` (admin).

    serve run serve_apps.screening:app                      # library at DOCRAY_HOME/indexes/screening
    serve run serve_apps.screening:build_app library=/path/to/library

    curl -F pictures=@a.png -F pictures=@b.jpg -F release_time=2024-05-01 localhost:8000/v1/screen
    curl -H "Authorization: Bearer $ADMIN" -F image=@poster.png -F release_time=2024-05-01 \\
         -F source_id=src-7 localhost:8000/v1/screen/targets

Two deployments: `Descriptor` (the tile descriptor, `@serve.batch` across requests, GPU when the
replica has one) and `Screening` (the FastAPI ingress: uploads, OCR regions, search, verdict). The
index reloads without downtime: every request checks (at most once per `reload_interval_s`) the
library manifest's version and, when it moved on, loads the new version beside the old one and
swaps the reference; requests in flight finish on the version they started with. Writes (new
targets, tiles learned by the second match) take the library's file lock and start from the
latest version on disk.
"""
# no `from __future__ import annotations`: FastAPI must see the route annotations as real types

import asyncio
import json
import logging
import time

import numpy as np
from fastapi import File, Form, Request, UploadFile
from PIL import Image
from pydantic import Field
from ray import serve

from docray.config import Config
from docray.screening.library import Library, cut_target, to_day, write_lock
from docray.screening.matching import Screener, ScreenConfig
from docray.screening.templates import CUT_TYPES
from serve_apps.http import ApiError, load_api_keys, make_api, read_image, require_role

log = logging.getLogger("docray.screening")
api = make_api("docray screening", "Cut-out screening: find uploads that carry tiles of sensitive pictures.")


class ScreeningAppConfig(Config):
    library: str = Field("", description="library folder ('' -> DOCRAY_HOME/indexes/screening)")
    descriptor: str = Field("", description="'' -> the descriptor the library was built with")
    screen: ScreenConfig = ScreenConfig()
    reload_interval_s: float = Field(2.0, description="how often the library manifest is checked")
    max_pictures: int = Field(16, description="pictures per request at most")
    max_batch_size: int = Field(64, description="regions per descriptor batch")
    batch_wait_timeout_s: float = Field(0.01, description="how long a descriptor batch waits to fill")


def _field(raw: str | None, name: str):
    """A form field that may be JSON (`2024`, `"3x3"`) or a plain string (`2024-05-01`)."""
    if raw is None or raw == "":
        return None
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw


def _day(raw: str | None, name: str = "release_time", required: bool = False):
    value = _field(raw, name)
    if value is None:
        if required:
            raise ApiError(400, "missing_field", f"form field {name!r} is required")
        return None
    try:
        return to_day(value)
    except ValueError as e:
        raise ApiError(400, "bad_release_time", str(e)) from None


@serve.deployment(ray_actor_options={"num_cpus": 0.25})
class Descriptor:
    def __init__(self, source: str, max_batch_size: int = 64, batch_wait_timeout_s: float = 0.01):
        from docray.screening.embed import Embedder

        self.embed = Embedder.load(source)
        self.embed_batch.set_max_batch_size(max_batch_size)
        self.embed_batch.set_batch_wait_timeout_s(batch_wait_timeout_s)

    @serve.batch(max_batch_size=64, batch_wait_timeout_s=0.01)
    async def embed_batch(self, tiles: list[np.ndarray]) -> list[np.ndarray]:
        return list(self.embed([Image.fromarray(t) for t in tiles]))


@serve.deployment(ray_actor_options={"num_cpus": 0.25})
@serve.ingress(api)
class Screening:
    def __init__(self, descriptor, cfg: dict | None = None):
        self.cfg = ScreeningAppConfig(**(cfg or {}))
        self.root = self.cfg.library or str(Library.default_root())
        self.descriptor = descriptor
        self.keys = load_api_keys()
        if not self.keys:
            log.warning("no API keys configured: auth is off, every caller is admin")
        self.screener = Screener(Library.open(self.root), None, self.cfg.screen)
        self._checked = time.monotonic()

    async def _fresh(self) -> None:
        """Swap in a newer library version if the manifest moved on (no downtime: load, then swap)."""
        now = time.monotonic()
        if now - self._checked < self.cfg.reload_interval_s:
            return
        self._checked = now
        if Library.current_version(self.root) > self.screener.library.version:
            self.screener.library = await asyncio.to_thread(Library.open, self.root)

    async def _embed(self, crops: list[Image.Image]) -> np.ndarray:
        size = self.screener.library.manifest["tile_size"]
        refs = [self.descriptor.embed_batch.remote(np.asarray(c.convert("RGB").resize((size, size)))) for c in crops]
        return np.stack(await asyncio.gather(*refs)) if refs else np.zeros((0, self.screener.library.index.dim), np.float32)

    @api.get("/healthz")
    async def healthz(self):
        return {"status": "ok", "library_version": self.screener.library.version, "tiles": len(self.screener.library)}

    @api.get("/v1/screen/library")
    async def library_info(self, request: Request):
        require_role(request, self.keys, "user")
        await self._fresh()
        lib = self.screener.library
        return {"version": lib.version, "tiles": len(lib), "index": lib.index.current_kind, "descriptor": lib.manifest["descriptor"]}

    @api.post("/v1/screen")
    async def screen(self, request: Request, pictures: list[UploadFile] = File(None),
                     release_time: str | None = Form(None), cut_type: str | None = Form(None)):
        require_role(request, self.keys, "user")
        if not pictures:
            raise ApiError(400, "missing_field", "multipart field 'pictures' is required (one or more images)")
        if len(pictures) > self.cfg.max_pictures:
            raise ApiError(413, "too_many_pictures", f"{len(pictures)} pictures; at most {self.cfg.max_pictures}")
        day = _day(release_time)
        cut = _field(cut_type, "cut_type")
        if cut is not None and cut not in CUT_TYPES:
            raise ApiError(400, "bad_cut_type", f"cut_type {cut!r} is not one of {', '.join(CUT_TYPES)}")
        images = [await read_image(p, f"pictures[{i}]") for i, p in enumerate(pictures)]
        await self._fresh()
        screener = self.screener
        regions = await asyncio.to_thread(screener.regions, images)  # OCR: off the event loop
        vectors = await self._embed([r.crop for r in regions])
        if screener.cfg.learn:  # the second match may add tiles: one writer, from the latest version
            with write_lock(self.root):
                if Library.current_version(self.root) > screener.library.version:
                    screener.library = await asyncio.to_thread(Library.open, self.root)
                verdict = screener.match(regions, vectors, len(images), day, cut)
        else:
            verdict = screener.match(regions, vectors, len(images), day, cut)
        return verdict

    @api.post("/v1/screen/targets")
    async def add_target(self, request: Request, image: UploadFile = File(None), release_time: str | None = Form(None),
                         source_id: str | None = Form(None), target_id: str | None = Form(None)):
        require_role(request, self.keys, "admin")
        day = _day(release_time, required=True)
        if not source_id:
            raise ApiError(400, "missing_field", "form field 'source_id' is required")
        img = await read_image(image, "image")
        lib = self.screener.library
        batch = cut_target(img, target_id or f"api-{int(time.time() * 1000)}", source_id, day,
                           lib.manifest["tile_size"], lib.manifest["templates"])
        if not batch.tiles:
            raise ApiError(422, "no_tiles", "the picture is flat: no tile carries enough detail to match")
        vectors = await self._embed(batch.tiles)
        with write_lock(self.root):
            if Library.current_version(self.root) > lib.version:
                lib = await asyncio.to_thread(Library.open, self.root)
            res = lib.append(batch, vectors, min_similarity=self.cfg.screen.dedup_similarity)
        self.screener.library = lib
        return {"tiles_added": res["added"], "duplicates_skipped": res["skipped"], "library_version": res["version"],
                "library_tiles": res["n_tiles"]}


def build_app(args: dict | None = None) -> serve.Application:
    """`serve run serve_apps.screening:build_app library=... descriptor=...` (args are ScreeningAppConfig keys)."""
    cfg = ScreeningAppConfig(**(args or {}))
    root = cfg.library or str(Library.default_root())
    source = cfg.descriptor
    if not source:
        try:
            source = json.load(open(f"{root}/manifest.json"))["descriptor"]
        except FileNotFoundError:
            source = "registry:descriptor"
    desc = Descriptor.bind(source, cfg.max_batch_size, cfg.batch_wait_timeout_s)
    return Screening.bind(desc, cfg.model_dump())


app = build_app
