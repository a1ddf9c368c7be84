"""docray.client (sync and async) and `docray api` against a FastAPI stub of the gateway contract (no Ray).

The stub uses the real error model (`serve_apps.http.make_api`, `require_role`) and records what
each request carried, so the tests check the wire format: multipart field names, JSON form fields,
the Bearer header, and that a locally masked face arrives with its hidden pixels at 0.
"""
from __future__ import annotations

import asyncio
import base64
import json

import httpx
import numpy as np
import pytest
from click.testing import CliRunner
from fastapi import Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from fastapi.testclient import TestClient
from PIL import Image

from docray import api_cli
from docray.client import AsyncDocrayClient, DocrayClient, DocrayError, raise_for_error
from docray.regen.file_types import ThresholdError, load_file_types
from docray.imageio import decode_array, encode_jpeg, encode_png
from docray.privacy.masks import encode_mask
from serve_apps.http import ApiError, make_api, read_image, require_role

KEYS = {"ukey": "user", "akey": "admin"}
MASK_SIZE = 16
MASKS = {"m-left": np.ones((MASK_SIZE, MASK_SIZE), np.float32), "m-top": np.ones((MASK_SIZE, MASK_SIZE), np.float32)}
MASKS["m-left"][:, : MASK_SIZE // 2] = 0  # 0 hidden
MASKS["m-top"][: MASK_SIZE // 2] = 0
MAX_BYTES = 60_000  # the stub's upload limit, for the 413 test


def _image(seed: int = 0, size=(48, 32)) -> np.ndarray:
    return np.random.default_rng(seed).integers(40, 255, (size[1], size[0], 3), dtype=np.uint8)  # no zero pixels


def make_stub():
    """A stub gateway: the contract's routes and error model; `app.state.seen` records requests."""
    app = make_api("docray stub")
    app.state.seen, app.state.lib, app.state.degraded = [], load_file_types().to_json(), False
    app.state.gallery = {}

    async def record(request: Request, route: str, role: str = "user") -> dict:
        require_role(request, KEYS, role)
        form = await request.form() if request.method in ("POST", "PUT") and "multipart" in request.headers.get("content-type", "") else None
        entry = {"route": route, "auth": request.headers.get("authorization"), "form": form,
                 "keys": [k for k, _ in form.multi_items()] if form else [], "params": dict(request.query_params)}
        app.state.seen.append(entry)
        return entry

    @app.post("/v1/recognize")
    async def recognize(request: Request):
        form = (await record(request, "recognize"))["form"]
        img = await read_image(form.get("image"), "image", max_bytes=MAX_BYTES)
        frames = [await read_image(f, "frames[]") for f in form.getlist("frames[]")]
        echo = {k: json.loads(form[k]) for k in ("frame_kinds", "tasks", "user_attrs") if k in form}
        return {"results": {"echo": {"size": list(img.size), "frames": [list(f.size) for f in frames], **echo}},
                "skipped": [], "model": "stub"}

    @app.post("/v1/screen")
    async def screen(request: Request):
        form = (await record(request, "screen"))["form"]
        pics = [await read_image(p, "pictures") for p in form.getlist("pictures")]
        return {"abnormal": False, "matches": [], "n_pictures": len(pics),
                "release_time": form.get("release_time"), "cut_type": form.get("cut_type")}

    @app.post("/v1/screen/targets")
    async def add_target(request: Request):
        form = (await record(request, "targets", "admin"))["form"]
        await read_image(form.get("image"))
        return {"tiles_added": 9, "duplicates_skipped": 0, "library_version": 2, "library_tiles": 9,
                "source_id": form["source_id"], "release_time": form["release_time"], "target_id": form.get("target_id")}

    @app.get("/v1/screen/library")
    async def library(request: Request):
        await record(request, "library")
        return {"version": 2, "tiles": 9, "index": "flat", "descriptor": "stub"}

    @app.get("/v1/privacy/masks")
    async def masks(request: Request):
        await record(request, "masks")
        return {"image_size": MASK_SIZE,
                "masks": [{"mask_id": k, "png": base64.b64encode(encode_mask(m)).decode()} for k, m in MASKS.items()]}

    async def masked(request: Request, route: str, role: str = "user") -> tuple[dict, np.ndarray]:
        form = (await record(request, route, role))["form"]
        x = np.asarray(await read_image(form.get("image")))
        mask_id = form.get("mask_id")  # a client-masked image: the hidden pixels must be exactly 0
        if mask_id not in MASKS:
            raise ApiError(400, "unknown_mask", f"no mask {mask_id!r}")
        if x.shape[:2] != (MASK_SIZE, MASK_SIZE) or x[MASKS[mask_id] == 0].any():
            raise ApiError(400, "mask_mismatch", "pixels under the mask are not 0")
        return form, x

    @app.post("/v1/privacy/enrol")
    async def enrol(request: Request):
        form, x = await masked(request, "enrol", "admin")
        app.state.gallery.setdefault(form["identity_id"], []).append(x)
        return {"identity_id": form["identity_id"], "enrolment_id": "e1", "mask_id": form["mask_id"],
                "enrolments": len(app.state.gallery[form["identity_id"]])}

    @app.post("/v1/privacy/verify")
    async def verify(request: Request):
        form, x = await masked(request, "verify")
        if form["identity_id"] not in app.state.gallery:
            raise ApiError(404, "unknown_identity", f"identity {form['identity_id']!r} is not enrolled")
        return {"identity_id": form["identity_id"], "match": True, "score": 0.9, "threshold": 0.5,
                "mask_id": form["mask_id"], "received": list(x.shape)}

    @app.post("/v1/privacy/identify")
    async def identify(request: Request):
        form, x = await masked(request, "identify")
        k = int(form.get("top_k", "5"))
        return {"candidates": [{"identity_id": i, "score": 0.9, "match": True} for i in list(app.state.gallery)[:k]],
                "threshold": 0.5, "mask_id": form["mask_id"], "received": list(x.shape)}

    @app.delete("/v1/privacy/identities/{identity_id}")
    async def delete_identity(request: Request, identity_id: str):
        await record(request, "identities", "admin")
        if app.state.gallery.pop(identity_id, None) is None:
            raise ApiError(404, "not_found", f"no enrolled identity {identity_id!r}")
        return {"identity_id": identity_id, "deleted": True, "enrolments": 1}

    @app.post("/v1/compress")
    async def compress(request: Request, mode: str = "server"):
        form = (await record(request, "compress"))["form"]
        if mode not in ("server", "split"):
            raise ApiError(400, "bad_mode", f"mode must be 'server' or 'split', got {mode!r}")
        img = (await read_image(form.get("image"))).resize((256, 160))
        body = {"record_id": "rec-1", "type": "identity_card", "type_score": 0.8, "sizes": {}, "format": "png"}
        if mode == "server":
            body["compressed"] = base64.b64encode(encode_jpeg(img, 50)).decode()
        else:
            body["processed"] = base64.b64encode(encode_png(img)).decode()
        return body

    @app.get("/v1/file-types")
    async def get_types(request: Request):
        await record(request, "file-types")
        return app.state.lib

    @app.put("/v1/file-types")
    async def put_types(request: Request):
        await record(request, "file-types", "admin")
        try:
            app.state.lib = load_file_types(await request.json()).to_json()
        except (ThresholdError, ValueError) as e:
            raise ApiError(400, "bad_file_types", str(e)) from None
        return app.state.lib

    @app.get("/v1/repository/{record_id}/{which}")
    async def repository(request: Request, record_id: str, which: str):
        await record(request, "repository", "admin" if which == "original" else "user")
        if record_id != "rec-1":
            raise ApiError(404, "not_found", f"no record {record_id!r}")
        return Response(encode_png(_image(1)), media_type="image/png")

    @app.put("/v1/repository/{record_id}/{which}")
    async def upload_compressed(request: Request, record_id: str, which: str):
        form = (await record(request, "upload"))["form"]
        data = await form["image"].read()
        return {"record_id": record_id, "which": which, "bytes": len(data)}

    @app.get("/healthz")
    async def healthz():
        if app.state.degraded:
            return JSONResponse({"status": "degraded", "apps": {"Screening": "UNHEALTHY"}}, status_code=503)
        return {"status": "ok", "apps": {"Recognizer": "HEALTHY"}}

    @app.get("/metrics")
    async def metrics():
        return PlainTextResponse('ray_docray_http_requests_total{route="/healthz",method="GET",status="200"} 3.0\n')

    return app


@pytest.fixture
def stub():
    return make_stub()


@pytest.fixture
def client(stub):
    return DocrayClient(api_key="ukey", http=TestClient(stub))


@pytest.fixture
def admin(stub):
    return DocrayClient(api_key="akey", http=TestClient(stub))


# -- the wire format ------------------------------------------------------------------------------
def test_recognize_multipart_fields_json_and_bearer(client, stub, tmp_path):
    flash = tmp_path / "flash.jpg"
    flash.write_bytes(encode_jpeg(_image(2)))
    out = client.recognize(_image(), frames=[flash, Image.fromarray(_image(3, (20, 10)))], frame_kinds=["flash", "angles"],
                           tasks=["doc_type"], user_attrs={"name": "Ada"})
    seen = stub.state.seen[-1]
    assert seen["auth"] == "Bearer ukey"
    assert seen["keys"].count("frames[]") == 2 and seen["keys"].count("image") == 1
    assert seen["form"].getlist("frames[]")[0].content_type == "image/jpeg"  # from the bytes, not guessed
    echo = out["results"]["echo"]
    assert echo == {"size": [48, 32], "frames": [[48, 32], [20, 10]], "frame_kinds": ["flash", "angles"],
                    "tasks": ["doc_type"], "user_attrs": {"name": "Ada"}}
    client.recognize(_image())  # optional fields are left out, not sent as "null"
    assert stub.state.seen[-1]["keys"] == ["image"]


def test_every_image_input_type(client, tmp_path):
    arr = _image(4)
    path = tmp_path / "x.png"
    path.write_bytes(encode_png(arr))
    for image in (path, str(path), encode_png(arr), Image.fromarray(arr), arr):
        assert client.recognize(image)["results"]["echo"]["size"] == [48, 32]
    with pytest.raises(FileNotFoundError):
        client.recognize(tmp_path / "missing.png")
    with pytest.raises(TypeError, match="path, bytes, a PIL image or a numpy array"):
        client.recognize(3.14)


def test_screen_targets_library(client, admin, stub):
    out = client.screen([_image(i) for i in range(3)], release_time="2024-05-01", cut_type="1x3")
    assert stub.state.seen[-1]["keys"].count("pictures") == 3
    assert (out["n_pictures"], out["release_time"], out["cut_type"]) == (3, "2024-05-01", "1x3")
    assert client.screen(_image())["n_pictures"] == 1  # a single picture is wrapped
    assert stub.state.seen[-1]["keys"] == ["pictures"]
    added = admin.add_target(_image(), "2024-05-01", "feed-7", target_id="t-1")
    assert (added["source_id"], added["target_id"], added["tiles_added"]) == ("feed-7", "t-1", 9)
    assert client.library()["version"] == 2


# -- errors ---------------------------------------------------------------------------------------
def test_error_model_401_403_415_413_400_404(stub, client):
    with pytest.raises(DocrayError) as e:
        DocrayClient(http=TestClient(stub)).library()
    assert (e.value.status, e.value.code) == (401, "unauthorized")
    with pytest.raises(DocrayError) as e:
        DocrayClient(api_key="wrong", http=TestClient(stub)).library()
    assert e.value.status == 401 and "unknown API key" in e.value.message
    with pytest.raises(DocrayError) as e:
        client.add_target(_image(), "2024-05-01", "feed-7")
    assert (e.value.status, e.value.code) == (403, "forbidden")
    with pytest.raises(DocrayError) as e:
        client.recognize(b"not an image")
    assert (e.value.status, e.value.code) == (415, "unsupported_format")
    with pytest.raises(DocrayError) as e:
        client.recognize(np.random.default_rng(0).integers(0, 255, (200, 200, 3), dtype=np.uint8))  # ~120 kB PNG
    assert (e.value.status, e.value.code) == (413, "too_many_bytes")
    with pytest.raises(DocrayError) as e:
        client.compress(_image(), mode="zip")
    assert (e.value.status, e.value.code) == (400, "bad_mode")
    with pytest.raises(DocrayError) as e:
        client.repository("rec-9")
    assert (e.value.status, e.value.code) == (404, "not_found")


def test_non_json_error_body_falls_back():
    r = httpx.Response(502, text="<html>Bad Gateway</html>", request=httpx.Request("GET", "http://x/healthz"))
    with pytest.raises(DocrayError) as e:
        raise_for_error(r)
    assert (e.value.status, e.value.code, e.value.message) == (502, "http_502", "<html>Bad Gateway</html>")


def test_unreachable_gateway_sync_and_async():
    url = "http://127.0.0.1:9"  # discard port: nothing listens
    with DocrayClient(url, timeout=5) as dc, pytest.raises(DocrayError) as e:
        dc.healthz()
    assert (e.value.status, e.value.code) == (0, "unreachable")
    assert url in e.value.message and "start one with" in e.value.message

    async def go():
        async with AsyncDocrayClient(url, timeout=5) as dc:
            await dc.healthz()

    with pytest.raises(DocrayError, match="unreachable"):
        asyncio.run(go())


# -- private recognition --------------------------------------------------------------------------
def test_private_masked_locally_raw_never_sent(client, admin, stub):
    face = _image(5, (40, 40))  # no zero pixel: a face the stub would refuse unmasked
    out = admin.enrol("alice", face, mask_id="m-top")
    assert (out["identity_id"], out["mask_id"], out["enrolments"]) == ("alice", "m-top", 1)
    assert stub.state.gallery["alice"][0].shape == (16, 16, 3)  # masked here, at the server's size
    assert sorted(stub.state.seen[-1]["keys"]) == ["identity_id", "image", "mask_id"]
    out = client.verify(face, "alice")  # default: a served mask drawn at random (they rotate)
    assert out["match"] and out["mask_id"] in MASKS and out["received"] == [16, 16, 3]
    assert {client.identify(face, top_k=1)["mask_id"] for _ in range(30)} == set(MASKS)
    assert stub.state.seen[-1]["form"]["top_k"] == "1"
    assert [s["route"] for s in stub.state.seen].count("masks") == 2  # once per client (admin, user)
    with pytest.raises(ValueError, match="unknown mask_id"):
        client.verify(face, "alice", mask_id="m-nope")
    with pytest.raises(DocrayError) as e:
        client.verify(face, "bob")
    assert (e.value.status, e.value.code) == (404, "unknown_identity")
    with pytest.raises(DocrayError) as e:
        client.enrol("alice", face)
    assert e.value.status == 403
    assert admin.delete_identity("alice")["deleted"] is True
    with pytest.raises(DocrayError) as e:
        admin.delete_identity("alice")
    assert (e.value.status, e.value.code) == (404, "not_found")


def test_private_masks_decoded(client):
    body = client.private_masks()
    assert [m["mask_id"] for m in body["masks"]] == ["m-left", "m-top"]
    left = decode_array(body["masks"][0]["png"], mode="L")
    assert left.shape == (16, 16) and (left[:, :8] == 0).all() and (left[:, 8:] == 255).all()


# -- compression, file types, repository, health ----------------------------------------------------
def test_compress_server_and_split_decode_base64(client, stub):
    out = client.compress(_image())
    assert stub.state.seen[-1]["params"] == {"mode": "server"}
    assert isinstance(out["compressed"], bytes) and out["compressed"][:2] == b"\xff\xd8"  # JPEG
    out = client.compress(_image(), mode="split")
    assert out["processed"][:8] == b"\x89PNG\r\n\x1a\n" and "compressed" not in out
    data, body = client.compress_split(_image())
    assert body["type"] == "identity_card" and isinstance(body["processed"], bytes)
    assert 0 < len(data) <= load_file_types().get("identity_card").second.bytes
    assert body["stored"] == {"record_id": "rec-1", "which": "compressed", "bytes": len(data)}  # uploaded, as is
    assert client.compress_split(_image(), store=False)[1].get("stored") is None


def test_file_types_get_put_and_repository(client, admin):
    lib = client.file_types()
    assert "identity_card" in lib["types"]
    with pytest.raises(DocrayError) as e:
        client.update_file_types(lib)
    assert e.value.status == 403
    lib["types"]["identity_card"]["second"]["bytes"] = 9999
    assert admin.update_file_types(lib)["types"]["identity_card"]["second"]["bytes"] == 9999
    bad = json.loads(json.dumps(lib))
    bad["types"]["identity_card"]["second"] = {"width": 9999, "height": 9999, "bytes": 10**9}  # second > first
    with pytest.raises(DocrayError) as e:
        admin.update_file_types(bad)
    assert (e.value.status, e.value.code) == (400, "bad_file_types")
    assert decode_array(client.repository("rec-1")).shape == (32, 48, 3)
    with pytest.raises(DocrayError) as e:
        client.repository("rec-1", "original")
    assert e.value.status == 403
    assert admin.repository("rec-1", "original")[:4] == b"\x89PNG"


def test_health_degraded_and_metrics(client, stub):
    assert client.healthz()["status"] == "ok"
    stub.state.degraded = True
    assert client.healthz() == {"status": "degraded", "apps": {"Screening": "UNHEALTHY"}}  # 503 with a body
    assert "ray_docray_http_requests_total" in client.metrics()


# -- async ----------------------------------------------------------------------------------------
def test_async_client_same_routes(stub):
    async def go():
        http = httpx.AsyncClient(transport=httpx.ASGITransport(app=stub), base_url="http://stub")
        async with AsyncDocrayClient(api_key="ukey", http=http) as dc:
            rec = await dc.recognize(_image(), frames=[_image(1)], tasks=["doc_type"])
            priv = await dc.identify(_image(5, (40, 40)), mask_id="m-top")
            comp = await dc.compress(_image())
            data, _ = await dc.compress_split(_image())
            with pytest.raises(DocrayError) as e:
                await dc.add_target(_image(), "2024-05-01", "feed-7")
        await http.aclose()
        return rec, priv, comp, data, e.value

    rec, priv, comp, data, err = asyncio.run(go())
    assert rec["results"]["echo"]["frames"] == [[48, 32]] and stub.state.seen[0]["auth"] == "Bearer ukey"
    assert priv["mask_id"] == "m-top" and priv["received"] == [16, 16, 3]
    assert comp["compressed"][:2] == b"\xff\xd8" and len(data) > 0
    assert err.status == 403


# -- the CLI --------------------------------------------------------------------------------------
@pytest.fixture
def cli(stub, monkeypatch):
    """Run `docray api ...` against the stub; returns (exit code, stdout, stderr)."""
    made = []

    def make(url, api_key, timeout):
        made.append((url, api_key))
        return DocrayClient(url, api_key=api_key, http=TestClient(stub))

    monkeypatch.setattr(api_cli, "_make_client", make)

    def run(*args, env=None):
        r = CliRunner().invoke(api_cli.api, list(args), env=env)
        return r.exit_code, r.stdout, r.stderr

    run.made = made
    return run


def test_cli_recognize_screen_library(cli, stub, tmp_path):
    img = tmp_path / "id.png"
    img.write_bytes(encode_png(_image()))
    code, out, _ = cli("--api-key", "ukey", "recognize", str(img), "--frame", str(img), "--task", "doc_type",
                       "--attrs", '{"name": "Ada"}')
    assert code == 0
    echo = json.loads(out)["results"]["echo"]
    assert echo["tasks"] == ["doc_type"] and echo["user_attrs"] == {"name": "Ada"} and echo["frames"] == [[48, 32]]
    code, out, _ = cli("screen", str(img), str(img), "--release-time", "2024-05-01", env={"DOCRAY_API_KEY": "ukey",
                                                                                         "DOCRAY_URL": "http://gw:8000"})
    assert code == 0 and json.loads(out)["n_pictures"] == 2 and cli.made[-1] == ("http://gw:8000", "ukey")
    code, out, _ = cli("--api-key", "ukey", "library")
    assert json.loads(out)["tiles"] == 9
    code, _, err = cli("--api-key", "ukey", "recognize", str(img), "--attrs", "[1, 2")
    assert code == 2 and "--attrs" in err


def test_cli_errors_exit_1_with_server_code(cli, tmp_path):
    img = tmp_path / "poster.png"
    img.write_bytes(encode_png(_image()))
    code, out, err = cli("--api-key", "ukey", "add-target", str(img), "--release-time", "2024-05-01", "--source-id", "s")
    assert code == 1 and out == "" and "forbidden" in err and "403" in err
    code, _, err = cli("--api-key", "nope", "health")
    assert code == 0  # /healthz needs no key
    code, _, err = cli("--api-key", "nope", "library")
    assert code == 1 and "unauthorized" in err
    code, _, err = cli("--api-key", "ukey", "verify", str(img), "alice", "--mask-id", "m-nope")
    assert code == 1 and "unknown mask_id" in err
    code, _, err = cli("recognize", str(tmp_path / "missing.png"))
    assert code == 2  # usage: click checks the path


def test_cli_compress_private_repository_file_types(cli, tmp_path):
    img = tmp_path / "scan.png"
    img.write_bytes(encode_png(_image()))
    out_file = tmp_path / "scan.jpg"
    code, out, _ = cli("--api-key", "ukey", "compress", str(img), "--out", str(out_file))
    body = json.loads(out)
    assert code == 0 and body["compressed"].endswith("bytes>") and out_file.read_bytes()[:2] == b"\xff\xd8"
    code, out, _ = cli("--api-key", "ukey", "--full", "compress", str(img), "--mode", "split", "--out", str(out_file))
    body = json.loads(out)
    assert base64.b64decode(body["processed"])[:4] == b"\x89PNG"  # --full: the blob itself
    assert body["terminal_compressed_bytes"] == out_file.stat().st_size > 0
    code, out, _ = cli("--api-key", "akey", "enrol", "alice", str(img), "--mask-id", "m-left")
    assert code == 0 and json.loads(out)["enrolments"] == 1
    code, out, _ = cli("--api-key", "ukey", "verify", str(img), "alice")
    assert code == 0 and json.loads(out)["match"] is True and json.loads(out)["received"] == [16, 16, 3]
    code, out, _ = cli("--api-key", "ukey", "identify", str(img), "--top-k", "2")
    assert code == 0 and [c["identity_id"] for c in json.loads(out)["candidates"]] == ["alice"]
    code, out, _ = cli("--api-key", "akey", "delete-identity", "alice")
    assert code == 0 and json.loads(out)["deleted"] is True
    rec = tmp_path / "rec.png"
    code, out, _ = cli("--api-key", "akey", "repository", "rec-1", "--which", "original", "--out", str(rec))
    assert code == 0 and json.loads(out)["bytes"] == rec.stat().st_size and rec.read_bytes()[:4] == b"\x89PNG"
    code, out, _ = cli("--api-key", "ukey", "file-types")
    lib = json.loads(out)
    lib["types"]["identity_card"]["base"] = 70
    (tmp_path / "lib.yaml").write_text(json.dumps(lib))
    code, out, _ = cli("--api-key", "akey", "file-types", "--set-from", str(tmp_path / "lib.yaml"))
    assert code == 0 and json.loads(out)["types"]["identity_card"]["base"] == 70
    code, out, _ = cli("metrics")
    assert code == 0 and out.startswith("ray_docray_http_requests_total")


def test_cli_every_command_has_help_with_example():
    names = sorted(api_cli.api.commands)
    assert names == ["add-target", "audit", "compress", "delete-identity", "delete-record", "enrol", "file-types", "health",
                     "identify", "library", "metrics", "recognize", "repository", "screen", "verify"]
    for name in names:
        r = CliRunner().invoke(api_cli.api, [name, "--help"])
        assert r.exit_code == 0 and "Example:" in r.stdout and "docray api" in r.stdout, name
