"""The safe decoder: every bad input is one typed error with a clear message."""
import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from docray.imageio import ImageDecodeError, decode_array, decode_image, encode_jpeg, encode_png, sniff_format


def _png(w=32, h=24, mode="RGB"):
    return encode_png(Image.new(mode, (w, h), "red" if mode == "RGB" else 128))


def _bomb_png(w, h):
    """A valid PNG header declaring w x h pixels, with a tiny (wrong) body: only the header is read."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 10)) + chunk(b"IEND", b"")


def test_round_trip_png_and_jpeg():
    arr = (np.random.default_rng(0).random((24, 32, 3)) * 255).astype(np.uint8)
    assert np.array_equal(decode_array(encode_png(arr)), arr)
    jpg = decode_image(encode_jpeg(arr, quality=95))
    assert jpg.size == (32, 24) and jpg.mode == "RGB"


def test_grayscale_converted_to_rgb_and_kept_when_asked():
    data = _png(mode="L")
    assert decode_image(data).mode == "RGB"
    assert decode_image(data, mode=None).mode == "L"


@pytest.mark.parametrize("fmt,magic", [("PNG", b"\x89PNG\r\n\x1a\n"), ("JPEG", b"\xff\xd8\xff"), ("GIF", b"GIF89a")])
def test_sniff_format(fmt, magic):
    assert sniff_format(magic + b"rest") == fmt
    assert sniff_format(b"hello world") is None


@pytest.mark.parametrize("bad,code", [
    ("not bytes", "wrong_type"),
    (12345, "wrong_type"),
    (b"", "empty"),
    (b"%PDF-1.7 this is a pdf", "unsupported_format"),
    (b"<html><body>hi</body></html>", "unsupported_format"),
])
def test_bad_inputs(bad, code):
    with pytest.raises(ImageDecodeError) as e:
        decode_image(bad)
    assert e.value.code == code and e.value.status in (400, 413, 415)


def test_truncated_png_and_jpeg():
    for data in (_png(64, 64), encode_jpeg(Image.new("RGB", (64, 64), "blue"))):
        with pytest.raises(ImageDecodeError, match="truncated or corrupt") as e:
            decode_image(data[: len(data) // 2])
        assert e.value.code == "corrupt"


def test_corrupt_body():
    data = bytearray(_png(64, 64))
    data[40:60] = b"\x00" * 20  # smash the compressed stream (and its CRC)
    with pytest.raises(ImageDecodeError):
        decode_image(bytes(data))


def test_byte_limit():
    with pytest.raises(ImageDecodeError, match="over the limit") as e:
        decode_image(_png(), max_bytes=10)
    assert e.value.status == 413


def test_decompression_bomb_refused_from_header():
    bomb = _bomb_png(50_000, 50_000)  # 2.5 G pixels declared in a ~100-byte file
    assert len(bomb) < 200
    with pytest.raises(ImageDecodeError, match="pixels") as e:
        decode_image(bomb)
    assert e.value.code == "too_many_pixels" and e.value.status == 413
    with pytest.raises(ImageDecodeError, match="over the limit of 100"):
        decode_image(_png(20, 20), max_pixels=100)
