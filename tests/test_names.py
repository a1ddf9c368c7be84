"""One name per method (regen, recognition, screening, privacy) across package, model file, jobs, Serve
module, gateway key, Serve config, CLI group, tests and docs; the files are listed, nothing is run."""
from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
METHODS = ("regen", "recognition", "screening", "privacy")
OLD_NAMES = ("compression", "compress", "masking", "mask_", "private", "unified", "cutout", "descriptor", "rescan")
SHARED = {"common", "synth_corpus", "__init__"}  # jobs of no single method


def _stems(folder: str) -> set[str]:
    return {p.stem for p in (ROOT / folder).glob("*.py")}


def test_every_method_has_its_name_in_each_layer():
    from cluster.cli import JOB_COMMANDS
    from docray.cli import LAZY_GROUPS
    from serve_apps.gateway import APPS

    assert set(APPS) == set(METHODS)
    assert set(METHODS) <= _stems("serve_apps") and set(METHODS) <= {p.stem for p in (ROOT / "configs/serve").glob("*.yaml")}
    assert set(METHODS) <= {p.stem for p in (ROOT / "docs").glob("*.md")}
    assert set(METHODS) <= set(LAZY_GROUPS) | set(JOB_COMMANDS)
    assert {"regen", "recognition", "screening"} <= _stems("docray/models")
    assert all((ROOT / "docray" / m / "__init__.py").exists() for m in METHODS)


def test_jobs_and_modules_carry_one_method_name_and_no_old_one():
    jobs = (_stems("train_jobs") | _stems("data_jobs")) - SHARED
    for stem in jobs:
        assert sum(m in stem for m in METHODS) == 1, f"job {stem!r} should name exactly one of {METHODS}"
    files = [p.relative_to(ROOT) for top in ("docray", "serve_apps", "train_jobs", "data_jobs", "tests", "configs", "docs")
             for p in (ROOT / top).rglob("*") if p.suffix in {".py", ".yaml", ".md"} and "__pycache__" not in p.parts]
    stale = [str(f) for f in files if any(old in part for part in f.parts for old in OLD_NAMES)
             and not str(f).startswith(("docray/screening/", "docray/models/", "docray/synth/"))]
    assert not stale, f"files named by an old method name: {stale}"
