"""Identity recogniser for mask privacy: a timm ResNet, a 512-d embedding, then the classifier.

    model = build_model("recognizer_resnet18", num_classes=256)
    logits = model(images)            # images: (b, 3, h, w) floats in [0, 1], masked or not
    emb = model.embed(images)         # (b, embed_dim), the embedding before the classifier

The original and the masked recogniser are the same architecture (the same factory and
overrides); they differ only in what they were trained on. Inputs are pixels in [0, 1] so that
an overlay (`docray.privacy.masks.overlay`, hidden pixels = 0) is applied before the model;
the model normalises internally.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
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


class Recognizer(nn.Module):
    def __init__(self, cfg: RecognizerConfig):
        super().__init__()
        self.cfg = cfg
        self.backbone = ResNet(BasicBlock, list(cfg.layers), num_classes=0, channels=tuple(cfg.channels),
                               stem_width=cfg.stem_width, drop_rate=cfg.drop_rate)  # -> (b, channels[-1])
        self.embedding = nn.Sequential(nn.Linear(cfg.channels[-1], cfg.embed_dim), nn.BatchNorm1d(cfg.embed_dim))
        self.classifier = nn.Linear(cfg.embed_dim, cfg.num_classes)
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
