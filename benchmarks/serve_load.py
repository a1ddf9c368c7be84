"""Load on the docray gateway over loopback: latency and throughput per endpoint, the gateway's overhead,
a mixed load with an error count, 1 vs 2 replicas, and how long autoscaling takes to add a replica.

    python -m benchmarks.serve_load --quick       # smoke run, under 3 minutes
    python -m benchmarks.serve_load               # full: 10 s per endpoint, 60 s mixed load (~6 minutes)

The models are tiny and UNTRAINED (random weights, built in a temporary DOCRAY_HOME; ~/.docray is never
touched): the figures are the cost of serving (HTTP, the gateway, handles, batching, decoding), not of
real models. The app graph is the gateway's (`serve_apps.gateway`), with the replica options of
configs/serve/gateway.yaml (max_ongoing_requests, ray_actor_options, user_config) but one fixed replica
per deployment, so every phase measures the same thing; the autoscaling phase sets its own config.
Ray runs embedded (2 CPUs) with Serve on a free loopback port; the load generator (asyncio, one
httpx.AsyncClient, N workers until a deadline) runs in this process and shares the same cores, so on a
2-core host the figures are a floor. Phases:

1. each endpoint alone at --concurrency for --endpoint-duration s: p50/p99 latency, req/s;
   1b. /v1/screen alone with two-stage verification (SIFT + RANSAC, `verify.enabled`) off, then on,
   one request at a time: p50/p99 per picture (the library stores its targets' SIFT features);
2. gateway overhead (sequential, --requests each): p50 of a trivial route through HTTP (`GET
   /v1/file-types`, answered by the Gateway deployment) minus p50 of the same method on the Gateway's
   handle from this driver; and a composed route (`GET /v1/screen/library`, Gateway -> Screening) against
   `Screening.library_info` by handle, which adds the gateway's own hop to the backend;
3. a mixed load over every endpoint for --duration s: requests, req/s, errors (non-2xx or exception);
4. /v1/privacy/identify with Privacy at 1 then 2 replicas (same load): req/s and ratio;
5. autoscaling: Recognizer redeployed with autoscaling_config (min 1, max 3, target 2 ongoing requests),
   /v1/recognize under load, `serve.status()` polled until a second replica is RUNNING.

Two nodes (`--nodes 2`, or `--nodes both` for the one-node run and then the two-node run, side by side):
`ray.cluster_utils.Cluster` starts two Ray nodes on this host, the head (custom resource
`docray_gateway`: Serve's proxy and the Gateway) and a second one (`docray_models`: every model
deployment), 2 logical CPUs each (they only place the replicas: both share the host's cores, as the
one-node run does). Phases 1-3 run, so every route's p50/p99 and errors compare with one node; the
cross-node hop's cost is the p50 of one backend call by handle (`Screening.library_info`, from the
driver on the head) on two nodes minus the same on one node. Both nodes read the same local model
folders (one host): this measures the hop, not object storage.

    python -m benchmarks.serve_load --nodes both --quick
Last line: one JSON object.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import socket
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "serve" / "gateway.yaml"
APP = "docray"
KEYS = "bench-user=user,bench-admin=admin"
HEADERS = {"Authorization": "Bearer bench-user"}


# -- requests -------------------------------------------------------------------------------------------
@dataclass
class Endpoint:
    name: str  # snake_case key in the JSON line
    method: str
    path: str
    files: list | None = None
    data: dict | None = None


def endpoints(samples: dict) -> list[Endpoint]:
    doc, face = ("d.png", samples["document"], "image/png"), ("f.png", samples["face"], "image/png")
    pictures = [("pictures", (f"p{i}.png", p, "image/png")) for i, p in enumerate(samples["pictures"])]
    return [Endpoint("recognize", "POST", "/v1/recognize", [("image", doc)]),
            Endpoint("screen", "POST", "/v1/screen", pictures, {"release_time": "2024-05-01"}),
            Endpoint("privacy_identify", "POST", "/v1/privacy/identify", [("image", face)],
                     {"mask_id": samples["face_mask_id"]}),
            Endpoint("compress_split", "POST", "/v1/compress?mode=split", [("image", doc)]),
            Endpoint("file_types", "GET", "/v1/file-types"),
            Endpoint("healthz", "GET", "/healthz")]


@dataclass
class Stats:
    latencies_ms: dict[str, list[float]] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    samples: list[str] = field(default_factory=list)  # the first few error messages
    wall_s: float = 0.0

    def add(self, name: str, ms: float, error: str | None) -> None:
        self.latencies_ms.setdefault(name, []).append(ms)
        if error:
            self.errors[name] = self.errors.get(name, 0) + 1
            if len(self.samples) < 5:
                self.samples.append(f"{name}: {error}")

    def summary(self, name: str | None = None) -> dict:
        lat = sum(self.latencies_ms.values(), []) if name is None else self.latencies_ms.get(name, [])
        errors = sum(self.errors.values()) if name is None else self.errors.get(name, 0)
        p50, p99 = np.percentile(lat, [50, 99]) if lat else (float("nan"),) * 2
        return {"requests": len(lat), "errors": errors, "p50_ms": round(float(p50), 2), "p99_ms": round(float(p99), 2),
                "req_per_s": round(len(lat) / self.wall_s, 2) if self.wall_s else 0.0}


async def load(url: str, eps: list[Endpoint], concurrency: int, duration_s: float,
               stop: asyncio.Event | None = None) -> Stats:
    """`concurrency` workers send requests (cycling through `eps`) until the deadline (or `stop` is set)."""
    import httpx

    stats = Stats()
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, headers=HEADERS, limits=limits, timeout=120) as client:
        deadline = time.perf_counter() + duration_s

        async def worker(k: int) -> None:
            while time.perf_counter() < deadline and not (stop and stop.is_set()):
                ep = eps[k % len(eps)]
                k += 1
                t = time.perf_counter()
                try:
                    r = await client.request(ep.method, ep.path, files=ep.files, data=ep.data)
                    error = None if r.is_success else f"HTTP {r.status_code} {r.text[:200]}"
                except Exception as e:  # noqa: BLE001 -- counted, the load goes on
                    error = f"{type(e).__name__}: {e}"[:200]
                stats.add(ep.name, (time.perf_counter() - t) * 1e3, error)

        t0 = time.perf_counter()
        await asyncio.gather(*(worker(i) for i in range(concurrency)))
        stats.wall_s = time.perf_counter() - t0
    return stats


def run_load(url, eps, concurrency, duration_s) -> Stats:
    return asyncio.run(load(url, eps, concurrency, duration_s))


def warm_up(url: str, eps: list[Endpoint], n: int = 3) -> None:
    """A few calls per endpoint (first calls load lazily); raises on an error, before anything is measured."""
    import httpx

    with httpx.Client(base_url=url, headers=HEADERS, timeout=300) as c:
        for ep in eps:
            for _ in range(n):
                r = c.request(ep.method, ep.path, files=ep.files, data=ep.data)
                if not r.is_success:
                    raise RuntimeError(f"warm-up {ep.method} {ep.path}: HTTP {r.status_code} {r.text[:300]}")


# -- deployment -----------------------------------------------------------------------------------------
def yaml_options() -> tuple[dict[str, dict], list[str]]:
    """Per deployment: the YAML's replica options, one replica; user_config only where the class can take it."""
    from serve_apps import privacy, recognition, regen, screening
    from serve_apps.gateway import Gateway

    classes = {d.name: d for d in (Gateway, recognition.Recognizer, screening.Screening, screening.Descriptor,
                                   privacy.Privacy, regen.Regen,
                                   regen.TypeModel, regen.ContentModel, regen.Generator)}
    opts, notes = {}, []
    for d in yaml.safe_load(CONFIG.read_text())["applications"][0]["deployments"]:
        o = {k: d[k] for k in ("max_ongoing_requests", "ray_actor_options", "user_config") if k in d}
        if "user_config" in o and not hasattr(classes[d["name"]].func_or_class, "reconfigure"):
            notes.append(f"{d['name']}: YAML user_config dropped (the class has no reconfigure(); Serve would fail the replica)")
            o.pop("user_config")
        opts[d["name"]] = {**o, "num_replicas": 1}
    return opts, notes


def graph(args: dict, base: dict[str, dict], overrides: dict[str, dict] | None = None):
    """The gateway's app graph (as serve_apps.gateway.build_app builds it) with per-deployment options."""
    from serve_apps import regen, screening
    from serve_apps.gateway import Gateway, GatewayConfig
    from serve_apps.privacy import Privacy
    from serve_apps.recognition import Recognizer

    overrides = overrides or {}

    def o(dep):
        opts = {"version": "serve-load", **base[dep.name], **overrides.get(dep.name, {})}
        if "autoscaling_config" in opts:
            opts.pop("num_replicas", None)
        # A fixed version (Serve's own flag for it is internal): a redeploy that changes only replica counts or
        # autoscaling updates those deployments in place, as `serve deploy` of an edited YAML does, instead of
        # restarting all nine (serve.run gives every deployment a new random version otherwise). An override
        # that changes a deployment's arguments gives it another version, so that one restarts.
        return dep.options(_internal=True, **opts)

    cfg = GatewayConfig.model_validate(args)
    sc, cc = cfg.screening, cfg.regen.model_dump()
    source = json.loads((Path(sc.library) / "manifest.json").read_text())["descriptor"]  # as screening.backend does
    desc = o(screening.Descriptor).bind(source, sc.max_batch_size, sc.batch_wait_timeout_s)
    handles = {"recognition": o(Recognizer).bind(cfg.recognition.model_dump()),
               "screening": o(screening.Screening).bind(desc, sc.model_dump()),
               "privacy": o(Privacy).bind(cfg.privacy.model_dump()),
               "regen": o(regen.Regen).bind(o(regen.TypeModel).bind(cc), o(regen.ContentModel).bind(cc),
                                                o(regen.Generator).bind(cc), cc)}
    return o(Gateway).bind(cfg.model_dump(), **handles)


def deploy(args: dict, base: dict, overrides: dict | None = None) -> float:
    from ray import serve

    t = time.perf_counter()
    serve.run(graph(args, base, overrides), name=APP, route_prefix="/")
    return time.perf_counter() - t


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def replicas(name: str) -> dict[str, int]:
    from ray import serve

    dep = serve.status().applications[APP].deployments[name]
    return {str(getattr(k, "value", k)): v for k, v in dep.replica_states.items()}


# -- phases ---------------------------------------------------------------------------------------------
def ping_app():
    """Serve's own floor: one replica answering "ok" to any HTTP request (no FastAPI, no handles)."""
    from ray import serve

    @serve.deployment(ray_actor_options={"num_cpus": 0.01}, max_ongoing_requests=64)
    class Ping:
        async def __call__(self, request) -> str:
            return "ok"

    return Ping.bind()


def overhead(url: str, n: int) -> dict:
    """Sequential p50s, HTTP through the gateway vs. the same work on a deployment handle from this driver:
    - trivial route `GET /v1/file-types`, served by the Gateway deployment itself, vs. `Gateway.file_types_json`
      by handle: what the HTTP entry (proxy, middleware, auth, FastAPI) adds (the issue's target);
    - composed route `GET /v1/screen/library` (Gateway -> Screening) vs. `Screening.library_info` by handle:
      the entry plus the gateway's own handle hop to the backend;
    with GET /floor (the proxy and a bare replica, no FastAPI) to place both."""
    import httpx
    from ray import serve

    serve.run(ping_app(), name="floor", route_prefix="/floor")
    gateway, screening = serve.get_deployment_handle("Gateway", APP), serve.get_deployment_handle("Screening", APP)
    calls = {
        "trivial_http": lambda c: c.get("/v1/file-types").raise_for_status(),
        "trivial_handle": lambda c: gateway.file_types_json.remote().result(),
        "composed_http": lambda c: c.get("/v1/screen/library").raise_for_status(),
        "composed_handle": lambda c: screening.library_info.remote().result(),
        "serve_floor": lambda c: c.get("/floor").raise_for_status(),
    }
    ms = {k: [] for k in calls}
    with httpx.Client(base_url=url, headers=HEADERS, timeout=60) as c:
        for i in range(n + 10):  # 10 warm-up calls each, then interleaved so all see the same machine
            for key, fn in calls.items():
                t = time.perf_counter()
                fn(c)
                if i >= 10:
                    ms[key].append((time.perf_counter() - t) * 1e3)
    serve.delete("floor")
    p50 = {k: float(np.median(v)) for k, v in ms.items()}
    out = {f"{k}_p50_ms": round(v, 2) for k, v in p50.items()}
    out.update(gateway_overhead_p50_ms=round(p50["trivial_http"] - p50["trivial_handle"], 2),
               composed_overhead_p50_ms=round(p50["composed_http"] - p50["composed_handle"], 2), overhead_requests=n)
    return out


def autoscale(url: str, args: dict, base: dict, eps: list[Endpoint], concurrency: int, timeout_s: float) -> dict:
    """Recognizer with autoscaling; load on /v1/recognize until a second replica is RUNNING (or the timeout)."""
    name = "Recognizer"
    cfg = {"autoscaling_config": {"min_replicas": 1, "max_replicas": 3, "target_ongoing_requests": 2,
                                  "upscale_delay_s": 1, "downscale_delay_s": 600, "metrics_interval_s": 0.5,
                                  "look_back_period_s": 2}}
    deploy(args, base, {name: cfg})
    wait = time.perf_counter() + 30
    while replicas(name).get("RUNNING", 0) > 1 and time.perf_counter() < wait:  # back at min after a redeploy
        time.sleep(0.5)
    start = time.perf_counter()
    deadline = start + timeout_s
    ep = next(e for e in eps if e.path == "/v1/recognize")
    seen = {"decided_s": None, "running_s": None, "max_running": 1}

    async def watch(task, stop: asyncio.Event):
        while not task.done():
            states = await asyncio.to_thread(replicas, name)  # serve.status() blocks: off the load's event loop
            now = time.perf_counter() - start
            total, running = sum(states.values()), states.get("RUNNING", 0)
            seen["max_running"] = max(seen["max_running"], running)
            if seen["decided_s"] is None and total > 1:
                seen["decided_s"] = round(now, 2)
            if running > 1:
                seen["running_s"] = round(now, 2)
                stop.set()  # the load ends with the answer
                return
            await asyncio.sleep(0.5)

    async def main():
        stop = asyncio.Event()
        task = asyncio.ensure_future(load(url, [ep], concurrency, deadline - time.perf_counter(), stop))
        await watch(task, stop)
        return await task

    stats = asyncio.run(main())
    s = stats.summary()
    return {"autoscale_deployment": name, "autoscale_added_replica": seen["running_s"] is not None,
            "autoscale_s_to_decision": seen["decided_s"], "autoscale_s_to_running_replica": seen["running_s"],
            "autoscale_max_running_replicas": seen["max_running"], "autoscale_load_errors": s["errors"],
            "autoscale_load_req_per_s": s["req_per_s"]}


# -- main -----------------------------------------------------------------------------------------------
def table(rows: list[tuple], head: tuple) -> str:
    rows = [tuple(str(c) for c in r) for r in [head, *rows]]
    w = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w[i]) if i == 0 else c.rjust(w[i]) for i, c in enumerate(r)) for r in rows]
    return "\n".join([lines[0], "-" * len(lines[0]), *lines[1:]])


class Formatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    pass


def parse(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=Formatter)
    ap.add_argument("--duration", type=float, default=60, help="seconds of the mixed load (phase 3)")
    ap.add_argument("--concurrency", type=int, default=8, help="concurrent requests in flight (every phase)")
    ap.add_argument("--endpoint-duration", type=float, default=10, help="seconds per endpoint (phase 1) and per replica count (phase 4)")
    ap.add_argument("--requests", type=int, default=200, help="sequential requests per side for the overhead (phase 2)")
    ap.add_argument("--autoscale-timeout", type=float, default=90, help="seconds of load waiting for a second replica (phase 5)")
    ap.add_argument("--serve-env", action="append", default=[], metavar="KEY=VALUE",
                    help="environment for Ray/Serve processes (repeatable), e.g. RAY_SERVE_THROUGHPUT_OPTIMIZED=1")
    ap.add_argument("--quick", action="store_true", help="smoke run: 2 s per endpoint, 8 s mixed, 50 overhead requests, 60 s autoscale")
    ap.add_argument("--nodes", choices=["1", "2", "both"], default="1",
                    help="1: embedded Ray, phases 1-5; 2: two Ray nodes on this host (gateway on the head, model "
                         "deployments on the other), phases 1-3; both: phases 1-3 on 1 node, then on 2, side by side")
    args = ap.parse_args(argv)
    if args.quick:
        args.duration, args.endpoint_duration, args.requests, args.autoscale_timeout = 8, 2, 50, 60
    return args


def screen_verify(opts, url: str, args: dict, base: dict, eps: list[Endpoint]) -> dict:
    """Phase 1b: /v1/screen alone with two-stage verification (`verify.enabled`: SIFT + RANSAC over each
    picture against its candidates' targets) off, then on (Screening redeployed with it, then back);
    one request at a time (the service time, not queueing), p50/p99 per picture. Prints the table,
    returns the JSON figures."""
    screen = next(e for e in eps if e.name == "screen")
    n = len(screen.files)
    on = {**args, "screening": {**args["screening"], "screen": {**args["screening"]["screen"], "verify": {"enabled": True}}}}
    stats = {}
    for key, a, version in (("off", args, "serve-load"), ("on", on, "serve-load-verify")):
        deploy(a, base, {"Screening": {"version": version}})
        warm_up(url, [screen])
        said = verification_said(url, screen)
        if said != key:
            raise RuntimeError(f"/v1/screen says verification {said!r}, deployed with it {key}")
        s = run_load(url, [screen], 1, opts.endpoint_duration).summary("screen")
        stats[key] = {"p50": round(s["p50_ms"] / n, 1), "p99": round(s["p99_ms"] / n, 1), "errors": s["errors"]}
    deploy(args, base)  # back to the configuration the other phases measure
    warm_up(url, eps)
    print(f"\n1b. /v1/screen ({n} pictures a request) with verification off / on, per picture, one request at a "
          f"time, {opts.endpoint_duration:g} s each:\n" + table(
              [(k, s["p50"], s["p99"], s["errors"]) for k, s in stats.items()],
              ("verification", "p50 ms", "p99 ms", "errors")), flush=True)
    return {**{f"screen_verify_{k}_{p}_ms_per_picture": s[p] for k, s in stats.items() for p in ("p50", "p99")},
            **{f"screen_verify_{k}_errors": s["errors"] for k, s in stats.items()}}


def verification_said(url: str, screen: Endpoint) -> str:
    """What one /v1/screen answer says of verification ('off', 'on' or why it is unavailable)."""
    import httpx

    r = httpx.post(url + screen.path, files=screen.files, data=screen.data, headers=HEADERS, timeout=300)
    r.raise_for_status()
    return r.json()["verification"]


def run_phases(opts, url: str, args: dict, base: dict, eps: list[Endpoint], mark, last: int = 5) -> dict:
    """Phases 1-5 (1-`last`) on the deployed gateway; prints the tables, returns the JSON figures."""
    per = {ep.name: run_load(url, [ep], opts.concurrency, opts.endpoint_duration).summary(ep.name) for ep in eps}
    print(f"\n1. one endpoint at a time, concurrency {opts.concurrency}, {opts.endpoint_duration:g} s each")
    print(table([(e.path, *(per[e.name][k] for k in ("requests", "errors", "p50_ms", "p99_ms", "req_per_s"))) for e in eps],
                ("endpoint", "requests", "errors", "p50 ms", "p99 ms", "req/s")), flush=True)
    mark("endpoints")
    verify = screen_verify(opts, url, args, base, eps)
    mark("verify")

    ov = overhead(url, opts.requests)
    print(f"\n2. gateway overhead, {opts.requests} sequential calls each (p50 ms):\n" + table([
        ("trivial: GET /v1/file-types (served by Gateway)", ov["trivial_http_p50_ms"], ov["trivial_handle_p50_ms"],
         ov["gateway_overhead_p50_ms"]),
        ("composed: GET /v1/screen/library (Gateway -> Screening)", ov["composed_http_p50_ms"], ov["composed_handle_p50_ms"],
         ov["composed_overhead_p50_ms"])], ("route", "HTTP", "handle", "overhead")) +
        f"\n   gateway overhead on the trivial route {ov['gateway_overhead_p50_ms']} ms (target <= 5 ms); "
        f"GET /floor (proxy + a bare Serve replica, no FastAPI) {ov['serve_floor_p50_ms']} ms", flush=True)
    mark("overhead")

    mixed = run_load(url, eps, opts.concurrency, opts.duration)
    m = mixed.summary()
    print(f"\n3. mixed load over {len(eps)} endpoints, concurrency {opts.concurrency}, {mixed.wall_s:.1f} s: "
          f"{m['requests']} requests, {m['req_per_s']} req/s, {m['errors']} errors (must be 0)")
    print(table([(e.path, *(mixed.summary(e.name)[k] for k in ("requests", "errors", "p50_ms", "p99_ms"))) for e in eps],
                ("endpoint", "requests", "errors", "p50 ms", "p99 ms")), flush=True)
    for s in mixed.samples:
        print(f"   error: {s}")
    mark("mixed")
    core = {"models": "tiny_untrained", "concurrency": opts.concurrency, "endpoint_duration_s": opts.endpoint_duration,
            **{f"{name}_{k}": v for name, s in per.items() for k, v in s.items() if k != "requests"},
            **verify, **ov,
            "mixed_duration_s": round(mixed.wall_s, 1), "mixed_requests": m["requests"], "mixed_errors": m["errors"],
            "mixed_req_per_s": m["req_per_s"], "mixed_p50_ms": m["p50_ms"], "mixed_p99_ms": m["p99_ms"]}
    if last <= 3:
        return core

    private = next(e for e in eps if e.name == "privacy_identify")
    scale = {}
    for n in (1, 2):
        deploy(args, base, {"Privacy": {"num_replicas": n}})
        warm_up(url, [private])
        scale[n] = run_load(url, [private], opts.concurrency, opts.endpoint_duration).summary()
    ratio = round(scale[2]["req_per_s"] / scale[1]["req_per_s"], 2) if scale[1]["req_per_s"] else None
    print(f"\n4. /v1/privacy/identify, Privacy replicas 1 -> 2: {scale[1]['req_per_s']} -> "
          f"{scale[2]['req_per_s']} req/s (x{ratio}); p50 {scale[1]['p50_ms']} -> {scale[2]['p50_ms']} ms; "
          f"errors {scale[1]['errors']} + {scale[2]['errors']}", flush=True)
    mark("replicas")

    auto = autoscale(url, args, base, eps, opts.concurrency, opts.autoscale_timeout)
    print("\n5. autoscaling Recognizer (min 1, max 3, target 2 ongoing) under /v1/recognize load: "
          + (f"a second replica RUNNING after {auto['autoscale_s_to_running_replica']} s (scale-up decided after "
             f"{auto['autoscale_s_to_decision']} s)" if auto["autoscale_added_replica"]
             else f"NO second replica within {opts.autoscale_timeout:g} s (decided: {auto['autoscale_s_to_decision']})")
          + f"; load errors {auto['autoscale_load_errors']}", flush=True)
    mark("autoscale")
    return {**core,
            "private_1_replica_req_per_s": scale[1]["req_per_s"], "private_2_replicas_req_per_s": scale[2]["req_per_s"],
            "private_replica_speedup": ratio, "replica_phase_errors": scale[1]["errors"] + scale[2]["errors"], **auto}


GATEWAY_NODE, MODELS_NODE = "docray_gateway", "docray_models"  # the two nodes' custom resources (--nodes 2)


def start_ray(nodes: int):
    """Embedded Ray (one node, 2 CPUs), or two Ray nodes on this host: the head (`GATEWAY_NODE`) and a
    second one (`MODELS_NODE`), 2 logical CPUs each. Returns the function that stops it."""
    import ray

    common = dict(log_to_driver=False, logging_level="ERROR", namespace="docray-bench")
    if nodes == 1:
        ray.init(address="local", num_cpus=2, include_dashboard=False, **common)
        return ray.shutdown
    from ray._common.utils import get_ray_address_file
    from ray.cluster_utils import Cluster

    address_file = Path(get_ray_address_file(None))  # Cluster writes its address there and removes it at the
    previous = address_file.read_text() if address_file.exists() else None  # end: a `ray start` cluster's is kept

    def keep_address_file() -> None:
        if previous is None:
            address_file.unlink(missing_ok=True)
        else:
            address_file.write_text(previous)

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "resources": {GATEWAY_NODE: 1},
                                                            "include_dashboard": False})
    keep_address_file()
    cluster.add_node(num_cpus=2, resources={MODELS_NODE: 1})
    ray.init(address=cluster.address, **common)

    def stop() -> None:
        try:
            ray.shutdown()
        finally:
            cluster.shutdown()
            keep_address_file()

    return stop


def on_nodes(base: dict[str, dict], nodes: int) -> dict[str, dict]:
    """The replica options with each deployment pinned to its node: the Gateway to the head, the rest to
    the second node (one node: unchanged)."""
    if nodes == 1:
        return base
    return {name: {**o, "ray_actor_options": {**o.get("ray_actor_options", {}), "resources": {
        GATEWAY_NODE if name == "Gateway" else MODELS_NODE: 0.01}}} for name, o in base.items()}


def placement() -> dict[str, str]:
    """Deployment -> the node its live replica runs on ('head' or 'other')."""
    import ray
    import ray._private.state

    head = ray.get_runtime_context().get_node_id()  # this driver runs on the head
    return {a["ActorClassName"].rsplit(":", 1)[-1]: "head" if a["Address"]["NodeID"] == head else "other"
            for a in ray._private.state.actors().values()
            if a["ActorClassName"].startswith(f"ServeReplica:{APP}:") and a["State"] == "ALIVE"}


def run_on(nodes: int, opts, args: dict, base: dict, eps: list[Endpoint], notes: list[str], serve_env: dict,
           mark, last: int) -> dict:
    """Start Ray on `nodes` nodes, deploy, run phases 1-`last`, stop; returns the JSON figures."""
    from ray import serve

    stop = start_ray(nodes)
    mark("setup")
    try:
        port = free_port()
        serve.start(proxy_location="HeadOnly", http_options={"host": "127.0.0.1", "port": port})
        url = f"http://127.0.0.1:{port}"
        base = on_nodes(base, nodes)
        deploy_s = deploy(args, base)
        warm_up(url, eps)
        mark("deploy")
        where = ""
        if nodes == 2:
            placed = placement()
            want = {name: "head" if name == "Gateway" else "other" for name in base}
            if placed != want:
                raise RuntimeError(f"replicas not where they were pinned: {placed}")
            where = "; Serve's proxy and the Gateway on the head node, the 8 model deployments on the second node"
        print(f"\n== {nodes} Ray node{'s' if nodes > 1 else ''}: deployed {APP} (9 deployments, 1 replica each) in "
              f"{deploy_s:.1f} s on {url}{where}; models: tiny UNTRAINED (serving overhead, not model quality); "
              f"load generator in this process, on the same cores" + (f"; env {serve_env}" if serve_env else ""), flush=True)
        for n in notes:
            print(f"note: {n}", flush=True)
        result = run_phases(opts, url, args, base, eps, mark, last=last)
        result.update(nodes=nodes, deploy_s=round(deploy_s, 1), serve_env=serve_env)
    finally:
        try:
            serve.shutdown()
        finally:
            stop()
    mark("shutdown")
    return result


def compare(one: dict, two: dict, eps: list[Endpoint]) -> dict:
    """Prints one node beside two nodes (phase 1 per route, phase 3 mixed, the backend hop); returns the
    cross-node figures for the JSON line."""
    rows = [(e.path, *(r[f"{e.name}_{k}"] for r in (one, two) for k in ("p50_ms", "p99_ms", "errors"))) for e in eps]
    rows.append(("mixed load (phase 3)", *(r[f"mixed_{k}"] for r in (one, two) for k in ("p50_ms", "p99_ms", "errors"))))
    hop = round(two["composed_handle_p50_ms"] - one["composed_handle_p50_ms"], 2)
    print("\none node vs two nodes (gateway on the head, model deployments on the second node)\n" + table(
        rows, ("endpoint", "1 node p50 ms", "p99 ms", "errors", "2 nodes p50 ms", "p99 ms", "errors")) +
        f"\n   one backend call by handle (Screening.library_info, p50): {one['composed_handle_p50_ms']} ms on one node, "
        f"{two['composed_handle_p50_ms']} ms across nodes: the cross-node hop adds {hop} ms (both runs share this "
        f"host's cores and loopback, so a difference within a few ms, or below 0, is noise, not the hop)"
        f"\n   composed route over HTTP (GET /v1/screen/library, Gateway -> Screening): "
        f"{one['composed_http_p50_ms']} -> {two['composed_http_p50_ms']} ms", flush=True)
    return {"cross_node_hop_p50_ms": hop,
            "cross_node_composed_http_p50_delta_ms": round(two["composed_http_p50_ms"] - one["composed_http_p50_ms"], 2)}


def main(argv=None) -> dict:
    opts = parse(argv)
    tmp = tempfile.TemporaryDirectory(prefix="docray-serve-load-")
    os.environ["DOCRAY_HOME"] = str(Path(tmp.name) / "home")  # before Ray starts: its workers inherit it
    os.environ["DOCRAY_API_KEYS"] = KEYS  # auth on, as in production: every request carries a key
    os.environ.pop("RAY_ADDRESS", None)
    from ray import serve  # noqa: F401 -- this driver's Serve settings are read now, from the environment as it was

    serve_env = dict(kv.split("=", 1) for kv in opts.serve_env)
    os.environ.update(serve_env)  # the Serve controller, proxy and replicas this run starts read these

    from benchmarks import _serve_fixtures

    t0 = time.perf_counter()
    phases: dict[str, float] = {}
    prefix = [""]

    def mark(name: str) -> None:  # wall seconds per phase, for the JSON line
        phases[f"phase_{prefix[0]}{name}_s"] = round(time.perf_counter() - t0 - sum(phases.values()), 1)

    try:
        args, samples = _serve_fixtures.build(Path(tmp.name) / "models")
        base, notes = yaml_options()
        eps = endpoints(samples)
        logging.getLogger("ray.serve").setLevel(logging.WARNING)  # no per-deploy INFO lines in the table
        if opts.nodes != "both":
            result = run_on(int(opts.nodes), opts, args, base, eps, notes, serve_env, mark,
                            last=5 if opts.nodes == "1" else 3)
        else:
            runs = {}
            for n, key in ((1, "one_node"), (2, "two_nodes")):
                prefix[0] = f"{key}_"
                runs[key] = run_on(n, opts, args, base, eps, notes if n == 1 else [], serve_env, mark, last=3)
            result = {f"{key}_{k}": v for key, r in runs.items() for k, v in r.items()}
            result.update(compare(runs["one_node"], runs["two_nodes"], eps))
    finally:
        tmp.cleanup()

    result.update(phases, total_s=round(time.perf_counter() - t0, 1))
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
