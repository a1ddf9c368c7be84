"""Cut-out screening on Ray Serve: `POST /v1/screen`, `POST /v1/screen/targets` (admin) on the gateway.

    serve run configs/serve/gateway.yaml                    # every method behind one gateway
    serve run configs/serve/screening.yaml                  # the gateway with this method only
    serve run serve_apps.gateway:build_app screening='{"library": "/path/to/library"}'

    curl -F pictures=@a.png -F pictures=@b.jpg -F release_time=2024-05-01 localhost:8000/v1/screen
    curl -H "Authorization: Bearer $ADMIN" -F image=@poster.png -F release_time=2024-05-01 \\
         -F source_id=src-7 localhost:8000/v1/screen/targets

Two deployments: `Descriptor` (the tile descriptor, `@serve.batch` across requests, GPU when the
replica has one) and `Screening` (regions, OCR, search, score normalisation with the descriptor's
background bank, verdict, library writes); the gateway parses
uploads and form fields (`serve_apps/gateway.py`). The
index reloads without downtime: every request checks (at most once per `reload_interval_s`) the
library manifest's version and, when it moved on, loads the new version beside the old one and
swaps the reference; requests in flight finish on the version they started with. Writes (new
targets, tiles learned by the second match) take the library's file lock and start from the
latest version on disk. Every answer names the descriptor version it embedded with (`models`); a
`registry:descriptor` source without a version is pinned to the newest when the app is built.
"""
# no `from __future__ import annotations`: FastAPI must see the route annotations as real types

import asyncio
import json
import logging
import time

import numpy as np
from PIL import Image
from pydantic import Field
from ray import serve

from docray.config import Config
from docray.screening.library import Library, cut_target, write_lock
from docray.screening.matching import Screener, ScreenConfig
from docray.storage.registry import ModelRegistry, parse_ref, ref
from serve_apps.http import ApiError
from serve_apps.observe import record_batch, set_batching

log = logging.getLogger("docray.screening")


class ScreeningAppConfig(Config):
    library: str = Field("", description="library folder ('' -> DOCRAY_HOME/indexes/screening)")
    descriptor: str = Field("", description="'' -> the descriptor the library was built with")
    screen: ScreenConfig = ScreenConfig()
    reload_interval_s: float = Field(2.0, description="how often the library manifest is checked")
    max_pictures: int = Field(16, description="pictures per request at most")
    max_batch_size: int = Field(64, description="regions per descriptor batch")
    batch_wait_timeout_s: float = Field(0.01, description="how long a descriptor batch waits to fill")


@serve.deployment(ray_actor_options={"num_cpus": 0.25})
class Descriptor:
    def __init__(self, source: str, max_batch_size: int = 64, batch_wait_timeout_s: float = 0.01):
        from docray.screening.embed import Embedder

        self.embed = Embedder.load(source)
        set_batching(self.embed_batch, {"max_batch_size": max_batch_size, "batch_wait_timeout_s": batch_wait_timeout_s})

    def reconfigure(self, user_config: dict) -> None:
        set_batching(self.embed_batch, user_config)

    @serve.batch(max_batch_size=64, batch_wait_timeout_s=0.01)
    async def embed_batch(self, tiles: list[np.ndarray]) -> list[np.ndarray]:
        record_batch("Descriptor", len(tiles))
        return list(self.embed([Image.fromarray(t) for t in tiles]))


@serve.deployment(ray_actor_options={"num_cpus": 0.25})
class Screening:
    def __init__(self, descriptor, cfg: dict | None = None):
        self.cfg = ScreeningAppConfig(**(cfg or {}))
        self.root = self.cfg.library or str(Library.default_root())
        self.descriptor = descriptor
        from docray.screening.embed import load_background

        library = Library.open(self.root)
        source = pin_descriptor(self.cfg.descriptor or library.manifest["descriptor"])
        self.models = {"descriptor": _descriptor_version(source)}  # in every answer
        self.screener = Screener(library, None, self.cfg.screen, background=load_background(source))
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

    def info(self) -> dict:
        return {"library_version": self.screener.library.version, "tiles": len(self.screener.library),
                "models": self.models}

    async def library_info(self) -> dict:
        await self._fresh()
        lib = self.screener.library
        return {"version": lib.version, "tiles": len(lib), "index": lib.index.current_kind, "descriptor": lib.manifest["descriptor"],
                "models": self.models}

    async def screen(self, images: list[Image.Image], day, cut: str | None) -> dict:
        """Decoded pictures of one document -> the verdict (`abnormal`, `matches`, ...)."""
        await self._fresh()
        screener = self.screener
        regions = await asyncio.to_thread(screener.regions, images)  # OCR: off the event loop
        vectors = await self._embed([r.crop for r in regions])
        if not screener.cfg.learn:
            return {**(await self._match(screener, regions, vectors, images, day, cut)), "models": self.models}
        with write_lock(self.root):  # the second match may add tiles: one writer, from the latest version
            if Library.current_version(self.root) > screener.library.version:
                screener.library = await asyncio.to_thread(Library.open, self.root)
            # in this thread: a file lock held across a thread hop would block the next writer's event loop
            return {**screener.match(regions, vectors, len(images), day, cut, pictures=images), "models": self.models}

    @staticmethod
    async def _match(screener, regions, vectors, images, day, cut) -> dict:
        """Search and decide; with verification on, local features of the pictures (off the event loop)."""
        if screener.cfg.verify.enabled:
            return await asyncio.to_thread(screener.match, regions, vectors, len(images), day, cut, pictures=images)
        return screener.match(regions, vectors, len(images), day, cut)

    async def add_target(self, image: Image.Image, day, source_id: str, target_id: str | None) -> dict:
        lib = self.screener.library
        batch = await asyncio.to_thread(cut_target, image, target_id or f"api-{int(time.time() * 1000)}", source_id, day,
                                        lib.manifest["tile_size"], lib.manifest["templates"],
                                        features=lib.feature_spec)  # the whole target's local features, for verification
        if not batch.tiles:
            raise ApiError(422, "no_tiles", "the picture is flat: no tile carries enough detail to match")
        vectors = await self._embed(batch.tiles)
        with write_lock(self.root):
            if Library.current_version(self.root) > lib.version:
                lib = await asyncio.to_thread(Library.open, self.root)
            res = lib.append(batch, vectors, min_similarity=self.cfg.screen.dedup_similarity)
        self.screener.library = lib
        return {"tiles_added": res["added"], "duplicates_skipped": res["skipped"], "library_version": res["version"],
                "library_tiles": res["n_tiles"], "models": self.models}


def backend(cfg: ScreeningAppConfig) -> serve.Application:
    """The bound `Screening` deployment (with its `Descriptor`) for the gateway."""
    root = cfg.library or str(Library.default_root())
    source = cfg.descriptor
    if not source:
        try:
            source = json.load(open(f"{root}/manifest.json"))["descriptor"]
        except FileNotFoundError:
            source = "registry:descriptor"
    source = pin_descriptor(source)
    desc = Descriptor.bind(source, cfg.max_batch_size, cfg.batch_wait_timeout_s)
    return Screening.bind(desc, cfg.model_copy(update={"descriptor": source}).model_dump())


def pin_descriptor(source: str) -> str:
    """`registry:NAME` -> `registry:NAME@vNNNN`, its newest version (`ModelRegistry.pin`; a pinned
    version is checked to exist); a folder or `build:...` as given."""
    found = parse_ref(source)
    if found is None:
        return source
    return ref(found[0], ModelRegistry().pin(*found))


def _descriptor_version(source: str) -> str:
    """The registry version of a `registry:NAME@VERSION` source; a folder or `build:...` names itself."""
    found = parse_ref(source)
    return source if found is None else found[1]
