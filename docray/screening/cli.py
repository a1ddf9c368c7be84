"""`docray screening ...`: the screening library from the shell.

    docray screening query  PICTURE... [--release-time 2024-05-01] [--cut-type 3x3]
    docray screening info                                        # library version, tiles, index kind
    docray screening compact [--keep 2]                          # merge the shards, forget old versions

The job commands of this group (`build`, `rescan`) drive Ray jobs, so they live in the entry layer
(cluster/cli.py), which adds them to this group in the `docray` command.
"""
from __future__ import annotations

import json

import click


@click.group("screening")
def screening() -> None:
    """Cut-out screening: build the tile library, screen pictures, rescan archives."""


@screening.command("query")
@click.argument("pictures", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--release-time", default=None, help="ISO date or day number of the document")
@click.option("--cut-type", default=None, help="cut type of the query (1x3 ... 3x3), if known")
@click.option("--library", default=None, help="library folder or s3:// URI (default DOCRAY_HOME/indexes/screening)")
@click.option("--threshold", type=float, default=None,
              help="override the match threshold (default: the descriptor's calibrated one)")
@click.option("--learn/--no-learn", default=False, help="add pictures found by the second match to the library")
def query(pictures, release_time, cut_type, library, threshold, learn) -> None:
    """Screen one document (its pictures) locally, without Ray; prints the verdict as JSON (with the
    threshold and its source: calibrated, config, or uncalibrated-default)."""
    from pathlib import Path

    from docray.imageio import decode_image
    from docray.screening.embed import Embedder
    from docray.screening.library import Library
    from docray.screening.matching import Screener, ScreenConfig

    lib = Library.open(library)
    cfg = ScreenConfig(learn=learn, threshold=threshold)
    s = Screener(lib, Embedder.load(lib.manifest["descriptor"]), cfg)
    images = [decode_image(Path(p).read_bytes(), name=p) for p in pictures]
    rt = int(release_time) if release_time and release_time.lstrip("-").isdigit() else release_time
    click.echo(json.dumps(s.screen(images, rt, cut_type), indent=2))


@screening.command("info")
@click.option("--library", default=None, help="library folder or s3:// URI (default DOCRAY_HOME/indexes/screening)")
def info(library) -> None:
    """The library's manifest: version, tiles, index kind, descriptor."""
    from docray.screening.library import Library

    lib = Library.open(library)
    click.echo(json.dumps({"root": str(lib.root), "version": lib.version, "tiles": len(lib), "index": lib.index.current_kind,
                           "descriptor": lib.manifest["descriptor"], "templates": lib.manifest["templates"]}, indent=2))


@screening.command("compact")
@click.option("--library", default=None, help="library folder or s3:// URI (default DOCRAY_HOME/indexes/screening)")
@click.option("--keep", type=int, default=2, show_default=True,
              help="versions to keep (rows, manifests, the files they name); older ones are deleted")
@click.option("--db-url", default=None, help="the database ordering the versions (default DOCRAY_DB_URL, else "
              "<library>/versions.db for a local folder)")
def compact(library, keep, db_url) -> None:
    """Merge the library's tile and features shards into one each, as a new version (safe beside running
    writers), then delete what only versions older than the newest --keep name; prints the result as JSON."""
    from docray.screening.library import Library

    lib = Library.open(library, db_url=db_url)
    click.echo(json.dumps({"root": str(lib.root), **lib.compact(keep_versions=keep)}, indent=2))
