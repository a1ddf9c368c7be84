"""Ray 2.60 token auth: the Ray and Serve CLIs work as the README writes them against a `ray start --head`
cluster that has token auth on (a token in ~/.ray/auth_token, as any earlier embedded `ray.init()`
leaves behind). The venv's start hook (docray/compat.py: ray_token_auth) makes them send the token.

The cluster cannot meet another Ray on this host (the embedded one of this pytest session included):
its own free ports, temp dir (so its address file too) and HOME, in its own processes, stopped by
their pids at the end (never `ray stop`, which stops every Ray on the host).
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pytest
import yaml

BIN = Path(sys.executable).parent
APP = '''
from ray import serve


@serve.deployment(ray_actor_options={"num_cpus": 0})
class Say:
    def __init__(self, word):
        self.word = word

    def __call__(self, request):
        return self.word


def build(args):
    return Say.bind(args["word"])
'''
pytestmark = pytest.mark.slow  # a `ray start` cluster, a job and two Serve deploys: ~1.5-3 min on 2 cores


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _descendants(pid: int) -> list[int]:
    """`pid` and every process below it (from /proc), parents first."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        out.append(todo.pop(0))
        todo += children.get(out[-1], [])
    return out


def _stop(head: subprocess.Popen) -> None:
    """SIGTERM `ray start --block` (it stops the processes it started), then SIGKILL whatever is left."""
    pids = _descendants(head.pid)
    head.terminate()
    try:
        head.wait(60)
    except subprocess.TimeoutExpired:
        pass
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    head.wait(10)


@pytest.fixture
def cluster():
    """A token-auth `ray start --head` cluster: (env for the CLIs, dashboard URL, GCS address, folder, Serve port)."""
    root = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))  # short: Ray's unix socket paths must stay short
    (root / "home").mkdir()
    (root / "app").mkdir()
    (root / "app" / "say_app.py").write_text(APP)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_") and k != "PYTHONPATH"}
    env.update(HOME=str(root / "home"), PATH=f"{BIN}:{env.get('PATH', '')}", PYTHONPATH=str(root / "app"))
    subprocess.run([BIN / "ray", "get-auth-token", "--generate"], env=env, check=True, capture_output=True)
    gcs, dash = _free_port(), _free_port()
    low = 20000 + os.getpid() % 400 * 100  # worker ports: a range of 100 of our own
    ports = {f"--{name}-port": str(_free_port()) for name in (
        "dashboard-agent-listen", "dashboard-agent-grpc", "runtime-env-agent", "metrics-export",
        "ray-client-server", "node-manager", "object-manager")}
    cmd = [BIN / "ray", "start", "--head", "--block", "--num-cpus", "2", "--temp-dir", str(root / "ray"),
           "--port", str(gcs), "--dashboard-port", str(dash), "--include-dashboard", "true",
           "--min-worker-port", str(low), "--max-worker-port", str(low + 99), "--disable-usage-stats",
           *[x for kv in ports.items() for x in kv]]
    slow_host = {"RAY_raylet_start_wait_time_s": "120", "RAY_agent_register_timeout_ms": "120000"}
    with open(root / "head.log", "w") as log:
        head = subprocess.Popen(cmd, env={**env, **slow_host}, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        url = f"http://127.0.0.1:{dash}"
        deadline = time.monotonic() + 180
        while True:
            assert head.poll() is None, f"ray start exited: {(root / 'head.log').read_text()[-3000:]}"
            try:
                if httpx.get(f"{url}/api/version", timeout=5).status_code in (200, 401):
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the dashboard did not answer in 180 s"
            time.sleep(2)
        yield env, url, f"127.0.0.1:{gcs}", root, _free_port()
    finally:
        _stop(head)
        shutil.rmtree(root, ignore_errors=True)


def _cli(env: dict, *args: str, timeout: float = 180, **extra) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / args[0]), *args[1:]], env={**env, **extra}, capture_output=True, text=True,
                          timeout=timeout, cwd=Path(__file__).resolve().parents[1])


def _serve_config(root: Path, port: int, word: str) -> str:
    path = root / f"serve-{word}.yaml"
    path.write_text(yaml.safe_dump({
        "http_options": {"host": "127.0.0.1", "port": port},
        "applications": [{"name": "say", "route_prefix": "/", "import_path": "say_app:build", "args": {"word": word}}]}))
    return str(path)


def _answers(env: dict, url: str, port: int, word: str, timeout_s: float = 240) -> None:
    """`serve status` until the app is RUNNING, then GET / says `word`."""
    deadline, last = time.monotonic() + timeout_s, ""
    while time.monotonic() < deadline:
        st = _cli(env, "serve", "status", RAY_DASHBOARD_ADDRESS=url)
        assert st.returncode == 0, st.stdout + st.stderr
        last = st.stdout
        if "status: RUNNING" in last:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/", timeout=10).text == word:
                    return
            except httpx.HTTPError:
                pass
        time.sleep(3)
    raise AssertionError(f"the app did not answer {word!r} in {timeout_s:.0f} s; serve status:\n{last}")


def test_cli_commands_work_as_written_against_a_token_auth_cluster(cluster):
    env, url, gcs, root, port = cluster
    assert "RAY_AUTH_MODE" not in env and (root / "home/.ray/auth_token").exists()

    # the cluster does require the token: a CLI told not to send it is refused
    refused = _cli(env, "serve", "status", RAY_DASHBOARD_ADDRESS=url, RAY_AUTH_MODE="disabled")
    assert refused.returncode != 0 and "auth" in (refused.stdout + refused.stderr).lower()

    st = _cli(env, "serve", "status", RAY_DASHBOARD_ADDRESS=url)
    assert st.returncode == 0, st.stdout + st.stderr

    job = _cli(env, "ray", "job", "submit", "--", "python", "-c", "print(6 * 7)", RAY_ADDRESS=url)
    assert job.returncode == 0 and "42" in job.stdout and "succeeded" in job.stdout, job.stdout[-2000:] + job.stderr[-2000:]

    run = _cli(env, "serve", "run", "--non-blocking", _serve_config(root, port, "run"), RAY_ADDRESS=gcs)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    _answers(env, url, port, "run")

    deploy = _cli(env, "serve", "deploy", _serve_config(root, port, "deploy"), RAY_DASHBOARD_ADDRESS=url)
    assert deploy.returncode == 0, deploy.stdout[-2000:] + deploy.stderr[-2000:]
    _answers(env, url, port, "deploy")
