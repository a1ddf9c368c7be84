"""Identity recogniser for mask privacy: a timm ResNet, a 512-d embedding, then the classifier.

    model = build_model("recognizer_resnet18", num_classes=256)
    logits = model(images)            # images: (b, 3, h, w) floats in [0, 1], masked or not
    emb = model.embed(images)         # (b, embed_dim), the embedding before the classifier

Two heads: `head="linear"` (a linear classifier, softmax cross-entropy) or `head="cosine"` (logits
= `scale` x the cosine of the embedding and each class's weight; training subtracts `margin` from the
true class's cosine, CosFace): the cosine head trains the embedding for what open-set verification
compares, cosine similarity (docray.privacy.openset).

The original and the masked recogniser are the same architecture (the same factory and
overrides); they differ only in what they were trained on. Inputs are pixels in [0, 1] so that
an overlay (`docray.privacy.masks.overlay`, hidden pixels = 0) is applied before the model;
the model normalises internally.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from timm.models.resnet import BasicBlock, ResNet
from torch import nn

from docray.models import make_config, register_model


@dataclass
class RecognizerConfig:
    num_classes: int = 256  # identities (the synthetic faces default to 256)
    embed_dim: int = 512  # the embedding before the classifier (the method's 512-d)
    layers: tuple = (2, 2, 2, 2)  # BasicBlocks per stage: (2, 2, 2, 2) is ResNet-18
    channels: tuple = (64, 128, 256, 512)  # stage widths: ResNet-18's
    stem_width: int = 64
    drop_rate: float = 0.0  # dropout before the embedding
    head: str = "linear"  # "linear" or "cosine" (normalised embedding . normalised class weights x scale)
    scale: float = 16.0  # cosine head: logit scale
    margin: float = 0.2  # cosine head: additive cosine margin of the true class in training (CosFace)


class CosineClassifier(nn.Module):
    """(b, d) -> (b, n) logits: scale x cos(embedding, class weight)."""

    def __init__(self, dim: int, n: int, scale: float):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n, dim) * dim ** -0.5)
        self.scale = scale

    def forward(self, e: torch.Tensor) -> torch.Tensor:
        return self.scale * F.linear(F.normalize(e, dim=1), F.normalize(self.weight, dim=1))


class Recognizer(nn.Module):
    def __init__(self, cfg: RecognizerConfig):
        super().__init__()
        self.cfg = cfg
        self.backbone = ResNet(BasicBlock, list(cfg.layers), num_classes=0, channels=tuple(cfg.channels),
                               stem_width=cfg.stem_width, drop_rate=cfg.drop_rate)  # -> (b, channels[-1])
        self.embedding = nn.Sequential(nn.Linear(cfg.channels[-1], cfg.embed_dim), nn.BatchNorm1d(cfg.embed_dim))
        if cfg.head not in ("linear", "cosine"):
            raise ValueError(f"recognizer head must be 'linear' or 'cosine', got {cfg.head!r}")
        self.classifier = (nn.Linear(cfg.embed_dim, cfg.num_classes) if cfg.head == "linear"
                           else CosineClassifier(cfg.embed_dim, cfg.num_classes, cfg.scale))
        self.register_buffer("mean", torch.tensor([0.5, 0.5, 0.5]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor([0.25, 0.25, 0.25]).view(1, 3, 1, 1), persistent=False)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """(b, 3, h, w) pixels in [0, 1] -> (b, embed_dim)."""
        return self.embedding(self.backbone((x - self.mean) / self.std))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(b, 3, h, w) pixels in [0, 1] -> (b, num_classes) logits."""
        return self.classifier(self.embed(x))


def _build(defaults: dict, overrides: dict) -> Recognizer:
    cfg = make_config(RecognizerConfig, defaults, overrides, "recognizer")
    return Recognizer(cfg)


@register_model
def recognizer_resnet18(**overrides) -> Recognizer:
    """ResNet-18 (11 M parameters) with the 512-d embedding: the method's recogniser."""
    return _build({}, overrides)


@register_model
def recognizer_small(**overrides) -> Recognizer:
    """A narrow ResNet-10 (one block per stage, widths / 2), 512-d embedding: CPU-sized experiments."""
    return _build(dict(layers=(1, 1, 1, 1), channels=(32, 64, 128, 256), stem_width=32), overrides)


@register_model
def recognizer_tiny(**overrides) -> Recognizer:
    """For tests: one block per stage, widths 8..64, 32-d embedding."""
    return _build(dict(layers=(1, 1, 1, 1), channels=(8, 16, 32, 64), stem_width=8, embed_dim=32, num_classes=16),
                  overrides)
