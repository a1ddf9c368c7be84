"""`docray submit` / `submit_job` against a real Jobs API.

The session `ray_cluster` fixture starts Ray with include_dashboard=False, and then Ray loads no
Jobs API (only UsageStatsHead). So this module runs its own small Ray, with the Jobs API, in a
child process (its own session; never `ray start`/`ray stop`, which would touch other Ray
sessions on the host), and stops it by closing the child's stdin.
"""
from __future__ import annotations

import subprocess
import sys
import textwrap
import time

import pytest
from click.testing import CliRunner

from cluster.submit import EXCLUDES, ClusterUnreachable, JobFailed, resolve_address, submit, submit_job

# Two Ray sessions on one host both bind the dashboard agent's fixed port 52365 (and the second
# one's job agent never starts: "No available agent to submit job"), and ray.init has no argument
# for it: the child gives its RayParams free ports. ray.init (unlike `ray start` or
# ray.cluster_utils.Cluster) writes no /tmp/ray/ray_current_cluster, so no other process joins it.
CHILD = textwrap.dedent("""
    import socket, sys
    import ray
    from ray._private.parameter import RayParams

    def free_port():
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    _init = RayParams.__init__
    def _init_free_agent_port(self, *args, **kwargs):
        kwargs.setdefault("dashboard_agent_listen_port", free_port())
        _init(self, *args, **kwargs)
    RayParams.__init__ = _init_free_agent_port

    ctx = ray.init(num_cpus=1, include_dashboard=True, dashboard_host="127.0.0.1", dashboard_port=free_port(),
                   namespace="docray-submit-test", log_to_driver=False, logging_level="ERROR")
    print("URL http://" + ctx.dashboard_url, flush=True)
    sys.stdin.read()        # until the test closes stdin
    ray.shutdown()
""")


@pytest.fixture(scope="module")
def jobs_address():
    proc = subprocess.Popen([sys.executable, "-c", CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        line, t0 = "", time.monotonic()
        while not line.startswith("URL ") and time.monotonic() - t0 < 120:
            line = proc.stdout.readline()
            if not line and proc.poll() is not None:
                pytest.fail("the Ray child process exited before printing its dashboard URL")
        yield line.split()[1]
    finally:
        proc.stdin.close()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()


def py(code: str) -> str:
    """An entrypoint that runs this interpreter (a bare `python` is the cluster's PATH's, see submit.py)."""
    return f"{sys.executable} -c {code!r}"


def test_submit_succeeds_and_streams_logs(jobs_address, capsys):
    job_id, status = submit_job(py("print('hello docray')"), address=jobs_address, working_dir=None)
    assert status == "SUCCEEDED" and job_id
    assert "hello docray" in capsys.readouterr().out


def test_working_dir_and_env_reach_the_job(jobs_address, tmp_path, capsys):
    (tmp_path / "hello_mod.py").write_text("import os\nprint('from module', os.environ['DOCRAY_MARK'])\n")
    (tmp_path / ".venv").mkdir()
    (tmp_path / ".venv" / "big.bin").write_bytes(b"x" * 1024)
    code = "import hello_mod, os; assert not os.path.exists('.venv'), 'excluded dir uploaded'"
    _, status = submit_job(py(code), address=jobs_address, working_dir=str(tmp_path), env={"DOCRAY_MARK": "m42"})
    assert status == "SUCCEEDED"
    assert "from module m42" in capsys.readouterr().out


def test_failing_job_raises_with_its_output(jobs_address):
    with pytest.raises(JobFailed) as err:
        submit_job(py("import sys; print('about to fail'); sys.exit(3)"), address=jobs_address,
                   working_dir=None, follow_logs=False)
    assert err.value.status == "FAILED"
    assert "about to fail" in err.value.logs_tail and "about to fail" in str(err.value)


def test_no_wait_then_list_and_stop_through_cli(jobs_address):
    job_id, status = submit_job(py("import time; time.sleep(60)"), address=jobs_address, working_dir=None,
                                wait=False)
    assert status in {"PENDING", "RUNNING"}
    runner = CliRunner()
    listed = runner.invoke(submit, ["--address", jobs_address, "--list"])
    assert listed.exit_code == 0 and job_id in listed.output
    stopped = runner.invoke(submit, ["--address", jobs_address, "--stop", job_id])
    assert stopped.exit_code == 0 and "stop requested" in stopped.output


def test_cli_runs_an_entrypoint(jobs_address):
    result = CliRunner().invoke(submit, ["--address", jobs_address, "--working-dir", "", "--env", "A=1", "--",
                                         sys.executable, "-c", "import os; print('cli', os.environ['A'])"])
    assert result.exit_code == 0, result.output
    assert "SUCCEEDED" in result.output


def test_unreachable_address_is_a_clear_fast_error():
    t0 = time.monotonic()
    with pytest.raises(ClusterUnreachable, match="ray start --head"):
        submit_job("echo hi", address="http://127.0.0.1:9", working_dir=None)
    assert time.monotonic() - t0 < 30
    result = CliRunner().invoke(submit, ["--address", "http://127.0.0.1:9", "--", "echo", "hi"])
    assert result.exit_code == 1 and "RAY_ADDRESS" in result.output


def test_address_resolution(monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "ray://head:10001")
    assert resolve_address() == "http://127.0.0.1:8265"  # a Ray Client address is not a Jobs API
    monkeypatch.setenv("RAY_ADDRESS", "http://head:8265")
    assert resolve_address() == "http://head:8265"
    assert resolve_address("http://other:8265") == "http://other:8265"


def test_repo_upload_stays_small():
    """What working_dir='.' would send: tracked files, minus EXCLUDES; well under Ray's 500 MiB limit."""
    import fnmatch
    import os

    files = subprocess.run(["git", "ls-files"], capture_output=True, text=True, check=True,
                           cwd=os.path.dirname(os.path.dirname(__file__))).stdout.split()
    kept = [f for f in files if not any(fnmatch.fnmatch(part, pat) for part in f.split("/") for pat in EXCLUDES)]
    root = os.path.dirname(os.path.dirname(__file__))
    size = sum(os.path.getsize(os.path.join(root, f)) for f in kept if os.path.exists(os.path.join(root, f)))
    assert kept and size < 50 * 2**20, f"{size / 2**20:.1f} MiB would be uploaded"


def test_a_build_step_past_its_timeout_is_stopped_and_reported(monkeypatch, tmp_path):
    """run_job (the build's and the quickstart's step) stops a job still running at its timeout and
    reports the step failed, so the build goes on and reports instead of dying with the job left behind."""
    import cluster.quickstart as qs
    import cluster.submit as sub

    stopped = []

    class Client:
        def stop_job(self, job_id):
            stopped.append(job_id)
            return True

        def get_job_logs(self, job_id):
            return "epoch 1\ncalibrating\n"

    def late(*args, timeout_s=None, **kwargs):
        raise sub.JobTimeout("raysubmit_late", "RUNNING", timeout_s)

    monkeypatch.setattr(sub, "submit_job", late)
    monkeypatch.setattr(sub, "connect", lambda address=None: Client())
    res = qs.run_job("slow", "train_jobs.slow", [], "http://unused", 5, log_dir=str(tmp_path))
    assert not res["ok"] and res["detail"] == "raysubmit_late TIMED OUT" and stopped == ["raysubmit_late"]
    assert (tmp_path / "slow.log").read_text() == "epoch 1\ncalibrating\n"
