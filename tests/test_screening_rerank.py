"""The learned re-ranker: alignment features tell a moved copy from a look-alike; the screener re-orders
the descriptor's candidates by it and matches at its threshold; it is fitted and calibrated on posted
queries, travels beside the descriptor, and refuses features it was not fitted on."""
from __future__ import annotations

import io
import zlib

import numpy as np
import pytest
from PIL import Image

from docray.screening.library import Library, cut_target
from docray.screening.matching import Screener, ScreenConfig
from docray.screening.rerank import FEATURES, Reranker, align, grey
from docray.screening.rules import ExtensionRule
from docray.screening.verify import VerifyConfig
from tests.test_screening_verify import picture


def moved(tile: Image.Image, scale: float = 1.6, angle: float = 4) -> Image.Image:
    """`tile` rescaled, slightly rotated, cropped by a few pixels and re-encoded as JPEG."""
    t = tile.resize((round(tile.width * scale), round(tile.height * scale)), Image.BILINEAR).rotate(angle)
    t = t.crop((3, 2, t.width - 2, t.height - 3))
    buf = io.BytesIO()
    t.save(buf, "JPEG", quality=70)
    return Image.open(buf).convert("RGB")


def test_alignment_tells_a_moved_copy_from_a_look_alike():
    tile = picture(1, (96, 96))
    same = align(grey(moved(tile)), grey(tile))
    other = align(grey(moved(picture(2, (96, 96)))), grey(tile))
    ecc, ncc_warp = 0, 1
    assert same[ecc] > 0.8 and same[ncc_warp] > 0.8
    assert other[ncc_warp] < 0.5 and same[ncc_warp] - other[ncc_warp] > 0.4
    flat = align(np.full((64, 64), 0.5, np.float32), grey(tile))  # no contrast: ECC cannot run, nothing breaks
    assert flat[ecc] == 0 and all(np.isfinite(flat))


class Aligned:
    """A stand-in model: P(match) is the NCC after the warp (what a fitted re-ranker leans on most)."""

    def predict_proba(self, X):
        p = np.clip(X[:, FEATURES.index("ncc_warp")], 0, 1)
        return np.stack([1 - p, p], 1)


class RandomEmbed:
    """A descriptor that sees nothing: a random unit vector per picture (seeded by its pixels)."""

    dim = 16

    def __call__(self, tiles):
        v = np.stack([np.random.default_rng(zlib.crc32(t.tobytes())).normal(size=self.dim) for t in tiles])
        return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


def random_library(tmp_path):
    lib = Library.create(tmp_path / "lib", dim=RandomEmbed.dim, tile_size=64, descriptor="random")
    for i in (2, 1):
        b = cut_target(picture(i, (192, 192)), f"t{i}", f"src-{i}", 100, 64, min_detail=0)
        lib.append(b, RandomEmbed()(b.tiles))
    return lib


def test_screener_reranks_the_descriptors_candidates_and_matches_at_its_threshold(tmp_path):
    lib, embed = random_library(tmp_path), RandomEmbed()
    last = len(lib) - 1
    tile = lib.tile_image(last)  # a tile of t1, last in the index
    assert lib.rows([last])[0]["target_id"] == "t1" and len(lib) > 30
    assert lib.tile_images([0, last])[last].tobytes() == tile.tobytes()
    cfg = ScreenConfig(k=len(lib), learn=False, rule=ExtensionRule(enabled=False), rerank=True)
    plain = Screener(lib, embed, cfg.model_copy(update={"rerank": False, "threshold": -1.0}))
    assert plain.screen([moved(tile)])["best"][0]["tile_id"] != last  # the random descriptor finds another tile
    rr = Reranker(Aligned(), k=len(lib), threshold=0.7)
    s = Screener(lib, embed, cfg, reranker=rr)
    v = s.screen([moved(tile)])
    assert v["rerank"] == "on" and v["threshold"] == 0.7 and v["threshold_source"] == "calibrated"
    assert v["abnormal"] and v["matches"][0]["tile_id"] == last and v["matches"][0]["score"] >= 0.7
    v = s.screen([moved(picture(3, (64, 64)))])  # a picture of neither target: scored, not matched
    assert not v["abnormal"] and v["best"][0]["score"] < 0.7
    assert Screener(lib, embed, cfg.model_copy(update={"threshold": 0.99}), reranker=rr).threshold == 0.99
    none = Screener(lib, embed, cfg.model_copy(update={"threshold": -1.0}))  # no re-ranker: the descriptor decides
    v = none.screen([moved(tile)])
    assert v["rerank"].startswith("unavailable") and v["best"][0]["tile_id"] != last


def test_verification_decides_when_on_and_auto_proposals_follow_the_reranker(tmp_path):
    lib, embed = random_library(tmp_path), RandomEmbed()
    rr = Reranker(Aligned(), k=3, threshold=0.7)
    s = Screener(lib, embed, ScreenConfig(verify=VerifyConfig(enabled=True)), reranker=rr)
    assert s.reranking.startswith("off") and s.cfg.proposals == "layout"
    assert Screener(lib, embed, ScreenConfig(), reranker=rr).cfg.proposals == "edges"  # the defaults: rerank, edges
    assert Screener(lib, embed, ScreenConfig()).cfg.proposals == "layout"  # no re-ranker: the layout's regions
    assert Screener(lib, embed, ScreenConfig(proposals="windows"), reranker=rr).cfg.proposals == "windows"


def test_a_reranker_fitted_on_other_features_is_refused():
    rr = Reranker(Aligned(), k=2, threshold=0.5, features=FEATURES[:-1])
    with pytest.raises(ValueError, match="fit it again"):
        Reranker.from_bytes(rr.to_bytes())
    back = Reranker.from_bytes(Reranker(Aligned(), k=2, threshold=0.5).to_bytes())
    assert (back.k, back.threshold, back.features) == (2, 0.5, FEATURES)
    with pytest.raises(ValueError, match="true and false pairs"):
        Reranker.fit(np.zeros((4, len(FEATURES))), np.zeros(4))
    from train_jobs.train_screening import ScreeningTrainConfig

    with pytest.raises(ValueError, match="needs calibrate_queries"):  # refused before any training, not after
        ScreeningTrainConfig(rerank_queries=400, calibrate_queries=0)


def test_calibrate_rerank_fits_calibrates_and_travels_with_the_descriptor(tmp_path):
    import torch
    from click.testing import CliRunner

    from docray.cli import main
    from docray.models import build_model, save_pretrained
    from docray.screening.calibrate import rerank_examples
    from docray.screening.embed import Embedder
    from docray.storage.datasets import write_shards
    from docray.synth import generate

    for name, start in (("fit", 0), ("cal", 100), ("check", 200)):
        write_shards(generate("targets", start, start + 12, seed=3, size=96), str(tmp_path / name))
    torch.manual_seed(0)
    model_dir = str(save_pretrained(build_model("descriptor_tiny"), str(tmp_path / "desc")))
    res = CliRunner().invoke(main, ["calibrate", "rerank", str(tmp_path / "fit"), str(tmp_path / "cal"),
                                    "--descriptor", model_dir, "--queries", "12", "--calibrate-queries", "8", "--k", "4",
                                    "--write"])
    assert res.exit_code == 0, res.output
    assert "true)" in res.output and "written:" in res.output
    embed = Embedder.load(model_dir)
    rr = embed.reranker
    assert rr is not None and rr.threshold is not None and rr.record["calibrate_queries"] == 8 and rr.k == 4
    # on pictures it never saw, its probability ranks true pairs above false ones
    X, y = rerank_examples(str(tmp_path / "check"), embed, ScreenConfig(proposals="edges"), queries=8, seed=5)
    from sklearn.metrics import roc_auc_score

    assert 0 < y.sum() < len(y)
    auc = roc_auc_score(y, rr.predict(X))
    print(f"AUC {auc:.3f} on {len(y)} pairs")
    assert auc > 0.8
