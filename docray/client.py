"""The docray client library (terminal side). This part: regen compression in split mode.

    lib = fetch_file_types("http://gateway:8000", api_key="...")        # GET /v1/file-types
    r = httpx.post(f"{url}/v1/compress?mode=split", files={"image": png}).json()
    data = compress_on_terminal(base64.b64decode(r["processed"]), r["type"], lib)   # bytes to upload

The terminal does no heavy work: the server recognises and regenerates; the terminal only runs
the per-type compression (the documented quality formula and its search, `docray.compression.
quality`) with the file-type library the server publishes, so both sides agree on the limits.
"""
from __future__ import annotations


import httpx
from PIL import Image

from docray.compression.file_types import FileTypeLibrary, load_file_types
from docray.compression.quality import compress_for_type
from docray.imageio import decode_image


def _headers(api_key: str | None) -> dict:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def fetch_file_types(base_url: str, api_key: str | None = None, timeout: float = 30.0) -> FileTypeLibrary:
    """The server's file-type library (`GET /v1/file-types`), validated (second < first)."""
    r = httpx.get(base_url.rstrip("/") + "/v1/file-types", headers=_headers(api_key), timeout=timeout)
    r.raise_for_status()
    return load_file_types(r.json())


def compress_on_terminal(processed_png: bytes, doc_type: str, file_types: FileTypeLibrary | dict) -> bytes:
    """Compress a processed image (split mode) for `doc_type`; the result meets its second threshold."""
    lib = file_types if isinstance(file_types, FileTypeLibrary) else load_file_types(file_types)
    img: Image.Image = decode_image(processed_png)
    return compress_for_type(img, lib.get(doc_type)).data
