"""Shared fixtures. Ray is started only here (library code never calls ray.init)."""
from __future__ import annotations

import os
import shutil
import socket
import tempfile
from pathlib import Path

import pytest

# Tests never write into the user's ~/.docray: one temporary DOCRAY_HOME for the session,
# set before anything (including Ray workers, which inherit the environment) reads it.
os.environ.setdefault("DOCRAY_HOME", tempfile.mkdtemp(prefix="docray-test-home-"))
os.environ.pop("RAY_ADDRESS", None)  # the suite always runs on its own embedded Ray

# The S3 endpoint of the `s3` fixture: its address and test keys are in the environment from the
# start, so every process of the session (Ray workers started before the fixture included) finds it.
from tests.s3 import free_port, make_bucket, moto_server, s3_env  # noqa: E402

S3_ENDPOINT = os.environ.setdefault("DOCRAY_TEST_S3_ENDPOINT", f"http://127.0.0.1:{free_port()}")
os.environ.update(s3_env(S3_ENDPOINT))  # never a real account's endpoint or keys


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A fresh DOCRAY_HOME for one test."""
    monkeypatch.setenv("DOCRAY_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture(scope="session")
def s3():
    """A real S3 endpoint for the session: `moto` in server mode on 127.0.0.1 (tests/s3.py), with one
    bucket. Yields `s3://<bucket>`; s3fs, boto3 and pyarrow.fs reach it through AWS_ENDPOINT_URL."""

    with moto_server(port=int(S3_ENDPOINT.rsplit(":", 1)[1])) as endpoint:
        make_bucket(endpoint, "docray-test")
        yield "s3://docray-test"


@pytest.fixture(scope="session")
def ray_cluster():
    """One embedded Ray for the whole session: 2 CPUs, as on the CI machine."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, namespace="docray-tests", log_to_driver=False,
             logging_level="ERROR")
    yield ray
    try:
        from ray import serve

        serve.shutdown()
    except Exception:
        pass
    ray.shutdown()


@pytest.fixture(scope="session")
def serve_port(ray_cluster) -> int:
    """Serve's HTTP port for the session: 8000, or a free one when another process on this host
    (another Ray, a gateway left running) holds 8000. Serve tests build their URLs from it."""
    from ray import serve
    from ray.serve.context import _get_global_client

    from cluster.local import port_in_use

    if port_in_use(8000, "127.0.0.1"):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        serve.start(http_options={"host": "127.0.0.1", "port": port})
    else:
        serve.start()
    return _get_global_client().http_config.port


@pytest.fixture(scope="module")
def cn_type():
    """A seventh document type, Chinese, registered by its template file alone (as a user adds one:
    a YAML file in DOCRAY_HOME/doctypes), removed afterwards."""
    folder = Path(os.environ["DOCRAY_HOME"], "doctypes")
    folder.mkdir(parents=True, exist_ok=True)
    dst = folder / "cn_resident_card.yaml"
    shutil.copy(Path(__file__).resolve().parents[1] / "examples" / "doctypes" / "cn_resident_card.yaml", dst)
    yield "cn_resident_card"
    dst.unlink()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def repo(request, tmp_path):
    """An ImageRepository on SQLite, and on DOCRAY_TEST_POSTGRES_URL when set (its tables emptied first)."""
    from sqlalchemy import delete

    from docray.storage.repository import Attachment, AuditEntry, Enrolment, ImageRepository, Record

    if request.param == "sqlite":
        r = ImageRepository(f"sqlite:///{tmp_path / 'repo.db'}", str(tmp_path / "blobs"))
    else:
        url = os.environ.get("DOCRAY_TEST_POSTGRES_URL")
        if not url:
            pytest.skip("DOCRAY_TEST_POSTGRES_URL is not set")
        r = ImageRepository(url, str(tmp_path / "blobs"))
        with r.engine.begin() as c:  # a clean slate on a shared server
            for table in (Attachment, Enrolment, AuditEntry, Record):
                c.execute(delete(table))
    yield r
    r.close()
