"""A real S3 endpoint for the tests: `moto` in server mode on 127.0.0.1, in a process of its own.

    with moto_server() as endpoint:          # "http://127.0.0.1:<free port>"
        env = s3_env(endpoint)               # AWS_ENDPOINT_URL, keys, region: what s3fs, boto3 and
                                             # pyarrow.fs.S3FileSystem read from the environment
        make_bucket(endpoint, "docray-test")

The server is a separate process (not a thread of the test process), so Ray workers, Serve replicas
and the driver all reach it over HTTP as they would MinIO or AWS, and a busy test process does not
slow it down. `tests/conftest.py`'s `s3` fixture starts one for the session.
"""
from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _wait_until_up(endpoint: str, proc: subprocess.Popen, log, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            log.seek(0)
            raise RuntimeError(f"moto server exited with {proc.returncode}: {log.read().decode()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1):
                return
        except (urllib.error.URLError, ConnectionError, OSError):
            time.sleep(0.1)
    raise TimeoutError(f"moto server at {endpoint} did not answer within {timeout_s:.0f} s")


@contextlib.contextmanager
def moto_server(host: str = "127.0.0.1", port: int | None = None, timeout_s: float = 60.0):
    """Run `python -m moto.server` on `port` (None: a free one) of `host`; yields its endpoint URL,
    stops it after."""
    tries = 1 if port else 3  # a free port may be taken between the probe and the bind: take another
    for attempt in range(tries):
        port = port or free_port(host)
        log = tempfile.TemporaryFile()  # werkzeug logs every request: a pipe nobody reads would fill and block it
        proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", host, "-p", str(port)],
                                stdout=log, stderr=subprocess.STDOUT)
        endpoint = f"http://{host}:{port}"
        try:
            _wait_until_up(endpoint, proc, log, timeout_s)
            break
        except BaseException as e:
            proc.kill()
            proc.wait()
            log.close()
            if not isinstance(e, RuntimeError) or attempt == tries - 1:
                raise
            port = None
    try:
        yield endpoint
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def s3_env(endpoint: str) -> dict[str, str]:
    """The environment that points s3fs, boto3 and pyarrow's S3FileSystem at `endpoint`."""
    return {**CREDENTIALS, "AWS_ENDPOINT_URL": endpoint, "AWS_ENDPOINT_URL_S3": endpoint}


def make_bucket(endpoint: str, bucket: str) -> None:
    import boto3

    boto3.client("s3", endpoint_url=endpoint, **_keys()).create_bucket(Bucket=bucket)


def _keys() -> dict:
    return {"aws_access_key_id": CREDENTIALS["AWS_ACCESS_KEY_ID"],
            "aws_secret_access_key": CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
            "region_name": CREDENTIALS["AWS_DEFAULT_REGION"]}


def apply_env(env: dict[str, str]) -> dict[str, str | None]:
    """Set `env` in os.environ; returns the previous values (None: unset) for `restore_env`."""
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    return old


def restore_env(old: dict[str, str | None]) -> None:
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
