"""Tile descriptor: a small timm ResNet trained for copy detection (SSCD-style), L2-normalised output.

    model = build_model("descriptor_small")            # 64x64 RGB tiles -> 128-d unit vectors
    z = model(x)                                       # x (b, 3, 64, 64) in [0, 1] -> (b, 128), ||z|| = 1

Trained by `train_jobs/train_screening.py` (contrastive, augmented copies); cosine similarity of
two outputs is their inner product.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn
from timm.models.resnet import BasicBlock, ResNet

from docray.models import register_model


@dataclass
class DescriptorConfig:
    image_size: int = 64  # tiles are scaled to image_size x image_size before embedding (the library tile size)
    dim: int = 128  # descriptor size: 128 floats = 512 B per tile; 10^6 tiles fit in 0.5 GiB
    channels: tuple = (32, 64, 128, 256)  # ResNet stage widths (half of ResNet-10's: CPU training)
    layers: tuple = (1, 1, 1, 1)  # blocks per stage (ResNet-10)
    stem_width: int = 16
    stem_type: str = ""  # timm stem: "" one 7x7 conv (cheap), "deep" three 3x3 convs
    gem_p: float = 3.0  # GeM pooling exponent (SSCD); 1 = average pooling


class GeM(nn.Module):
    """Generalised-mean pooling: (mean x^p)^(1/p) over space; p=3 favours salient strokes (text)."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x):  # (b, c, h, w) -> (b, c)
        return x.clamp(min=1e-6).pow(self.p).mean((2, 3)).pow(1.0 / self.p)


class TileDescriptor(nn.Module):
    MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)

    def __init__(self, cfg: DescriptorConfig):
        super().__init__()
        self.cfg = cfg
        self.backbone = ResNet(BasicBlock, list(cfg.layers), num_classes=0, global_pool="",
                               channels=tuple(cfg.channels), stem_width=cfg.stem_width, stem_type=cfg.stem_type)
        self.pool = GeM(cfg.gem_p)
        self.proj = nn.Linear(cfg.channels[-1], cfg.dim)
        self.register_buffer("mean", torch.tensor(self.MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(self.STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (b, 3, s, s) floats in [0, 1]
        feats = self.backbone.forward_features((x - self.mean) / self.std)  # (b, c, s/32, s/32)
        return F.normalize(self.proj(self.pool(feats)), dim=-1)  # (b, dim), unit length


def _build(base: DescriptorConfig, overrides: dict) -> TileDescriptor:
    known = {f.name for f in fields(DescriptorConfig)}
    bad = set(overrides) - known
    if bad:
        raise TypeError(f"unknown descriptor option(s) {sorted(bad)}; known: {sorted(known)}")
    return TileDescriptor(DescriptorConfig(**{**asdict(base), **overrides}))


@register_model
def descriptor_small(**overrides) -> TileDescriptor:
    """ResNet-10 at half width (32..256), 128-d, 64 px tiles (about 1.2 M parameters)."""
    return _build(DescriptorConfig(), overrides)


@register_model
def descriptor_tiny(**overrides) -> TileDescriptor:
    """For tests: widths 8..64, 32-d, 32 px tiles."""
    return _build(DescriptorConfig(image_size=32, dim=32, channels=(8, 16, 32, 64), stem_width=8, stem_type="deep"), overrides)
