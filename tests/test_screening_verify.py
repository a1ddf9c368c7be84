"""Two-stage matching: local features + RANSAC confirm a rotated, rescaled copy and reject a look-alike;
the library stores targets' features; a library without them says verification is unavailable."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from docray.screening.backgrounds import BACKGROUNDS, background, dead_leaves, paste_upload
from docray.screening.library import Library, cut_target
from docray.screening.matching import Screener, ScreenConfig
from docray.screening.rules import ExtensionRule
from docray.screening.verify import FeatureIndex, FeatureSpec, VerifyConfig, extract, inliers, pack, unpack
from tests.test_screening import FakeEmbed


def picture(seed: int, size=(256, 256)) -> Image.Image:
    return dead_leaves(np.random.default_rng(seed), size)


def rotated_copy(img: Image.Image, seed: int = 0, angle: float = 20, scale: float = 0.7) -> Image.Image:
    """The left half of `img`, rotated, rescaled, pasted into a noise background and re-encoded as JPEG."""
    part = img.crop((0, 0, img.width // 2, img.height)).rotate(angle, expand=True, fillcolor=(128, 128, 128))
    part = part.resize((round(part.width * scale), round(part.height * scale)), Image.BILINEAR)
    up = background(np.random.default_rng(seed), (400, 300), "spectral_noise")
    up.paste(part, (60, 40))
    buf = io.BytesIO()
    up.save(buf, "JPEG", quality=70)
    return Image.open(buf).convert("RGB")


@pytest.mark.parametrize("kind", ["sift", "orb"])
def test_verification_accepts_a_rotated_rescaled_copy_and_rejects_a_look_alike(kind):
    cfg = VerifyConfig()
    target = extract(picture(1), kind, 512, 512)
    copy = extract(rotated_copy(picture(1)), kind, cfg.keypoints, cfg.max_side, cfg.min_side)
    look_alike = extract(rotated_copy(picture(2)), kind, cfg.keypoints, cfg.max_side, cfg.min_side)  # same statistics
    n_copy, n_other = inliers(copy, target, cfg), inliers(look_alike, target, cfg)
    assert n_copy >= cfg.min_inliers > n_other, (n_copy, n_other)
    # the stored form gives the same answer
    assert inliers(copy, unpack(pack(target)), cfg) >= cfg.min_inliers
    # local features alone over several targets name the right one
    index = FeatureIndex({f"t{i}": extract(picture(i), kind, 512, 512) for i in (1, 2, 3)})
    assert index.search(copy, cfg)[0] == "t1"


def test_upload_features_are_bounded():
    big = picture(5, (2400, 1600))
    f = extract(big, "sift", 300, 1024, 384)
    assert 0 < len(f) <= 300 and f.xy[:, 0].max() < 1024 and f.xy[:, 1].max() < 1024 * 1600 / 2400 + 1
    small = extract(picture(5, (100, 80)), "sift", 300, 1024, 384)  # scaled up to 384 px
    assert small.xy[:, 0].max() > 100


def test_library_keeps_target_features_and_verdict_carries_inliers(tmp_path):
    lib = Library.create(tmp_path / "lib", dim=FakeEmbed.dim, tile_size=32, descriptor="fake")
    embed = FakeEmbed()
    for i in (1, 2):
        b = cut_target(picture(i), f"t{i}", f"src-{i}", 100, 32, min_detail=0, features=lib.feature_spec)
        lib.append(b, embed(b.tiles))
    lib = Library.open(tmp_path / "lib")  # features come back from disk
    assert lib.feature_spec == FeatureSpec() and lib.target_features("t1") is not None
    assert lib.target_features("nope") is None
    cfg = ScreenConfig(threshold=-1.0, learn=False, verify=VerifyConfig(enabled=True))  # the descriptor alone flags anything
    s = Screener(lib, embed, cfg)
    v = s.screen([rotated_copy(picture(1))])
    assert v["verification"] == "on" and v["abnormal"]
    m = v["matches"][0]
    assert m["target_id"] == "t1" and m["inliers"] >= cfg.verify.min_inliers
    v = s.screen([rotated_copy(picture(3))])  # a look-alike: candidates proposed, none confirmed
    assert v["verification"] == "on" and not v["abnormal"] and v["best"][0] is not None
    either = Screener(lib, embed, cfg.model_copy(update={"verify": VerifyConfig(enabled=True, decide="either")}))
    v = either.screen([rotated_copy(picture(3))])  # the descriptor's score alone suffices (threshold -1)
    assert v["abnormal"] and v["matches"][0]["inliers"] < cfg.verify.min_inliers
    off = Screener(lib, embed, cfg.model_copy(update={"verify": VerifyConfig(enabled=False)}))
    v = off.screen([rotated_copy(picture(3))])
    assert v["verification"] == "off" and v["abnormal"] and "inliers" not in v["matches"][0]


def test_a_library_without_features_says_verification_is_unavailable(tmp_path):
    lib = Library.create(tmp_path / "old", dim=FakeEmbed.dim, tile_size=32, descriptor="fake", features=None)
    embed = FakeEmbed()
    b = cut_target(picture(1), "t1", "src-1", 100, 32, min_detail=0)
    lib.append(b, embed(b.tiles))
    lib = Library.open(tmp_path / "old")
    assert lib.feature_spec is None and lib.target_features("t1") is None
    s = Screener(lib, embed, ScreenConfig(threshold=-1.0, learn=False, verify=VerifyConfig(enabled=True)))
    v = s.screen([rotated_copy(picture(3))])
    assert v["verification"].startswith("unavailable") and v["abnormal"]  # the descriptor alone decides


def test_pasted_uploads_hold_the_tile_at_the_box():
    rng = np.random.default_rng(0)
    tile = picture(7, (90, 60))
    for kind in BACKGROUNDS:
        up = paste_upload(tile, rng, kind)
        x0, y0, x1, y1 = up["box"]
        assert up["background"] == kind and 0 <= x0 < x1 <= up["image"].width and 0 <= y0 < y1 <= up["image"].height
        pasted = np.asarray(up["image"].crop(up["box"]).resize((90, 60)), np.float32)
        assert np.abs(pasted - np.asarray(tile, np.float32)).mean() < 25  # the tile, not the background


class BlindEmbed:
    """A descriptor that sees nothing: every tile and region gets the same vector."""

    dim = FakeEmbed.dim

    def __call__(self, tiles):
        return np.full((len(tiles), self.dim), self.dim ** -0.5, np.float32)


def test_local_proposals_find_what_the_descriptor_does_not_propose_within_the_filter(tmp_path):
    lib = Library.create(tmp_path / "lib", dim=BlindEmbed.dim, tile_size=32, descriptor="blind")
    embed = BlindEmbed()
    for i, day in ((2, 200), (1, 100)):  # t2's tiles come first: the blind index proposes them
        b = cut_target(picture(i), f"t{i}", f"src-{i}", day, 32, min_detail=0, features=lib.feature_spec)
        lib.append(b, embed(b.tiles))
    one = dict(k=1, candidates=1, enabled=True)
    cfg = ScreenConfig(k=1, learn=False, rule=ExtensionRule(enabled=False), verify=VerifyConfig(**one))
    upload = rotated_copy(picture(1))
    v = Screener(lib, embed, cfg).screen([upload])
    assert not v["abnormal"] and v["best"][0]["target_id"] == "t2"  # t2 proposed, and rejected
    local = cfg.model_copy(update={"verify": VerifyConfig(**one, propose="descriptor+local")})
    v = Screener(lib, embed, local).screen([upload])
    assert v["abnormal"] and v["matches"][0]["target_id"] == "t1" and v["matches"][0]["proposal"] == "local"
    assert v["matches"][0]["inliers"] >= cfg.verify.min_inliers and v["matches"][0]["score"] is None
    # local proposals obey the attribute filter: released on day 200, only t2 may be proposed
    assert not Screener(lib, embed, local).screen([upload], release_time=200)["abnormal"]
