"""Issue 19, item 8: data protection in the image repository. Deleting a record leaves no blob and no
row behind (nothing half-deleted when a blob cannot be removed: a rerun finishes it); a retention
period purges originals (and the attachments holding their pixels) and a read then answers `Purged`;
every admin read of an original, every delete and purge is in the audit table. Library-level on
SQLite (and Postgres when DOCRAY_TEST_POSTGRES_URL is set); the CLI; the Regen deployment's
retention thread as a plain class; one Serve test of the routes."""
from __future__ import annotations

import io
import json
import sqlite3
import time
from datetime import datetime, timedelta, timezone

import pytest
from click.testing import CliRunner
from PIL import Image
from sqlalchemy import delete, select, update

from docray.storage.blobs import NotFound
from docray.storage.repository import (AccessDenied, Attachment, DeletionIncomplete, ImageRepository, Purged, Record)
from tests.test_regen_models import TINY_LIB


def png(seed: int, size: int = 16) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), (seed * 37 % 256, seed * 91 % 256, seed * 13 % 256)).save(buf, "PNG")
    return buf.getvalue()


def full_record(repo: ImageRepository, seed: int = 0) -> str:
    """A record with every kind of image: original, processed, compressed, portrait, document, two seals."""
    return repo.add(png(seed, 32), png(seed + 1), png(seed + 2), doc_type="id_card", meta={"mode": "server"},
                    attachments=[("portrait", png(seed + 3), {}), ("document", png(seed + 4), {}),
                                 ("seal", png(seed + 5), {}), ("seal", png(seed + 6), {})])


def rows_of(repo: ImageRepository, rid: str) -> dict:
    """Every row that names the record, in every table but the audit."""
    with repo.engine.connect() as c:
        return {"records": c.execute(select(Record.id).where(Record.id == rid)).all(),
                "attachments": c.execute(select(Attachment.id).where(Attachment.record_id == rid)).all()}


def refuse(key: str) -> bool:
    raise OSError(f"simulated: the store is down ({key})")


def test_delete_leaves_no_blob_or_row_behind(repo):
    keep = full_record(repo, seed=10)
    rid = full_record(repo)
    repo.update(rid, processed=png(20), attachments=[("seal", png(21), {})])  # the replaced processed image: a blob no row names
    kept_blobs = [k for k in repo.blobs.keys() if rid not in k]
    assert len([k for k in repo.blobs.keys() if rid in k]) == 3 + 4 + 2  # original, 2 processed, compressed, 5 attachments
    assert all(k.count(rid) == 1 for k in repo.blobs.keys() if rid in k)  # every blob under its record's own prefix

    out = repo.delete(rid, actor="key:abc", route="DELETE /v1/repository/x")
    assert out == {"record_id": rid, "deleted": True, "blobs": 9}
    assert rows_of(repo, rid) == {"records": [], "attachments": []}
    assert repo.blobs.keys() == kept_blobs  # nothing of the record, everything of the other
    for which in ("original", "processed", "compressed"):
        with pytest.raises(NotFound):
            repo.get(rid, which, "admin")
    with pytest.raises(NotFound):
        repo.record(rid)
    with pytest.raises(NotFound):  # a second delete
        repo.delete(rid)
    with pytest.raises(NotFound):
        repo.delete("../../etc/passwd")
    assert repo.get(keep, "original", "admin") == png(10, 32) and repo.count() == 1
    [entry] = repo.audit_log(rid)
    assert (entry["action"], entry["actor"], entry["role"], entry["route"]) == ("delete", "key:abc", "admin",
                                                                                "DELETE /v1/repository/x")
    assert "original, processed, compressed" in entry["what"] and "5 attachment(s)" in entry["what"]
    assert repo.gc(min_age_s=0) == []  # nothing left for the collector


def test_a_failed_blob_removal_leaves_the_record_unreadable_and_a_rerun_finishes(repo, monkeypatch):
    rid = full_record(repo)
    real_delete, calls = repo.blobs.delete, []

    def flaky(key):
        calls.append(key)
        if key.startswith("attachments/portrait/"):
            raise OSError("simulated: the store refused")
        return real_delete(key)

    monkeypatch.setattr(repo.blobs, "delete", flaky)
    with pytest.raises(DeletionIncomplete, match="run the delete"):
        repo.delete(rid)
    assert len(calls) == 7  # every other blob was removed; one failed
    with pytest.raises(NotFound):  # marked: already gone for every reader
        repo.get(rid, "processed", "user")
    assert repo.count() == 0 and repo.list() == [] and repo.pending()["deletions"] == [rid]
    assert rows_of(repo, rid)["records"] != []  # the rows wait for the blobs
    with pytest.raises(NotFound):
        repo.put_compressed(rid, png(30))  # no write reaches a record under deletion
    assert rid in repo.purge(timedelta(days=30))["pending"]  # still failing: reported, left for the next run
    monkeypatch.setattr(repo.blobs, "delete", real_delete)

    assert repo.delete(rid)["deleted"] is True  # the rerun finishes
    assert rows_of(repo, rid) == {"records": [], "attachments": []} and repo.blobs.keys() == []
    with pytest.raises(NotFound):
        repo.delete(rid)
    assert [e["action"] for e in repo.audit_log(rid)] == ["delete"]  # one deletion, logged once


def test_the_next_purge_finishes_a_deletion_left_under_way(repo, monkeypatch):
    rid = full_record(repo)
    real_delete = repo.blobs.delete
    monkeypatch.setattr(repo.blobs, "delete", refuse)
    with pytest.raises(DeletionIncomplete):
        repo.delete(rid)
    monkeypatch.setattr(repo.blobs, "delete", real_delete)
    assert repo.purge(timedelta(days=30), dry_run=True)["deleted"] == [rid]
    assert repo.purge(timedelta(days=30))["deleted"] == [rid]
    assert rows_of(repo, rid) == {"records": [], "attachments": []} and repo.blobs.keys() == []


def test_a_blob_two_older_records_share_goes_with_the_last(repo):
    """Records written before the per-record layout share content-addressed blobs: deleting one keeps
    the blob the other still reads."""
    a, b = repo.add(png(0)), repo.add(png(1))
    shared = repo.blobs.put_content(png(7), "original")  # the old layout's key
    with repo.engine.begin() as c:
        c.execute(update(Record).where(Record.id.in_([a, b])).values(original_key=shared))
    repo.delete(a)
    assert repo.get(b, "original", "admin") == png(7)
    repo.delete(b)
    assert repo.blobs.keys() == []


def test_retention_purges_originals_and_keeps_the_rest(repo):
    old, new = full_record(repo), full_record(repo, seed=10)
    with repo.engine.begin() as c:  # created 40 days ago
        c.execute(update(Record).where(Record.id == old).values(created_at=datetime.now(timezone.utc) - timedelta(days=40)))
    blobs = repo.blobs.keys()

    dry = repo.purge(timedelta(days=30), dry_run=True)
    assert dry["dry_run"] and [p["record_id"] for p in dry["purged"]] == [old]
    assert [(a["n"], a["kind"]) for a in dry["purged"][0]["attachments"]] == [(0, "portrait"), (1, "document")]
    assert repo.blobs.keys() == blobs and repo.get(old, "original", "admin") == png(0, 32)  # a dry run changes nothing

    out = repo.purge(timedelta(days=30))
    assert [p["record_id"] for p in out["purged"]] == [old] and out["pending"] == {}
    gone = set(blobs) - set(repo.blobs.keys())
    assert len(gone) == 3 and all(old in k for k in gone)  # the original, the portrait, the document
    with pytest.raises(Purged, match="retention period") as e:
        repo.get(old, "original", "admin")
    assert isinstance(e.value, NotFound)
    for n in (0, 1):
        with pytest.raises(Purged):
            repo.attachment(old, n, "admin")
    with pytest.raises(AccessDenied):  # a user learns nothing new
        repo.get(old, "original", "user")
    assert repo.get(old, "processed", "user") == png(1) and repo.get(old, "compressed", "user") == png(2)
    assert repo.attachment(old, 2, "user")["data"] == png(5)  # seals stay
    assert [a["n"] for a in repo.attachments(old, "admin")] == [2, 3]
    rec = repo.record(old)
    assert rec["original_purged_at"] is not None and rec["sizes"]["processed"] == len(png(1))
    assert repo.get(new, "original", "admin") == png(10, 32) and repo.record(new)["original_purged_at"] is None
    assert repo.purge(timedelta(days=30))["purged"] == []  # once
    assert repo.gc(min_age_s=0) == []
    assert [e["action"] for e in repo.audit_log(old, action="purge")] == ["purge"]
    assert repo.audit_log(old, action="purge")[0]["what"] == "original, attachment 0 (portrait), attachment 1 (document)"

    repo.delete(old)  # a purged record deletes as fully as any other
    assert rows_of(repo, old) == {"records": [], "attachments": []} and not any(old in k for k in repo.blobs.keys())


def test_a_purge_whose_blobs_fail_is_finished_by_the_next_run(repo, monkeypatch):
    rid = full_record(repo)
    later = datetime.now(timezone.utc) + timedelta(days=31)
    real_delete = repo.blobs.delete
    monkeypatch.setattr(repo.blobs, "delete", refuse)
    out = repo.purge(timedelta(days=30), now=later)
    assert out["purged"] == [] and list(out["pending"]) == [rid]
    with pytest.raises(Purged):  # marked: the original is already unreadable
        repo.get(rid, "original", "admin")
    assert repo.pending()["purges"] == [rid]
    monkeypatch.setattr(repo.blobs, "delete", real_delete)
    assert [p["record_id"] for p in repo.purge(timedelta(days=30), now=later)["purged"]] == [rid]
    assert repo.pending() == {"deletions": [], "purges": []} and len(repo.blobs.keys()) == 7 - 3
    assert len(repo.audit_log(rid, action="purge")) == 1


def test_every_admin_read_of_an_original_is_audited(repo):
    rid = full_record(repo)
    assert repo.audit_log() == []
    repo.get(rid, "processed", "user")
    repo.attachment(rid, 2, "user")  # a seal: not the original's pixels
    assert repo.audit_log() == []
    repo.get(rid, "original", "admin", actor="key:0123456789ab", route="GET /v1/repository/x/original")
    repo.attachment(rid, 0, "admin", actor="key:0123456789ab")
    repo.attachments(rid, "admin")
    repo.get(rid, "original", "admin")  # a library caller without a key
    log = repo.audit_log(rid)
    assert [(e["action"], e["actor"], e["what"]) for e in log] == [
        ("read", "role:admin", "original"),
        ("read", "role:admin", "attachment 0 (portrait), attachment 1 (document)"),
        ("read", "key:0123456789ab", "attachment 0 (portrait)"),
        ("read", "key:0123456789ab", "original")]
    assert log[-1]["route"] == "GET /v1/repository/x/original" and log[-1]["role"] == "admin"
    at = datetime.fromisoformat(log[0]["at"])
    assert at.utcoffset() == timedelta(0) and abs(datetime.now(timezone.utc) - at) < timedelta(minutes=5)
    assert len(repo.audit_log(limit=2)) == 2 and repo.audit_log("f" * 32) == []
    with pytest.raises(NotFound):  # a read that did not happen is not logged
        repo.get("f" * 32, "original", "admin")
    assert len(repo.audit_log()) == 4


def test_an_older_database_gets_the_new_columns(tmp_path):
    """A repository created before data protection (no audit table, no state columns) opens and deletes."""
    db = tmp_path / "old.db"
    with sqlite3.connect(db) as c:
        c.executescript("""
            CREATE TABLE records (id VARCHAR(32) PRIMARY KEY, created_at DATETIME, doc_type VARCHAR(64), meta JSON,
                split JSON, original_key VARCHAR(255) NOT NULL, processed_key VARCHAR(255), compressed_key VARCHAR(255),
                original_bytes BIGINT NOT NULL, processed_bytes BIGINT, compressed_bytes BIGINT);
            CREATE TABLE attachments (id VARCHAR(32) PRIMARY KEY, record_id VARCHAR(32) REFERENCES records(id)
                ON DELETE CASCADE, seq INTEGER, kind VARCHAR(32), key VARCHAR(255), size BIGINT, meta JSON);
        """)
    blobs = tmp_path / "blobs"
    (blobs / "original" / "ab").mkdir(parents=True)
    (blobs / "original" / "ab" / "abcd").write_bytes(png(0))
    with sqlite3.connect(db) as c:
        c.execute("INSERT INTO records VALUES (?, '2020-01-01 00:00:00.000000', NULL, '{}', NULL, 'original/ab/abcd', "
                  "NULL, NULL, 10, NULL, NULL)", ("a" * 32,))
    with ImageRepository(f"sqlite:///{db}", str(blobs)) as repo:
        assert repo.get("a" * 32, "original", "admin") == png(0)
        assert [p["record_id"] for p in repo.purge(timedelta(days=30))["purged"]] == ["a" * 32]
        repo.delete("a" * 32)
        assert repo.count() == 0 and repo.blobs.keys() == [] and len(repo.audit_log()) == 3


# -- the command line --------------------------------------------------------------------------------

def test_repository_cli_purge_delete_audit(tmp_path):
    from cluster.cli import main
    from docray.storage.cli import parse_age

    assert parse_age("30d") == timedelta(days=30) and parse_age("12h") == timedelta(hours=12)
    url, root = f"sqlite:///{tmp_path / 'r.db'}", str(tmp_path / "blobs")
    with ImageRepository(url, root) as repo:
        old, new = full_record(repo), full_record(repo, seed=10)
        with repo.engine.begin() as c:
            c.execute(update(Record).where(Record.id == old).values(created_at=datetime.now(timezone.utc) - timedelta(days=40)))
    base = ["repository", "--db-url", url, "--blob-root", root]
    run = CliRunner().invoke
    r = run(main, base + ["purge", "--older-than", "30d", "--dry-run"])
    assert r.exit_code == 0 and "would purge 1 original(s)" in r.output and old in r.output and new not in r.output
    assert run(main, base + ["purge", "--older-than", "soon"]).exit_code == 2
    r = run(main, base + ["purge", "--older-than", "30d", "--json"])
    assert r.exit_code == 0 and [p["record_id"] for p in json.loads(r.output)["purged"]] == [old]
    r = run(main, base + ["delete", new])
    assert r.exit_code == 0 and json.loads(r.output)["deleted"] is True
    r = run(main, base + ["delete", new])
    assert r.exit_code == 1 and "no record" in r.output
    r = run(main, base + ["audit", "--json"])
    entries = [json.loads(line) for line in r.output.splitlines()]
    assert [(e["action"], e["record_id"]) for e in entries] == [("delete", new), ("purge", old)]
    assert all(e["actor"].startswith("cli") for e in entries) and entries[1]["route"] == "docray repository purge"


# -- the Regen deployment's retention thread, as a plain class ----------------------------------------

def test_the_retention_thread_purges_off_the_event_loop(repo):
    from serve_apps.regen import RegenAppConfig, Retention

    assert RegenAppConfig().retention_days is None  # keep originals unless a period is configured
    with pytest.raises(ValueError):
        RegenAppConfig(retention_days=0)
    rid = full_record(repo)
    task = Retention(repo, days=1e-6, interval_s=0.05)  # ~0.09 s: the record is old by the first run
    time.sleep(0.2)
    task.start()
    try:
        deadline = time.monotonic() + 10
        while repo.record(rid)["original_purged_at"] is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert task._thread.name == "docray-retention" and task._thread.daemon
    finally:
        task.stop()
    with pytest.raises(Purged):
        repo.get(rid, "original", "admin")
    assert task.info()["last"] is not None and repo.audit_log(rid)[0]["actor"] == "retention"
    task._thread.join(5)
    assert not task._thread.is_alive()


# -- the routes, once through Serve ----------------------------------------------------------------

@pytest.fixture(scope="module")
def app(serve_port, tmp_path_factory):
    import yaml
    from ray import serve

    from serve_apps import regen
    from serve_apps.gateway import Gateway

    d = tmp_path_factory.mktemp("protection-app")
    (d / "lib.yaml").write_text(yaml.safe_dump(TINY_LIB))
    cfg = regen.RegenAppConfig(untrained="regen_tiny", file_types=str(d / "lib.yaml"), repository_url=f"sqlite:///{d}/r.db",
                               blob_root=str(d / "blobs"), steps=1)
    env = {"runtime_env": {"env_vars": {"DOCRAY_API_KEYS": "ukey=user,akey=admin"}}, "num_cpus": 0.25}
    app = Gateway.options(ray_actor_options=env).bind({"regen": cfg.model_dump()}, regen=regen.backend(cfg))
    serve.run(app, name="protection", route_prefix="/dp")
    try:
        yield f"http://127.0.0.1:{serve_port}/dp", cfg
    finally:
        serve.delete("protection")


def test_delete_audit_and_purged_routes(app):
    import hashlib

    import httpx

    from docray import api_cli
    from docray.client import DocrayClient, DocrayError

    url, cfg = app
    with ImageRepository(cfg.repository_url, cfg.blob_root) as repo:  # the deployment's repository, from here
        rid, old = full_record(repo), full_record(repo, seed=10)
        repo.purge(timedelta(days=30), now=datetime.now(timezone.utc) + timedelta(days=31))  # both originals purged...
    with ImageRepository(cfg.repository_url, cfg.blob_root) as repo:
        rid = full_record(repo, seed=20)  # ...and a fresh one to read and delete
    user, admin = {"Authorization": "Bearer ukey"}, {"Authorization": "Bearer akey"}
    akey_id = "key:" + hashlib.sha256(b"akey").hexdigest()[:12]
    with httpx.Client(timeout=60) as c:
        assert c.delete(f"{url}/v1/repository/{rid}").status_code == 401
        r = c.delete(f"{url}/v1/repository/{rid}", headers=user)
        assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
        assert c.get(f"{url}/v1/audit", headers=user).status_code == 403

        assert c.get(f"{url}/v1/repository/{rid}/original", headers=admin).content == png(20, 32)
        r = c.get(f"{url}/v1/repository/{old}/original", headers=admin)
        assert r.status_code == 410 and r.json()["error"]["code"] == "purged" and "retention" in r.json()["error"]["message"]
        assert c.get(f"{url}/v1/repository/{old}/attachments/0", headers=admin).status_code == 410
        assert c.get(f"{url}/v1/repository/{old}/compressed", headers=user).content == png(12)

        entries = c.get(f"{url}/v1/audit", params={"record_id": rid}, headers=admin).json()["entries"]
        assert [(e["action"], e["actor"], e["what"]) for e in entries] == [("read", akey_id, "original")]
        assert entries[0]["route"] == f"GET /dp/v1/repository/{rid}/original"
        for bad in ({"record_id": "../../etc/passwd"}, {"limit": "0"}, {"limit": ""}, {"action": "peek"}):
            r = c.get(f"{url}/v1/audit", params=bad, headers=admin)
            assert r.status_code == 400 and set(r.json()["error"]) == {"code", "message"}, (bad, r.text)

        with DocrayClient(url, api_key="akey") as dc:
            assert dc.delete_record(rid) == {"record_id": rid, "deleted": True, "blobs": 7}
            with pytest.raises(DocrayError) as e:
                dc.delete_record(rid)  # a second delete
            assert (e.value.status, e.value.code) == (404, "not_found")
            assert [x["action"] for x in dc.audit(record_id=rid)["entries"]] == ["delete", "read"]
            assert dc.audit(action="purge", limit=5)["entries"][0]["actor"] == "retention"
        assert c.get(f"{url}/v1/repository/{rid}/processed", headers=user).status_code == 404
        cli = ["--url", url, "--api-key", "akey"]  # `docray api delete-record | audit`, the same routes
        r = CliRunner().invoke(api_cli.api, [*cli, "delete-record", old])
        assert r.exit_code == 0 and json.loads(r.output)["deleted"] is True, r.output
        r = CliRunner().invoke(api_cli.api, [*cli, "audit", "--record", old])
        assert [e["action"] for e in json.loads(r.output)["entries"]] == ["delete", "purge"]
        r = CliRunner().invoke(api_cli.api, [*cli, "delete-record", old])
        assert r.exit_code == 1 and "not_found (HTTP 404)" in r.output
        r = c.delete(f"{url}/v1/repository/nope", headers=admin)
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    with ImageRepository(cfg.repository_url, cfg.blob_root) as repo:
        assert rows_of(repo, rid) == {"records": [], "attachments": []} and not any(rid in k for k in repo.blobs.keys())
