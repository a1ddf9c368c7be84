"""Threshold calibration: the operating point chooser, and screening's calibration on a user dataset."""
from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from docray.calibration import operating_point


def test_operating_point_keeps_fpr_within_budget():
    rng = np.random.default_rng(0)
    neg, pos = rng.normal(0, 1, 2000), rng.normal(3, 1, 500)
    op = operating_point(pos, neg, max_fpr=0.01)
    assert op.fpr <= 0.01 and op.resolved
    assert (neg >= op.threshold).sum() == 20  # the lowest such threshold: one negative lower would pass a 21st
    assert (neg >= np.sort(neg)[::-1][20]).sum() == 21
    assert op.tpr == pytest.approx((pos >= op.threshold).mean())
    assert 0.7 < op.tpr < 0.83  # N(3, 1) above the 99th percentile of N(0, 1) (2.33): 0.75


def test_operating_point_zero_fpr_and_unresolved():
    op = operating_point([0.9, 0.8, 0.2], [0.1, 0.3, 0.5], max_fpr=0.0)
    assert op.threshold > 0.5 and op.fpr == 0 and op.tpr == pytest.approx(2 / 3)
    assert not operating_point([1.0], [0.0] * 10, max_fpr=0.01).resolved  # 10 negatives cannot show 1%
    with pytest.raises(ValueError, match="positives and negatives"):
        operating_point([], [0.1], 0.1)


def test_calibrate_screening_cli(tmp_path):
    from docray.cli import main
    from docray.models import build_model, save_pretrained
    from docray.screening.embed import Embedder
    from docray.storage.datasets import write_shards
    from docray.synth import generate

    write_shards(generate("targets", 0, 12, seed=3, size=96), str(tmp_path / "pics"))
    model_dir = str(save_pretrained(build_model("descriptor_tiny"), str(tmp_path / "desc")))
    args = ["calibrate", "screening", str(tmp_path / "pics"), "--descriptor", model_dir, "--queries", "6",
            "--max-fpr", "0.2"]
    res = CliRunner().invoke(main, args + ["--json"])
    assert res.exit_code == 0, res.output
    op = json.loads(res.stdout.strip().splitlines()[-1])
    assert op["method"] == "screening" and op["n_pos"] == 6 and op["n_neg"] == 6 and op["fpr"] <= 0.2
    assert op["postings"] == ["alone", "post", "pasted_photo", "pasted_texture"] and op["written"] is None
    assert Embedder.load(model_dir).calibration is None  # printed only
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0 and "add --write" in res.stdout, res.output
    # --write: calibration.json beside the weights, what serving reads
    res = CliRunner().invoke(main, args + ["--write"])
    assert res.exit_code == 0, res.output
    assert f"written: {model_dir}/calibration.json" in res.stdout
    cal = Embedder.load(model_dir).calibration
    assert cal["threshold"] == op["threshold"] and cal["pictures"] == str(tmp_path / "pics")  # same seed, same queries
    assert {"max_fpr", "tpr", "fpr", "n_pos", "n_neg", "resolved", "postings", "created_at"} <= set(cal)


def test_calibrate_screening_writes_beside_the_registrys_latest_version(home, tmp_path):
    from docray.cli import main
    from docray.models import build_model
    from docray.screening.embed import Embedder
    from docray.storage.datasets import write_shards
    from docray.storage.registry import ModelRegistry
    from docray.synth import generate

    write_shards(generate("targets", 0, 8, seed=3, size=96), str(tmp_path / "pics"))
    reg = ModelRegistry()
    for _ in range(2):
        reg.save("descriptor", build_model("descriptor_tiny"), config={"name": "descriptor_tiny", "overrides": {}})
    res = CliRunner().invoke(main, ["calibrate", "screening", str(tmp_path / "pics"), "--queries", "4",
                                    "--max-fpr", "0.25", "--postings", "alone,post", "--write"])
    assert res.exit_code == 0, res.output
    assert "registry:descriptor@v0002" in res.stdout and "written:" in res.stdout
    cal = Embedder.load("registry:descriptor").calibration
    assert cal["descriptor"] == "registry:descriptor@v0002" and cal["postings"] == ["alone", "post"]
    assert Embedder.load("registry:descriptor@v0001").calibration is None
    res = CliRunner().invoke(main, ["calibrate", "screening", str(tmp_path / "pics"), "--descriptor",
                                    "build:descriptor_tiny", "--write"])
    assert res.exit_code != 0 and "nowhere to keep" in res.output


def test_calibrate_screening_needs_labels(tmp_path):
    from docray.screening.calibrate import screening_scores
    from docray.storage.datasets import write_shards
    from docray.synth import generate

    write_shards(generate("targets", 0, 4, seed=3, size=96).drop_columns(["is_target"]), str(tmp_path / "pics"))
    with pytest.raises(ValueError, match="is_target"):
        screening_scores(str(tmp_path / "pics"), "build:descriptor_tiny")


def test_the_calibration_library_holds_more_pictures_never_a_querys_own(tmp_path):
    """`library_pictures`: more sensitive pictures' tiles join the throw-away library (a library the size of the
    served one); no query carries one of them, and the CLI records which pictures they were."""
    from docray.cli import main
    from docray.models import build_model, save_pretrained
    from docray.screening.calibrate import posted_queries
    from docray.screening.embed import Embedder
    from docray.storage.datasets import write_shards
    from docray.synth import generate

    write_shards(generate("targets", 0, 8, seed=3, size=96), str(tmp_path / "pics"))
    write_shards(generate("targets", 50, 56, seed=3, size=96), str(tmp_path / "more"))
    embed = Embedder.load(str(save_pretrained(build_model("descriptor_tiny"), str(tmp_path / "desc"))))
    sizes, targets, found = {}, {}, set()
    for lib_uri in ("", str(tmp_path / "more")):
        for lib, q in posted_queries(str(tmp_path / "pics"), embed, 4, 0, library_pictures=lib_uri):
            sizes[lib_uri] = len(lib)
            targets.setdefault(lib_uri, []).append(q.target)
            found = {r["target_id"] for r in lib.rows(np.arange(len(lib)))}
    assert sizes[str(tmp_path / "more")] > sizes[""] > 0
    assert targets[""] == targets[str(tmp_path / "more")]  # the same queries, drawn the same way
    more = generate("targets", 50, 56, seed=3, size=96)
    sensitive = {i for i, t in zip(more.column("id").to_pylist(), more.column("is_target").to_pylist()) if t}
    assert sensitive and found & set(more.column("id").to_pylist()) == sensitive  # only its sensitive pictures joined
    assert set(targets[""]) - {None} <= {f"tgt-3-{i:07d}" for i in range(8)}  # no query carries one of theirs
    with pytest.raises(ValueError, match="shares picture ids"):
        next(posted_queries(str(tmp_path / "pics"), embed, 2, 0, library_pictures=str(tmp_path / "pics")))
    res = CliRunner().invoke(main, ["calibrate", "screening", str(tmp_path / "pics"), "--descriptor", "build:descriptor_tiny",
                                    "--queries", "4", "--library-pictures", str(tmp_path / "more"), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout.strip().splitlines()[-1])["library_pictures"] == str(tmp_path / "more")
