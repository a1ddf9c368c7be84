"""Where artifacts live: one root, `DOCRAY_HOME` (default `~/.docray`).

    models/<name>/<version>/   safetensors + config JSON + metrics (docray.storage.registry)
    indexes/                   vector indexes (cut-out screening)
    reports/                   Markdown + PNG reports
    repository/                image repository: SQLite file and blobs (docray.storage.repository)
    datasets/                  Parquet shards made by `docray synth`

With `DOCRAY_HOME=s3://bucket/prefix` every one of these is a URI: build paths with `sub` / `join`
(never `Path`, which folds `s3://` into `s3:/`) and write through `docray.storage.blobs`
(`write_file`, `exists`, `filesystem`), which reach a local disk and object storage alike.
"""
from __future__ import annotations

import os
from pathlib import Path


def home() -> str:
    """The artifact root: `$DOCRAY_HOME`, else `~/.docray`. May be a local path or a URI (s3://...)."""
    return absolute(os.environ.get("DOCRAY_HOME") or str(Path.home() / ".docray"))


def is_uri(path: str) -> bool:
    """Whether `path` names object storage (`s3://...`, `memory://...`) rather than a local file."""
    return "://" in str(path)


def join(base: str, *parts: str) -> str:
    """`base/part/...` for a local path or a URI alike (`Path` would fold `s3://b` into `s3:/b`)."""
    base = str(base)
    return "/".join([base.rstrip("/"), *parts]) if is_uri(base) else str(Path(base, *parts))


def absolute(path: str) -> str:
    """A local path made absolute (`~` expanded); a URI unchanged."""
    return str(path) if is_uri(path) else str(Path(path).expanduser().resolve())


def sub(*parts: str) -> str:
    """A path (or URI) under the artifact root, e.g. `sub("models", "mae_tiny")`."""
    return join(home(), *parts)
