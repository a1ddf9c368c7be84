"""Fuzz every route of one gateway (all four methods on tiny untrained models).

The routes come from the gateway's own OpenAPI schema, so a new route is fuzzed without a change
here: its multipart file fields get every bad image, its form fields oversized and junk values, its
path and query parameters traversal strings, its body wrong content types, and every route wrong
methods and missing keys. Each answer must be a 4xx with the JSON error model
`{"error": {"code", "message"}}`, never a 5xx, and no bad request may store anything (repository
records and blobs, screening library versions, the file-type library).

A second, smaller phase sends pictures that are odd but valid (CMYK, 16-bit, palette with alpha,
an animated GIF, an EXIF-rotated photo, the smallest side allowed). These have a documented 200:
uploads are decoded as a viewer shows them (docs/serving.md): the EXIF orientation is applied, an
animated picture is its first frame, transparency lies over white, 16-bit is scaled to 8 bits,
CMYK is converted. A method may still refuse one with its own documented 4xx (regen's first
threshold, a flat target without tiles). What they store is counted exactly.
"""
from __future__ import annotations

import io
import json
import random
import socket
import struct
import time
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from docray.imageio import ImageDecodeError, decode_image
from tests.test_gateway import deployments
from tests.test_regen_models import TINY_LIB

DESC = "build:descriptor_tiny"
USER, ADMIN = "fuzz-user", "fuzz-admin"
AS_USER, AS_ADMIN = {"Authorization": f"Bearer {USER}"}, {"Authorization": f"Bearer {ADMIN}"}
MAX_REQUEST = 3_000_000  # the fuzz gateway's body limit (small, so the oversized cases stay cheap)
PUBLIC = {"/healthz", "/metrics"}  # open routes (no key); the others answer 401 without one
METHODS = ("GET", "POST", "PUT", "DELETE", "PATCH")
TRAVERSAL = ["../../etc/passwd", "..%2F..%2Fetc%2Fpasswd", "%2e%2e%2f%2e%2e%2fetc%2fpasswd", "..%5C..%5Cwindows%5Cwin.ini",
             "%252e%252e%252fetc%252fpasswd", "etc%00passwd", "....//....//etc/passwd", "x" * 3000]


# -- pictures ----------------------------------------------------------------------------------------

def noise(w: int, h: int, mode: str = "RGB", seed: int = 0) -> Image.Image:
    arr = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    return Image.fromarray(arr).convert(mode)


def enc(img: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_raw(w: int, h: int, depth: int, color: int, rows: bytes, extra: bytes = b"") -> bytes:
    """A hand-made PNG (what Pillow cannot write: 16-bit RGB, huge declared sizes, odd chunks)."""
    ihdr = struct.pack(">IIBBBBB", w, h, depth, color, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + extra + _chunk(b"IDAT", zlib.compress(rows)) + _chunk(b"IEND", b"")


def bombs() -> dict[str, bytes]:
    """Small files that declare huge pictures (refused from the header: 413 too_many_pixels) or hide a
    huge text chunk (refused while reading)."""
    gif = b"GIF89a" + struct.pack("<HH", 65535, 65535) + b"\x00\x00\x00" + b",\x00\x00\x00\x00" + \
        struct.pack("<HH", 65535, 65535) + b"\x00\x02\x02D\x01\x00;"
    bmp_info = struct.pack("<IiiHHIIiiII", 40, 60000, 60000, 1, 24, 0, 0, 2835, 2835, 0, 0)
    bmp = b"BM" + struct.pack("<IHHI", 54 + 100, 0, 0, 54) + bmp_info + b"\x00" * 100
    jpeg = enc(noise(64, 64), "JPEG")
    sof = jpeg.index(b"\xff\xc0")
    jpeg_big = jpeg[:sof + 5] + struct.pack(">HH", 65000, 65000) + jpeg[sof + 9:]
    vp8x = b"VP8X" + struct.pack("<I", 10) + b"\x00\x00\x00\x00" + (16383).to_bytes(3, "little") + (16383).to_bytes(3, "little")
    webp = b"RIFF" + struct.pack("<I", 4 + len(vp8x)) + b"WEBP" + vp8x
    tiff = enc(noise(64, 64), "TIFF")
    ifd = struct.unpack("<I", tiff[4:8])[0]
    n = struct.unpack("<H", tiff[ifd:ifd + 2])[0]
    t = bytearray(tiff)
    for i in range(n):  # ImageWidth (256) and ImageLength (257) -> 100000
        e = ifd + 2 + 12 * i
        tag, typ = struct.unpack("<HH", t[e:e + 4])
        if tag in (256, 257):
            t[e + 2:e + 4] = struct.pack("<H", 4)  # LONG
            t[e + 8:e + 12] = struct.pack("<I", 100_000)
    text_bomb = png_raw(64, 64, 8, 0, b"\x00" * 65 * 64, _chunk(b"zTXt", b"k\x00\x00" + zlib.compress(b"\x00" * 40_000_000, 9)))
    return {"png_declares_100000x100000": png_raw(100_000, 100_000, 8, 2, b"\x00" * 10),
            "gif_declares_65535x65535": gif, "bmp_declares_60000x60000": bmp, "jpeg_declares_65000x65000": jpeg_big,
            "webp_declares_16383x16383": webp, "tiff_declares_100000x100000": bytes(t), "png_ztxt_40MB": text_bomb}


def bad_images(min_side: int) -> dict[str, tuple[bytes, set[str] | None]]:
    """'family:name' -> (bytes, the error codes allowed; None: any 4xx)."""
    png, jpg = enc(noise(96, 64)), enc(noise(96, 64), "JPEG", quality=90)
    webp, gif = enc(noise(96, 64), "WEBP", quality=80), enc(noise(96, 64).convert("P"), "GIF")
    tif, bmp = enc(noise(96, 64), "TIFF"), enc(noise(96, 64), "BMP")
    out: dict[str, tuple[bytes, set[str] | None]] = {
        "empty:empty": (b"", {"empty"}), "text:text": (b"hello, this is not a picture\n" * 3, {"unsupported_format"}),
        "text:html": (b"<html><body><img src=x onerror=alert(1)></body></html>", {"unsupported_format"}),
        "text:svg": (b'<svg xmlns="http://www.w3.org/2000/svg" width="9e9" height="9e9"/>', {"unsupported_format"}),
        "text:pdf": (b"%PDF-1.7\n1 0 obj<<>>endobj\n", {"unsupported_format"}),
        "text:zeros": (b"\x00" * 4096, {"unsupported_format"}),
    }
    for name, data in [("png", png), ("jpeg", jpg), ("webp", webp), ("gif", gif), ("tiff", tif), ("bmp", bmp)]:
        for cut in ("header", "half", "most"):
            n = {"header": min(30, len(data) // 4), "half": len(data) // 2, "most": len(data) - len(data) // 5}[cut]
            out[f"truncated:{name}_{cut}"] = (data[:n], None)
    rng = random.Random(7)
    for name, data in [("png", png), ("jpeg", jpg), ("webp", webp), ("gif", gif), ("tiff", tif), ("bmp", bmp)]:
        kept = 0
        for k in range(40):  # corrupt headers and streams; keep what the decoder itself refuses (the rest is a picture)
            b = bytearray(data)
            for _ in range(rng.choice([1, 4, 16])):
                b[rng.randrange(min(len(b), 200 if k % 2 else len(b)))] = rng.randrange(256)
            try:
                decode_image(bytes(b))
            except ImageDecodeError:
                out[f"corrupt:{name}_{k}"] = (bytes(b), None)
                kept += 1
            if kept == 2:
                break
    out.update({f"bomb:{k}": (v, {"too_many_pixels", "corrupt"}) for k, v in bombs().items()})
    small = {"png_1x1": enc(noise(1, 1)), "gif_1x1": enc(noise(1, 1).convert("P"), "GIF"), "jpeg_1x1": enc(noise(1, 1), "JPEG"),
             "png_1x10000": enc(noise(1, 10000)), "png_10000x1": enc(noise(10000, 1)), "webp_16x16": enc(noise(16, 16), "WEBP"),
             f"png_{min_side - 1}x400": enc(noise(min_side - 1, 400)), "bmp_2x2": enc(noise(2, 2), "BMP"),
             "png_declares_50000x1": png_raw(50_000, 1, 8, 0, b"\x00" * 50_001)}
    out.update({f"too_small:{k}": (v, {"too_small"}) for k, v in small.items()})
    return out


def exif_rotated(w: int, h: int) -> bytes:
    """A JPEG whose pixels are h x w (sideways) with EXIF orientation 6: shown as w x h."""
    exif = Image.Exif()
    exif[0x0112] = 6
    return enc(noise(h, w, seed=3), "JPEG", quality=90, exif=exif.tobytes())


def odd_images(min_side: int) -> dict[str, bytes]:
    """Valid pictures of unusual kinds, each 128x96 as shown (EXIF applied): a documented 200."""
    w, h = 128, 96
    gray16 = (np.random.default_rng(1).integers(0, 65536, (h, w))).astype(np.uint16)
    rgb16 = np.random.default_rng(2).integers(0, 65536, (h, w, 3)).astype(">u2")
    rows16 = b"".join(b"\x00" + rgb16[y].tobytes() for y in range(h))
    pal = noise(w, h).convert("P")
    pal.info["transparency"] = 0
    frames = [noise(w, h, seed=s).convert("P") for s in range(3)]
    anim = io.BytesIO()
    frames[0].save(anim, "GIF", save_all=True, append_images=frames[1:], duration=80, loop=0)
    rgba = noise(w, h, "RGBA")
    rgba.putalpha(Image.fromarray(np.random.default_rng(4).integers(0, 256, (h, w), dtype=np.uint8)))
    return {"cmyk_jpeg": enc(noise(w, h, "CMYK"), "JPEG", quality=90), "gray16_png": enc(Image.fromarray(gray16)),
            "rgb16_png": png_raw(w, h, 16, 2, rows16), "palette_alpha_png": enc(pal, transparency=0),
            "rgba_png": enc(rgba), "la_png": enc(rgba.convert("LA")), "animated_gif": anim.getvalue(),
            "exif_rotated_jpeg": exif_rotated(w, h), "webp_lossless": enc(noise(w, h), "WEBP", lossless=True),
            "tiff": enc(noise(w, h), "TIFF"), f"min_side_{min_side}x{min_side}_png": enc(noise(min_side, min_side)),
            f"thin_{min_side}x1500_png": enc(noise(min_side, 1500))}


# -- the app -----------------------------------------------------------------------------------------

def _library(root: Path) -> Path:
    """A small screening library: one noisy target's tiles, cut and described here."""
    from docray.screening.embed import Embedder
    from docray.screening.library import Library, cut_target, to_day

    emb = Embedder.load(DESC)
    lib = Library.create(root, dim=emb.dim, tile_size=32, descriptor=DESC, templates=["2x2", "1x3"])
    batch = cut_target(noise(96, 64, seed=11), "t0", "s0", to_day("2024-01-01"), 32, ["2x2", "1x3"])
    lib.append(batch, emb(batch.tiles))
    return root


def _privacy(root: Path) -> dict:
    import torch

    from docray.privacy.masks import synthetic_masks
    from docray.models import build_model, save_pretrained

    torch.manual_seed(0)
    save_pretrained(build_model("recognizer_tiny", num_classes=4).eval(), root / "masked")
    t = synthetic_masks(4, seed=3, size=32).to_pandas().iloc[[1, 0]]
    t.assign(acc_masked=[0.8, 0.7], acc_original=[0.1, 0.2], drop=[0.1, 0.1]).to_parquet(root / "targets.parquet")
    # no attacker verdict, no calibration: served under the development override; the gallery in the
    # repository database regen uses (so `stored` counts its enrolments)
    return {"masked": str(root / "masked"), "targets": str(root / "targets.parquet"), "image_size": 32,
            "dev_override": True, "repository_url": f"sqlite:///{root}/repo.db"}


def _recognition(root: Path) -> dict:
    import torch

    from docray.models import build_model, save_pretrained
    from docray.recognition.tasks import load_catalogue
    from docray.recognition.text import embed_texts

    torch.manual_seed(0)
    cat = load_catalogue()
    m = build_model("unified_tiny", catalogue=cat.model_dump())
    m.set_query_text(embed_texts([t.query for t in cat.tasks], "hash"))
    save_pretrained(m.eval(), root / "unified")
    return {"folder": str(root / "unified")}


def compose(args: dict, env: dict):
    """`build_app(args)` with every deployment at 0.1 CPU (nine replicas on a 2-CPU test Ray)."""
    from serve_apps import regen
    from serve_apps import screening as scr
    from serve_apps.gateway import Gateway, GatewayConfig
    from serve_apps.privacy import Privacy
    from serve_apps.recognition import Recognizer

    cfg = GatewayConfig.model_validate(args)
    small = {"ray_actor_options": {"num_cpus": 0.1}, "max_ongoing_requests": 32}
    c = cfg.regen.model_dump()
    handles = dict(
        recognition=Recognizer.options(**small).bind(cfg.recognition.model_dump()),
        screening=scr.Screening.options(**small).bind(scr.Descriptor.options(**small).bind(DESC, 8, 0.01),
                                                      cfg.screening.model_dump()),
        privacy=Privacy.options(**small).bind(cfg.privacy.model_dump()),
        regen=regen.Regen.options(**small).bind(regen.TypeModel.options(**small).bind(c),
                                               regen.ContentModel.options(**small).bind(c),
                                               regen.Generator.options(**small).bind(c), c))
    return Gateway.options(ray_actor_options={"num_cpus": 0.1, "runtime_env": {"env_vars": env}}).bind(cfg.model_dump(), **handles)


@dataclass
class App:
    url: str
    port: int
    prefix: str
    root: Path
    args: dict
    spec: dict = field(default_factory=dict)


@pytest.fixture(scope="module")
def app(serve_port, tmp_path_factory):
    from ray import serve

    from serve_apps.gateway import build_app

    root = tmp_path_factory.mktemp("fuzz")
    lib = dict(TINY_LIB, first=dict(TINY_LIB["first"], bytes=3000))  # small originals pass regen's first threshold
    (root / "file_types.yaml").write_text(yaml.safe_dump(lib))
    args = {"recognition": _recognition(root), "privacy": _privacy(root),
            "screening": {"library": str(_library(root / "library")), "descriptor": DESC, "reload_interval_s": 0,
                          "screen": {"text_finder": "none", "learn": False}},
            "regen": {"untrained": "regen_tiny", "file_types": str(root / "file_types.yaml"), "steps": 1,
                            "repository_url": f"sqlite:///{root}/repo.db", "blob_root": str(root / "blobs"), "ungated": True},
            "max_request_bytes": MAX_REQUEST}
    app = compose(args, {"DOCRAY_API_KEYS": f"{USER}=user,{ADMIN}=admin"})
    assert set(deployments(app)) == set(deployments(build_app(args)))  # the same graph as the real gateway
    serve.run(app, name="fuzz", route_prefix="/fuzz")
    import httpx

    url = f"http://127.0.0.1:{serve_port}/fuzz"
    try:
        spec = httpx.get(f"{url}/openapi.json", timeout=30).json()
        yield App(url, serve_port, "/fuzz", root, args, spec)
    finally:
        serve.delete("fuzz")  # also when the set-up fails: a leaked app holds CPUs the later tests need


# -- requests and checks ------------------------------------------------------------------------------

@dataclass
class Case:
    kind: str
    method: str
    route: str  # the OpenAPI path template
    path: str = ""  # the request path (after the prefix); default: route
    files: list | None = None
    data: dict | None = None
    content: bytes | None = None
    headers: dict | None = None
    params: dict | None = None
    raw: bool = False  # sent over a socket as is (no client normalisation of '..')
    codes: set[str] | None = None  # allowed error codes (None: any)
    statuses: set[int] | None = None  # allowed statuses (None: any 4xx)


def raw_request(port: int, method: str, target: str, headers: dict) -> tuple[int, bytes]:
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(f"{method} {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n{head}Connection: close\r\n\r\n".encode())
        buf = b""
        while chunk := s.recv(65536):
            buf += chunk
    top, _, body = buf.partition(b"\r\n\r\n")
    if b"transfer-encoding: chunked" in top.lower():
        out, rest = b"", body
        while rest:
            size, _, rest = rest.partition(b"\r\n")
            n = int(size, 16)
            if n == 0:
                break
            out, rest = out + rest[:n], rest[n + 2:]
        body = out
    return int(top.split()[1]), body


class Fuzzer:
    def __init__(self, app: App, client):
        self.app, self.client = app, client
        self.sent: Counter = Counter()
        self.per_route: Counter = Counter()
        self.statuses: Counter = Counter()
        self.failures: list[str] = []

    def send(self, case: Case, auth: dict | None = AS_ADMIN):
        headers = {**(auth or {}), **(case.headers or {})}
        path = self.app.prefix + (case.path or case.route)
        if case.raw:
            status, body = raw_request(self.app.port, case.method, path, headers)
        else:
            r = self.client.request(case.method, f"http://127.0.0.1:{self.app.port}{path}", files=case.files, data=case.data,
                                    content=case.content, headers=headers, params=case.params)
            status, body = r.status_code, r.content
        self.sent[case.kind] += 1
        self.per_route[(case.method, case.route)] += 1
        self.statuses[status] += 1
        sent = {k: (v if len(v) < 60 else v[:60] + "...") for k, v in (case.data or {}).items() if k not in BASELINE or v != BASELINE[k]}
        where = f"[{case.kind}] {case.method} {path[:120]} {sent or ''} -> {status} {body[:300]!r}"
        if status >= 500 or status < 400 or (case.statuses and status not in case.statuses):
            self.failures.append(where)
            return status, body
        try:
            err = json.loads(body)["error"]
            assert set(err) == {"code", "message"} and isinstance(err["code"], str) and err["message"]
        except Exception:  # noqa: BLE001
            self.failures.append(f"not the JSON error model: {where}")
            return status, body
        if case.codes is not None and err["code"] not in case.codes:
            self.failures.append(f"code {err['code']!r} not in {sorted(case.codes)}: {where}")
        return status, body


def operations(spec: dict) -> list[tuple[str, str, dict]]:
    return [(m.upper(), path, op) for path, ops in spec["paths"].items() for m, op in ops.items() if m.upper() in METHODS]


def _resolve(spec: dict, schema: dict) -> dict:
    while "$ref" in schema:
        schema = spec["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    return schema


def _is_file(prop: dict) -> bool:
    if prop.get("format") == "binary" or "contentMediaType" in prop:
        return True
    return any(_is_file(p) for p in [*prop.get("anyOf", []), *prop.get("oneOf", []), prop.get("items")] if isinstance(p, dict))


def _is_list(prop: dict) -> bool:
    return prop.get("type") == "array" or any(p.get("type") == "array" for p in prop.get("anyOf", []))


def body_of(spec: dict, op: dict) -> tuple[str | None, dict]:
    """(content type, properties) of an operation's request body."""
    content = op.get("requestBody", {}).get("content", {})
    for ctype in ("multipart/form-data", "application/x-www-form-urlencoded", "application/json"):
        if ctype in content:
            return ctype, _resolve(spec, content[ctype].get("schema", {})).get("properties", {})
    return None, {}


GOOD = enc(noise(96, 64, seed=5))  # a picture every image route takes
BASELINE = {"release_time": "2024-05-01", "source_id": "fuzz-src"}  # the fields a route needs before it looks at the picture
FIELD_JUNK = {  # field name -> bad values (the picture is good; each is refused by the gateway or the method)
    "tasks": ["[not json", "{}", "[]", "5", '"doc_type"', '["nope"]', "[1, 2]", '[["doc_type"]]', '{"doc_type": 1}'],
    "user_attrs": ['{"no_such_attribute": 1}', "[1]", '"x"', "{bad json", '{"__proto__": {"admin": true}}'],
    "frame_kinds": ["5", "true", '{"a": 1}', '["bogus"]', '["flash", "flash"]', '"flash"'],
    "release_time": ["soon", "99999999999", "-99999999999", "1e400", "[1]", "true", '{"a": 1}', "2024-13-45", "NaN"],
    "cut_type": ["5x5", "[1]", '{"a": 1}', "../../etc/passwd", "1x3; DROP TABLE tiles"],
    "source_id": TRAVERSAL[:5] + ["a b", "x" * 200, "\u202eevil", "src\nnewline"],
    "target_id": TRAVERSAL[:5] + ["\x00", "x" * 200, ".hidden"],
    "mask_id": TRAVERSAL[:5] + ["nope"],
    "identity_id": TRAVERSAL[:5] + ["a b", "x" * 200, "\u202eevil", "\x00"],
    "top_k": ["0", "-1", "1.5", "abc", "99999", "[1]", "1e3"],
}


def multipart_cases(spec: dict, min_side: int) -> list[Case]:
    cases = []
    bad = bad_images(min_side)
    for method, route, op in operations(spec):
        ctype, props = body_of(spec, op)
        if ctype != "multipart/form-data":
            continue
        files = [n for n, p in props.items() if _is_file(p)]
        texts = [n for n, p in props.items() if not _is_file(p)]
        required = set(_resolve(spec, op["requestBody"]["content"][ctype]["schema"]).get("required", []))
        base_files = lambda skip: [(n, (f"{n}.png", GOOD, "image/png")) for n in files if n != skip and  # noqa: E731
                                   (n in required or n == "image")]
        base_data = {k: v for k, v in BASELINE.items() if k in texts}
        for fname in files:  # every bad picture in every file field
            for name, (data, codes) in bad.items():
                cases.append(Case(f"image:{name.split(':')[0]}", method, route,
                                  files=base_files(fname) + [(fname, (f"x-{name}", data, "image/png"))], data=base_data,
                                  codes=codes))
        for tname in texts:  # junk and oversized text fields, with good pictures
            for value in FIELD_JUNK.get(tname, []) + ["x" * 1_100_000]:
                d = {**base_data, tname: value}
                if tname == "frame_kinds":
                    cases.append(Case("form:junk", method, route, files=base_files("") + [("frames[]", ("f.png", GOOD, "image/png"))],
                                      data=d))
                cases.append(Case("form:oversized" if len(value) > 1_000_000 else "form:junk", method, route,
                                  files=base_files(""), data=d))
        # wrong content types and malformed bodies
        for label, content, ctype_header in [
            ("empty", b"", None), ("text", b"just some text", "text/plain"),
            ("json", json.dumps({"image": "aGVsbG8=", "unknown_key": 1, **BASELINE}).encode(), "application/json"),
            ("urlencoded", b"image=abc&unknown_key=1", "application/x-www-form-urlencoded"),
            ("multipart_no_boundary", b"--x\r\n\r\n", "multipart/form-data"),
            ("multipart_garbage", b"\x00\xff garbage, no parts", "multipart/form-data; boundary=fuzzb"),
            ("multipart_unterminated", b'--fuzzb\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n\r\n' + GOOD[:50],
             "multipart/form-data; boundary=fuzzb"),
            ("raw_png", GOOD, "image/png"), ("xml", b"<?xml version='1.0'?><!DOCTYPE x [<!ENTITY e SYSTEM 'file:///etc/passwd'>]><x>&e;</x>",
                                              "application/xml"),
        ]:
            cases.append(Case(f"content-type:{label}", method, route, content=content,
                              headers={"Content-Type": ctype_header} if ctype_header else {}))
        for fname in [n for n in files if _is_list(props[n])]:  # more files than a list field takes
            cases.append(Case("form:too-many-files", method, route, files=base_files(fname) + [
                (fname, (f"{i}.png", GOOD, "image/png")) for i in range(40)], data=base_data))
        for fname in files:  # a file field sent as a text field; unknown fields only
            cases.append(Case("form:file-as-text", method, route, files=base_files(fname), data={**base_data, fname: "not a file"}))
        cases.append(Case("form:unknown-only", method, route, files=[("unknown_field", ("u.png", GOOD, "image/png"))],
                          data={"also_unknown": "1"}))
        cases.append(Case("form:too-many-fields", method, route, files=base_files(""),
                          data={**base_data, **{f"f{i}": "1" for i in range(1100)}}))
        if files:
            big = b"\x89PNG\r\n\x1a\n" + b"\x00" * (MAX_REQUEST + 1000)
            cases.append(Case("oversized:body", method, route, files=[(files[0], ("big.png", big, "image/png"))], data=base_data,
                              statuses={413}))
            cases.append(Case("oversized:chunked", method, route, content=(b"x" * 65536 for _ in range(MAX_REQUEST // 65536 + 2)),
                              headers={"Content-Type": "multipart/form-data; boundary=fuzzb"}))
    return cases


def json_cases(spec: dict, current_lib: dict) -> list[Case]:
    cases = []
    first_type = next(iter(current_lib["types"]))
    nested = json.loads(json.dumps(current_lib))
    nested["types"][first_type]["bogus"] = 1
    changed_first = dict(current_lib, first=dict(current_lib["first"], width=current_lib["first"]["width"] + 1))
    second_too_big = json.loads(json.dumps(current_lib))
    second_too_big["types"][first_type]["second"]["bytes"] = 10 ** 30
    strings = json.loads(json.dumps(current_lib))
    strings["types"][first_type]["base"] = "eighty"
    negative = json.loads(json.dumps(current_lib))
    negative["types"][first_type]["second"]["width"] = -5
    for method, route, op in operations(spec):
        ctype, _ = body_of(spec, op)
        if ctype != "application/json":
            continue
        bodies = [(b"", None), (b"not json", "text/plain"), (b"{not json", "application/json"), (b"[]", "application/json"),
                  (b"null", "application/json"), (b"42", "application/json"), (b'"a string"', "application/json"),
                  (json.dumps({**current_lib, "unknown_key": 1}).encode(), "application/json"),
                  (json.dumps(nested).encode(), "application/json"), (json.dumps(changed_first).encode(), "application/json"),
                  (json.dumps(second_too_big).encode(), "application/json"), (json.dumps(strings).encode(), "application/json"),
                  (json.dumps(negative).encode(), "application/json"), (json.dumps({"types": {}}).encode(), "application/json"),
                  (json.dumps({"first": current_lib["first"], "types": {}}).encode(), "application/json"),
                  (b"[" * 100_000 + b"]" * 100_000, "application/json"), (b'{"a": ' + b"9" * 5000 + b"}", "application/json"),
                  (json.dumps(current_lib).encode(), "application/x-www-form-urlencoded"),
                  (b"\xff\xfe\x00garbage", "application/json"), (b'{"first": 1, "first": 2}', "application/json")]
        for content, ctype_header in bodies:
            cases.append(Case("json:bad-body", method, route, content=content,
                              headers={"Content-Type": ctype_header} if ctype_header else {}))
    return cases


def path_cases(spec: dict) -> list[Case]:
    """Traversal in every path parameter (the others valid), through the client and raw on a socket."""
    cases = []
    valid = {"record_id": "0" * 32, "which": "processed"}
    for method, route, op in operations(spec):
        names = [p["name"] for p in op.get("parameters", []) if p["in"] == "path"]
        for name in names:
            for bad in TRAVERSAL + ["original/../../../etc/passwd"]:
                path = route
                for other in names:
                    path = path.replace("{" + other + "}", bad if other == name else valid.get(other, "x"))
                raw = "/.." in path or path.startswith("..") or "../" in path
                cases.append(Case("path:traversal", method, route, path=path, raw=raw))
        queries = [p["name"] for p in op.get("parameters", []) if p["in"] == "query"]
        for name in queries:
            for bad in ["../../etc/passwd", "", "x" * 5000, "server\x00split", "SERVER"]:
                cases.append(Case("query:junk", method, route, params={name: bad},
                                  files=[("image", ("a.png", GOOD, "image/png"))] if method == "POST" else None))
    return cases


def method_cases(spec: dict) -> list[Case]:
    cases = []
    for path, ops in spec["paths"].items():
        concrete = path.replace("{record_id}", "0" * 32).replace("{which}", "processed").replace("{identity_id}", "fuzz-id")
        for m in METHODS:
            if m.lower() not in ops:
                cases.append(Case("method:not-allowed", m, path, path=concrete, statuses={405}, codes={"method_not_allowed"}))
    return cases


def auth_cases(spec: dict) -> list[tuple[Case, dict | None]]:
    """(case, auth headers): no key, an unknown key, another scheme (401); the user key on admin routes (403)."""
    out = []
    admin_only = {("POST", "/v1/screen/targets"), ("PUT", "/v1/file-types"), ("POST", "/v1/privacy/enrol"),
                  ("DELETE", "/v1/privacy/identities/{identity_id}")}
    for method, route, op in operations(spec):
        if route in PUBLIC:
            continue
        concrete = route.replace("{record_id}", "0" * 32).replace("{which}", "processed").replace("{identity_id}", "fuzz-id")
        ctype, props = body_of(spec, op)
        files = [(n, ("a.png", GOOD, "image/png")) for n, p in props.items() if _is_file(p)][:1] or None
        for auth in (None, {"Authorization": "Bearer not-a-key"}, {"Authorization": f"Basic {ADMIN}"}, {"Authorization": "Bearer"}):
            out.append((Case("auth:401", method, route, path=concrete, files=files, data=BASELINE if files else None,
                             content=b"{}" if ctype == "application/json" else None,
                             headers={"Content-Type": "application/json"} if ctype == "application/json" else None,
                             statuses={401}, codes={"unauthorized"}), auth))
        if (method, route) in admin_only:
            out.append((Case("auth:403", method, route, path=concrete, files=files, data=BASELINE if files else None,
                             content=b"{}" if ctype == "application/json" else None,
                             headers={"Content-Type": "application/json"} if ctype == "application/json" else None,
                             statuses={403}, codes={"forbidden"}), AS_USER))
    out.append((Case("auth:403", "GET", "/v1/repository/{record_id}/{which}", path="/v1/repository/" + "0" * 32 + "/original",
                     statuses={403}, codes={"forbidden"}), AS_USER))
    return out


def stored(app: App) -> dict:
    """Everything a request could store: repository records and blobs, library version and tiles, the file-type library."""
    from docray.screening.library import Library
    from docray.storage.repository import ImageRepository

    root = Path(app.args["regen"]["blob_root"])
    with ImageRepository(app.args["regen"]["repository_url"], str(root)) as repo:
        records, enrolments = repo.count(), repo.count_enrolments()
    lib = Path(app.args["screening"]["library"])
    return {"records": records, "enrolments": enrolments, "blobs": sum(1 for p in root.rglob("*") if p.is_file()) if root.exists() else 0,
            "library_version": Library.current_version(lib), "library_files": sum(1 for p in lib.rglob("*") if p.is_file()),
            "file_types": Path(app.args["regen"]["file_types"]).read_bytes()}


# -- the tests ---------------------------------------------------------------------------------------

def test_bad_pictures_are_refused_by_the_decoder_itself():
    """The suite's own inputs: every 'bad' picture is one the library refuses (so a 200 is a real bug)."""
    from serve_apps.gateway import GatewayConfig

    min_side = GatewayConfig.model_fields["min_image_side"].default
    for name, (data, codes) in bad_images(min_side).items():
        with pytest.raises(ImageDecodeError) as e:
            decode_image(data, min_side=min_side, as_displayed=True)
        assert codes is None or e.value.code in codes, (name, e.value.code, str(e.value))
        assert 400 <= e.value.status < 500
    for name, data in odd_images(min_side).items():
        img = decode_image(data, min_side=min_side, as_displayed=True)
        assert img.mode == "RGB" and (img.size == (128, 96) or str(min_side) in name), (name, img.size)


def test_every_route_refuses_bad_requests_with_4xx_json_and_stores_nothing(app):
    import httpx

    from serve_apps.gateway import GatewayConfig

    min_side = GatewayConfig.model_validate(app.args).min_image_side
    ops = operations(app.spec)
    assert {"/v1/recognize", "/v1/screen", "/v1/screen/targets", "/v1/privacy/enrol", "/v1/privacy/verify",
            "/v1/privacy/identify", "/v1/privacy/identities/{identity_id}", "/v1/compress", "/v1/file-types",
            "/v1/repository/{record_id}/{which}"} <= {p for _, p, _ in ops}
    with httpx.Client(timeout=120) as c:
        current_lib = c.get(f"{app.url}/v1/file-types", headers=AS_USER).json()
        before = stored(app)
        t0 = time.perf_counter()
        fz = Fuzzer(app, c)
        for case in multipart_cases(app.spec, min_side) + json_cases(app.spec, current_lib) + path_cases(app.spec) + method_cases(app.spec):
            fz.send(case)
        for case, auth in auth_cases(app.spec):
            fz.send(case, auth)
        # the case: a 1x1 GIF on every image route, refused with the minimum side named, before any method's gate
        gif = enc(noise(1, 1).convert("P"), "GIF")
        for route, fname, data in [("/v1/recognize", "image", {}), ("/v1/screen", "pictures", {}),
                                   ("/v1/screen/targets", "image", BASELINE), ("/v1/privacy/enrol", "image", {}),
                                   ("/v1/privacy/verify", "image", {}), ("/v1/privacy/identify", "image", {}),
                                   ("/v1/compress", "image", {})]:
            status, body = fz.send(Case("image:gif_1x1_named", "POST", route, files=[(fname, ("one.gif", gif, "image/gif"))],
                                        data=data, statuses={422}, codes={"too_small"}))
            assert f"at least {min_side} px" in json.loads(body)["error"]["message"], body
        elapsed = time.perf_counter() - t0
        after = stored(app)
    print(f"\n{sum(fz.sent.values())} bad requests in {elapsed:.1f} s; by kind: {dict(sorted(fz.sent.items()))}; "
          f"statuses: {dict(sorted(fz.statuses.items()))}")
    assert fz.failures == [], "\n".join(fz.failures[:40]) + f"\n... {len(fz.failures)} failures"
    assert sum(fz.sent.values()) >= 200
    # every path of the schema got bad requests (at least wrong methods), every operation with a body or
    # parameters its own (the GETs without either, e.g. /healthz, have nothing else to get wrong)
    by_path = Counter()
    for (_, path), n in fz.per_route.items():
        by_path[path] += n
    assert [p for p in app.spec["paths"] if by_path[p] == 0] == []
    assert [(m, p) for m, p, op in ops if (op.get("requestBody") or op.get("parameters")) and fz.per_route[(m, p)] == 0] == []
    assert after == before  # nothing stored


def test_odd_but_valid_pictures_get_the_documented_answer(app):
    """CMYK, 16-bit, palette with alpha, animated, EXIF-rotated...: 200 (or a method's documented 4xx),
    decoded as a viewer shows them; what they store is what their 200s say."""
    import base64

    import httpx

    from serve_apps.gateway import GatewayConfig

    min_side = GatewayConfig.model_validate(app.args).min_image_side
    mask_id = str(pd.read_parquet(app.args["privacy"]["targets"])["mask_id"].iloc[0])
    before = stored(app)
    answers, compress_ok, targets_ok, failures = Counter(), 0, 0, []
    with httpx.Client(timeout=120, headers=AS_ADMIN) as c:
        for i, (name, data) in enumerate(odd_images(min_side).items()):
            small = str(min_side) in name  # the smallest and the thin picture: regen's first threshold refuses them
            shown = None if small else (128, 96)
            reqs = [("/v1/recognize", [("image", ("p", data, "image/png"))], {"tasks": '["layout_segmentation"]'}, {200}),
                    ("/v1/screen", [("pictures", ("p", data, "image/png"))], {"release_time": "2024-05-01"}, {200}),
                    ("/v1/screen/targets", [("image", ("p", data, "image/png"))],
                     {**BASELINE, "target_id": f"odd-{i}"}, {200, 422}),  # 422 no_tiles: a flat picture
                    # decoded, then refused by the method: a masked upload is the model's size (32x32), black under its mask
                    ("/v1/privacy/identify", [("image", ("p", data, "image/png"))], {"mask_id": mask_id}, {400}),
                    ("/v1/compress", [("image", ("p", data, "image/png"))], {}, {422} if small else {200})]
            for route, files, form, ok in reqs:
                r = c.post(f"{app.url}{route}", files=files, data=form)
                answers[(route, r.status_code)] += 1
                if r.status_code not in ok:
                    failures.append(f"{name} {route} -> {r.status_code} {r.text[:300]}")
                    continue
                body = r.json()
                if r.status_code != 200:
                    assert body["error"]["code"] in ("no_tiles", "below_first_threshold", "bad_size", "mask_mismatch"), \
                        (name, route, body)  # privacy: not masked, or not the model's size
                    continue
                seg = body.get("results", {}).get("layout_segmentation", {})
                if route == "/v1/recognize" and shown and "mask_png" in seg:  # (untrained: the gate may route it elsewhere)
                    mask = Image.open(io.BytesIO(base64.b64decode(seg["mask_png"])))
                    assert mask.size == shown, (name, mask.size)  # the picture's size as shown (EXIF applied)
                compress_ok += route == "/v1/compress"
                targets_ok += route == "/v1/screen/targets" and body["tiles_added"] > 0
    after = stored(app)
    print(f"\nodd pictures: {dict(sorted(answers.items()))}")
    assert failures == [], "\n".join(failures)
    assert after["records"] == before["records"] + compress_ok  # one record per compressed upload, no more
    assert after["library_version"] == before["library_version"] + targets_ok
    assert after["file_types"] == before["file_types"]
