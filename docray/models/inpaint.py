"""Inpainting model for the mask-privacy attack: a U-Net that fills hidden pixels, run recurrently.

In the spirit of RFR-Net (recurrent feature reasoning): the hole is filled from its boundary
inwards over `n_steps` passes of one shared U-Net. Two U-Nets: `backbone="plain"`, a small
conv-BN-ReLU U-Net (fast on CPU), or `backbone="diffusers"`, diffusers' UNet2DModel (no noise
schedule: the timestep input carries the pass number; its GroupNorm blocks train ~10x slower on CPU). Pass k sees the current estimate and the mask of
what is known so far; after it, the known region grows by `grow` pixels (a max-pool dilation),
and only the newly known ring plus the original pixels are kept; the last pass fills the rest.

    model = build_model("inpaint_unet_tiny")
    out = model(masked, mask)     # masked = image * mask (b, 3, h, w) in [0, 1]; mask (b, 1, h, w), 1 = kept
    # out (b, 3, h, w) in [0, 1]: kept pixels are returned unchanged, hidden ones filled
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from docray.models import make_config, register_model


@dataclass
class InpaintConfig:
    image_size: int = 64
    backbone: str = "plain"  # "plain" (conv-BN-ReLU U-Net) or "diffusers" (UNet2DModel)
    block_out_channels: tuple = (64, 128, 256)  # U-Net widths per level
    layers_per_block: int = 2
    norm_num_groups: int = 16
    n_steps: int = 3  # recurrent passes (RFR-Net reasons over several passes)
    grow: int = 4  # pixels of hole boundary made "known" after each pass but the last


def _conv(cin: int, cout: int, n: int) -> nn.Sequential:
    layers = []
    for i in range(n):
        layers += [nn.Conv2d(cin if i == 0 else cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


class PlainUNet(nn.Module):
    """(b, 4, h, w) -> (b, 3, h, w): conv blocks, 2x down per level, skip connections, 2x up."""

    def __init__(self, widths: tuple, n: int, n_steps: int):
        super().__init__()
        self.step_embed = nn.Embedding(n_steps, widths[-1])  # which pass, added at the bottleneck
        self.down = nn.ModuleList([_conv(4 if i == 0 else widths[i - 1], w, n) for i, w in enumerate(widths)])
        self.up = nn.ModuleList([_conv(widths[i + 1] + widths[i], widths[i], n) for i in reversed(range(len(widths) - 1))])
        self.head = nn.Conv2d(widths[0], 3, 1)

    def forward(self, x: torch.Tensor, k: int) -> torch.Tensor:
        skips = []
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else F.max_pool2d(x, 2))  # level i: (b, widths[i], h / 2^i, w / 2^i)
            skips.append(x)
        x = x + self.step_embed.weight[k][None, :, None, None]
        for block, skip in zip(self.up, reversed(skips[:-1])):
            x = block(torch.cat([F.interpolate(x, size=skip.shape[-2:], mode="nearest"), skip], 1))
        return self.head(x)


class Inpainter(nn.Module):
    def __init__(self, cfg: InpaintConfig):
        super().__init__()
        self.cfg = cfg
        n = len(cfg.block_out_channels)
        if cfg.backbone == "plain":
            self.unet = PlainUNet(tuple(cfg.block_out_channels), cfg.layers_per_block, cfg.n_steps)
        elif cfg.backbone == "diffusers":
            from diffusers import UNet2DModel

            self.unet = UNet2DModel(
                sample_size=cfg.image_size, in_channels=4, out_channels=3, layers_per_block=cfg.layers_per_block,
                block_out_channels=tuple(cfg.block_out_channels), down_block_types=("DownBlock2D",) * n,
                up_block_types=("UpBlock2D",) * n, norm_num_groups=cfg.norm_num_groups)
        else:
            raise ValueError(f"backbone must be 'plain' or 'diffusers', got {cfg.backbone!r}")

    def step(self, current: torch.Tensor, known: torch.Tensor, k: int) -> torch.Tensor:
        """One pass: (b, 3, h, w) estimate + (b, 1, h, w) known mask -> (b, 3, h, w) prediction in [0, 1]."""
        x = torch.cat([current * 2 - 1, known], dim=1)  # (b, 4, h, w)
        if self.cfg.backbone == "plain":
            return torch.sigmoid(self.unet(x, k))
        t = torch.full((current.shape[0],), k, device=current.device, dtype=torch.long)
        return torch.sigmoid(self.unet(x, t).sample)

    def forward(self, masked: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        known, current = mask, masked * mask
        for k in range(self.cfg.n_steps):
            pred = self.step(current, known, k)
            last = k == self.cfg.n_steps - 1
            grown = torch.ones_like(known) if last else F.max_pool2d(known, 2 * self.cfg.grow + 1, 1, self.cfg.grow)
            current = current * known + pred * (grown - known)  # fill the new ring only
            known = grown
        return masked * mask + current * (1 - mask)


def _build(defaults: dict, overrides: dict) -> Inpainter:
    cfg = make_config(InpaintConfig, defaults, overrides, "inpaint")
    return Inpainter(cfg)


@register_model
def inpaint_unet(**overrides) -> Inpainter:
    """The full-size recurrent inpainter: diffusers' UNet2DModel, widths 64/128/256, 3 passes (GPU-sized)."""
    return _build(dict(backbone="diffusers"), overrides)


@register_model
def inpaint_unet_small(**overrides) -> Inpainter:
    """CPU-sized: plain U-Net, widths 16/32/64, one conv per block, 2 passes."""
    return _build(dict(block_out_channels=(16, 32, 64), layers_per_block=1, n_steps=2), overrides)


@register_model
def inpaint_unet_tiny(**overrides) -> Inpainter:
    """For tests: plain U-Net, widths 8/16, one conv per block, 2 passes."""
    return _build(dict(block_out_channels=(8, 16), layers_per_block=1, n_steps=2, grow=2), overrides)


@register_model
def inpaint_unet_diffusers_tiny(**overrides) -> Inpainter:
    """For tests of the diffusers backbone: widths 8/16, 2 passes."""
    return _build(dict(backbone="diffusers", block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4,
                       n_steps=2, grow=2), overrides)
