"""Loading the three mask-privacy models: a module, a saved folder, or a registry reference.

    load_model(rec)                              # an nn.Module: moved to the device, eval mode
    load_model("registry:mask_recognizer_masked")          # latest version in DOCRAY_HOME/models
    load_model("registry:mask_recognizer_masked@v0002")    # a given version
    load_model("/path/to/folder")                # save_pretrained folder (config.json + safetensors)

The training job saves each model with `save_to_registry` (config = how build_model rebuilds it).
"""
from __future__ import annotations

import torch
from torch import nn

from docray.models import build_model, from_pretrained
from docray.storage.registry import ModelRegistry, parse_ref

NAMES = {"original": "mask_recognizer_original", "masked": "mask_recognizer_masked", "inpaint": "mask_inpainter"}


def save_to_registry(name: str, model: nn.Module, metrics: dict | None = None, registry=None,
                     card: dict | None = None) -> str:
    """Save `model` (made by build_model) under `name`, with its model `card`; returns the version."""
    spec = getattr(model, "docray_spec", None)
    if spec is None:
        raise ValueError("model was not made by build_model(); cannot record how to rebuild it")
    return (registry or ModelRegistry()).save(name, model, config=dict(spec), metrics=metrics or {}, card=card)


def load_model(ref: nn.Module | str, device: str = "cpu", registry=None) -> nn.Module:
    """See the module docstring. Always returns the model in eval mode on `device`."""
    if isinstance(ref, nn.Module):
        model = ref
    elif parse_ref(ref):
        state, config, _ = (registry or ModelRegistry()).load(*parse_ref(ref))
        model = build_model(config["name"], **config.get("overrides", {}))
        model.load_state_dict(state, strict=True)
    elif isinstance(ref, str):
        model = from_pretrained(ref)
    else:
        raise TypeError(f"model reference must be an nn.Module or a string, got {type(ref).__name__}")
    return model.to(device).eval()


@torch.inference_mode()
def predict(model: nn.Module, x: torch.Tensor, chunk: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, 3, h, w) -> argmax labels (n,) and softmax scores (n,)."""
    labels, scores = [], []
    for i in range(0, len(x), chunk):
        p = model(x[i:i + chunk]).softmax(1)
        s, l = p.max(1)
        labels.append(l)
        scores.append(s)
    return torch.cat(labels), torch.cat(scores)
