"""Structure of the deployment files: KubeRay manifests, the launcher config, images, compose, dashboard.

No Kubernetes, Docker daemon or cloud here: these tests check what can be checked offline (the
files parse, name the right kinds, resources, modules and config keys, and stay in step).
"""
from __future__ import annotations

import importlib
import importlib.util
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cluster import manifests

ROOT = Path(__file__).resolve().parents[1]
KUBERAY = ROOT / "cluster" / "kuberay"
CONTRACT_METRICS = {"ray_docray_http_requests_total", "ray_docray_http_request_latency_ms_bucket",
                    "ray_docray_batch_size_bucket", "ray_serve_num_http_requests_total",
                    "ray_serve_http_request_latency_ms_bucket", "ray_serve_deployment_replica_healthy",
                    "ray_serve_replica_processing_queries", "ray_serve_num_ongoing_requests_at_replicas"}
# The contract's shape, for rendering without configs/serve/gateway.yaml.
PLACEHOLDER_GATEWAY = {
    "proxy_location": "EveryNode", "http_options": {"host": "127.0.0.1", "port": 8000},
    "logging_config": {"encoding": "JSON"},
    "applications": [{"name": "docray", "route_prefix": "/", "import_path": "serve_apps.gateway:build_app",
                      "args": {}, "deployments": [{"name": "Gateway", "ray_actor_options": {"num_cpus": 0.1}}]}],
}


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def check_cluster_spec(spec: dict) -> None:
    assert spec["rayVersion"] == manifests.RAY_VERSION and spec["enableInTreeAutoscaling"] is True
    head = spec["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert "nvidia.com/gpu" not in head["resources"]["limits"]          # a CPU head
    assert spec["headGroupSpec"]["rayStartParams"]["dashboard-host"] == "0.0.0.0"
    (gpu,) = [g for g in spec["workerGroupSpecs"] if g["template"]["spec"]["containers"][0]["resources"]["limits"].get("nvidia.com/gpu")]
    assert gpu["minReplicas"] <= gpu["replicas"] <= gpu["maxReplicas"] and gpu["maxReplicas"] >= 1
    assert "rayStartParams" in gpu
    for pod in (spec["headGroupSpec"]["template"], gpu["template"]):
        env = pod["spec"]["containers"][0]["env"]
        names = {e["name"]: e for e in env}
        for secret in ("DOCRAY_DB_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "DOCRAY_API_KEYS"):
            assert "value" not in names[secret] and names[secret]["valueFrom"]["secretKeyRef"]["name"] == manifests.SECRET
        assert {"DOCRAY_HOME", "DOCRAY_BLOB_ROOT"} <= set(names)


def test_raycluster():
    doc = load(KUBERAY / "raycluster.yaml")
    assert (doc["apiVersion"], doc["kind"]) == ("ray.io/v1", "RayCluster")
    check_cluster_spec(doc["spec"])


def config_class(module):
    """The job's top-level Config: the one with `num_workers` defined in the module that no other one
    there extends (pretrain_recognition also defines the base its config shares with train_recognition)."""
    from docray.config import Config

    found = [c for c in vars(module).values() if isinstance(c, type) and issubclass(c, Config)
             and c.__module__ == module.__name__ and "num_workers" in c.model_fields]
    (cls,) = [c for c in found if not any(o is not c and issubclass(o, c) for o in found)]
    return cls


@pytest.mark.parametrize("job", sorted(manifests.JOBS))
def test_rayjob(job):
    from docray.config import load_config

    doc = load(KUBERAY / f"rayjob-{job.replace('_', '-')}.yaml")
    assert (doc["apiVersion"], doc["kind"]) == ("ray.io/v1", "RayJob")
    spec = doc["spec"]
    assert spec["shutdownAfterJobFinishes"] is True
    yaml.safe_load(spec["runtimeEnvYAML"])
    check_cluster_spec(spec["rayClusterSpec"])
    argv = shlex.split(spec["entrypoint"])
    assert argv[:2] == ["python", "-m"] and argv[2] == f"train_jobs.{job}"
    assert importlib.util.find_spec(argv[2]) is not None
    assert argv[3] == "--set" and "num_workers=2" in argv and "use_gpu=true" in argv
    # every override names a real key (unknown keys are an error) and validates
    cfg = load_config(config_class(importlib.import_module(argv[2])), None, argv[4:])
    assert cfg.num_workers == 2 and cfg.use_gpu is True


def test_rayservice_from_placeholder_config():
    doc = yaml.safe_load(manifests.render(PLACEHOLDER_GATEWAY)["rayservice.yaml"])
    check_rayservice(doc)


def check_rayservice(doc: dict) -> dict:
    assert (doc["apiVersion"], doc["kind"]) == ("ray.io/v1", "RayService")
    serve = yaml.safe_load(doc["spec"]["serveConfigV2"])
    (app,) = serve["applications"]
    assert app["import_path"] == "serve_apps.gateway:build_app" and app["route_prefix"] == "/"
    assert serve["http_options"]["host"] == "0.0.0.0"
    check_cluster_spec(doc["spec"]["rayClusterConfig"])
    return serve


def test_committed_rayservice_matches_the_gateway_config():
    gateway, src = manifests.load_gateway_config()
    if gateway is None:
        pytest.skip("configs/serve/gateway.yaml not written yet")
    serve = check_rayservice(load(KUBERAY / "rayservice.yaml"))
    names = {d["name"] for d in serve["applications"][0]["deployments"]}
    assert names == {d["name"] for d in gateway["applications"][0]["deployments"]}
    assert "Gateway" in names


def test_manifests_check_is_clean():
    r = subprocess.run([sys.executable, "-m", "cluster.manifests", "--check"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_manifests_check_catches_a_stale_file(tmp_path, monkeypatch):
    monkeypatch.setattr(manifests, "OUT", tmp_path)
    assert manifests.main([]) == 0 and manifests.main(["--check"]) == 0
    (tmp_path / "raycluster.yaml").write_text("stale\n")
    assert manifests.main(["--check"]) == 1


def test_launcher_config():
    cfg = load(ROOT / "cluster" / "launcher.yaml")
    types = cfg["available_node_types"]
    head = cfg["head_node_type"]
    assert head in types and not types[head]["resources"].get("GPU")
    gpu = [t for n, t in types.items() if n != head and t["resources"].get("GPU", 0) >= 1]
    assert gpu and gpu[0]["min_workers"] == 0 and gpu[0]["max_workers"] >= 1
    assert cfg["docker"]["image"] == manifests.IMAGE
    assert cfg["head_start_ray_commands"] and cfg["worker_start_ray_commands"]
    options = " ".join(cfg["docker"]["run_options"])
    assert "DOCRAY_HOME" in options and "DOCRAY_BLOB_ROOT" in options and "--env-file" in options
    jsonschema = pytest.importorskip("jsonschema")
    import ray

    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    jsonschema.validate(cfg, schema)  # Ray's own schema for `ray up`


@pytest.mark.parametrize("name", ["Dockerfile", "Dockerfile.cuda"])
def test_dockerfiles_pin_torch_first(name):
    text = (ROOT / "infra" / name).read_text()
    runs = [line for line in text.splitlines() if "pip install" in line]
    torch_at = next(i for i, line in enumerate(runs) if "torch==2.13.0" in line)
    project_at = next(i for i, line in enumerate(runs) if "-c constraints.txt" in line and "-e " in line)
    assert torch_at < project_at
    assert re.search(r"^USER (?!root)\w+", text, re.M), "the image must not run as root"
    assert "RUN docray doctor" in text
    assert "ray==${RAY_VERSION}" in text
    assert (ROOT / "infra" / f"{name}.dockerignore").read_text().count(".venv") == 1
    if name.endswith("cuda"):
        assert '".[gpu' in text


def test_compose():
    doc = load(ROOT / "infra" / "compose.yaml")
    services = doc["services"]
    assert {"postgres", "minio", "minio-init", "ray-head"} <= set(services)
    assert services["postgres"]["image"].startswith("postgres:16")
    for name, svc in services.items():
        if name != "minio-init":  # one-shot: ray-head waits for it to complete instead
            assert "test" in svc["healthcheck"], name
        for dep, cond in (svc.get("depends_on") or {}).items():
            assert cond["condition"] in {"service_healthy", "service_completed_successfully"}
            assert cond["condition"] != "service_healthy" or "healthcheck" in services[dep]
    env = services["ray-head"]["environment"]
    assert env["DOCRAY_DB_URL"].startswith("postgresql+psycopg://") and "@postgres:5432/" in env["DOCRAY_DB_URL"]
    assert env["DOCRAY_BLOB_ROOT"].startswith("s3://") and env["AWS_ENDPOINT_URL"] == "http://minio:9000"
    command = " ".join(services["ray-head"]["command"])
    assert "serve deploy configs/serve/gateway.yaml" in command
    assert (ROOT / "configs" / "serve" / "gateway.yaml").exists() or pytest.skip("gateway.yaml not written yet")


def test_grafana_dashboard_uses_contract_metrics():
    dash = json.loads((ROOT / "infra" / "grafana" / "docray-dashboard.json").read_text())
    assert any(v["type"] == "datasource" and v["query"] == "prometheus" for v in dash["templating"]["list"])
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    assert len(dash["panels"]) >= 6
    for expr in exprs:
        assert set(re.findall(r"ray_[a-z_]+", expr)) <= CONTRACT_METRICS and re.search(r"ray_[a-z_]+", expr), expr
    used = {m for e in exprs for m in re.findall(r"ray_[a-z_]+", e)}
    assert CONTRACT_METRICS - used <= set(), CONTRACT_METRICS - used
    assert any("histogram_quantile(0.99" in e and "latency_ms_bucket" in e for e in exprs)
    assert any('status=~"5.."' in e for e in exprs) and any('status=~"4.."' in e for e in exprs)


def test_prometheus_uses_ray_service_discovery():
    cfg = load(ROOT / "infra" / "prometheus.yml")
    files = [f for job in cfg["scrape_configs"] for sd in job.get("file_sd_configs", []) for f in sd["files"]]
    assert "/tmp/ray/prom_metrics_service_discovery.json" in files
