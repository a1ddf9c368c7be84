"""The attack suite: each attack's shapes and determinism, the baseline protections, the attacker held
to its own identities, and the attacker table at tiny settings."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from docray.models import build_model
from docray.privacy.attacks import ATTACKS, PROTECTIONS, build_attacks, gaussian_blur, mosaic, protect
from docray.privacy.masks import overlay

TINY = ["identities.train=3", "identities.eval=3", "identities.attacker=3", "samples=4", "image_size=32",
        "recognizer=recognizer_tiny", "inpainter=inpaint_unet_tiny", "attacker.recognizer=recognizer_tiny",
        "attacker.inpainter=inpaint_unet_tiny", "epochs=1", "inpaint_epochs=1", "attacker.epochs=1",
        "attacker.inpaint_epochs=1", "defender.mask_bank=6", "attacker.mask_bank=6", "batch_size=6", "n_masks=2"]


@pytest.fixture(scope="module")
def attacks():
    torch.manual_seed(0)
    return build_attacks(ATTACKS, inpainter=build_model("inpaint_unet_tiny", image_size=32))


def _batch(b: int = 3, size: int = 32):
    g = torch.Generator().manual_seed(1)
    x = torch.rand(b, 3, size, size, generator=g)
    mask = torch.ones(b, 1, size, size)
    mask[0, :, 4:20, 6:18] = 0
    mask[1, :, 10:30, 0:12] = 0
    mask[2, :, 16:24, 16:28] = 0
    return x, mask


@pytest.mark.parametrize("name", ATTACKS)
def test_attack_shapes_determinism_and_kept_pixels(attacks, name):
    x, mask = _batch()
    masked = overlay(x, mask)
    out = attacks[name](masked, mask)
    assert out.shape == x.shape and out.dtype == torch.float32 and torch.isfinite(out).all()
    assert torch.equal(out, attacks[name](masked.clone(), mask.clone()))  # bit for bit
    assert torch.allclose(out * mask, masked * mask)  # kept pixels unchanged
    assert out.min() >= 0 and out.max() <= 1
    hole = (1 - mask).bool().expand_as(out)
    if name == "none":
        assert out[hole].abs().max() == 0  # the masked image itself
    else:
        assert out[hole].abs().mean() > 0.05  # holes filled
    one = attacks[name](masked[:1], mask[:1])
    assert torch.allclose(one, out[:1], atol=1e-6)  # an image's answer does not depend on its batch


@pytest.mark.parametrize("name", ["telea", "navier_stokes", "biharmonic"])
def test_classical_inpainting_restores_a_smooth_image(attacks, name):
    yy, xx = torch.meshgrid(torch.linspace(0.2, 0.8, 32), torch.linspace(0.3, 0.6, 32), indexing="ij")
    x = torch.stack([yy, xx, 0.5 * (yy + xx)])[None]  # (1, 3, 32, 32): a smooth ramp
    mask = torch.ones(1, 1, 32, 32)
    mask[..., 10:20, 12:22] = 0
    out = attacks[name](overlay(x, mask), mask)
    hole = (1 - mask).bool().expand_as(x)
    assert (out - x)[hole].abs().mean() < 0.03  # far closer than the black of the masked image (~0.5)


def test_one_mask_for_the_whole_batch(attacks):
    x, mask = _batch()
    shared = mask[:1]
    a = attacks["telea"](overlay(x, shared), shared)
    b = attacks["telea"](overlay(x, shared.expand(3, -1, -1, -1)), shared.expand(3, -1, -1, -1))
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="mask must be"):
        attacks["telea"](x, mask[:2])
    with pytest.raises(ValueError, match="masked images must be"):
        attacks["none"](x[:, :1], mask)
    with pytest.raises(ValueError, match="unknown attack"):
        build_attacks(["dall-e"])
    with pytest.raises(ValueError, match="needs the attacker's inpainter"):
        build_attacks(["learned"])


def test_protections_touch_the_hidden_region_only():
    x, mask = _batch()
    assert torch.equal(protect("mask", x, mask), overlay(x, mask))
    for name in ("blur", "mosaic"):
        out = protect(name, x, mask)
        assert out.shape == x.shape
        assert torch.equal(out * mask, x * mask)
        hole = (1 - mask).bool().expand_as(x)
        assert (out - x)[hole].abs().mean() > 0.05  # the region really is changed
        assert (out[hole] > 0).float().mean() > 0.9  # ... but not blacked out
    blurred = protect("blur", x, mask, blur_sigma=0.1)
    assert blurred[0, :, 4:20, 6:18].std() < x[0, :, 4:20, 6:18].std() / 2
    with pytest.raises(ValueError, match="unknown protection"):
        protect("pixelate", x, mask)
    assert set(PROTECTIONS) == {"mask", "blur", "mosaic"}


def test_blur_and_mosaic_by_hand():
    flat = torch.full((1, 3, 16, 16), 0.3)
    assert torch.allclose(gaussian_blur(flat, 2.0), flat, atol=1e-6)
    x = torch.arange(16.).repeat(16, 1)[None, None].repeat(1, 3, 1, 1) / 16  # (1, 3, 16, 16), x ramp
    m = mosaic(x, 4)
    assert torch.allclose(m[0, 0, 0, :4], torch.full((4,), 1.5 / 16)) and torch.equal(m[..., :4, :], m[..., 4:8, :])
    assert mosaic(torch.rand(1, 3, 10, 10), 4).shape == (1, 3, 10, 10)  # ragged edge cells


def test_attacker_never_trains_on_the_defender_people():
    from docray.config import load_config
    from docray.privacy.openset import load_openset
    from docray.privacy.suite import AttackSuiteConfig, train_attacker

    cfg = load_config(AttackSuiteConfig, overrides=TINY)
    data = load_openset("synth", cfg.identities.model_dump(), samples=4, size=32)
    attacker = train_attacker(data, cfg, log=lambda *_: None)
    assert attacker.identities.tolist() == data.identities["attacker"].tolist()
    assert attacker.recognizer.classifier.out_features == 3 and attacker.inpainter is not None
    data.identities["attacker"] = np.r_[data.identities["attacker"], data.identities["eval"][:1]]
    with pytest.raises(ValueError, match="share 1 identities"):
        train_attacker(data, cfg)


def test_recognizer_overrides_reach_the_attacker_and_the_defender():
    """`recognizer_overrides` (a CosFace head here) builds both sides' recognisers with them."""
    from docray.config import load_config
    from docray.models.recognizer import CosineClassifier
    from docray.privacy.openset import load_openset
    from docray.privacy.suite import AttackSuiteConfig, train_attacker, train_defender

    cfg = load_config(AttackSuiteConfig, overrides=TINY + ["attacker.attacks=[none]", "recognizer_overrides.head=cosine",
                                                           "attacker.recognizer_overrides.head=cosine",
                                                           "attacker.recognizer_overrides.margin=0.3"])
    data = load_openset("synth", cfg.identities.model_dump(), samples=4, size=32)
    attacker = train_attacker(data, cfg, log=lambda *_: None)
    assert isinstance(attacker.recognizer.classifier, CosineClassifier) and attacker.recognizer.cfg.margin == 0.3
    defender = train_defender(data, cfg, log=lambda *_: None)
    assert all(isinstance(defender[k].classifier, CosineClassifier) for k in ("original", "masked"))


def test_attacker_table_at_tiny_settings(tmp_path):
    from docray.config import load_config
    from docray.privacy.suite import AttackSuiteConfig, format_table, run_suite, worst_attacker

    cfg = load_config(AttackSuiteConfig, overrides=TINY + [f"out={tmp_path}"])
    table = run_suite(cfg, log=lambda *_: None)
    per_mask = table[table["mask_id"] != ""]
    assert per_mask["mask_id"].nunique() == 2
    attacker = per_mask[per_mask["party"] == "attacker"]
    for a in ATTACKS:  # every attack on the mask, against whole photos and against the same treatment
        assert len(attacker[(attacker["protection"] == "mask") & (attacker["attack"] == a)]) == 2 * 2
    for p in ("blur", "mosaic"):  # the baselines beside the masks
        assert len(attacker[attacker["protection"] == p]) == 2 * 2
    defender = per_mask[per_mask["party"] == "defender"]
    assert set(defender["attack"]) == {"none", "defender_inpainter"}
    assert table[["tar@0.001", "tar@0.01", "rank1"]].apply(lambda c: c.between(0, 1)).all().all()
    assert set(table.loc[table["mask_id"] == "", "recogniser"]) == {"original", "masked", "attacker"}
    assert len(worst_attacker(table)) == 2
    text = format_table(table)
    assert "whole images" in text and "biharmonic" in text and "mosaic" in text and "fewer than 2,000" in text
    assert (tmp_path / "attacks.csv").exists() and (tmp_path / "summary.json").exists()


def test_cli_prints_the_attacker_table(monkeypatch):
    from click.testing import CliRunner

    from docray.privacy.cli import privacy

    r = CliRunner().invoke(privacy, ["attacks", "--set", *TINY, "n_masks=1", "attacker.attacks=[none,telea]",
                                     "protections=[mask,blur]", "references=[whole]", "defender.inpainter=none"])
    assert r.exit_code == 0, r.output
    assert "telea" in r.output and "blur" in r.output and "biharmonic" not in r.output
    r = CliRunner().invoke(privacy, ["attacks", "--set", "attacker.attacks=[dall-e]", *TINY])
    assert r.exit_code != 0


def test_the_attacker_reads_the_hole_off_the_leaked_image():
    from docray.privacy.attacks import leaked_mask

    x, mask = _batch()
    x = x.clamp_min(0.05)  # no pixel of the face itself is black
    assert torch.equal(leaked_mask(overlay(x, mask)), mask)
    x[0, :, 0, 0] = 0  # a black pixel of the photo looks hidden too
    assert leaked_mask(overlay(x, mask))[0, 0, 0, 0] == 0


# -- the funnel's stage 5 (issue 18 item 3, the library part) -------------------------------------------

def _per_mask() -> "pd.DataFrame":
    import pandas as pd

    return pd.DataFrame({"mask_no": [0, 1, 2, 3], "mask_id": ["a", "b", "c", "d"], "bin": [5, 5, 5, 5],
                         "hole_ratio": [0.55] * 4, "acc_original": [0.1] * 4, "acc_masked": [0.9, 0.85, 0.8, 0.75]})


def _attacker_table(tars: dict) -> "callable":
    """mask_no -> (masked recogniser's TAR, [attackers' TARs]); the original on whole images: 0.85."""
    import pandas as pd

    def attacker(finalists):
        rows = [dict(mask_no=-1, party="defender", recogniser="original", protection="none", attack="none",
                     reference="whole", **{"tar@0.01": 0.85})]
        for no in finalists["mask_no"]:
            masked, attackers = tars[no]
            rows.append(dict(mask_no=no, party="defender", recogniser="masked", protection="mask", attack="none",
                             reference="same", **{"tar@0.01": masked}))
            for k, t in enumerate(attackers):
                rows.append(dict(mask_no=no, party="attacker", recogniser="attacker", protection="mask",
                                 attack=f"a{k}", reference="whole", **{"tar@0.01": t}))
            rows.append(dict(mask_no=no, party="attacker", recogniser="attacker", protection="blur", attack="none",
                             reference="whole", **{"tar@0.01": 0.99}))  # a baseline: never counts
        return pd.DataFrame(rows)
    return attacker


def test_funnel_stage_5_keeps_masks_that_hold_against_every_attacker():
    import pandas as pd

    from docray.privacy.funnel import FunnelConfig, run_funnel

    drop = lambda c: pd.DataFrame({"mask_no": c["mask_no"], "acc_before": c["acc_masked"], "acc_after": c["acc_masked"] - 0.1})
    seen = []
    tars = {0: (0.80, [0.05, 0.10]), 1: (0.70, [0.02]), 2: (0.90, [0.05, 0.30]), 3: (0.76, [0.08])}

    def attacker(f):
        seen.append(sorted(f["mask_no"]))
        return _attacker_table(tars)(f)

    cfg = FunnelConfig(top_k=4)
    res = run_funnel(_per_mask(), drop, cfg, attacker=attacker)
    assert seen == [[0, 1, 2, 3]]  # once, on the finalists
    assert res.targets["mask_no"].tolist() == [0, 3]  # 1: masked 0.70 < 0.85 - 0.10; 2: an attacker at 0.30
    assert res.empty_reason is None and res.stages[-1].n_in == 4 and res.stages[-1].n_out == 2
    row = res.candidates.set_index("mask_no").loc[2]
    assert row["worst_attacker_tar"] == 0.30 and row["worst_attack"] == "a1 (whole)" and not row["meets_attacker"]
    assert res.attacks is not None and len(res.attacks) == 1 + 4 + 6 + 4

    none_safe = {k: (0.9, [0.2 + 0.1 * k]) for k in range(4)}
    res = run_funnel(_per_mask(), drop, cfg, attacker=_attacker_table(none_safe))
    assert res.targets.empty and "stage 5" in res.empty_reason and "attacker bound fails" in res.empty_reason
    assert "0.200 for mask a" in res.empty_reason and "misses by 0.100" in res.empty_reason
    weak = {k: (0.5 + 0.05 * k, [0.05]) for k in range(4)}
    res = run_funnel(_per_mask(), drop, cfg, attacker=_attacker_table(weak))
    assert "masked-recogniser bound fails" in res.empty_reason and "0.650 for mask d" in res.empty_reason
    assert "by 0.100" in res.empty_reason  # 0.85 - 0.10 - 0.65


def test_suite_feeds_the_funnel_and_the_report(tmp_path):
    import json

    import pandas as pd

    from docray.imageio import encode_png
    from docray.privacy.funnel import FunnelConfig, run_funnel
    from docray.privacy.masks import synthetic_masks
    from docray.privacy.openset import Protocol
    from docray.privacy.report import write_report
    from docray.privacy.suite import AttackEvaluator, Attacker

    torch.manual_seed(0)
    rec = lambda: build_model("recognizer_tiny", num_classes=3).eval()
    labels = np.repeat(np.arange(4), 3)
    ev = AttackEvaluator(torch.rand(12, 3, 32, 32), Protocol.of(labels), {"original": rec(), "masked": rec()},
                         Attacker(rec(), None, np.arange(10, 13)), build_attacks(["none", "telea"]),
                         references=("whole",))
    masks = synthetic_masks(12, seed=3, size=32)
    per = masks.to_pandas().drop(columns=["mask"]).assign(acc_original=0.1, acc_masked=0.9)
    drop = lambda c: pd.DataFrame({"mask_no": c["mask_no"], "acc_before": 0.9, "acc_after": 0.7})
    res = run_funnel(per, drop, FunnelConfig(top_k=1, max_attacker_tar=1.0, max_masked_loss=1.0),
                     attacker=ev.funnel_attacker(masks))
    assert len(res.targets) == 6 and set(res.attacks["mask_no"]) == {-1, *res.targets["mask_no"]}
    assert set(res.attacks.loc[res.attacks["party"] == "attacker", "attack"]) == {"none", "telea"}

    per.to_parquet(tmp_path / "per_mask.parquet")  # a grid run folder, as data_jobs.privacy_grid writes it
    res.bins.to_csv(tmp_path / "bins.csv", index=False)
    res.candidates.to_parquet(tmp_path / "candidates.parquet")
    res.attacks.to_parquet(tmp_path / "attacks.parquet")
    by_no = masks.to_pandas().set_index("mask_no")
    res.targets.assign(mask=[by_no.loc[n, "mask"] for n in res.targets["mask_no"]]).to_parquet(tmp_path / "targets.parquet")
    (tmp_path / "funnel.json").write_text(json.dumps({"n_masks": 12, "n_test_images": 12, "runs": 1, "pairs": 144,
                                                      "grid_s": 1.0, "pairs_per_s": 144.0, **res.summary()}))
    (tmp_path / "config.yaml").write_text("funnel:\n  max_attacker_tar: 1.0\n  max_masked_loss: 1.0\n")
    (tmp_path / "sample_face.png").write_bytes(encode_png(np.full((32, 32, 3), 180, np.uint8)))
    md = open(write_report(str(tmp_path))).read()
    assert "Stage 5" in md and "Attacker table per finalist" in md and "worst_attacker_tar" in md
    assert md.count("### ") == 6 and "attacker: mask + telea vs whole" not in md  # tables, not plot labels
    for png in ("tradeoff.png", "tar_area.png"):
        assert (tmp_path / png).stat().st_size > 1000


def test_funnel_absolute_rule():
    import pandas as pd

    from docray.privacy.funnel import FunnelConfig, run_funnel

    per = pd.DataFrame({"mask_no": range(6), "mask_id": list("abcdef"), "bin": [0, 0, 3, 3, 5, -1],
                        "hole_ratio": [0.05, 0.05, 0.35, 0.35, 0.55, 0.7],
                        "acc_original": [0.9, 0.45, 0.4, 0.2, 0.3, 0.0], "acc_masked": [0.95, 0.85, 0.79, 0.9, 0.81, 1.0]})
    drop = lambda c: pd.DataFrame({"mask_no": c["mask_no"], "acc_before": 0.9, "acc_after": 0.7})
    res = run_funnel(per, drop, FunnelConfig(rule="absolute", top_k=5))
    assert sorted(res.candidates["mask_no"]) == [1, 3, 4]  # c: masked 0.79; a: original 0.9; f: no bin
    assert res.bins["passed"].tolist() == [True, False, False, True, False, True]
    assert res.stages[0].name == "masks with masked > 0.8 and original < 0.5" and res.stages[0].n_in == 5
    res = run_funnel(per, lambda c: pytest.fail("no attack"), FunnelConfig(rule="absolute", abs_masked=0.96))
    assert "stage 1 emptied it" in res.empty_reason and "the closest, mask d (masked 0.900" in res.empty_reason
    assert "misses by 0.060" in res.empty_reason
    with pytest.raises(Exception):
        FunnelConfig(rule="relative")


def test_table_1_has_the_no_mask_row(tmp_path):
    from docray.privacy.grid import GridPredictor, bin_table, plain_grid, with_no_mask
    from docray.privacy.masks import synthetic_masks

    class Whole(torch.nn.Module):  # right (label 0) only when no pixel is hidden
        def forward(self, x):
            whole = (x.amin((1, 2, 3)) > 0).float()
            return torch.stack([whole, 1 - whole], 1)

    pred = GridPredictor(np.full((4, 16, 16, 3), 200, np.uint8), np.zeros(4), {"original": Whole(), "masked": Whole()},
                         runs=1)
    assert pred.no_mask() == {"original": 1.0, "masked": 1.0}
    bins = with_no_mask(bin_table(plain_grid(synthetic_masks(6, size=16), pred)), {"original": 1.0, "masked": 0.9})
    assert bins["range"].tolist()[0] == "no mask" and bins["n_masks"].tolist() == [0] + [1] * 6
    assert bins.loc[0, "gap"] == pytest.approx(-0.1) and (bins["acc_original"][1:] == 0).all()


# -- the alternative second stage, both rules side by side (issue 18 item 3) ---------------------------

def test_mask_similarity_by_hand():
    from docray.privacy.funnel import mask_similarity

    a = np.ones((3, 4, 4), np.float32)
    a[0, :2] = 0  # top half hidden
    a[1, :1] = 0  # top quarter hidden
    # a[2] hides nothing
    sim = mask_similarity(a, a)
    assert sim[0, 1] == pytest.approx(4 / 8) and sim[0, 0] == 1 and sim[2, 2] == 1 and sim[0, 2] == 0
    agree = mask_similarity(a, a, "agreement")
    assert agree[0, 1] == pytest.approx(12 / 16) and agree[0, 2] == pytest.approx(8 / 16)
    with pytest.raises(ValueError, match="unknown mask similarity"):
        mask_similarity(a, a, "cosine")


def _similar_world():
    """Six masks of 8 x 8: 0 and 1 pass stage 1 (bin 5); 2 is nearly 1 (IoU 28/33), 3 is
    0 with six pixels more (IoU 32/38), 4 and 5 are unlike any."""
    import pandas as pd

    m = np.ones((6, 8, 8), np.float32)
    m[0, :4] = 0  # top half
    m[1, :, :4] = 0  # left half
    m[2, :, :4] = 0
    m[2, 0, :4] = 1
    m[2, 0, 4] = 0  # a row's 4 pixels kept, 1 hidden beside (hidden 29, 28 shared with 1: IoU 28/33)
    m[3, :4] = 0
    m[3, 4, :6] = 0  # 6 more (IoU 32/38)
    m[4, 6:, 6:] = 0
    m[5, 7, :] = 0
    per = pd.DataFrame({"mask_no": range(6), "mask_id": list("abcdef"), "bin": [5, 5, 2, 5, 0, 0],
                        "hole_ratio": [0.5, 0.5, 0.5, 0.59, 0.06, 0.125],
                        "acc_original": [0.1, 0.1, 0.6, 0.1, 0.9, 0.9], "acc_masked": [0.9, 0.8, 0.85, 0.7, 0.95, 0.9]})
    return per, {i: m[i] for i in range(6)}


def test_funnel_alternative_second_stage_keeps_masks_like_the_target_subsets():
    import pandas as pd

    from docray.privacy.funnel import FunnelConfig, run_funnel

    per, masks = _similar_world()
    seen = []
    drop = lambda c: seen.append(sorted(c["mask_no"])) or pd.DataFrame(
        {"mask_no": c["mask_no"], "acc_before": c["acc_masked"], "acc_after": c["acc_masked"] - 0.1})
    cfg = FunnelConfig(stage2="similar", top_k=5)  # bin 5 passes (gap 0.8 - 0.1 > 0.3), bin 0 does not
    res = run_funnel(per, drop, cfg, masks=masks)
    # 0 ~ 3 (0.842); 2 ~ 1 (0.848): kept although its bin failed stage 1, it looks like a target-subset mask;
    # 1 is in a target subset but like no other mask of them (its twin 2 is not one)
    assert seen == [[0, 2, 3]] and sorted(res.targets["mask_no"]) == [0, 2, 3]
    assert res.candidates.set_index("mask_no")["similarity"].to_dict() == pytest.approx({2: 28 / 33, 0: 32 / 38,
                                                                                        3: 32 / 38})
    assert res.stages[1].name.startswith("masks with iou > 0.8")
    res = run_funnel(per, drop, cfg.model_copy(update={"similar_threshold": 0.845}), masks=masks)
    assert sorted(res.candidates["mask_no"]) == [2]  # 0 and 3 are 0.842 alike
    res = run_funnel(per, lambda c: pytest.fail("no attack"), cfg.model_copy(update={"similar_threshold": 0.95}),
                     masks=masks)
    assert res.targets.empty and "stage 2 emptied it" in res.empty_reason and "0.848 for mask c" in res.empty_reason
    assert "misses by 0.102" in res.empty_reason
    with pytest.raises(ValueError, match="needs the masks"):
        run_funnel(per, drop, cfg)


def test_run_rules_attacks_the_union_once_and_reports_each_rule():
    import pandas as pd

    from docray.privacy.funnel import FunnelConfig, run_rules

    per, masks = _similar_world()
    calls = {"attack": [], "attacker": []}

    def drop(c):
        calls["attack"].append(sorted(c["mask_no"]))
        return pd.DataFrame({"mask_no": c["mask_no"], "acc_before": c["acc_masked"], "acc_after": c["acc_masked"] - 0.1})

    def attacker(f):
        calls["attacker"].append(sorted(f["mask_no"]))
        return _attacker_table({n: (0.8, [0.05 if n in (1, 2) else 0.5]) for n in range(6)})(f)

    res = run_rules(per, drop, FunnelConfig(top_k=1), attacker=attacker, masks=masks)
    assert list(res) == ["top_k", "similar"]
    assert calls == {"attack": [[0, 2]], "attacker": [[0, 2]]}  # once each, on the union of {0} and {0, 2}
    assert res["top_k"].candidates["mask_no"].tolist() == [0] and res["top_k"].targets.empty
    assert "attacker bound fails" in res["top_k"].empty_reason
    assert sorted(res["similar"].candidates["mask_no"]) == [0, 2]  # top 1 per bin: bin 5 -> 0, bin 2 -> 2
    assert res["similar"].targets["mask_no"].tolist() == [2]
    assert set(res["similar"].attacks["mask_no"]) == {-1, 0, 2}
    only = run_rules(per, drop, FunnelConfig(top_k=1))  # no masks: the chosen rule alone
    assert list(only) == ["top_k"]


def test_sample_strip_panels_shapes_and_probe_faces():
    from docray.privacy.openset import Protocol
    from docray.privacy.suite import AttackEvaluator, Attacker

    torch.manual_seed(0)
    labels = np.repeat(np.arange(4), 3)  # rows 0, 3, 6, 9 enrolled; the first probes: 1, 4, 7, 10
    x = torch.rand(12, 3, 32, 32).clamp_min(0.05)
    ev = AttackEvaluator(x, Protocol.of(labels), {}, Attacker(build_model("recognizer_tiny", num_classes=3).eval(),
                         build_model("inpaint_unet_tiny", image_size=32).eval(), np.arange(10, 13)),
                         build_attacks(ATTACKS, build_model("inpaint_unet_tiny", image_size=32)))
    rows = ev.probe_rows(3)
    assert rows.tolist() == [1, 4, 7]
    mask = np.ones((32, 32), np.float32)
    mask[8:24, 4:28] = 0
    panels = ev.strip(mask, rows)
    assert [p for p, _ in panels] == ["original", "masked", "learned", "telea", "navier_stokes", "biharmonic", "blur",
                                      "mosaic"]
    assert all(t.shape == (3, 3, 32, 32) for _, t in panels)
    got = dict(panels)
    assert torch.equal(got["original"], x[rows]) and torch.all(got["masked"][..., 8:24, 4:28] == 0)
    for name in ("telea", "blur"):  # the hidden region filled or protected; the rest as it was
        assert got[name][..., 8:24, 4:28].abs().sum() > 0 and torch.equal(got[name][..., :8, :], x[rows][..., :8, :])
    again = dict(ev.strip(mask, rows))
    assert all(torch.equal(got[k], again[k]) for k in got)  # deterministic
