"""`docray models build`: profiles are checked before any job runs, steps resume from their stamps,
a changed or forced step re-runs what needs it, a failed step stops its dependants. The jobs are
replaced by a fake `run_job` here (the real one submits to Ray; `make models` runs it)."""
import json

import pytest
import torch
from click.testing import CliRunner

from cluster import models_build as mb
from cluster.cli import main
from docray.config import ConfigError
from docray.storage.registry import ModelRegistry


@pytest.mark.parametrize("name", ["quick", "standard"])
def test_shipped_profiles_are_valid(name):
    profile = mb.load_profile(name)  # every step's --set keys checked against its job's config
    assert [s.name for s in profile.steps][:2] == ["pretrain_recognition", "train_recognition"]
    produced = {n for s in profile.steps for n in s.produces}
    assert {"recognition-encoder", "recognition-unified", "descriptor", "regen", "mask_recognizer_masked"} <= produced


def _profile(tmp_path, steps) -> str:
    path = tmp_path / "p.yaml"
    path.write_text(json.dumps({"steps": steps}))  # JSON is YAML
    return str(path)


A = {"name": "a", "module": "train_jobs.pretrain_recognition", "set": ["epochs=1"], "produces": ["enc"]}
B = {"name": "b", "module": "train_jobs.train_recognition", "set": ["epochs=1"], "needs": ["a"], "produces": ["uni"]}
C = {"name": "c", "module": "data_jobs.privacy_grid", "set": ["runs=1"]}


def test_bad_profiles_are_refused_before_any_job(tmp_path):
    with pytest.raises(ConfigError, match="step 'a'.*epoch"):
        mb.load_profile(_profile(tmp_path, [{**A, "set": ["epoch=1"]}]))  # a typo of a key
    with pytest.raises(ConfigError, match="step 'a'"):
        mb.load_profile(_profile(tmp_path, [{**A, "set": ["epochs=many"]}]))  # a wrong type
    with pytest.raises(ConfigError, match="needs \\['a'\\]"):
        mb.load_profile(_profile(tmp_path, [B, A]))  # needs a later step
    with pytest.raises(ConfigError, match="twice"):
        mb.load_profile(_profile(tmp_path, [A, A]))
    with pytest.raises(ConfigError, match="unknown"):
        mb.load_profile(_profile(tmp_path, [{**A, "colour": "red"}]))


def test_a_step_key_follows_what_it_needs(tmp_path):
    keys = mb.step_keys(mb.load_profile(_profile(tmp_path, [A, B, C])))
    changed = mb.step_keys(mb.load_profile(_profile(tmp_path, [{**A, "set": ["epochs=2"]}, B, C])))
    assert keys["a"] != changed["a"] and keys["b"] != changed["b"] and keys["c"] == changed["c"]


@pytest.fixture
def jobs(home, monkeypatch):
    """A fake run_job that registers a version of each model its step produces; `fail` names steps that fail."""
    ran, fail = [], set()
    profile_steps = {}

    def run_job(name, module, overrides, address, timeout_s, log_dir=None, follow_logs=False):
        ran.append(name)
        if name in fail:
            return {"step": name, "seconds": 1.0, "ok": False, "detail": "raysubmit_x FAILED"}
        for model in profile_steps[name]:
            ModelRegistry().save(model, {"w": torch.zeros(1)}, {"name": model}, metrics={"train_samples_per_s": 12.5},
                                 card={"hardware": {"gpu": None, "num_workers": 2, "cpus_per_worker": 0.5}})
        return {"step": name, "seconds": 2.0, "ok": True, "detail": "raysubmit_x SUCCEEDED"}

    import cluster.quickstart

    monkeypatch.setattr(cluster.quickstart, "run_job", run_job)
    profile_steps.update({s["name"]: s.get("produces", []) for s in (A, B, C)})
    return ran, fail


def test_build_resumes_forces_and_stops_dependants(tmp_path, jobs, capsys):
    ran, fail = jobs
    path = _profile(tmp_path, [A, B, C])
    fail.add("a")
    rows = mb.build(path, address="http://unused")
    assert [r["status"] for r in rows] == ["FAILED", "not run", "built"] and ran == ["a", "c"]
    fail.clear()
    ran.clear()
    rows = mb.build(path, address="http://unused")  # resumes: c is done, a and b run
    assert ran == ["a", "b"] and [r["status"] for r in rows] == ["built", "built", "skipped"]
    assert "enc v0001" in rows[0]["detail"]
    assert "training throughput (last epoch): enc 12.5 samples/s (2 worker(s) x 0.5 CPU)" in capsys.readouterr().out
    ran.clear()
    assert [r["status"] for r in mb.build(path, address="http://unused")] == ["skipped"] * 3 and ran == []
    mb.build(path, address="http://unused", force=("a",))  # a forced step re-runs what needs it
    assert ran == ["a", "b"]
    ran.clear()
    stamp = json.loads((tmp_path / "home" / "builds" / "p" / "b.json").read_text())
    assert stamp["versions"] == {"uni": "v0002"} and stamp["key"] == mb.step_keys(mb.load_profile(path))["b"]
    # a stamp whose model version left the registry does not count
    (tmp_path / "home" / "models" / "uni" / "v0002" / "config.json").unlink()
    mb.build(path, address="http://unused")
    assert ran == ["b"]
    ran.clear()  # --only: the step asked for, and what it needs when that is not done
    (tmp_path / "home" / "builds" / "p" / "a.json").unlink()
    rows = mb.build(path, address="http://unused", only=("b",))  # a ran again, so b (which reads it) too
    assert ran == ["a", "b"] and [(r["step"], r["status"]) for r in rows] == [("a", "built"), ("b", "built")]
    rows = mb.build(path, address="http://unused", only=("c",), force=("c",))
    assert ran == ["a", "b", "c"] and [(r["step"], r["status"]) for r in rows] == [("c", "built")]


def test_a_default_changed_in_code_reruns_the_step(tmp_path, jobs, monkeypatch):
    """The key hashes the job's resolved config, not only the profile's --set: a default the code
    changed since the build (or DOCRAY_TINY) re-runs the step and what needs it."""
    import train_jobs.pretrain_recognition as job

    ran, _ = jobs
    path = _profile(tmp_path, [A, B, C])
    mb.build(path, address="http://unused")
    stamp = json.loads((tmp_path / "home" / "builds" / "p" / "a.json").read_text())
    assert stamp["config"]["epochs"] == 1 and stamp["config"]["mask_ratio"] == 0.75
    ran.clear()
    monkeypatch.setenv("DOCRAY_TINY", "1")
    mb.build(path, address="http://unused")
    assert ran == ["a", "b", "c"]
    monkeypatch.delenv("DOCRAY_TINY")
    mb.build(path, address="http://unused")
    ran.clear()

    class Changed(job.RecognitionPretrainConfig):
        mask_ratio: float = 0.6

    monkeypatch.setattr(job, "RecognitionPretrainConfig", Changed)  # what the job's main resolves with
    mb.build(path, address="http://unused")
    assert ran == ["a", "b"]


def test_stamps_from_before_config_keys_still_count(tmp_path, jobs):
    """A stamp without "config" (written before the key hashed it) counts when it has the old key, so an
    existing home does not rebuild everything; a wrong old key does not count."""
    ran, _ = jobs
    path = _profile(tmp_path, [A, B, C])
    mb.build(path, address="http://unused")
    legacy = mb.step_keys(mb.load_profile(path), legacy=True)
    for name in "abc":
        stamp_path = tmp_path / "home" / "builds" / "p" / f"{name}.json"
        stamp = json.loads(stamp_path.read_text())
        stamp.pop("config")
        stamp["key"] = legacy[name] if name != "c" else "0" * 16
        stamp_path.write_text(json.dumps(stamp))
    ran.clear()
    rows = mb.build(path, address="http://unused")
    assert ran == ["c"] and [r["status"] for r in rows] == ["skipped", "skipped", "built"]


def test_cli_dry_run_and_errors(tmp_path, home):
    runner = CliRunner()
    res = runner.invoke(main, ["models", "build", "--profile", "quick", "--dry-run"])
    assert res.exit_code == 0, res.output
    assert "[1/7] pretrain_recognition" in res.output and "7 to run" in res.output
    res = runner.invoke(main, ["models", "build", "--profile", "nope"])
    assert res.exit_code != 0 and "no profile 'nope'" in res.output and "quick" in res.output
    res = runner.invoke(main, ["models", "build", "--profile", _profile(tmp_path, [A]), "--force", "zz", "--dry-run"])
    assert res.exit_code != 0 and "no step(s) ['zz']" in res.output


def test_a_library_names_the_descriptor_version_it_was_built_with(home):
    """A library's vectors must come from one model: its manifest pins the version that was latest."""
    from data_jobs.screening_library import pinned
    from docray.storage.registry import parse_ref

    ModelRegistry().save("descriptor", {"w": torch.zeros(1)}, {"name": "x"})
    ModelRegistry().save("descriptor", {"w": torch.zeros(1)}, {"name": "x"})
    assert pinned("registry:descriptor") == "registry:descriptor@v0002"
    assert parse_ref(pinned("registry:descriptor")) == ("descriptor", "v0002")  # what loading reads
    assert pinned("registry:descriptor@v0001") == "registry:descriptor@v0001" and pinned("/a/folder") == "/a/folder"
