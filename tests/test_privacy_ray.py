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


def test_grid_job_runs_stage_5_and_reports_it(ray_cluster, tmp_path):
    """The grid job at tiny settings: both stage-2 rules, stage 5 within the threat model, the strips,
    the throughput; the report links the strips."""
    import json

    import pandas as pd

    from data_jobs.privacy_grid import GridEvalConfig, run
    from docray.config import load_config
    from docray.models import save_pretrained
    from docray.privacy.report import write_report

    torch.manual_seed(0)
    refs = {k: str(save_pretrained(build_model("recognizer_tiny", num_classes=4).eval(), tmp_path / k))
            for k in ("original", "masked")}
    refs["inpainter"] = str(save_pretrained(build_model("inpaint_unet_tiny", image_size=32).eval(), tmp_path / "inp"))
    out = tmp_path / "run"
    cfg = load_config(GridEvalConfig, overrides=[
        "n_identities=4", "samples=10", "image_size=32", "n_masks=6", "runs=1", "concurrency=2", "batch_size=2",
        *[f"{k}={v}" for k, v in refs.items()], f"out={out}",
        "funnel.gap_threshold=-1", "funnel.drop_threshold=-1", "funnel.top_k=1", "funnel.similar_threshold=0.05",
        "attack.identities.eval=4", "attack.identities.attacker=3", "attack.samples=4", "attack.max_impostor=1000",
        "attack.attacker.recognizer=recognizer_tiny", "attack.attacker.inpainter=inpaint_unet_tiny",
        "attack.attacker.epochs=1", "attack.attacker.inpaint_epochs=1", "attack.attacker.mask_bank=6",
        "attack.batch_size=6", "attack.strips=2", "attack.strip_faces=2", "attack.defender_inpainter=true"])
    res = run(cfg)
    s = json.loads((out / "funnel.json").read_text())
    ids = s["stage5"]["identities"]
    assert ids["train"] == [0, 1, 2, 3]  # what the defender learnt: skipped, never enrolled nor the attacker's
    assert not set(ids["eval"]) & set(ids["attacker"]) and min(ids["eval"] + ids["attacker"]) >= 4
    assert set(s["rules"]) == {"top_k", "similar"} and s["stages"][-1]["name"].startswith("attackers <=")
    attacks = pd.read_parquet(out / "attacks.parquet")
    cands = pd.read_parquet(out / "candidates.parquet")
    finalists = cands[cands["worst_attacker_tar"].notna()]
    assert set(attacks["mask_no"]) == {-1, *finalists["mask_no"]} and len(finalists) >= 6  # both rules' finalists
    assert {"blur", "mosaic"} <= set(attacks["protection"]) and {"telea", "biharmonic", "learned", "defender_inpainter"} <= set(attacks["attack"])
    assert cands["rule_top_k"].sum() == 6 and cands["rule_similar"].any()  # top 1 of each of the six bins
    fin = pd.read_parquet(out / "finalists.parquet")
    assert sorted(fin["mask_no"]) == sorted(finalists["mask_no"]) and fin["mask"].map(len).gt(0).all()
    targets = pd.read_parquet(out / "targets.parquet")
    assert len(targets) == s["n_targets"] and {"masked_tar", "worst_attacker_tar", "mask"} <= set(targets.columns)
    assert (targets["worst_attacker_tar"] <= 0.10).all()  # the service reads only what meets the bounds
    strips = pd.read_parquet(out / "strips.parquet")
    assert strips["mask_no"].nunique() == 2 and set(strips["face"]) == {0, 1}
    assert list(dict.fromkeys(strips["panel"])) == ["original", "masked", "learned", "telea", "navier_stokes",
                                                    "biharmonic", "blur", "mosaic"]
    t = s["throughput"]
    assert t["masks_per_s"] > 0 and t["stage5_finalists"] == len(finalists) and t["stage5_peak_actor_rss_mb"] > 0
    md = open(write_report(str(out))).read()
    assert "Stage 5" in md and "alternative" in md and "Throughput" in md
    for no in strips["mask_no"].unique():
        assert f"(strip_{no}.png)" in md and (out / f"strip_{no}.png").stat().st_size > 1000
    assert res["targets"]["mask_no"].tolist() == targets["mask_no"].tolist()


def test_grid_job_stage_5_needs_the_defender_identities_of_your_own_faces(tmp_path):
    from data_jobs.privacy_grid import GridEvalConfig, suite_config

    with pytest.raises(ValueError, match="attack.identities.train"):
        suite_config(GridEvalConfig(data=str(tmp_path)))
    s = suite_config(GridEvalConfig(n_identities=16))
    assert s.identities.train == 16 and s.source == "synth"
