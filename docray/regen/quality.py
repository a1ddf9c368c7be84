"""Per-type compression: one documented quality formula, then a search that guarantees the limit.

The quality formula (levels 1-100). For a file type with compression base `base` and second
threshold (W2, H2, B2), the image is first resized to fit inside W2 x H2 (aspect kept, never
enlarged), giving w x h pixels; then

    bpp     = 8 * B2 / (w * h)                       # bits per pixel the byte budget allows
    quality = clamp(round(base * min(1, bpp / BPP_REF) ** GAMMA), 1, 100)

with BPP_REF = 2.0 (the bits per pixel at which a flat document is comfortable at its base) and
GAMMA = 0.5. So an ample budget gives the base itself, and a tight budget lowers the quality by
the square root of the shortfall. It is non-decreasing in the budget and in the base.

The search (`compress_to_threshold`): encode at the formula's quality; if the file is over B2,
binary-search the largest quality in [1, q) that fits; if even quality 1 is over, shrink the image
by SHRINK and search again. The result always meets the second threshold (a 16x16 image at quality
1 is a few hundred bytes; below that a ThresholdError says the budget is impossible). A provenance
stamp (`docray.regen.provenance`) is encoded into every try, so its bytes count too.

The processed image (`fit_first`) is a PNG within the first threshold, its bytes included: lossless
(compression level 6, then 9); when that is over, an adaptive palette of 256, then 64, then 16
colours (no dithering: flat ink stays flat); else a ThresholdError. An attachment (a seal's crop,
`compress_attachment`) gets its document type's format and base, and the bits per pixel that type's
second threshold allows a whole document (at least ATTACHMENT_MIN_BYTES).
"""
from __future__ import annotations

import io
import math
from dataclasses import dataclass

from PIL import Image

from docray.regen import provenance as prov
from docray.regen.file_types import FileType, FileTypeLibrary, Threshold, ThresholdError

BPP_REF = 2.0
GAMMA = 0.5
SHRINK = 0.85  # scale step when quality 1 is still over the budget
MIN_SIDE = 16
PALETTES = (256, 64, 16)  # fit_first: colours tried when the lossless PNG is over the first threshold's bytes
ATTACHMENT_MIN_BYTES = 1024  # compress_attachment: the least budget of a crop (headers alone take a few hundred)


def fit_size(w: int, h: int, box_w: int, box_h: int) -> tuple[int, int]:
    """(w, h) scaled to fit inside box_w x box_h, aspect kept, never enlarged."""
    s = min(1.0, box_w / w, box_h / h)
    return max(1, round(w * s)), max(1, round(h * s))


def quality_level(base: int, second: Threshold, w: int, h: int) -> int:
    """The formula of the module docstring, for an image of w x h px after fitting into `second`."""
    if not 1 <= base <= 100:
        raise ValueError(f"base must be in 1..100, got {base}")
    w, h = fit_size(w, h, second.width, second.height)
    bpp = 8.0 * second.bytes / (w * h)
    return int(min(100, max(1, round(base * min(1.0, bpp / BPP_REF) ** GAMMA))))


SAVE = {"jpeg": dict(format="JPEG", optimize=True), "webp": dict(format="WEBP", method=4), "avif": dict(format="AVIF")}


def encode(img: Image.Image, fmt: str, quality: int, provenance: dict | None = None) -> bytes:
    """`img` as `fmt` at `quality`, with the provenance stamp in its metadata when one is given."""
    if fmt not in SAVE:
        raise ValueError(f"unknown format {fmt!r}; one of {', '.join(SAVE)}")
    buf = io.BytesIO()
    img.convert("RGB").save(buf, quality=int(quality), **SAVE[fmt], **prov.save_options(fmt, provenance))
    return buf.getvalue()


@dataclass
class Compressed:
    data: bytes
    format: str
    quality: int  # the level used (1-100)
    formula_quality: int  # what the formula gave before the search
    size: tuple[int, int]  # (w, h) of the encoded image

    @property
    def nbytes(self) -> int:
        return len(self.data)


def _largest_fitting(img: Image.Image, fmt: str, hi: int, limit: int, provenance: dict | None = None
                     ) -> tuple[int, bytes] | None:
    """The largest quality in [1, hi] whose file is <= limit bytes (binary search), or None."""
    lo, best = 1, None
    while lo <= hi:
        mid = (lo + hi) // 2
        data = encode(img, fmt, mid, provenance)
        if len(data) <= limit:
            best, lo = (mid, data), mid + 1
        else:
            hi = mid - 1
    return best


def compress_to_threshold(img: Image.Image, base: int, second: Threshold, fmt: str = "jpeg",
                          provenance: dict | None = None) -> Compressed:
    """Compress `img` so that it fits `second` (size and bytes, metadata included); see the module docstring."""
    w, h = fit_size(*img.size, second.width, second.height)
    img = img.convert("RGB")
    q0 = quality_level(base, second, *img.size)
    while True:
        cur = img if (w, h) == img.size else img.resize((w, h), Image.Resampling.LANCZOS)
        data = encode(cur, fmt, q0, provenance)
        if len(data) <= second.bytes:
            return Compressed(data, fmt, q0, q0, (w, h))
        found = _largest_fitting(cur, fmt, q0 - 1, second.bytes, provenance)
        if found is not None:
            return Compressed(found[1], fmt, found[0], q0, (w, h))
        if min(w, h) <= MIN_SIDE:
            raise ThresholdError(f"cannot fit any image in {second.bytes:,} bytes as {fmt}")
        w, h = max(MIN_SIDE, round(w * SHRINK)), max(MIN_SIDE, round(h * SHRINK))


KEEP = "keep"  # compress_for_type: the stamp the image already carries (a processed PNG decoded on a terminal)


def compress_for_type(img: Image.Image, file_type: FileType, provenance: dict | str | None = KEEP) -> Compressed:
    """Per-type compression with the file type's base, format and second threshold. `provenance`: a
    stamp to embed, None for none, or KEEP: the one `img` carries (split mode: the terminal's file
    says "regenerated" as the server's would)."""
    if provenance == KEEP:
        provenance = prov.from_image(img)
    return compress_to_threshold(img, file_type.base, file_type.second, file_type.format, provenance)


def fit_first(img: Image.Image, lib: FileTypeLibrary, provenance: dict | None = None) -> tuple[bytes, str]:
    """(PNG bytes, encoding) of a processed image within the library's first threshold, size and bytes
    (the module docstring); encoding is "png" (lossless) or "png-<colours>"."""
    lib.check_processed(img.width, img.height, 0)  # the size: never resized here
    rgb, data = img.convert("RGB"), b""
    tries = [(rgb, 6, "png"), (rgb, 9, "png")] + [
        (rgb.quantize(n, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE), 9, f"png-{n}") for n in PALETTES]
    for im, level, name in tries:
        data = prov.encode_png(im, provenance, compress_level=level)
        if len(data) <= lib.first.bytes:
            return data, name
    raise ThresholdError(f"the processed image does not fit the first threshold ({lib.first}) even with "
                         f"{PALETTES[-1]} colours ({len(data):,} bytes)")


def compress_attachment(img: Image.Image, file_type: FileType) -> Compressed:
    """An attachment crop in its document type's format and base, at the bits per pixel the type's
    second threshold gives a whole document (at least ATTACHMENT_MIN_BYTES)."""
    s = file_type.second
    budget = max(ATTACHMENT_MIN_BYTES, math.ceil(s.bytes * img.width * img.height / (s.width * s.height)))
    return compress_to_threshold(img, file_type.base, Threshold(width=img.width, height=img.height, bytes=budget),
                                 file_type.format)
