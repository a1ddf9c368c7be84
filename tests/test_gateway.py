"""The gateway's Serve configs: valid for Serve, every deployment they name exists, CPU and GPU in step."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from ray.serve.schema import ServeDeploySchema

from serve_apps.gateway import GatewayConfig, build_app

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = [ROOT / "configs/serve/gateway.yaml", ROOT / "configs/serve/gateway-gpu.yaml"]


def deployments(app) -> dict:
    """{name: class} of every deployment in a bound application graph (the ingress and its handles)."""
    d = app._bound_deployment
    children = [a for a in [*d.init_args, *d.init_kwargs.values()] if hasattr(a, "_bound_deployment")]
    out = {d.name: d.func_or_class}
    for c in children:
        out.update(deployments(c))
    return out


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_is_valid_serve_config_for_the_gateway(path):
    cfg = load(path)
    ServeDeploySchema.model_validate(cfg)  # what `serve deploy` / `serve run` check first
    (app,) = cfg["applications"]
    assert app["route_prefix"] == "/" and app["import_path"] == "serve_apps.gateway:build_app"
    GatewayConfig.model_validate(app["args"])  # unknown keys would fail here
    classes = deployments(build_app(app["args"]))
    assert {d["name"] for d in app["deployments"]} == set(classes)  # no typo'd or missing deployment
    for d in app["deployments"]:
        assert d["ray_actor_options"]["num_cpus"] <= 1 and "autoscaling_config" in d
        if "user_config" in d:  # Serve calls reconfigure(user_config); a batch fills only when a replica may hold that many
            assert hasattr(classes[d["name"]], "reconfigure"), d["name"]
            assert set(d["user_config"]) <= {"max_batch_size", "batch_wait_timeout_s"}
            assert d["max_ongoing_requests"] >= d["user_config"]["max_batch_size"]


def test_small_host_fits_two_cores_and_gpu_config_is_in_step():
    cpu, gpu = (load(p)["applications"][0] for p in CONFIGS)
    assert sum(d["ray_actor_options"]["num_cpus"] for d in cpu["deployments"]) <= 1.2  # leaves CPU for autoscaling
    assert cpu["args"] == gpu["args"] and [d["name"] for d in cpu["deployments"]] == [d["name"] for d in gpu["deployments"]]
    gpus = {d["name"]: d["ray_actor_options"].get("num_gpus", 0) for d in gpu["deployments"]}
    assert gpus["Gateway"] == 0 and gpus["Regen"] == 0 and gpus["Screening"] == 0  # HTTP and glue: CPU only
    assert all(0 < gpus[n] < 1 for n in ("Recognizer", "Descriptor", "Privacy", "Generator"))


def test_gateway_config_errors_are_clear():
    with pytest.raises(ValueError, match="enables no method"):
        build_app({})
    with pytest.raises(ValueError, match="recogniton"):
        GatewayConfig.model_validate({"recogniton": {}})
    with pytest.raises(ValueError, match="nope"):
        build_app({"recognition": {"nope": 1}})
    assert set(deployments(build_app({"privacy": "{}"}))) == {"Gateway", "Privacy"}  # `serve run` strings


SINGLE = {"recognition": {"Recognizer"}, "screening": {"Screening", "Descriptor"}, "privacy": {"Privacy"},
          "regen": {"Regen", "TypeModel", "ContentModel", "Generator"}}


@pytest.mark.parametrize("method", sorted(SINGLE))
def test_single_method_config_is_the_gateway_with_that_method(method):
    cfg = load(ROOT / f"configs/serve/{method}.yaml")
    ServeDeploySchema.model_validate(cfg)
    (app,) = cfg["applications"]
    assert app["import_path"] == "serve_apps.gateway:build_app" and app["route_prefix"] == "/"
    assert set(app["args"]) == {method}  # one method enabled
    classes = deployments(build_app(app["args"]))
    assert set(classes) == {"Gateway", *SINGLE[method]} == {d["name"] for d in app["deployments"]}