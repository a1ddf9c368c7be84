"""Mask privacy on Ray: the Data grid equals the plain loop; the private endpoint, its client and its errors."""
from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from docray.privacy.data import synth_identities
from docray.privacy.grid import GridPredictor, plain_grid
from docray.privacy.masks import decode_mask, synthetic_masks
from docray.models import build_model, save_pretrained


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    faces = synth_identities(n_identities=4, samples=20, seed=0, size=32)["test"]  # 8 test faces
    models = {"original": build_model("recognizer_tiny", num_classes=4).eval(),
              "masked": build_model("recognizer_tiny", num_classes=4).eval()}
    return faces, models, synthetic_masks(7, seed=3, size=32)


def test_ray_grid_gives_exactly_the_plain_loop_numbers(ray_cluster, tiny):
    from data_jobs.privacy_grid import GridEvalConfig, ray_grid

    faces, models, masks = tiny
    cfg = GridEvalConfig(runs=3, batch_size=2, concurrency=2, chunk=5, seed=4)
    got = ray_grid(masks, ray_cluster.put((faces.images, faces.labels)), models, cfg)
    threads = torch.get_num_threads()
    try:  # same thread count as the actors, so every float op is the same
        ref = plain_grid(masks, GridPredictor(faces.images, faces.labels, models, runs=3, chunk=5, seed=4, num_threads=1),
                         batch_size=3)
    finally:
        torch.set_num_threads(threads)
    assert got["mask_no"].tolist() == list(range(7))
    for col in ("correct_original", "correct_masked"):
        assert [list(v) for v in got[col]] == [list(v) for v in ref[col]]
    assert np.array_equal(got["acc_masked"].to_numpy(), ref["acc_masked"].to_numpy())
    assert got["bin"].tolist() == masks.column("bin").to_pylist()


@pytest.fixture(scope="module")
def served(serve_port, tiny, tmp_path_factory):
    from ray import serve

    from serve_apps.gateway import build_app

    faces, models, masks = tiny
    root = tmp_path_factory.mktemp("private")
    save_pretrained(models["masked"], root / "masked")
    t = masks.to_pandas().iloc[[5, 4]].assign(acc_masked=[0.8, 0.7], acc_original=[0.1, 0.2], drop=[0.1, 0.1])
    t.to_parquet(root / "targets.parquet")
    serve.run(build_app({"privacy": {"masked": str(root / "masked"), "targets": str(root / "targets.parquet"), "image_size": 32}}),
              name="private-test", route_prefix="/private-test")
    try:
        yield f"http://127.0.0.1:{serve_port}/private-test", faces, models["masked"], t
    finally:
        serve.delete("private-test")


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def test_endpoint_raw_and_client_masked_agree(served):
    import httpx

    from docray.privacy.client import PrivacyClient

    url, faces, model, targets = served
    best = targets.iloc[0]["mask_id"]
    r = httpx.post(f"{url}/v1/recognize-private", files={"image": ("f.png", _png(faces.images[0]), "image/png")},
                   data={"embedding": "true"}, timeout=60)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["mask_id"] == best and len(body["embedding"]) == 32 and 0 < body["score"] <= 1
    mask = decode_mask(targets.iloc[0]["mask"])
    x = torch.from_numpy(faces.images[:1]).permute(0, 3, 1, 2).float() / 255 * torch.from_numpy(mask)
    assert body["label"] == int(model(x).argmax(1))  # the server overlaid the best target, then recognised
    client = PrivacyClient(url)
    assert list(client.masks()) == targets["mask_id"].tolist()
    res = client.recognize(Image.fromarray(faces.images[0]))
    assert res["label"] == body["label"] and res["mask_id"] == best and abs(res["score"] - body["score"]) < 1e-4
    other = targets.iloc[1]["mask_id"]
    assert client.recognize(_png(faces.images[1]), mask_id=other)["mask_id"] == other


def test_endpoint_errors(served):
    import httpx

    url, faces, _, targets = served
    best = targets.iloc[0]["mask_id"]
    face = _png(faces.images[0])  # NOT masked
    big = _png(np.zeros((48, 48, 3), np.uint8))
    cases = [
        ({"image": ("x.png", b"not an image", "image/png")}, {}, 415, None),
        ({"other": ("a", b"a")}, {}, 400, "missing_field"),
        ({"image": ("f.png", face, "image/png")}, {"mask_id": "nope"}, 400, "unknown_mask"),
        ({"image": ("f.png", face, "image/png")}, {"mask_id": best}, 400, "mask_mismatch"),
        ({"image": ("f.png", big, "image/png")}, {"mask_id": best}, 400, "bad_size"),
        ({"image": ("f.png", face, "image/png")}, {"embedding": "maybe"}, 400, "bad_request"),
    ]
    for files, data, status, code in cases:
        r = httpx.post(f"{url}/v1/recognize-private", files=files, data=data, timeout=60)
        assert r.status_code == status, (data, r.text)
        assert set(r.json()["error"]) == {"code", "message"}
        if code:
            assert r.json()["error"]["code"] == code, r.text
