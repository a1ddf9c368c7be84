"""Mask privacy, the library: overlay convention, binning, placements, models, the funnel, the report."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from benchmarks import privacy_targets
from docray.privacy.funnel import FunnelConfig, run_funnel
from docray.privacy.grid import GridPredictor, bin_table, plain_grid
from docray.privacy.masks import (area_bin, decode_mask, encode_mask, hole_ratio, load_mask_folder, overlay,
                                  place_mask, synthetic_masks)
from docray.models import build_model, from_pretrained, save_pretrained


def test_overlay_hides_zeros_and_keeps_ones():
    img = torch.rand(2, 3, 8, 8)
    mask = torch.ones(1, 1, 8, 8)
    mask[..., :4, :] = 0  # top half hidden
    out = overlay(img, mask)
    assert torch.all(out[..., :4, :] == 0)
    assert torch.equal(out[..., 4:, :], img[..., 4:, :])
    with pytest.raises(ValueError, match="mask size"):
        overlay(img, torch.ones(1, 1, 4, 4))


def test_mask_png_round_trip_and_convention():
    m = np.ones((16, 16), np.float32)
    m[2:6, 3:9] = 0
    png = encode_mask(m)
    assert np.array_equal(decode_mask(png), m)
    assert np.asarray(Image.open(__import__("io").BytesIO(png)))[3, 4] == 0  # hidden stored as 0
    assert np.array_equal(decode_mask(png, invert=True), 1 - m)
    assert hole_ratio(m) == pytest.approx(24 / 256)


@pytest.mark.parametrize("ratio,expected", [(0.005, -1), (0.01, -1), (0.05, 0), (0.1, 0), (0.1001, 1), (0.55, 5),
                                            (0.6, 5), (0.61, -1)])
def test_area_bins_are_left_open_right_closed(ratio, expected):
    assert area_bin(ratio) == expected


def test_custom_bin_edges():
    assert area_bin(0.3, (0.0, 0.25, 0.5)) == 1
    t = synthetic_masks(12, seed=3, size=32, edges=(0.0, 0.3, 0.6))
    assert set(t.column("bin").to_pylist()) <= {0, 1}


def test_synthetic_masks_cover_the_six_bins():
    t = synthetic_masks(12, seed=1, size=32)
    assert sorted(set(t.column("bin").to_pylist())) == [0, 1, 2, 3, 4, 5]
    assert t.column("mask_no").to_pylist() == list(range(12))


def test_mask_folder_loader(tmp_path):
    holes = np.zeros((40, 40), np.uint8)  # NVIDIA style: white = hole
    holes[:20] = 255
    Image.fromarray(holes).save(tmp_path / "a.png")
    Image.fromarray(255 - holes).save(tmp_path / "b.png")  # docray style: white = kept
    t = load_mask_folder(tmp_path, size=20, invert=True)
    assert t.column("mask_id").to_pylist() == ["a.png", "b.png"]
    assert t.column("hole_ratio").to_pylist() == pytest.approx([0.5, 0.5])
    assert decode_mask(t.column("mask")[0].as_py())[:10].sum() == 0  # top half hidden after invert
    with pytest.raises(FileNotFoundError):
        load_mask_folder(tmp_path / "none")


def test_place_mask_keeps_area_and_varies_by_run():
    m = decode_mask(synthetic_masks(4, seed=2, size=32).column("mask")[3].as_py())
    assert place_mask(m, 0, 3, 0) is m  # run 0: as drawn
    placed = [place_mask(m, 0, 3, r) for r in range(1, 6)]
    assert all(p.sum() == m.sum() for p in placed)  # flips and cyclic shifts keep the hidden area
    assert any(not np.array_equal(p, m) for p in placed)
    assert np.array_equal(place_mask(m, 0, 3, 2), place_mask(m, 0, 3, 2))  # deterministic


def test_recognizer_shapes_embedding_and_round_trip(tmp_path):
    torch.manual_seed(0)
    m = build_model("recognizer_tiny", num_classes=5, embed_dim=24).eval()
    x = torch.rand(3, 3, 32, 32)
    assert m(x).shape == (3, 5) and m.embed(x).shape == (3, 24)
    assert build_model("recognizer_resnet18", num_classes=7).embedding[0].out_features == 512
    m2 = from_pretrained(save_pretrained(m, tmp_path / "rec")).eval()
    assert torch.allclose(m(x), m2(x))
    with pytest.raises(TypeError, match="unknown recognizer option"):
        build_model("recognizer_tiny", widht=3)


@pytest.mark.parametrize("name", ["inpaint_unet_tiny", "inpaint_unet_diffusers_tiny"])
def test_inpainter_keeps_known_pixels_and_fills_holes(name):
    torch.manual_seed(0)
    m = build_model(name, image_size=32).eval()
    x = torch.rand(2, 3, 32, 32)
    mask = torch.ones(2, 1, 32, 32)
    mask[:, :, 8:20, 8:20] = 0
    with torch.no_grad():
        out = m(overlay(x, mask), mask)
    assert out.shape == x.shape and torch.isfinite(out).all()
    assert torch.allclose(out * mask, x * mask)
    assert out[:, :, 8:20, 8:20].abs().sum() > 0  # holes are filled, not left black


def _hand_table() -> pd.DataFrame:
    rows = []  # bins 0,1: small gap; bins 4,5: large gap
    for b, (acc_o, acc_m) in enumerate([(0.9, 0.95), (0.8, 0.9), (0.6, 0.8), (0.5, 0.75), (0.3, 0.8), (0.1, 0.7)]):
        for k in range(4):
            rows.append({"mask_no": b * 4 + k, "mask_id": f"m{b}{k}", "bin": b, "hole_ratio": 0.05 + 0.1 * b,
                         "acc_original": acc_o, "acc_masked": acc_m - 0.05 * k})
    return pd.DataFrame(rows)


def test_funnel_on_a_hand_made_table():
    table = _hand_table()
    seen = []

    def attack(c):  # drop 0.1 for even mask numbers, 0.02 for odd ones
        seen.append(sorted(c["mask_no"]))
        return pd.DataFrame({"mask_no": c["mask_no"], "acc_before": c["acc_masked"],
                             "acc_after": c["acc_masked"] - np.where(c["mask_no"] % 2 == 0, 0.1, 0.02)})

    res = run_funnel(table, attack, FunnelConfig(gap_threshold=0.3, top_k=2, drop_threshold=0.07))
    assert res.bins["passed"].tolist() == [False, False, False, False, True, True]  # mean gaps .425 and .525 (bin 3: .175)
    assert seen == [[16, 17, 20, 21]]  # top 2 by masked accuracy in bins 4 and 5
    assert sorted(res.targets["mask_no"]) == [16, 20]
    assert res.targets.iloc[0]["mask_no"] == 16  # best masked accuracy first
    assert res.empty_reason is None and [s.n_out for s in res.stages] == [2, 4, 4, 2]


def test_funnel_says_which_stage_emptied_it():
    table = _hand_table()
    res = run_funnel(table, lambda c: pytest.fail("no attack when stage 1 is empty"), FunnelConfig(gap_threshold=0.7))
    assert res.targets.empty and "stage 1" in res.empty_reason and "0.525 in bin (0.5,0.6]" in res.empty_reason
    assert "misses by 0.175" in res.empty_reason
    flat = lambda c: pd.DataFrame({"mask_no": c["mask_no"], "acc_before": 0.8, "acc_after": 0.77})
    res = run_funnel(table, flat, FunnelConfig())
    assert res.targets.empty and "stage 4" in res.empty_reason and "misses by 0.040" in res.empty_reason
    with pytest.raises(ValueError, match="lacks column"):
        run_funnel(table.drop(columns=["acc_masked"]), flat)


def test_grid_predictor_counts_by_hand():
    """A recogniser that answers 'label 0' when the top-left pixel is kept, else 'label 1'."""

    class Corner(torch.nn.Module):
        def forward(self, x):
            kept = (x[:, :, 0, 0].sum(1) > 0).float()
            return torch.stack([kept, 1 - kept], 1)

    images = np.full((4, 8, 8, 3), 200, np.uint8)
    labels = np.array([0, 0, 1, 1])
    hide, keep = np.ones((8, 8), np.float32), np.ones((8, 8), np.float32)
    hide[:4, :4] = 0
    pred = GridPredictor(images, labels, {"original": Corner(), "masked": Corner()}, runs=1, chunk=3)
    out = pred({"mask_no": np.array([0, 1]), "mask": [encode_mask(hide), encode_mask(keep)],
                "bin": np.array([1, -1]), "hole_ratio": np.array([0.25, 0.0])})
    assert out["correct_original"].tolist() == [[2], [2]]
    assert out["acc_masked"].tolist() == [0.5, 0.5]
    bins = bin_table(plain_grid(synthetic_masks(6, size=16), pred, batch_size=4))
    assert bins["n_masks"].tolist() == [1] * 6


def test_report_from_a_fake_run(tmp_path):
    import json

    from docray.imageio import encode_png
    from docray.privacy.report import write_report

    masks = synthetic_masks(24, seed=5, size=32)
    per = masks.to_pandas().drop(columns=["mask"])
    per["acc_original"] = 1 - per["hole_ratio"] * 1.5
    per["acc_masked"] = 0.9 - per["hole_ratio"] * 0.2
    attack = lambda c: pd.DataFrame({"mask_no": c["mask_no"], "acc_before": c["acc_masked"], "acc_after": c["acc_masked"] - 0.1,
                                     "acc_original_inpainted": 0.2})
    res = run_funnel(per, attack, FunnelConfig(top_k=2))
    per.to_parquet(tmp_path / "per_mask.parquet")
    res.bins.to_csv(tmp_path / "bins.csv", index=False)
    res.candidates.to_parquet(tmp_path / "candidates.parquet")
    by_no = masks.to_pandas().set_index("mask_no")
    res.targets.assign(mask=[by_no.loc[n, "mask"] for n in res.targets["mask_no"]]).to_parquet(tmp_path / "targets.parquet")
    (tmp_path / "funnel.json").write_text(json.dumps({"n_masks": 24, "n_test_images": 8, "runs": 1, "pairs": 192,
                                                      "grid_s": 1.0, "pairs_per_s": 192.0, **res.summary()}))
    (tmp_path / "sample_face.png").write_bytes(encode_png(np.full((32, 32, 3), 180, np.uint8)))
    md = open(write_report(str(tmp_path))).read()
    assert "Table 1" in md and "![targets](targets.png)" in md and "(0.5,0.6]" in md
    for png in ("bins.png", "masks.png", "targets.png"):
        assert (tmp_path / png).stat().st_size > 1000


def test_cli_report_and_tables(tmp_path):
    from click.testing import CliRunner

    from docray.privacy.cli import privacy

    test_report_from_a_fake_run(tmp_path)
    runner = CliRunner()
    r = runner.invoke(privacy, ["report", "--run", str(tmp_path), "--out", str(tmp_path / "rep")])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "rep" / "report.md").exists() and (tmp_path / "rep" / "bins.png").exists()
    r = runner.invoke(privacy, ["tables", "--run", str(tmp_path)])
    assert r.exit_code == 0 and "(0.5,0.6]" in r.output and "drop > 0.07" in r.output
    r = runner.invoke(privacy, ["report", "--run", str(tmp_path / "nothing")])
    assert r.exit_code != 0 and "per_mask.parquet" in r.output
    r = runner.invoke(privacy, ["sheet", "--out", str(tmp_path / "sheet.png"), "--n", "12"])
    assert r.exit_code == 0 and (tmp_path / "sheet.png").exists()


def test_privacy_targets_ranks_finalists_and_reports_the_best(tmp_path, capsys):
    rows = [  # mask_no, masked_tar, worst_attacker_tar, meets_masked, meets_attacker
        (1, 0.90, 0.30, True, False), (2, 0.70, 0.05, False, True), (3, 0.85, 0.08, True, True),
        (4, 0.95, 0.09, True, True), (5, 0.80, 0.20, True, False)]
    fin = pd.DataFrame([{"mask_no": n, "bin": n % 6, "masked_tar": m, "original_tar": 0.9, "worst_attacker_tar": w,
                         "worst_attack": "telea (whole)", "meets_masked": mm, "meets_attacker": ma}
                        for n, m, w, mm, ma in rows])
    assert privacy_targets.ranked(fin)["mask_no"].tolist() == [4, 3, 2, 5, 1]
    fin.to_parquet(tmp_path / "finalists.parquet")
    (tmp_path / "funnel.json").write_text(json.dumps({"n_masks": 504, "n_test_images": 96, "runs": 3, "empty_reason": None}))
    figures = privacy_targets.main(["--run", str(tmp_path)])
    assert figures["best_mask_no"] == 4 and figures["targets"] == 2 and figures["finalists"] == 5
    assert figures["best_masked_tar"] == 0.95 and figures["best_worst_attacker_tar"] == 0.09
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == figures
    with pytest.raises(SystemExit, match="no mask grid"):
        privacy_targets.main(["--run", str(tmp_path / "nothing")])
