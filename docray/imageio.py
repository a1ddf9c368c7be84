"""Safe image decoding: the one door through which untrusted image bytes enter docray.

Every entry point (HTTP uploads, archive rescans, user ImageFolders) decodes with `decode_image`,
which checks, in order: the type of the input, the byte limit, the format by its magic bytes, the
pixel limit and the smallest side from the header alone (before any pixel is decoded: decompression
bombs), and then a full decode (truncated or corrupt data). Any failure is one typed error,
`ImageDecodeError`, whose `code` and `status` map straight onto an HTTP 4xx: whatever Pillow raises
on malformed data is a `corrupt` image, never an unhandled error.

Conversions: 16-bit grayscale (PNG/TIFF `I;16`) is scaled to 8 bits (Pillow alone would clip it to
white). `as_displayed=True` (HTTP uploads) decodes a picture as a viewer shows it: the EXIF
orientation applied (a phone photo taken sideways comes out upright) and transparent pixels over
white paper (palette-with-alpha, LA, RGBA), instead of the colour hidden under them.
"""
from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

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
    min_side: int = 1,
    as_displayed: bool = False,
    name: str = "image",
) -> Image.Image:
    """Decode untrusted bytes into a fully loaded PIL image (converted to `mode` unless None).

    min_side: a picture whose width or height is below it is refused (`too_small`, 422) from its header.
    as_displayed: apply the EXIF orientation and put transparent pixels over white (see the module doc).
    """
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
            if min(w, h) < min_side:
                raise ImageDecodeError(
                    f"{name}: a {w}x{h} picture is too small; each side must be at least {min_side} px",
                    "too_small",
                    422,
                )
            img.load()  # the full decode: truncated or corrupt data fails here
            if as_displayed:
                img = _displayed(img, mode)
            if mode is not None and img.mode != mode:
                img = _eight_bit(img).convert(mode)
    except ImageDecodeError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageDecodeError(f"{name}: decompression bomb refused ({e})", "too_many_pixels", 413) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as e:
        raise ImageDecodeError(f"{name}: truncated or corrupt {fmt} data ({e})", "corrupt") from None
    except Exception as e:  # noqa: BLE001 -- Pillow's parsers raise many types on crafted data (struct.error, KeyError, ...)
        raise ImageDecodeError(f"{name}: corrupt {fmt} data ({type(e).__name__}: {e})"[:500], "corrupt") from None
    return img


def _eight_bit(img: Image.Image) -> Image.Image:
    """16-bit grayscale (mode I;16*, or I holding 16-bit values) as 8-bit L, scaled (Pillow's convert clips)."""
    if img.mode.startswith("I;16") or img.mode == "I":
        arr = np.asarray(img).astype(np.int64)
        if img.mode.startswith("I;16") or arr.max(initial=0) > 255:
            arr = arr.clip(0, 65535) >> 8
        return Image.fromarray(arr.clip(0, 255).astype(np.uint8), "L")
    return img


def _displayed(img: Image.Image, mode: str | None) -> Image.Image:
    """The picture as a viewer shows it: EXIF orientation applied (a broken EXIF block is ignored: the
    pixels are fine), transparency over white when the target mode has no alpha."""
    try:
        img = ImageOps.exif_transpose(img)
    except Exception:  # noqa: BLE001
        pass
    if mode in ("RGB", "L") and (img.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in img.info):
        rgba = _eight_bit(img).convert("RGBA")
        img = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    return img


def decode_array(data: bytes, mode: str = "RGB", **limits) -> np.ndarray:
    """`decode_image` as a uint8 array, (h, w, 3) for RGB or (h, w) for L."""
    return np.asarray(decode_image(data, mode=mode, **limits))


def encode_png(img: Image.Image | np.ndarray, compress_level: int = 1, **save_kw) -> bytes:
    """PNG bytes of an image or uint8 array. Level 1: fast, and still lossless. `save_kw` go to
    `Image.save` (e.g. `pnginfo`: text chunks)."""
    if isinstance(img, np.ndarray):
        img = Image.fromarray(img)
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=compress_level, **save_kw)
    return buf.getvalue()


def encode_jpeg(img: Image.Image | np.ndarray, quality: int = 90) -> bytes:
    """JPEG bytes at `quality` (1-100)."""
    if isinstance(img, np.ndarray):
        img = Image.fromarray(img)
    buf = io.BytesIO()
    img.convert("RGB").save(buf, format="JPEG", quality=int(quality))
    return buf.getvalue()
