"""The composed regen compression app on Ray Serve (tiny untrained models; behaviour, not quality)."""
from __future__ import annotations

import base64
import io

import pytest
import yaml
from PIL import Image

from docray.regen.provenance import read_provenance
from tests.test_regen_models import TINY_LIB


@pytest.fixture(scope="module")
def app_url(serve_port, tmp_path_factory):
    from ray import serve

    from serve_apps import regen
    from serve_apps.gateway import Gateway

    d = tmp_path_factory.mktemp("regen-app")
    (d / "lib.yaml").write_text(yaml.safe_dump(TINY_LIB))
    cfg = regen.RegenAppConfig(untrained="regen_tiny", file_types=str(d / "lib.yaml"), repository_url=f"sqlite:///{d}/r.db",
                               blob_root=str(d / "blobs"), steps=1, ungated=True)  # uncalibrated: regenerates anyway
    env = {"runtime_env": {"env_vars": {"DOCRAY_API_KEYS": "ukey=user,akey=admin"}}, "num_cpus": 0.25}
    app = Gateway.options(ray_actor_options=env).bind({"regen": cfg.model_dump(), "max_request_bytes": 1_000_000},
                                                           regen=regen.backend(cfg))
    serve.run(app, name="regen", route_prefix="/c")
    yield f"http://127.0.0.1:{serve_port}/c"
    serve.delete("regen")


def test_compress_split_file_types_and_repository_roles(app_url):
    import httpx

    from docray.client import compress_on_terminal, fetch_file_types
    from docray.synth import generate

    png = generate("documents", 5, 6, seed=0, n_angles=0).column("image")[0].as_py()
    user, admin = {"Authorization": "Bearer ukey"}, {"Authorization": "Bearer akey"}
    with httpx.Client(timeout=120) as c:
        assert c.post(f"{app_url}/v1/compress", files={"image": ("a.png", png)}).status_code == 401
        r = c.post(f"{app_url}/v1/compress?mode=server", files={"image": ("a.png", png)}, headers=user)
        assert r.status_code == 200, r.text
        body = r.json()
        data = base64.b64decode(body["compressed"])
        assert len(data) <= 2500 and body["sizes"]["compressed"] == len(data) and body["type"] in TINY_LIB["types"]
        rid = body["record_id"]
        assert body["method"] == "regen" and body["gate"]["calibrated"] is False and body["provenance"]["record_id"] == rid
        assert read_provenance(data) == body["provenance"]  # the file itself says it was regenerated, and which record
        assert {f["source"] for f in body["fields"]} <= {"regenerated", "pixels"} and len(body["fields"]) >= 5
        assert c.get(f"{app_url}/v1/repository/{rid}/compressed", headers=user).content == data
        assert c.get(f"{app_url}/v1/repository/{rid}/original", headers=user).status_code == 403
        assert c.get(f"{app_url}/v1/repository/{rid}/original", headers=admin).content == png
        assert c.get(f"{app_url}/v1/repository/nope/processed", headers=user).json()["error"]["code"] == "not_found"

        s = c.post(f"{app_url}/v1/compress?mode=split", files={"image": ("a.png", png)}, headers=user).json()
        processed = base64.b64decode(s["processed"])
        assert Image.open(io.BytesIO(processed)).size == (96, 64) and "compressed" not in s
        lib = fetch_file_types(app_url, api_key="ukey")
        assert lib.model_dump() == TINY_LIB
        assert len(compress_on_terminal(processed, s["type"], lib)) <= 2500

        # file-type edits: admin only, validated, stored, served back
        edited = yaml.safe_load(yaml.safe_dump(TINY_LIB))
        name = next(iter(edited["types"]))
        edited["types"][name]["base"] = 42
        assert c.put(f"{app_url}/v1/file-types", json=edited, headers=user).status_code == 403
        bad = yaml.safe_load(yaml.safe_dump(edited))
        bad["types"][name]["second"]["bytes"] = 10**9  # above the first threshold
        r = c.put(f"{app_url}/v1/file-types", json=bad, headers=admin)
        assert r.status_code == 400 and r.json()["error"]["code"] == "bad_file_types", r.text
        r = c.put(f"{app_url}/v1/file-types", json=edited, headers=admin)
        assert r.status_code == 200 and r.json()["types"][name]["base"] == 42, r.text
        assert c.get(f"{app_url}/v1/file-types", headers=user).json()["types"][name]["base"] == 42

        bad = c.post(f"{app_url}/v1/compress", files={"image": ("x.png", b"not an image")}, headers=user)
        assert bad.status_code == 415 and bad.json()["error"]["code"] == "unsupported_format"
        assert c.post(f"{app_url}/v1/compress?mode=zip", files={"image": ("a.png", png)}, headers=user).status_code == 400


def test_gateway_health_limits_docs_and_metrics(app_url):
    """The gateway's own routes and limits (this gateway deploys regen only)."""
    import time

    import httpx

    user = {"Authorization": "Bearer ukey"}
    with httpx.Client(timeout=60) as c:
        h = c.get(f"{app_url}/healthz")
        assert h.status_code == 200 and h.json()["status"] == "ok" and set(h.json()["apps"]) == {"regen"}
        r = c.post(f"{app_url}/v1/recognize", files={"image": ("a.png", b"x")}, headers=user)
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_deployed"
        big = c.post(f"{app_url}/v1/compress", files={"image": ("a.png", b"0" * 1_200_000)}, headers=user)
        assert big.status_code == 413 and big.json()["error"]["code"] == "too_many_bytes"
        spec = c.get(f"{app_url}/openapi.json").json()
        assert {"/v1/recognize", "/v1/screen", "/v1/screen/targets", "/v1/privacy/verify", "/v1/compress",
                "/v1/file-types", "/v1/repository/{record_id}/{which}", "/healthz", "/metrics"} <= set(spec["paths"])
        want = ["ray_docray_http_requests_total", 'route="/v1/file-types"', "ray_docray_http_request_latency_ms_bucket",
                "ray_docray_batch_size_bucket"]  # the last from the Regen replica, another process
        deadline, text = time.time() + 60, ""
        while time.time() < deadline and not all(w in text for w in want):  # each process exports every few seconds
            time.sleep(2)
            text = c.get(f"{app_url}/metrics").text
        assert [w for w in want if w not in text] == []


def test_split_upload_and_attachments_with_roles(app_url):
    """Split mode's file uploaded into its record (once; a wrong size or kind refused) and the attachments
    route: seals for users, the original's pieces (portrait, document without it) for admins only."""
    import httpx

    from docray.client import DocrayClient, DocrayError
    from docray.regen.quality import encode
    from docray.synth import generate

    png = generate("documents", 10, 11, seed=0, n_angles=0).column("image")[0].as_py()  # a portrait and a seal
    with DocrayClient(app_url, api_key="ukey", timeout=120) as user, DocrayClient(app_url, api_key="akey", timeout=120) as admin:
        data, body = user.compress_split(png)  # compressed here, uploaded into the record
        rid = body["record_id"]
        assert body["stored"]["sizes"]["compressed"] == len(data) and user.repository(rid, "compressed") == data
        with pytest.raises(DocrayError) as e:
            user.upload_compressed(rid, data)
        assert (e.value.status, e.value.code) == (409, "already_compressed")

        s = user.compress(png, mode="split")  # another record; a file larger than its second threshold
        fmt = TINY_LIB["types"][s["type"]]["format"]
        big = encode(Image.open(io.BytesIO(s["processed"])).resize((150, 100)), fmt, 30, s["provenance"])
        with pytest.raises(DocrayError) as e:
            user.upload_compressed(s["record_id"], big)
        assert (e.value.status, e.value.code) == (422, "over_second_threshold") and "second threshold" in e.value.message
        r = httpx.put(f"{app_url}/v1/repository/{s['record_id']}/processed", files={"image": ("c", big)},
                      headers={"Authorization": "Bearer ukey"})
        assert r.status_code == 400 and r.json()["error"]["code"] == "bad_image_kind"
        with pytest.raises(DocrayError) as e:
            user.repository(s["record_id"], "compressed")
        assert e.value.status == 404  # nothing stored by the refused uploads

        listed = body["attachments"]
        assert any(a["kind"] == "seal" for a in listed), listed
        for a in listed:  # each by its number: users read the seals, admins everything
            assert len(admin.attachment(rid, a["n"])) == a["bytes"]
            if a["readable_by"] == "user":
                assert user.attachment(rid, a["n"]) == admin.attachment(rid, a["n"])
            else:
                with pytest.raises(DocrayError) as e:
                    user.attachment(rid, a["n"])
                assert (e.value.status, e.value.code) == (403, "forbidden")
        with pytest.raises(DocrayError) as e:
            user.attachment(rid, len(listed))
        assert e.value.status == 404
