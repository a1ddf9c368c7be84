"""The one model registry: build by name, save/load through a folder, clear errors."""
import pytest
import torch
from torch import nn

from docray import models
from docray.models import build_model, from_pretrained, register_model, save_pretrained


@register_model
def _test_mlp(width: int = 8, tied: bool = False) -> nn.Module:
    m = nn.Sequential(nn.Linear(4, width), nn.ReLU(), nn.Linear(width, 4))
    if tied:
        m[2].weight = nn.Parameter(m[0].weight.t().contiguous())
    return m


def test_build_records_spec_and_overrides():
    m = build_model("_test_mlp", width=16)
    assert m[0].out_features == 16 and m.docray_spec == {"name": "_test_mlp", "overrides": {"width": 16}}
    assert "_test_mlp" in models.list_models("mlp")


def test_save_load_round_trip(tmp_path):
    torch.manual_seed(0)
    m = build_model("_test_mlp", width=12)
    save_pretrained(m, tmp_path / "m", note="hello")
    m2 = from_pretrained(tmp_path / "m")
    x = torch.randn(3, 4)
    assert torch.equal(m(x), m2(x)) and m2[0].out_features == 12


def test_errors(tmp_path):
    with pytest.raises(KeyError, match="unknown model 'nope'"):
        build_model("nope")
    with pytest.raises(ValueError, match="build_model"):
        save_pretrained(nn.Linear(2, 2), tmp_path / "x")
    with pytest.raises(FileNotFoundError):
        from_pretrained(tmp_path / "missing")
    with pytest.raises(ValueError, match="registered twice"):
        register_model(type("F", (), {"__name__": "_test_mlp", "__call__": lambda s: None})())


def test_each_name_loads_only_its_own_family():
    """FAMILY_OF_PREFIX names the module of every registered model, and building one in a fresh
    interpreter imports that family alone (the others pull in timm/diffusers: seconds per process)."""
    import subprocess
    import sys

    models.list_models()  # every family
    for name, fn in models._REGISTRY.items():
        if not fn.__module__.startswith("docray.models."):
            continue  # a test's own model
        family = models.family_of(name)
        assert fn.__module__ == f"docray.models.{family}", (name, fn.__module__, family)
    code = ("import sys, docray.compat; from docray.models import build_model; build_model('descriptor_tiny'); "
            "print(sorted(m for m in sys.modules if m.startswith('docray.models.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "docray.models.screening" in out and "docray.models.regen" not in out and "docray.models.inpaint" not in out, out
