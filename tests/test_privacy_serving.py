"""Private recognition served (issue 18 item 4): enrol / verify / identify through the target masks.

Library level, no Ray: the gallery in the repository database (SQLite, and Postgres when
DOCRAY_TEST_POSTGRES_URL is set), the threshold calibrated at FAR 1e-2 and checked on held-out
identities, the serving policy (refuses and names the failed bound unless the development override
is set), the Privacy deployment as a plain class with every bad input of the issue (unknown id,
unmasked image, wrong mask id, the same image twice) answered by a clear 4xx and nothing stored.
Then once through Serve: the gateway's routes, roles, the client that masks locally, the old route's 410.
"""
from __future__ import annotations

import asyncio
import io

import numpy as np
import pytest
import torch
from PIL import Image

from docray.client import mask_locally
from docray.privacy.masks import decode_mask, synthetic_masks
from docray.privacy.openset import load_openset, pair_scores
from docray.privacy.verification import CALIBRATION, CalibrationConfig, calibrate, run, serving_policy
from docray.storage.blobs import NotFound
from docray.storage.repository import AlreadyEnrolled, ImageRepository
from serve_apps.http import ApiError

SIZE = 32


# -- a tiny world: a masked recogniser, target masks with their stage-5 verdict, faces nobody trained on --

@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from docray.models import build_model, save_pretrained

    root = tmp_path_factory.mktemp("privacy-serving")
    torch.manual_seed(0)
    save_pretrained(build_model("recognizer_tiny", num_classes=4).eval(), root / "masked")
    masks = synthetic_masks(6, seed=3, size=SIZE).to_pandas()
    targets = masks.iloc[[1, 2, 3]].reset_index(drop=True).assign(  # the third fails the attacker bound
        acc_masked=0.8, acc_original=0.1, drop=0.1, masked_tar=0.6, original_tar=0.65,
        worst_attacker_tar=[0.05, 0.08, 0.30], worst_attack="telea (whole)")
    targets.to_parquet(root / "targets.parquet")
    cal = run(CalibrationConfig(masked=str(root / "masked"), targets=str(root / "targets.parquet"),
                                identities={"train": 4, "eval": 8}, samples=6, image_size=SIZE), log=lambda *_: None)
    faces = load_openset("synth", {"train": 4, "eval": 8, "attacker": 1}, samples=6, size=SIZE)["eval"]
    return {"root": root, "targets": targets, "calibration": cal, "faces": faces,
            "served": targets["mask_id"].tolist()[:2], "unserved": targets["mask_id"].iloc[2],
            "masks": {r.mask_id: decode_mask(r.mask) for r in targets.itertuples()}}


def face(world, identity_no: int, k: int = 0) -> np.ndarray:
    """Image k of the identity_no-th eval identity, uint8 (SIZE, SIZE, 3)."""
    f = world["faces"]
    who = np.unique(f.labels)[identity_no]
    return f.images[np.flatnonzero(f.labels == who)[k]]


def masked(world, img: np.ndarray, mask_id: str) -> Image.Image:
    """What the gateway hands the deployment: the client's masked PNG, decoded."""
    return Image.open(io.BytesIO(mask_locally(img, world["masks"][mask_id]))).convert("RGB")


def reencoded(img: Image.Image) -> Image.Image:
    """The same pixels in another file (PNG at another compression level)."""
    buf = io.BytesIO()
    img.save(buf, "PNG", compress_level=9, optimize=True)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


# -- the gallery in the repository database --------------------------------------------------------


def test_gallery_enrols_refuses_the_same_image_and_deletes_an_identity_with_its_audit(repo):
    e = np.random.default_rng(0).normal(size=(3, 8)).astype(np.float32)
    assert repo.enrol("alice", e[0], "a" * 64, "m1", "M@v1", actor="key:abc")["enrolments"] == 1
    assert repo.enrol("alice", e[1], "b" * 64, "m2", "M@v1")["enrolments"] == 2  # several images per identity
    repo.enrol("bob", e[2], "a" * 64, "m1", "M@v1")  # the same pixels for another identity: its own enrolment
    repo.enrol("alice", e[0], "a" * 64, "m1", "M@v2")  # ...or by another model (a re-enrolment after an upgrade)
    with pytest.raises(AlreadyEnrolled, match="already has this image"):
        repo.enrol("alice", e[0], "a" * 64, "m2", "M@v1")
    assert repo.count_enrolments() == 4 and len(repo.audit_log(action="enrol")) == 4  # the refused one left nothing
    ids, embs = repo.gallery("M@v1")
    assert ids == ["alice", "alice", "bob"] and np.array_equal(embs, e)
    assert repo.gallery("other")[0] == []
    out = repo.delete_identity("alice", actor="key:abc", route="DELETE /v1/privacy/identities/alice")
    assert out == {"identity_id": "alice", "deleted": True, "enrolments": 3}  # every model's
    assert repo.gallery("M@v1")[0] == ["bob"] and repo.enrolled("alice") == 0
    with pytest.raises(NotFound):
        repo.delete_identity("alice")
    last = repo.audit_log(identity_id="alice")[0]
    assert (last["action"], last["actor"], last["what"], last["record_id"]) == ("delete", "key:abc", "identity: 3 enrolment(s)",
                                                                              None)


# -- the threshold ---------------------------------------------------------------------------------

def test_calibrated_threshold_keeps_the_far_and_is_checked_on_held_out_identities():
    rng = np.random.default_rng(1)
    centres = rng.normal(size=(40, 16))
    labels = np.repeat(np.arange(40), 6)
    e = centres[labels] + rng.normal(scale=0.6, size=(len(labels), 16))
    e = (e / np.linalg.norm(e, axis=1, keepdims=True)).astype(np.float32)
    cal = calibrate(e, labels, far=1e-2, seed=0)
    assert cal["identities"] == {"calibration": 20, "heldout": 20}
    assert cal["pairs"]["heldout"] == {"genuine": 20 * 15, "impostor": 120 * 119 // 2 - 20 * 15}
    ids = np.unique(labels)[np.random.default_rng(0).permutation(40)]
    rows = np.isin(labels, ids[:20])
    gen, imp = pair_scores(e[rows], e[rows], labels[rows])
    assert np.mean(imp > cal["threshold"]) <= 1e-2 < np.mean(imp >= cal["threshold"])  # the tightest such threshold
    assert cal["tar"] == np.mean(gen > cal["threshold"]) and 0.5 < cal["tar"] <= 1
    assert 0 < cal["heldout_far"] < 0.05 and 0.5 < cal["heldout_tar"] <= 1  # people it was not picked on
    with pytest.raises(ValueError, match="at least 4 identities"):
        calibrate(e[:18], labels[:18])


def test_calibration_job_writes_what_the_service_reads(world):
    from serve_apps.privacy import PrivacyAppConfig, load_policy

    cal = world["calibration"]
    assert cal["model"] == str(world["root"] / "masked") and cal["mask_ids"] == world["targets"]["mask_id"].tolist()
    assert (world["root"] / CALIBRATION).exists() and cal["far"] == 0.01 and len(cal["eval_identities"]) == 8
    assert min(cal["eval_identities"]) >= 4  # the identities the model trained on are skipped
    policy, masks = load_policy(PrivacyAppConfig(masked=str(world["root"] / "masked"),
                                                 targets=str(world["root"] / "targets.parquet"), image_size=SIZE))
    assert policy.serving and policy.refusal is None and policy.masks == world["served"]
    assert policy.threshold == cal["threshold"] and "held-out FAR" in policy.threshold_source
    assert set(masks) == set(world["targets"]["mask_id"])


def test_the_service_reads_its_targets_and_calibration_from_object_storage(world, s3):
    """An s3:// DOCRAY_HOME: the grid's targets, funnel.json and calibration.json read through the
    same filesystem layer (a Serve replica on another node has no local copy)."""
    from docray.storage.blobs import write_file
    from serve_apps.privacy import PrivacyAppConfig, load_policy

    folder = f"{s3}/privacy-serving/grid"
    for name in ("targets.parquet", CALIBRATION):
        write_file(f"{folder}/{name}", (world["root"] / name).read_bytes())
    policy, masks = load_policy(PrivacyAppConfig(masked=str(world["root"] / "masked"), targets=f"{folder}/targets.parquet",
                                                 image_size=SIZE))
    assert policy.serving and policy.masks == world["served"] and set(masks) == set(world["targets"]["mask_id"])
    missing, _ = load_policy(PrivacyAppConfig(masked=str(world["root"] / "masked"), targets=f"{s3}/nowhere/targets.parquet",
                                              image_size=SIZE))
    assert not missing.serving and "no target masks at s3://" in missing.refusal


# -- the serving policy ------------------------------------------------------------------------------

def test_serving_policy_refuses_and_names_the_bound_unless_overridden(world):
    t, cal, model = world["targets"], dict(world["calibration"]), world["calibration"]["model"]
    p = serving_policy(t, cal, model)
    assert p.serving and p.masks == world["served"]  # only the masks that meet both bounds
    bare = t.drop(columns=["masked_tar", "original_tar", "worst_attacker_tar"])
    p = serving_policy(bare, cal, model)
    assert not p.serving and "no attacker verdict" in p.refusal and "stage 5" in p.refusal
    p = serving_policy(t.assign(worst_attacker_tar=[0.2, 0.3, 0.4]), cal, model)
    assert not p.serving and "the attacker bound fails" in p.refusal and "misses by 0.100" in p.refusal
    p = serving_policy(t.assign(masked_tar=0.2), cal, model)
    assert not p.serving and "the masked-recogniser bound fails" in p.refusal
    p = serving_policy(t, None, model)
    assert not p.serving and p.threshold is None and "no verification threshold is calibrated" in p.refusal
    p = serving_policy(t, cal, "registry:mask_recognizer_masked@v0009")
    assert not p.serving and "calibrated for" in p.refusal
    p = serving_policy(t, {**cal, "mask_ids": cal["mask_ids"][:1]}, model)
    assert not p.serving and world["served"][1] in p.refusal
    p = serving_policy(None, cal, model, dev_override=True, missing="no target masks at /x")
    assert not p.serving and p.refusal == "no target masks at /x"  # the override cannot make masks
    p = serving_policy(bare, None, model, dev_override=True, dev_threshold=0.3)
    assert p.serving and p.threshold == 0.3 and p.threshold_source.startswith("dev_threshold")
    assert p.info()["dev_override"] is True and "no attacker verdict" in p.info()["refusal"]


# -- the deployment as a plain class: every bad input a clear 4xx, nothing stored ---------------------------

def _privacy(world, tmp_path, **over):
    from serve_apps.privacy import Privacy

    cfg = {"masked": str(world["root"] / "masked"), "targets": str(world["root"] / "targets.parquet"), "image_size": SIZE,
           "repository_url": f"sqlite:///{tmp_path / 'gallery.db'}", **over}
    p = Privacy.func_or_class(cfg)

    async def direct(x):  # @serve.batch needs a replica: embed one image unbatched
        return p.rec({"image": x[None]})["embedding"][0]

    p.embed_batch = direct
    return p


def _status(coro) -> tuple[int, str]:
    try:
        asyncio.run(coro)
    except ApiError as e:
        return e.status, e.code
    return 200, ""


def test_bad_input_is_a_clear_4xx_and_stores_nothing(world, tmp_path):
    p = _privacy(world, tmp_path)
    m0, m1 = world["served"]
    a0, a1, b0 = face(world, 0), face(world, 0, 1), face(world, 1)
    out = asyncio.run(p.enrol(masked(world, a0, m0), "alice", m0, actor="key:abc", route="POST /v1/privacy/enrol"))
    assert (out["identity_id"], out["enrolments"], out["mask_id"]) == ("alice", 1, m0) and "dev_override" not in out
    repo = p.repo
    cases = {
        "the same image twice": (p.enrol(masked(world, a0, m0), "alice", m0), (409, "already_enrolled")),
        "the same image, re-encoded": (p.enrol(reencoded(masked(world, a0, m0)), "alice", m0), (409, "already_enrolled")),
        "unknown id": (p.verify(masked(world, a1, m0), "nobody", m0), (404, "unknown_identity")),
        "unmasked image": (p.enrol(Image.fromarray(a1), "alice", m0), (400, "mask_mismatch")),
        "unmasked image, verify": (p.verify(Image.fromarray(a1), "alice", m1), (400, "mask_mismatch")),
        "masked with another mask": (p.enrol(masked(world, a1, m1), "alice", m0), (400, "mask_mismatch")),
        "wrong mask id": (p.enrol(masked(world, a1, m0), "alice", "msk-nope"), (400, "unknown_mask")),
        "a target that fails the bounds": (p.identify(masked(world, a1, world["unserved"]), world["unserved"], 5),
                                           (400, "unknown_mask")),
        "no mask id": (p.identify(Image.fromarray(a1), None, 5), (400, "missing_field")),
        "wrong size": (p.verify(Image.fromarray(a1).resize((48, 48)), "alice", m0), (400, "bad_size")),
        "top_k too large": (p.identify(masked(world, a1, m0), m0, 999), (400, "bad_top_k")),
    }
    for name, (coro, want) in cases.items():
        assert _status(coro) == want, name
    assert repo.count_enrolments() == 1 and len(repo.audit_log()) == 1  # nothing stored by a bad request
    v = asyncio.run(p.verify(masked(world, a1, m1), "alice", m1))  # another photo, another mask
    assert set(v) >= {"identity_id", "match", "score", "threshold", "mask_id", "models"} and "label" not in v
    assert v["threshold"] == world["calibration"]["threshold"] and isinstance(v["match"], bool) and -1 <= v["score"] <= 1
    asyncio.run(p.enrol(masked(world, b0, m1), "bob", m1))
    ids = asyncio.run(p.identify(masked(world, a1, m0), m0, 5))
    assert sorted(c["identity_id"] for c in ids["candidates"]) == ["alice", "bob"] and ids["gallery_identities"] == 2
    assert ids["candidates"][0]["score"] >= ids["candidates"][1]["score"]
    assert asyncio.run(p.delete_identity("alice", actor="key:abc"))["enrolments"] == 1
    assert _status(p.delete_identity("alice")) == (404, "not_found")
    assert _status(p.verify(masked(world, a1, m0), "alice", m0)) == (404, "unknown_identity")
    assert [e["action"] for e in repo.audit_log()] == ["delete", "enrol", "enrol"]


def test_refuses_without_proven_masks_and_the_override_is_shown(world, tmp_path):
    bare = world["targets"].drop(columns=["worst_attacker_tar"])
    bare.to_parquet(tmp_path / "targets.parquet")
    (tmp_path / CALIBRATION).write_text((world["root"] / CALIBRATION).read_text())
    p = _privacy(world, tmp_path, targets=str(tmp_path / "targets.parquet"))
    m0 = world["served"][0]
    info = p.info()
    assert info["serving"] is False and info["dev_override"] is False and "no attacker verdict" in info["refusal"]
    for coro in (p.enrol(masked(world, face(world, 0), m0), "alice", m0), p.verify(masked(world, face(world, 0), m0), "a", m0),
                 p.identify(masked(world, face(world, 0), m0), m0, 3)):
        assert _status(coro) == (503, "verification_refused")
    with pytest.raises(ApiError, match="refuses to serve: the target masks carry no attacker verdict"):
        p.masks()
    p.repo.enrol("carol", np.ones(4), "c" * 64, m0, "x")
    assert asyncio.run(p.delete_identity("carol"))["deleted"]  # deleting an identity always works
    dev = _privacy(world, tmp_path, targets=str(tmp_path / "targets.parquet"), dev_override=True)
    info = dev.info()  # what /healthz shows
    assert info["serving"] and info["dev_override"] and "no attacker verdict" in info["refusal"]
    assert info["threshold"] == world["calibration"]["threshold"]  # calibrated for these masks: still used
    assert [m["mask_id"] for m in dev.masks()["masks"]] == world["targets"]["mask_id"].tolist()
    out = asyncio.run(dev.enrol(masked(world, face(world, 0), m0), "alice", m0))
    assert out["dev_override"] is True


# -- once through Serve: the gateway's routes, roles and the client ------------------------------------

@pytest.fixture(scope="module")
def served(serve_port, world):
    from ray import serve

    from serve_apps import privacy
    from serve_apps.gateway import Gateway

    cfg = privacy.PrivacyAppConfig(masked=str(world["root"] / "masked"), targets=str(world["root"] / "targets.parquet"),
                                   image_size=SIZE, repository_url=f"sqlite:///{world['root'] / 'gallery.db'}")
    env = {"runtime_env": {"env_vars": {"DOCRAY_API_KEYS": "ukey=user,akey=admin"}}, "num_cpus": 0.1}
    app = Gateway.options(ray_actor_options=env).bind({"privacy": cfg.model_dump()},
                                                      privacy=privacy.Privacy.options(ray_actor_options={"num_cpus": 0.1})
                                                      .bind(cfg.model_dump()))
    serve.run(app, name="privacy-serving", route_prefix="/ps")
    try:
        yield f"http://127.0.0.1:{serve_port}/ps", cfg
    finally:
        serve.delete("privacy-serving")


def test_routes_through_serve(served, world):
    import hashlib

    import httpx

    from docray.client import DocrayClient, DocrayError
    from docray.imageio import encode_png

    url, cfg = served
    user, admin = {"Authorization": "Bearer ukey"}, {"Authorization": "Bearer akey"}
    m0 = world["served"][0]
    a0, a1 = face(world, 2), face(world, 2, 1)
    with httpx.Client(timeout=60) as c:
        h = c.get(f"{url}/healthz").json()["apps"]["privacy"]
        assert h["serving"] and h["dev_override"] is False and h["threshold"] == world["calibration"]["threshold"]
        assert c.get(f"{url}/v1/privacy/masks").status_code == 401  # the masks are a secret: a key first
        r = c.post(f"{url}/v1/recognize-private", files={"image": ("f.png", encode_png(a0), "image/png")}, headers=user)
        err = r.json()["error"]
        assert r.status_code == 410 and err["code"] == "deprecated"
        assert all(route in err["message"] for route in ("/v1/privacy/enrol", "/v1/privacy/verify", "/v1/privacy/identify"))
        r = c.get(f"{url}/v1/recognize-private/masks", headers=user)
        assert r.status_code == 410 and "/v1/privacy/masks" in r.json()["error"]["message"]

        raw = {"image": ("f.png", encode_png(a0), "image/png")}  # NOT masked
        good = {"image": ("m.png", mask_locally(a0, world["masks"][m0]), "image/png")}
        bad = [(f"{url}/v1/privacy/enrol", raw, {"identity_id": "dave", "mask_id": m0}, admin, 400, "mask_mismatch"),
               (f"{url}/v1/privacy/enrol", good, {"identity_id": "dave", "mask_id": "msk-nope"}, admin, 400, "unknown_mask"),
               (f"{url}/v1/privacy/enrol", good, {"identity_id": "dave"}, admin, 400, "missing_field"),
               (f"{url}/v1/privacy/enrol", good, {"identity_id": "../etc", "mask_id": m0}, admin, 400, "bad_id"),
               (f"{url}/v1/privacy/enrol", good, {"identity_id": "dave", "mask_id": m0}, user, 403, "forbidden"),
               (f"{url}/v1/privacy/verify", good, {"identity_id": "nobody", "mask_id": m0}, user, 404, "unknown_identity"),
               (f"{url}/v1/privacy/identify", good, {"mask_id": m0, "top_k": "0"}, user, 400, "bad_top_k")]
        for route, files, data, who, status, code in bad:
            r = c.post(route, files=files, data=data, headers=who)
            assert (r.status_code, r.json()["error"]["code"]) == (status, code), (route, data, r.text)

    with DocrayClient(url, api_key="akey") as adm, DocrayClient(url, api_key="ukey") as dc:
        assert adm.enrol("erin", a0, mask_id=m0)["enrolments"] == 1
        with pytest.raises(DocrayError) as e:
            adm.enrol("erin", a0, mask_id=m0)
        assert (e.value.status, e.value.code) == (409, "already_enrolled")
        with ImageRepository(cfg.repository_url) as repo:
            assert repo.count_enrolments() == 1  # one enrolment: no bad request stored anything
        v = dc.verify(a1, "erin")  # masked here with a served mask drawn at random
        assert v["mask_id"] in world["served"] and set(v) >= {"match", "score", "threshold"} and "label" not in v
        assert [c["identity_id"] for c in dc.identify(a1, top_k=3)["candidates"]] == ["erin"]
        with pytest.raises(DocrayError) as e:
            dc.delete_identity("erin")
        assert e.value.status == 403
        assert adm.delete_identity("erin") == {"identity_id": "erin", "deleted": True, "enrolments": 1}
        with pytest.raises(DocrayError) as e:
            dc.verify(a1, "erin")
        assert (e.value.status, e.value.code) == (404, "unknown_identity")
    with ImageRepository(cfg.repository_url) as repo:
        entries = repo.audit_log(identity_id="erin")
    akey = "key:" + hashlib.sha256(b"akey").hexdigest()[:12]
    assert [(e["action"], e["actor"], e["route"]) for e in entries] == [
        ("delete", akey, "DELETE /ps/v1/privacy/identities/erin"), ("enrol", akey, "POST /ps/v1/privacy/enrol")]


def test_the_quickstart_deploys_privacy_under_the_override(home):
    import yaml

    from cluster.quickstart import GATEWAY, ROOT, with_dev_override
    from serve_apps.gateway import GatewayConfig

    path = with_dev_override(GATEWAY)
    conf, orig = yaml.safe_load(path.read_text()), yaml.safe_load((ROOT / GATEWAY).read_text())
    args = conf["applications"][0]["args"]
    assert args["privacy"] == {**orig["applications"][0]["args"]["privacy"], "dev_override": True}
    assert {k: v for k, v in args.items() if k != "privacy"} == {k: v for k, v in orig["applications"][0]["args"].items()
                                                                  if k != "privacy"}
    assert GatewayConfig.model_validate(args).privacy.dev_override and str(path).startswith(str(home))
    assert "dev_override" not in (ROOT / GATEWAY).read_text()  # the production config stays without it
