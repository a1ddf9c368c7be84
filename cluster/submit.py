"""`docray submit`: run an entrypoint on a Ray cluster through the Jobs API, with this folder as its code.

    docray submit -- python -m train_jobs.pretrain_recognition --set epochs=1          # RAY_ADDRESS or :8265
    docray submit --address http://head:8265 --env DOCRAY_HOME=s3://b/docray -- python -m train_jobs.train_regen
    docray submit --no-wait -- python -m train_jobs.train_recognition --set num_workers=2
    docray submit --list                       docray submit --stop raysubmit_...

    from cluster.submit import submit_job
    job_id, status = submit_job("python -m train_jobs.pretrain_recognition --set epochs=1")

The working directory goes up as the job's `runtime_env.working_dir` (Ray honours `.gitignore`;
`EXCLUDES` drops the rest of what should never travel: the venv, git history, data shards), so the
job runs the code you have here, on whatever node the cluster picks.
Without its git history: the commit checked out here (`-dirty` with uncommitted changes) goes along
as the job's DOCRAY_COMMIT, which the model cards of the versions it registers record.

Which `python`? The entrypoint is run by a shell on the head node, so a bare `python` resolves
through the PATH of the Ray processes there, not through the submitter's. In the images
(infra/Dockerfile*) that is the image's Python. On a machine where Ray was started from a venv's
interpreter without activating the venv (`.venv/bin/ray start --head`), `python` is the system's
and the job fails with ModuleNotFoundError: start Ray with the venv's bin first on PATH
(`PATH=$PWD/.venv/bin:$PATH ray start --head`, as the quickstart does), or name the interpreter
in the entrypoint (`/path/to/.venv/bin/python -m ...`). `submit_job` runs the entrypoint as given.
"""
from __future__ import annotations

import logging
import os
import shlex
import sys
import time

import click

DEFAULT_ADDRESS = "http://127.0.0.1:8265"
# Never uploaded (on top of .gitignore, which Ray honours): environments, history, data, caches.
EXCLUDES = [".venv", "venv", ".git", "__pycache__", "*.pyc", "*.egg-info", ".pytest_cache", "*.parquet",
            "*.safetensors", "*.pt", "*.ckpt", "build", "dist", "out", "runs", ".docray", "node_modules"]
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}


class ClusterUnreachable(ConnectionError):
    """No Ray Jobs API answers at the address."""


class JobFailed(RuntimeError):
    """The job ended FAILED or STOPPED; `.logs_tail` holds its last log lines."""

    def __init__(self, job_id: str, status: str, message: str, logs_tail: str):
        self.job_id, self.status, self.logs_tail = job_id, status, logs_tail
        super().__init__(f"job {job_id} {status}: {message or 'no message'}\n--- last log lines ---\n{logs_tail}")


class JobTimeout(TimeoutError):
    """The job was still running after the wait's limit; it keeps running (`.job_id` stops it)."""

    def __init__(self, job_id: str, status: str, timeout_s: float):
        self.job_id, self.status = job_id, status
        super().__init__(f"job {job_id} still {status} after {timeout_s:.0f}s "
                         f"(it keeps running; stop it with `docray submit --stop {job_id}`)")


def resolve_address(address: str | None = None) -> str:
    """The Jobs API URL: `address`, else RAY_ADDRESS when it is http(s), else the local head's :8265."""
    if address:
        return address
    env = os.environ.get("RAY_ADDRESS", "")
    return env if env.startswith(("http://", "https://")) else DEFAULT_ADDRESS


def _use_token_if_present() -> None:
    """Send Ray's auth token when one exists, as `ray job submit` and ray.init do.

    Ray >= 2.5x turns token auth on by default for clusters started locally and keeps the token in
    ~/.ray/auth_token (or RAY_AUTH_TOKEN / RAY_AUTH_TOKEN_PATH); the Jobs API answers 401 without it.
    RAY_AUTH_MODE=disabled opts out. Older Ray has no token auth: nothing to do.
    """
    try:
        from ray._private.authentication.authentication_token_setup import maybe_enable_token_auth_if_token_available
    except ImportError:
        return
    quiet = logging.getLogger("ray._private.authentication.authentication_token_setup")
    level, quiet.level = quiet.level, logging.ERROR  # its "token auth is enabled" warning is for servers
    try:
        maybe_enable_token_auth_if_token_available(warn_if_disabled=False)
    finally:
        quiet.setLevel(level)


def connect(address: str | None = None):
    """A JobSubmissionClient, or ClusterUnreachable with what to do about it."""
    from ray.job_submission import JobSubmissionClient

    url = resolve_address(address)
    _use_token_if_present()
    try:
        return JobSubmissionClient(url)
    except (ConnectionError, OSError) as e:  # requests' ConnectionError is an OSError; Ray raises ConnectionError
        raise ClusterUnreachable(
            f"no Ray cluster answers at {url} ({type(e).__name__}). Start one with `ray start --head` "
            "or set RAY_ADDRESS to the head's dashboard URL (http://HEAD:8265).") from None


def git_commit(folder: str) -> str:
    """The commit checked out in `folder` (`git rev-parse HEAD`), with `-dirty` when tracked files
    differ from it (untracked files do not count, as `git describe --dirty`); '' when `folder` is not
    in a git checkout or git is missing."""
    import subprocess

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", folder, *args], capture_output=True, text=True, check=True,
                              timeout=30).stdout.strip()

    try:
        head = git("rev-parse", "HEAD")
        return head + ("-dirty" if git("status", "--porcelain", "--untracked-files=no") else "")
    except (OSError, subprocess.SubprocessError):
        return ""


def runtime_env(working_dir: str | None, env: dict | None) -> dict:
    """The job's runtime_env: the working dir (minus EXCLUDES) and env vars. A working dir travels without
    its git history, so its commit goes along as DOCRAY_COMMIT (model cards record it), unless `env` sets one."""
    out: dict = {}
    if working_dir:
        out["working_dir"] = os.path.abspath(working_dir)
        out["excludes"] = list(EXCLUDES)
        commit = git_commit(working_dir) or os.environ.get("DOCRAY_COMMIT", "")
        if commit and "DOCRAY_COMMIT" not in (env or {}):
            env = {**(env or {}), "DOCRAY_COMMIT": commit}
    if env:
        out["env_vars"] = {str(k): str(v) for k, v in env.items()}
    return out


def _tail(text: str, n: int = 30) -> str:
    return "\n".join(text.rstrip().splitlines()[-n:])


def last_line(logs: str) -> str:
    """The log's last non-empty line, as a terminal shows it (a progress bar's latest redraw after its \\r)."""
    lines = [next((seg.strip() for seg in reversed(ln.split("\r")) if seg.strip()), "") for ln in logs.split("\n")]
    return next((ln for ln in reversed(lines) if ln), "")


def wait_for(client, job_id: str, *, follow_logs: bool = True, timeout_s: float | None = None,
             poll_s: float = 0.5, out=None, heartbeat_s: float | None = None) -> str:
    """Poll until the job is terminal, printing new log text as it arrives (or, without the logs, a line
    with the status, the minutes so far and the log's last line every `heartbeat_s`); returns the final status."""
    t0, shown, out = time.monotonic(), 0, out or sys.stdout
    beat = t0
    while True:
        status = str(client.get_job_status(job_id))
        if follow_logs:
            logs = client.get_job_logs(job_id)
            if len(logs) > shown:
                out.write(logs[shown:])
                out.flush()
                shown = len(logs)
        if status in TERMINAL:
            return status
        if heartbeat_s and not follow_logs and time.monotonic() - beat >= heartbeat_s:
            beat = time.monotonic()
            try:
                now = last_line(client.get_job_logs(job_id))[:150]
            except Exception:  # the logs are a courtesy: a job whose logs cannot be read still runs
                now = ""
            out.write(f"   ... {status}, {(beat - t0) / 60:.0f} min{': ' + now if now else ''}\n")
            out.flush()
        if timeout_s is not None and time.monotonic() - t0 > timeout_s:
            raise JobTimeout(job_id, status, timeout_s)
        time.sleep(poll_s)


def _submit(client, entrypoint: str, env: dict | None, patience_s: float = 60.0) -> str:
    """client.submit_job, retried while a fresh cluster's job agent is still starting (HTTP 500)."""
    t0 = time.monotonic()
    while True:
        try:
            return client.submit_job(entrypoint=entrypoint, runtime_env=env)
        except RuntimeError as e:
            if "No available agent" not in str(e) or time.monotonic() - t0 > patience_s:
                raise
            time.sleep(1.0)


def submit_job(entrypoint: str, address: str | None = None, working_dir: str | None = ".",
               env: dict | None = None, wait: bool = True, follow_logs: bool = True,
               timeout_s: float | None = None, heartbeat_s: float | None = None) -> tuple[str, str]:
    """Submit `entrypoint` (a shell command, run as given) and, with `wait`, follow it to the end.

    Returns (job_id, final status); with wait=False the status is the one right after submission.
    Raises ClusterUnreachable, JobFailed (FAILED or STOPPED, with the last log lines), JobTimeout.
    """
    if not entrypoint.strip():
        raise ValueError("empty entrypoint: give the command to run, e.g. `python -m train_jobs.pretrain_recognition`")
    if working_dir and not os.path.isdir(working_dir):
        raise FileNotFoundError(f"working_dir {working_dir!r} is not a directory")
    client = connect(address)
    job_id = _submit(client, entrypoint, runtime_env(working_dir, env) or None)
    if not wait:
        return job_id, str(client.get_job_status(job_id))
    status = wait_for(client, job_id, follow_logs=follow_logs, timeout_s=timeout_s, heartbeat_s=heartbeat_s)
    if status != "SUCCEEDED":
        info = client.get_job_info(job_id)
        raise JobFailed(job_id, status, info.message or "", _tail(client.get_job_logs(job_id)))
    return job_id, status


def _parse_env(items: tuple[str, ...]) -> dict:
    env = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{item!r} is not K=V", param_hint="--env")
        env[key] = value
    return env


@click.command("submit", context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.option("--address", default=None, help=f"Jobs API URL (default: RAY_ADDRESS if http(s), else {DEFAULT_ADDRESS})")
@click.option("--working-dir", default=".", show_default=True, help="folder uploaded as the job's code ('' for none)")
@click.option("--env", "env_items", multiple=True, metavar="K=V", help="environment variable for the job (repeatable)")
@click.option("--no-wait", is_flag=True, help="print the job id and return at once")
@click.option("--timeout", "timeout_s", type=float, default=None, help="give up waiting after this many seconds")
@click.option("--list", "list_jobs", is_flag=True, help="list the cluster's jobs and exit")
@click.option("--stop", "stop_id", default=None, metavar="JOB_ID", help="stop a running job and exit")
@click.argument("entrypoint", nargs=-1, type=click.UNPROCESSED)
def submit(address, working_dir, env_items, no_wait, timeout_s, list_jobs, stop_id, entrypoint):
    """Run ENTRYPOINT on a Ray cluster (Jobs API), with the working dir as its code.

    Put `--` before the entrypoint: docray submit -- python -m train_jobs.pretrain_recognition --set epochs=1.
    A bare `python` is the one on the PATH of the cluster's Ray processes (see cluster/submit.py).
    """
    try:
        if list_jobs or stop_id:
            client = connect(address)
            if stop_id:
                click.echo(f"{stop_id}: {'stop requested' if client.stop_job(stop_id) else 'not running'}")
            for job in client.list_jobs() if list_jobs else []:
                click.echo(f"{job.submission_id or job.job_id}  {job.status!s:<9}  {job.entrypoint}")
            return
        if not entrypoint:
            raise click.UsageError("give an entrypoint after --, e.g. docray submit -- python -m train_jobs.pretrain_recognition")
        command = entrypoint[0] if len(entrypoint) == 1 else shlex.join(entrypoint)  # one quoted string: as given
        job_id, status = submit_job(command, address=address, working_dir=working_dir or None,
                                    env=_parse_env(env_items), wait=not no_wait, timeout_s=timeout_s)
        click.echo(f"job {job_id}: {status}")
    except (ClusterUnreachable, JobFailed, TimeoutError, FileNotFoundError, ValueError) as e:
        raise click.ClickException(str(e)) from None


if __name__ == "__main__":
    submit()
