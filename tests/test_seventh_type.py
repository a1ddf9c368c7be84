"""A seventh document type, added with no code change: its template file (a Chinese resident card,
`examples/doctypes/cn_resident_card.yaml`) and a dataset of it (tests/own_world.py: drawn with its
own fonts and backgrounds, not by docray's synthetic world), imported with `docray data import`.
After a short training, the served `/v1/recognize` names it the top type on held-out samples and
`/v1/compress` takes it."""
from __future__ import annotations

import io

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from tests import own_world

TYPES = ["identity_card", "passport_page", "driving_licence", "cn_resident_card"]


pytestmark = pytest.mark.e2e  # trains a model with the new type first (about 2 min): make test-e2e


@pytest.fixture(scope="module")
def trained(ray_cluster, cn_type, tmp_path_factory):
    """The dataset imported (192 training rows, 48 a type), the unified model's doc_type task trained
    from scratch on it (lr 5e-4: from scratch, 1e-3 stalls at chance; ~0.9 val accuracy after 24
    epochs), and a tiny regen model trained one epoch."""
    from docray.cli import main
    from train_jobs import train_regen, train_recognition

    src, out = tmp_path_factory.mktemp("seventh-src"), tmp_path_factory.mktemp("seventh")
    own_world.write_documents(src, TYPES, per_type=60, seed=1)
    res = CliRunner().invoke(main, ["data", "import", "documents", str(src), str(out / "docs"), "--split"])
    assert res.exit_code == 0, res.output
    train, val = str(out / "docs" / "train"), str(out / "docs" / "val")
    uni = train_recognition.main(["--set", f"train={train}", f"val={val}", "model=unified_small", "encoder_from=",
                              "text_encoder=hash", "tasks=[doc_type]", "epochs=24", "batch_size=8", "lr=0.0005",
                              "register_as=test-seventh", f"out={out / 'unified'}"])
    regen = train_regen.run(train_regen.RegenTrainConfig(
        model="regen_tiny", train=train, val=val, max_epochs=1, batch_size=8, to_registry=False, num_workers=1,
        out=str(out / "regen"), calibrate_search_others=0))  # the search: test_regen_gate
    return uni, regen, out


def _held_out(n: int) -> list[bytes]:
    """Photos of the new type the training never saw (another seed)."""
    rng = np.random.default_rng(12345)
    photos = []
    for _ in range(n):
        buf = io.BytesIO()
        own_world.document(rng, "cn_resident_card")["image"].save(buf, format="JPEG", quality=90)
        photos.append(buf.getvalue())
    return photos


def test_the_new_type_is_a_class_of_the_model_trained_with_no_code_change(trained):
    from docray.storage.registry import ModelRegistry

    uni, _, _ = trained
    assert uni["registered"].startswith("test-seventh/v") and uni["worker_imported_synth"] is False
    _, config, _ = ModelRegistry().load("test-seventh")
    classes = next(t for t in config["overrides"]["catalogue"]["tasks"] if t["name"] == "doc_type")["classes"]
    assert "cn_resident_card" in classes and len(classes) == 7  # the six built-ins and the user's


def test_served_recognize_names_it_and_compress_takes_it(trained, serve_port, tmp_path):
    import httpx
    from ray import serve

    from serve_apps import regen as regen_app
    from serve_apps.gateway import build_app

    _, regen, _ = trained
    lib = tmp_path / "lib.yaml"  # the tiny regen model's sizes; the new type gets its entry like any other
    entry = {"base": 80, "format": "webp", "second": {"width": 96, "height": 64, "bytes": 2500}}
    lib.write_text(yaml.safe_dump({"first": {"width": 96, "height": 64, "bytes": 8000}, "default": entry,
                                   "types": {t: entry for t in TYPES}}))
    cfg = {"recognition": {"model": "test-seventh", "select": "doc_type"},
           "regen": regen_app.RegenAppConfig(
               model_dir=regen["model_dir"], file_types=str(lib), repository_url=f"sqlite:///{tmp_path}/r.db", blob_root=str(tmp_path / "blobs"),
               steps=1).model_dump()}
    serve.run(build_app(cfg), name="seventh", route_prefix="/seventh")
    url = f"http://127.0.0.1:{serve_port}/seventh/v1"
    try:
        photos = _held_out(10)
        with httpx.Client(timeout=120) as c:
            top = []
            for png in photos:
                r = c.post(f"{url}/recognize", files={"image": ("d.jpg", png, "image/jpeg")})
                assert r.status_code == 200, r.text
                top.append(r.json()["results"]["doc_type"]["label"])
            assert top.count("cn_resident_card") >= 8, top
            r = c.post(f"{url}/compress?mode=server", files={"image": ("d.jpg", photos[0], "image/jpeg")})
            assert r.status_code == 200, r.text
            assert r.json()["record_id"]
    finally:
        serve.delete("seventh")
