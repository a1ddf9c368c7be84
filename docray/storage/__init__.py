"""Storage: blobs, the model registry, the image repository and dataset I/O.

    from docray.storage import BlobStore, ModelRegistry, ImageRepository, write_shards, read_image_folder

Names are imported lazily, so `BlobStore` does not pull in torch and `ModelRegistry` does not pull
in SQLAlchemy.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "BlobStore": "blobs",
    "NotFound": "blobs",
    "ModelRegistry": "registry",
    "ImageRepository": "repository",
    "AccessDenied": "repository",
    "ROLES": "repository",
    "write_shards": "datasets",
    "read_table": "datasets",
    "iter_batches": "datasets",
    "read_image_folder": "datasets",
    "ImageFolder": "datasets",
    "labels_of": "datasets",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
