"""Metrics and structured request logs for the gateway and the batched deployments.

Metrics go through `ray.util.metrics`, so Ray's exporter on each node serves them next to Serve's own
(`ray_serve_*`), with the `ray_` prefix added:

    ray_docray_http_requests_total{route, method, status}     counter
    ray_docray_http_request_latency_ms_bucket{route}          histogram
    ray_docray_batch_size_bucket{deployment}                   histogram of @serve.batch sizes

Prometheus scrapes every node (Ray writes the targets to /tmp/ray/prom_metrics_service_discovery.json);
`GET /metrics` on the gateway returns the exporter of the node the answering replica runs on.
"""
from __future__ import annotations

import json
import logging
import time

import httpx
import ray
from ray.util import metrics

log = logging.getLogger("ray.serve")  # Serve formats this logger (JSON with logging_config encoding: JSON)
LATENCY_MS = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 30000]
BATCH_SIZES = [1, 2, 4, 8, 16, 32, 64, 128]


class RequestMetrics:
    """Per-route request counts and latency; one per gateway replica."""

    def __init__(self):
        self.requests = metrics.Counter("docray_http_requests", "HTTP requests by route, method and status",
                                        tag_keys=("route", "method", "status"))
        self.latency = metrics.Histogram("docray_http_request_latency_ms", "gateway latency per route (ms)",
                                         boundaries=LATENCY_MS, tag_keys=("route",))

    def observe(self, route: str, method: str, status: int, ms: float) -> None:
        self.requests.inc(tags={"route": route, "method": method, "status": str(status)})
        self.latency.observe(ms, tags={"route": route})
        log.info(json.dumps({"event": "request", "route": route, "method": method, "status": status,
                             "latency_ms": round(ms, 2)}))


# This replica's gateway settings (set by Gateway.__init__). It lives here, in a module that is always
# imported by reference: Serve pickles the ingress class by value, with a copy of its module's globals.
STATE: dict = {}


class Edge:
    """ASGI middleware of the gateway: request body limit (on the bytes that arrive, with or without a
    Content-Length), per-route metrics and one structured log line per request."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not STATE:
            return await self.app(scope, receive, send)
        from serve_apps.http import ApiError, error_response

        limit, t0, status, seen = STATE["max_request_bytes"], time.perf_counter(), [500], [0]
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared and declared.strip().isdigit() and int(declared) > limit:  # a malformed one: the server refuses it
            status[0] = 413
            response = error_response(413, "too_many_bytes", f"request body of {int(declared):,} bytes; the limit is {limit:,}")
            await response(scope, receive, send)
            return self._observe(scope, status[0], t0)

        async def limited_receive():
            message = await receive()
            seen[0] += len(message.get("body", b""))
            if seen[0] > limit:  # raised inside the route: the ApiError handler answers 413 JSON
                raise ApiError(413, "too_many_bytes", f"request body over the limit of {limit:,} bytes")
            return message

        async def watched_send(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, limited_receive, watched_send)
        finally:
            self._observe(scope, status[0], t0)

    @staticmethod
    def _observe(scope, status: int, t0: float) -> None:
        route = getattr(scope.get("route"), "path", "unmatched")  # the template: bounded label values
        STATE["metrics"].observe(route, scope.get("method", ""), status, (time.perf_counter() - t0) * 1e3)


_batch_sizes: metrics.Histogram | None = None


def record_batch(deployment: str, n: int) -> None:
    """Observe one @serve.batch call of `n` requests (the histogram is made on first use, per process)."""
    global _batch_sizes
    if _batch_sizes is None:
        _batch_sizes = metrics.Histogram("docray_batch_size", "requests per @serve.batch call",
                                         boundaries=BATCH_SIZES, tag_keys=("deployment",))
    _batch_sizes.observe(n, tags={"deployment": deployment})


def set_batching(batch_fn, user_config: dict | None) -> None:
    """Apply `max_batch_size` / `batch_wait_timeout_s` from a deployment's `user_config` (Serve config YAML)."""
    user_config = dict(user_config or {})
    unknown = set(user_config) - {"max_batch_size", "batch_wait_timeout_s"}
    if unknown:
        raise ValueError(f"unknown user_config key(s) {sorted(unknown)}; known: max_batch_size, batch_wait_timeout_s")
    if "max_batch_size" in user_config:
        batch_fn.set_max_batch_size(int(user_config["max_batch_size"]))
    if "batch_wait_timeout_s" in user_config:
        batch_fn.set_batch_wait_timeout_s(float(user_config["batch_wait_timeout_s"]))


def node_metrics_text(timeout_s: float = 5.0) -> str:
    """The Prometheus text of this node's Ray metrics exporter (Serve's metrics and docray's)."""
    node_id = ray.get_runtime_context().get_node_id()
    node = next(n for n in ray.nodes() if n["NodeID"] == node_id)
    url = f"http://{node['NodeManagerAddress']}:{node['MetricsExportPort']}/metrics"
    return httpx.get(url, timeout=timeout_s).text
