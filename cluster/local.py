"""Join a Ray cluster, or start Ray embedded in this process, fitted to the host.

    from cluster.local import init_ray, actor_resources
    init_ray()                                   # RAY_ADDRESS if set, else embedded Ray
    ds.map_batches(Predictor, concurrency=2, **actor_resources(2))

Why `actor_resources`: on a small host, actors that each reserve a whole CPU starve the read and
write tasks of a Ray Data pipeline (two 1-CPU actors on a 2-core machine leave no CPU for reads,
and the pipeline stalls). Actors therefore ask for a fraction of a CPU, leaving `reserve_cpus`
free for everything else; GPUs are split the same way when present.
"""
from __future__ import annotations

import importlib
import logging
import os
import sys
from pathlib import Path

import ray


def ray_address() -> str | None:
    """The address jobs will join: `RAY_ADDRESS`, else a local `ray start` cluster, else None (embedded)."""
    if os.environ.get("RAY_ADDRESS"):
        return os.environ["RAY_ADDRESS"]
    current = Path("/tmp/ray/ray_current_cluster")  # written by `ray start --head`
    if current.exists() and current.read_text().strip():
        return "auto"
    return None


def init_ray(address: str | None = None, *, num_cpus: int | None = None, num_gpus: int | None = None,
             quiet: bool = True, dashboard: bool = False) -> dict:
    """Connect to `address` / `RAY_ADDRESS` / a local `ray start` cluster, or start Ray embedded.

    Embedded Ray gets every core and GPU of the host (or `num_cpus`/`num_gpus`); the dashboard, and
    with it the Jobs API, only with `dashboard=True` (see `dashboard_url`).
    Idempotent: returns the cluster resources if Ray is already up in this process.
    """
    if not ray.is_initialized():
        address = address or ray_address()
        common = dict(namespace="docray", log_to_driver=not quiet, configure_logging=True,
                      logging_level="WARNING" if quiet else "INFO")
        if address:
            ray.init(address=address, **common)
        else:
            ray.init(num_cpus=num_cpus or os.cpu_count(), num_gpus=num_gpus, include_dashboard=dashboard,
                     dashboard_host="127.0.0.1", **common)
    if quiet:  # Ray Data logs every operator's progress at INFO when stdout is not a terminal
        importlib.import_module("ray.data")  # configures its loggers on import; lower them afterwards
        logging.getLogger("ray.data").setLevel(logging.WARNING)
    return ray.cluster_resources()


AGENT_PORT = 52365  # Ray's dashboard agent (job and runtime-env agents) default port


def port_in_use(port: int, host: str = "0.0.0.0") -> bool:
    """Whether something on this host already listens on `port`."""
    import socket

    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
            return False
        except OSError:
            return True


def another_ray_on_host(port: int = AGENT_PORT) -> bool:
    """Whether a Ray instance already holds this host's agent port.

    A second embedded Ray on the same host cannot bind it, and its jobs then reach the *other*
    instance's agents ("No available agent", runtime_env packages "not found in the GCS").
    """
    return port_in_use(port)


def check_no_other_ray(command: str, join: str) -> None:
    """Exit, saying what to do, when an embedded Ray for `command`'s jobs would meet another Ray on this host."""
    if not os.environ.get("RAY_ADDRESS") and another_ray_on_host():
        raise SystemExit(f"Another Ray instance runs on this host (its agent holds port {AGENT_PORT}): the jobs of "
                         f"{command} would reach its agents and fail. Stop it (`ray stop`), or join it: {join}")


def this_python_first() -> None:
    """Job entrypoints say `python`: put this interpreter's folder first on PATH, so the Ray processes
    started after this (and the jobs they run) use it, not the system's."""
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"


def dashboard_url() -> str:
    """The Jobs API / dashboard URL of the cluster this process is connected to."""
    from ray._private.worker import get_dashboard_url  # the URL ray.init printed (no public getter)

    url = get_dashboard_url()
    if not url:
        raise RuntimeError("this Ray cluster runs no dashboard (Jobs API): start it with init_ray(dashboard=True)")
    return url if url.startswith("http") else f"http://{url}"


def actor_resources(concurrency: int, *, use_gpu: bool | None = None, reserve_cpus: float = 0.5) -> dict:
    """Per-actor `num_cpus` (and `num_gpus`) so that `concurrency` actors fit and leave room for tasks.

    `use_gpu=None` uses GPUs when the cluster has any. Returns kwargs for `map_batches`/`.options`.
    """
    res = ray.cluster_resources()
    cpus, gpus = res.get("CPU", 1.0), res.get("GPU", 0.0)
    per_cpu = max(0.05, min(1.0, (cpus - reserve_cpus) / max(concurrency, 1)))
    out = {"num_cpus": round(per_cpu, 3)}
    if (use_gpu is None and gpus > 0) or use_gpu:
        if gpus <= 0:
            raise RuntimeError("use_gpu=True but the Ray cluster has no GPU")
        out["num_gpus"] = min(1.0, gpus / max(concurrency, 1))
    return out
