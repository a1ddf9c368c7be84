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
uploads and form fields (`serve_apps/gateway.py`).

The library is shared, versioned state (`docray.screening.library`): a local folder or an `s3://`
URI (`library`), its versions ordered by a database (`db_url`, else `DOCRAY_DB_URL`; Postgres when
replicas run on several nodes; a local folder's default is its own SQLite file). Replicas reload by
version: at most once per `reload_interval_s` a request starts a check of the newest version in a
worker thread and goes on with the version in use; a newer one is loaded beside it and swapped in
(versions only add tiles, so a request that meets the swap part-way still finds its tiles).
`GET /v1/screen/library` waits for that check. Writes (new targets, tiles learned by the second
match) run in a worker thread: the append starts from the newest version and, when another replica
or node published it first, loads that one and appends again (no lock is held while it works).
Nothing blocks the event loop: OCR, search, loading and appending all run in worker threads. Every
answer names the descriptor version it embedded with (`models`); a `registry:descriptor` source
without a version is pinned to the newest when the app is built. The match threshold is that
descriptor's calibrated one unless `screen.threshold` sets one; /healthz and every verdict show it
and its source (`threshold_source`: calibrated, config, or uncalibrated-default, a warning).
"""
# no `from __future__ import annotations`: FastAPI must see the route annotations as real types

import asyncio
import logging
import time

import numpy as np
from PIL import Image
from pydantic import Field
from ray import serve

from docray.config import Config
from docray.screening.library import Library, cut_target
from docray.screening.matching import Screener, ScreenConfig
from docray.screening.versions import VersionStore
from docray.storage.registry import ModelRegistry, parse_ref, ref
from serve_apps.http import ApiError
from serve_apps.observe import record_batch, set_batching

log = logging.getLogger("docray.screening")


class ScreeningAppConfig(Config):
    library: str = Field("", description="library folder or s3:// URI ('' -> DOCRAY_HOME/indexes/screening)")
    db_url: str = Field("", description="the database ordering the library's versions ('' -> DOCRAY_DB_URL, else "
                        "<library>/versions.db for a local folder; a URI library needs one every node reaches)")
    cache_dir: str = Field("", description="local copies of an s3:// library's index folders ('' -> "
                           "DOCRAY_LIBRARY_CACHE, else <temp>/docray-library-cache)")
    descriptor: str = Field("", description="'' -> the descriptor the library was built with")
    screen: ScreenConfig = ScreenConfig()
    reload_interval_s: float = Field(2.0, description="how often the library's newest version is checked")
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
        from docray.screening.embed import load_background, load_calibration, load_reranker

        library = Library.open(self.root, db_url=self.cfg.db_url or None, cache_dir=self.cfg.cache_dir or None)
        library.versions.check_writable()  # this app writes (targets, learned tiles): fail now, not on the first write
        source = pin_descriptor(self.cfg.descriptor or library.manifest["descriptor"])
        self.models = {"descriptor": _descriptor_version(source)}  # in every answer
        self.screener = Screener(library, None, self.cfg.screen, background=load_background(source),
                                 calibration=load_calibration(source),
                                 reranker=load_reranker(source) if self.cfg.screen.rerank else None)
        self._checked = time.monotonic()
        self._refresh: asyncio.Future | None = None  # a check for a newer version, in a worker thread

    async def _fresh(self, wait: bool = False) -> None:
        """At most once per reload_interval_s, check for a newer library version in a worker thread (load
        it beside the one in use, then swap: `Library.refresh`); `wait`: until that check is done."""
        now = time.monotonic()
        if (self._refresh is None or self._refresh.done()) and now - self._checked >= self.cfg.reload_interval_s:
            self._checked = now
            self._refresh = asyncio.ensure_future(asyncio.to_thread(self.screener.library.refresh))
            self._refresh.add_done_callback(_log_failed_refresh)
        if wait and self._refresh is not None:
            try:
                await asyncio.shield(self._refresh)
            except Exception:  # logged by _log_failed_refresh; the version in use answers
                pass

    async def _embed(self, crops: list[Image.Image]) -> np.ndarray:
        size = self.screener.library.manifest["tile_size"]
        refs = [self.descriptor.embed_batch.remote(np.asarray(c.convert("RGB").resize((size, size)))) for c in crops]
        return np.stack(await asyncio.gather(*refs)) if refs else np.zeros((0, self.screener.library.index.dim), np.float32)

    def info(self) -> dict:
        s = self.screener
        return {"library_version": s.library.version, "tiles": len(s.library), "models": self.models,
                "threshold": s.threshold, "threshold_source": s.threshold_source, "rerank": s.reranking}

    async def library_info(self) -> dict:
        await self._fresh(wait=True)
        lib = self.screener.library
        return {"version": lib.version, "tiles": len(lib), "index": lib.index.current_kind, "descriptor": lib.manifest["descriptor"],
                "models": self.models}

    async def screen(self, images: list[Image.Image], day, cut: str | None) -> dict:
        """Decoded pictures of one document -> the verdict (`abnormal`, `matches`, ...)."""
        await self._fresh()
        screener = self.screener
        regions = await asyncio.to_thread(screener.regions, images)  # OCR: off the event loop
        vectors = await self._embed([r.crop for r in regions])
        # search, verification and (learn) the append of the second match's tiles: in a worker thread
        verdict = await asyncio.to_thread(screener.match, regions, vectors, len(images), day, cut, pictures=images)
        return {**verdict, "models": self.models}

    async def add_target(self, image: Image.Image, day, source_id: str, target_id: str | None) -> dict:
        lib = self.screener.library
        batch = await asyncio.to_thread(cut_target, image, target_id or f"api-{int(time.time() * 1000)}", source_id, day,
                                        lib.manifest["tile_size"], lib.manifest["templates"],
                                        features=lib.feature_spec)  # the whole target's local features, for verification
        if not batch.tiles:
            raise ApiError(422, "no_tiles", "the picture is flat: no tile carries enough detail to match")
        vectors = await self._embed(batch.tiles)
        # from the newest version, published through the database (a racing writer: reload and append again)
        res = await asyncio.to_thread(lib.append, batch, vectors, min_similarity=self.cfg.screen.dedup_similarity)
        return {"tiles_added": res["added"], "duplicates_skipped": res["skipped"], "library_version": res["version"],
                "library_tiles": res["n_tiles"], "models": self.models}


def _log_failed_refresh(fut: asyncio.Future) -> None:
    if not fut.cancelled() and fut.exception() is not None:
        log.warning("library reload failed (kept the version in use): %r", fut.exception())


def backend(cfg: ScreeningAppConfig) -> serve.Application:
    """The bound `Screening` deployment (with its `Descriptor`) for the gateway."""
    root = cfg.library or Library.default_root()
    source = cfg.descriptor
    if not source:
        manifest = VersionStore(root, cfg.db_url or None).manifest()
        source = manifest["descriptor"] if manifest else "registry:descriptor"
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
