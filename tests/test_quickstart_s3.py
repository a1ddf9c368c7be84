"""The quickstart on an s3:// DOCRAY_HOME without Ray: its Serve config and the privacy files it deploys,
and the comparison of tests/quickstart_s3.py (`make quickstart-object-storage` runs the whole thing)."""
from __future__ import annotations

import os

import yaml

from tests.quickstart_s3 import compare


def test_the_serve_config_goes_to_the_home_and_a_local_copy_is_deployed(s3, monkeypatch, tmp_path):
    """The config is kept under the home and deployed from a local copy; the privacy app keeps its
    default targets (the grid under the home, which it reads through the blob layer): nothing else is
    copied to local disk."""
    import uuid

    from cluster.quickstart import GATEWAY, ROOT, with_dev_override
    from docray import paths
    from docray.storage import blobs
    from serve_apps.privacy import PrivacyAppConfig

    home = f"{s3}/qs-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("DOCRAY_HOME", home)
    local = with_dev_override(GATEWAY, str(tmp_path))
    assert str(local).startswith(str(tmp_path)) and local.read_bytes() == blobs.read_file(f"{home}/reports/quickstart/serve-config.yaml")
    privacy = yaml.safe_load(local.read_text())["applications"][0]["args"]["privacy"]
    orig = yaml.safe_load((ROOT / GATEWAY).read_text())["applications"][0]["args"]["privacy"]
    assert privacy == {**orig, "dev_override": True} and not PrivacyAppConfig(**privacy).targets
    assert sorted(p.name for p in tmp_path.iterdir()) == ["serve-config.yaml"]
    assert paths.sub("reports", "privacy", "grid", "targets.parquet").startswith(home)  # where the app looks


def _summary(job_id: str, answer: str, seconds: float) -> dict:
    return {"ok": True, "total_s": 1.0, "steps": [
        {"step": "synth corpus (Ray Data)", "seconds": seconds, "ok": True, "detail": "300 documents"},
        {"step": "train_regen", "seconds": seconds, "ok": True, "detail": f"{job_id} SUCCEEDED"}],
        "calls": [{"route": "GET /v1/file-types", "ok": True, "ms": 3.0, "answer": "6 types", "truth": ""},
                  {"route": "POST /v1/recognize", "ok": True, "ms": seconds, "answer": answer, "truth": ""}]}


def test_compare_ignores_job_ids_times_and_trained_answers_only():

    a, b = _summary("raysubmit_abc", "doc_type=passport", 1.0), _summary("raysubmit_xyz", "doc_type=visa", 2.0)
    diffs, lines = compare(a, b, ({"documents/train": {"rows": 1}}, {"documents/train": {"rows": 1}}))
    assert diffs == [] and any("doc_type=visa" in ln for ln in lines)
    b["steps"][1]["ok"] = False
    b["calls"][0]["answer"] = "5 types"
    diffs, _ = compare(a, b, ({"documents/train": {"rows": 1}}, {"documents/train": {"rows": 2}}))
    assert [d.split(":")[0] for d in diffs] == ["steps/statuses differ", "GET /v1/file-types", "dataset documents/train"]


def test_a_uri_home_without_a_database_gets_a_sqlite_file_of_this_machine(monkeypatch, tmp_path):
    from cluster.quickstart import database_for_uri_home

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("DOCRAY_DB_URL", "unset-at-teardown")  # recorded, so the URL the code sets below is undone
    monkeypatch.delenv("DOCRAY_DB_URL")
    monkeypatch.setenv("DOCRAY_HOME", str(tmp_path / "home"))
    assert database_for_uri_home(joining=False) is None and "DOCRAY_DB_URL" not in os.environ
    monkeypatch.setenv("DOCRAY_HOME", "s3://bucket/prefix")
    url = database_for_uri_home(joining=False)
    assert url.startswith(f"sqlite:///{tmp_path}/.cache/docray/quickstart-") and os.environ["DOCRAY_DB_URL"] == url
    assert database_for_uri_home(joining=False) is None  # set: kept as it is
