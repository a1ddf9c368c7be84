"""Safe image decoding: the one door through which untrusted image bytes enter docray.

Every entry point (HTTP uploads, archive rescans, user ImageFolders) decodes with `decode_image`,
which checks, in order: the type of the input, the byte limit, the format by its magic bytes, the
pixel limit from the header alone (before any pixel is decoded: decompression bombs), and then a
full decode (truncated or corrupt data). Any failure is one typed error, `ImageDecodeError`, whose
`code` and `status` map straight onto an HTTP 4xx.
"""
from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError

MAX_BYTES = 20 * 1024 * 1024  # 20 MiB: far above any document photo, far below memory trouble
MAX_PIXELS = 40_000_000  # 40 MP: a 8000x5000 photo; bombs declare far more

# magic bytes -> Pillow format name. Only these formats are ever handed to Pillow.
_MAGIC = [
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"\xff\xd8\xff", "JPEG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
]


class ImageDecodeError(ValueError):
    """Bad image input. `code` is a stable machine-readable reason, `status` the HTTP status."""

    def __init__(self, message: str, code: str = "bad_image", status: int = 400):
        super().__init__(message)
        self.code, self.status = code, status


def sniff_format(data: bytes) -> str | None:
    """The image format named by the leading magic bytes, or None."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    for magic, name in _MAGIC:
        if data.startswith(magic):
            return name
    return None


def decode_image(
    data: bytes,
    *,
    mode: str | None = "RGB",
    max_bytes: int = MAX_BYTES,
    max_pixels: int = MAX_PIXELS,
    name: str = "image",
) -> Image.Image:
    """Decode untrusted bytes into a fully loaded PIL image (converted to `mode` unless None)."""
    if isinstance(data, (bytearray, memoryview)):
        data = bytes(data)
    if not isinstance(data, bytes):
        raise ImageDecodeError(f"{name}: expected image bytes, got {type(data).__name__}", "wrong_type")
    if not data:
        raise ImageDecodeError(f"{name}: empty input (0 bytes)", "empty")
    if len(data) > max_bytes:
        raise ImageDecodeError(
            f"{name}: {len(data):,} bytes is over the limit of {max_bytes:,} bytes", "too_many_bytes", 413
        )
    fmt = sniff_format(data)
    if fmt is None:
        raise ImageDecodeError(
            f"{name}: not a supported image (PNG, JPEG, WebP, GIF, BMP, TIFF); starts with {data[:8]!r}",
            "unsupported_format",
            415,
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=[fmt])  # reads the header only
            w, h = img.size
            if w <= 0 or h <= 0:
                raise ImageDecodeError(f"{name}: {fmt} declares an empty size {w}x{h}", "corrupt")
            if w * h > max_pixels:
                raise ImageDecodeError(
                    f"{name}: {fmt} declares {w}x{h} = {w * h:,} pixels, over the limit of {max_pixels:,}",
                    "too_many_pixels",
                    413,
                )
            img.load()  # the full decode: truncated or corrupt data fails here
    except ImageDecodeError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageDecodeError(f"{name}: decompression bomb refused ({e})", "too_many_pixels", 413) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as e:
        raise ImageDecodeError(f"{name}: truncated or corrupt {fmt} data ({e})", "corrupt") from None
    if mode is not None and img.mode != mode:
        img = img.convert(mode)
    return img


def decode_array(data: bytes, mode: str = "RGB", **limits) -> np.ndarray:
    """`decode_image` as a uint8 array, (h, w, 3) for RGB or (h, w) for L."""
    return np.asarray(decode_image(data, mode=mode, **limits))


def encode_png(img: Image.Image | np.ndarray, compress_level: int = 1) -> bytes:
    """PNG bytes of an image or uint8 array. Level 1: fast, and still lossless."""
    if isinstance(img, np.ndarray):
        img = Image.fromarray(img)
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=compress_level)
    return buf.getvalue()


def encode_jpeg(img: Image.Image | np.ndarray, quality: int = 90) -> bytes:
    """JPEG bytes at `quality` (1-100)."""
    if isinstance(img, np.ndarray):
        img = Image.fromarray(img)
    buf = io.BytesIO()
    img.convert("RGB").save(buf, format="JPEG", quality=int(quality))
    return buf.getvalue()
