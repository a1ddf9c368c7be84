"""benchmarks/train_paths.py: the old vs new training path benchmark (its figures, step timer, one tiny run)."""
from __future__ import annotations

import json
import math
import time

import pytest
import torch

from benchmarks.train_paths import StepTimer, figure


def test_figure_points_and_direction():
    share = figure("acc", old=0.80, new=0.77, higher_is_better=True, share=True, tol=2.0)
    assert share["diff_points"] == pytest.approx(-3.0) and share["worse_points"] == pytest.approx(3.0)
    assert not share["ok"]
    loss = figure("loss", old=2.0, new=2.03, higher_is_better=False, share=False, tol=2.0)
    assert loss["diff_points"] == pytest.approx(1.5) and loss["ok"]  # percent of the old loss
    assert figure("loss", old=2.0, new=1.0, higher_is_better=False, share=False, tol=2.0)["ok"]  # better is ok
    ref = figure("acc", old=0.80, new=0.81, higher_is_better=True, share=True, tol=2.0, reference=0.75)
    assert ref["old_reseeded"] == 0.75 and ref["reseeded_diff_points"] == pytest.approx(-5.0)
    assert share["old_reseeded"] is None and share["reseeded_diff_points"] is None


def test_step_timer_leaves_out_the_first_step():
    timer = StepTimer()
    for epoch in range(2):
        for i, _ in enumerate(timer.wrap([torch.zeros(4), torch.zeros(4), torch.zeros(3)])):
            time.sleep(0.5 if (epoch, i) == (0, 0) else 0.01)
    s = timer.summary()
    assert s["steps"] == 6
    assert s["samples_timed"] == 4 + 3 + 11  # epoch 0 without its first batch, then all of epoch 1
    assert 0.05 <= s["seconds_timed"] < 0.4  # five 0.01 s steps; the 0.5 s first step is not in it
    assert s["samples_per_s"] == pytest.approx(s["samples_timed"] / s["seconds_timed"])
    assert s["samples_per_cpu_s"] > s["samples_per_s"]  # sleeping takes no CPU


@pytest.mark.slow  # two Ray Train runs and Ray Data reads: 85 s on 2 shared cores (load ~8)
def test_mask_run_same_rows_equal_steps(ray_cluster, tmp_path, capsys, monkeypatch):
    """One tiny masked recogniser through both paths: same rows, same steps, throughput measured."""
    from benchmarks import train_paths

    monkeypatch.setenv("DOCRAY_HOME", str(tmp_path / "home"))
    out = train_paths.main(["--set", "methods=[privacy]", "cpus_per_worker=0.5", "privacy.kinds=[masked]",
                            "privacy.n_identities=4", "privacy.samples=10", "privacy.epochs=2", "privacy.batch_size=8",
                            "privacy.model=recognizer_tiny", "privacy.image_size=32",
                            "privacy.mask_bank=6", f"out={tmp_path / 'bench'}"])
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == json.loads(json.dumps(out, default=str))
    mask = out["methods"]["privacy"]
    assert mask["same_rows"] and out["same_rows"]
    (speed,) = mask["throughput"]
    assert speed["steps_old"] == speed["steps_new"] == 2 * (4 * 8 // 8)  # 2 epochs of the 32 'train' rows
    for path in ("old", "new"):
        assert math.isfinite(speed[f"samples_per_s_per_worker_{path}"]) and speed[f"samples_per_s_per_worker_{path}"] > 0
    assert speed["synth_imported_in_worker_old"] and not speed["synth_imported_in_worker_new"]
    assert {f["figure"] for f in mask["figures"]} == {"masked: val_acc_whole", "masked: val_acc_masked"}
    for f in mask["figures"]:
        assert 0 <= f["old"] <= 1 and 0 <= f["new"] <= 1
    assert mask["held_out_rows"] == 4  # one 'val' face per identity
