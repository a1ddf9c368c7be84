"""One registry for every model family: `build_model(name, **overrides)`.

Each family lives in its own module here (`docray/models/<family>.py`) and registers factory
functions, a real size and a `*_tiny` beside it (timm's habit):

    @register_model
    def descriptor_small(**overrides) -> nn.Module: ...

    model = build_model("descriptor_tiny", dim=64)
    save_pretrained(model, "out/descriptor")        # config.json + model.safetensors
    model = from_pretrained("out/descriptor")       # the same architecture and weights

`build_model` records the factory name and overrides on the module (`model.docray_spec`), so a
saved folder rebuilds itself without the caller knowing the architecture.
"""
from __future__ import annotations

import dataclasses
import importlib
import json
import pkgutil
from pathlib import Path
from typing import Callable

from torch import nn

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}
_loaded = False


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Decorator: register a factory under its function name (names are unique across families)."""
    if fn.__name__ in _REGISTRY and _REGISTRY[fn.__name__] is not fn:
        raise ValueError(f"model {fn.__name__!r} registered twice")
    _REGISTRY[fn.__name__] = fn
    return fn


# The family module of each name prefix, so `build_model` imports one family, not all of them (the
# families import timm, transformers and diffusers: about 2 s more per process, every Ray worker
# and Serve replica). A name no prefix claims loads every family (tests check the table).
FAMILY_OF_PREFIX = {"vit_mae": "vit_mae", "vit_encoder": "vit_mae", "unified": "recognition", "recognizer": "recognizer",
                    "regen": "regen", "descriptor": "screening", "inpaint": "inpaint"}


def family_of(name: str) -> str | None:
    """The family module (under docray.models) that registers `name`, by its prefix; None if no prefix claims it."""
    return next((f for p, f in FAMILY_OF_PREFIX.items() if name.startswith(p + "_")), None)


def _load_families(name: str = "") -> None:
    global _loaded
    if name in _REGISTRY or _loaded:
        return
    family = family_of(name)
    if family is not None:
        importlib.import_module(f"{__name__}.{family}")
        if name in _REGISTRY:
            return
    for mod in pkgutil.iter_modules(__path__):
        if not mod.name.startswith("_"):
            importlib.import_module(f"{__name__}.{mod.name}")
    _loaded = True


def list_models(contains: str = "") -> list[str]:
    """Registered model names, optionally those containing a substring."""
    _load_families()
    return sorted(n for n in _REGISTRY if contains in n)


def make_config(cls, defaults: dict, overrides: dict, what: str):
    """A family's dataclass config from a size's `defaults` and the caller's `overrides`.

    Unknown keys are a TypeError naming the valid ones; list values of tuple fields (what a
    config.json gives back) become tuples again.
    """
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise TypeError(f"unknown {what} option(s) {unknown}; valid: {sorted(known)}")
    cfg = cls(**{**defaults, **overrides})
    for f in dataclasses.fields(cls):
        if isinstance(getattr(cls(), f.name, None), tuple) and isinstance(getattr(cfg, f.name), list):
            setattr(cfg, f.name, tuple(getattr(cfg, f.name)))
    return cfg


def build_model(name: str, **overrides) -> nn.Module:
    """Build a registered model; `overrides` go to its config (unknown keys are an error there)."""
    _load_families(name)
    if name not in _REGISTRY:
        raise KeyError(f"unknown model {name!r}; registered: {', '.join(sorted(_REGISTRY)) or 'none'}")
    model = _REGISTRY[name](**overrides)
    model.docray_spec = {"name": name, "overrides": overrides}
    return model


def save_pretrained(model: nn.Module, folder: str | Path, **extra_config) -> Path:
    """Write `config.json` (factory name, overrides, extras) and `model.safetensors` to `folder`."""
    from safetensors.torch import save_model

    spec = getattr(model, "docray_spec", None)
    if spec is None:
        raise ValueError("model was not made by build_model(); cannot record how to rebuild it")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({**spec, **extra_config}, indent=2, default=str))
    save_model(model, str(folder / "model.safetensors"))  # handles shared (tied) weights
    return folder


def from_pretrained(folder: str | Path, map_location: str = "cpu") -> nn.Module:
    """Rebuild the model saved in `folder` by `save_pretrained` and load its weights (strictly)."""
    from safetensors.torch import load_file, load_model

    folder = Path(folder)
    if not (folder / "config.json").exists():
        raise FileNotFoundError(f"{folder}: no config.json (not a saved docray model)")
    spec = json.loads((folder / "config.json").read_text())
    model = build_model(spec["name"], **spec.get("overrides", {}))
    try:
        load_model(model, str(folder / "model.safetensors"), strict=True, device=map_location)
    except RuntimeError as e:  # missing/unexpected keys or shapes: saved by another version of the model
        try:  # or a registry version's folder: a plain state dict, tied weights under each of their names
            model.load_state_dict(load_file(str(folder / "model.safetensors"), device=map_location))
            return model
        except RuntimeError:
            pass
        raise ValueError(f"{folder}: its weights do not fit the current {spec['name']!r} architecture (saved by "
                         f"an older docray?); retrain it. {str(e)[:500]}") from e
    return model
