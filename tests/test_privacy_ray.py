"""Mask privacy on Ray: the Data grid equals the plain loop (the serving routes: tests/test_privacy_serving.py)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from docray.privacy.data import synth_identities
from docray.privacy.grid import GridPredictor, plain_grid
from docray.privacy.masks import synthetic_masks
from docray.models import build_model


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
