"""Where artifacts live: one root, `DOCRAY_HOME` (default `~/.docray`).

    models/<name>/<version>/   safetensors + config JSON + metrics (docray.storage.registry)
    indexes/                   vector indexes (cut-out screening)
    reports/                   Markdown + PNG reports
    repository/                image repository: SQLite file and blobs (docray.storage.repository)
    datasets/                  Parquet shards made by `docray synth`
"""
from __future__ import annotations

import os
from pathlib import Path


def home() -> str:
    """The artifact root: `$DOCRAY_HOME`, else `~/.docray`. May be a local path or a URI (s3://...)."""
    root = os.environ.get("DOCRAY_HOME") or str(Path.home() / ".docray")
    return root if "://" in root else str(Path(root).expanduser().resolve())


def sub(*parts: str) -> str:
    """A path (or URI) under the artifact root, e.g. `sub("models", "mae_tiny")`."""
    root = home()
    return "/".join([root.rstrip("/"), *parts]) if "://" in root else str(Path(root, *parts))
