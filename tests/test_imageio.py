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


def test_min_side_refused_from_the_header():
    for w, h in [(1, 1), (1, 10_000), (31, 400)]:
        with pytest.raises(ImageDecodeError, match="at least 32 px") as e:
            decode_image(_bomb_png(w, h), min_side=32)  # the header alone: the (wrong) body is never read
        assert e.value.code == "too_small" and e.value.status == 422
    assert decode_image(_png(32, 32), min_side=32).size == (32, 32)


def test_sixteen_bit_gray_is_scaled_not_clipped():
    gray = np.full((8, 8), 30000, np.uint16)  # 30000/65535 of white: mid grey, not white
    buf = io.BytesIO()
    Image.fromarray(gray).save(buf, "PNG")
    assert decode_array(buf.getvalue())[0, 0].tolist() == [117, 117, 117]


def test_as_displayed_applies_exif_orientation_and_puts_transparency_over_white():
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90 degrees: stored 24x32, shown 32x24
    buf = io.BytesIO()
    Image.new("RGB", (24, 32), "red").save(buf, "JPEG", exif=exif.tobytes())
    assert decode_image(buf.getvalue()).size == (24, 32)  # as stored (the library's default)
    assert decode_image(buf.getvalue(), as_displayed=True).size == (32, 24)  # as a viewer shows it
    pal = Image.new("P", (4, 4), 0)
    pal.putpalette([0, 0, 0, 255, 0, 0])
    pal.putpixel((0, 0), 1)
    buf = io.BytesIO()
    pal.save(buf, "PNG", transparency=0)  # index 0 (black) is transparent
    shown = decode_array(buf.getvalue(), as_displayed=True)
    assert shown[1, 1].tolist() == [255, 255, 255] and shown[0, 0].tolist() == [255, 0, 0]


def test_any_parser_error_is_a_corrupt_image(monkeypatch):
    def broken(self):
        raise struct.error("unpack requires a buffer of 4 bytes")  # what some Pillow parsers raise on crafted data

    from PIL import ImageFile

    monkeypatch.setattr(ImageFile.ImageFile, "load", broken)
    with pytest.raises(ImageDecodeError) as e:
        decode_image(_png())
    assert e.value.code == "corrupt" and e.value.status == 400
