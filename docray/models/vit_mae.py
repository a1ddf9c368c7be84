"""ViT encoder and its MAE pre-training, on transformers' ViTMAE (reused, not rewritten).

    mae = build_model("vit_mae_small")               # 64x64 pixels, 8x8 patches, 128-d, 3 layers
    out = mae(images)                                 # images (b, 3, 64, 64) in [0, 1]
    out.loss, out.pred, out.mask                      # pred (b, n_patches, p*p*3); mask 0 keep, 1 remove
    enc = build_model("vit_encoder_small")            # the same encoder without masking or decoder
    enc.load_state_dict(mae.encoder_state_dict())     # the pre-trained encoder
    tokens = enc(images)                              # (b, 1 + n_patches, 128), CLS first, patches in order

MAE convention (transformers' ViTMAE, as in facebookresearch/mae): per-sample `noise` is argsorted;
the patches with the smallest noise are kept ("0 is keep, 1 is remove"), the encoder sees only those,
and the decoder puts mask tokens back in the original order with `ids_restore`. `noise=` fixes the
mask (tests). Pixels enter in [0, 1] and are normalised inside (mean 0.5, std 0.25); the loss is
the MSE on masked patches of per-patch normalised pixels (`norm_pix_loss`).

ViTMAE initialises its fixed sin-cos position table for a square patch grid, so images are square
(documents are resized, e.g. 256x160 -> 64x64; aspect is not needed for these tasks).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn
from transformers import ViTMAEConfig, ViTMAEForPreTraining, ViTMAEModel

from docray.models import register_model

MEAN, STD = 0.5, 0.25  # pixel normalisation applied inside the model (inputs in [0, 1])


@dataclass
class ViTMAESpec:
    image_size: int = 64  # square input side in pixels
    patch_size: int = 8  # non-overlapping patches: (64/8)^2 = 64 tokens
    hidden_size: int = 128  # encoder width
    num_hidden_layers: int = 3  # 3 layers: a CPU epoch over 2k documents stays ~1 minute
    num_attention_heads: int = 4
    intermediate_size: int = 512  # MLP width (4x)
    decoder_hidden_size: int = 96  # MAE decoder is light: it is thrown away after pre-training
    decoder_num_hidden_layers: int = 2
    decoder_num_attention_heads: int = 4
    decoder_intermediate_size: int = 384
    mask_ratio: float = 0.75  # fraction of patches removed during pre-training (MAE default)
    norm_pix_loss: bool = True  # reconstruct per-patch normalised pixels (MAE's better target)

    def hf(self, **changes) -> ViTMAEConfig:
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        if self.hidden_size % 4 or self.hidden_size % self.num_attention_heads:
            raise ValueError(f"hidden_size {self.hidden_size} must divide by 4 and by num_attention_heads")
        return ViTMAEConfig(**{**asdict(self), **changes}, num_channels=3, layer_norm_eps=1e-6)

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size


def make_spec(defaults: dict, overrides: dict) -> ViTMAESpec:
    known = set(asdict(ViTMAESpec()))
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise TypeError(f"unknown ViT/MAE option(s) {unknown}; valid: {sorted(known)}")
    return ViTMAESpec(**{**defaults, **overrides})


def _normalise(x: torch.Tensor, image_size: int) -> torch.Tensor:
    if x.ndim != 4 or x.shape[1] != 3 or x.shape[-1] != image_size or x.shape[-2] != image_size:
        raise ValueError(f"expected images of shape (b, 3, {image_size}, {image_size}), got {tuple(x.shape)}")
    return (x - MEAN) / STD


class ViTEncoder(nn.Module):
    """The ViT encoder on all patches, in order: (b, 3, s, s) in [0, 1] -> (b, 1 + n, d) tokens."""

    def __init__(self, spec: ViTMAESpec):
        super().__init__()
        self.spec = spec
        self.vit = ViTMAEModel(spec.hf(mask_ratio=0.0))  # keeps every patch
        self.dim, self.grid = spec.hidden_size, spec.grid

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n = x.shape[0], self.grid**2
        order = torch.arange(n, device=x.device, dtype=torch.float32).expand(b, n)  # ascending noise: identity order
        return self.vit(_normalise(x, self.spec.image_size), noise=order).last_hidden_state


class MAE(nn.Module):
    """Masked auto-encoder: `forward(x, noise=None)` -> ViTMAEForPreTrainingOutput (loss, logits, mask)."""

    def __init__(self, spec: ViTMAESpec):
        super().__init__()
        self.spec = spec
        self.net = ViTMAEForPreTraining(spec.hf())

    def forward(self, x: torch.Tensor, noise: torch.Tensor | None = None):
        return self.net(_normalise(x, self.spec.image_size), noise=noise)

    def encoder_state_dict(self) -> dict[str, torch.Tensor]:
        """The encoder's weights, keyed for `ViTEncoder.load_state_dict`."""
        return {f"vit.{k}": v for k, v in self.net.vit.state_dict().items()}

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, noise: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(masked, reconstruction) images in [0, 1], for the original | masked | reconstruction grid."""
        out = self.forward(x, noise)
        xn = _normalise(x, self.spec.image_size)
        target = self.net.patchify(xn)  # (b, n, p*p*3)
        pred = out.logits
        if self.spec.norm_pix_loss:  # undo the per-patch normalisation with the true patch statistics
            mean, var = target.mean(-1, keepdim=True), target.var(-1, keepdim=True)
            pred = pred * (var + 1e-6) ** 0.5 + mean
        m = out.mask.unsqueeze(-1)  # (b, n, 1): 1 removed
        size = (self.spec.image_size, self.spec.image_size)
        recon = self.net.unpatchify(pred * m + target * (1 - m), size)  # visible patches shown as they were
        masked = self.net.unpatchify(target * (1 - m), size)
        to01 = lambda t: (t * STD + MEAN).clamp(0, 1)  # noqa: E731
        masked = torch.where(self.net.unpatchify(m.expand_as(target), size) > 0.5, torch.full_like(masked, 0.5), to01(masked))
        return masked, to01(recon)


def _mae(defaults: dict, overrides: dict) -> MAE:
    return MAE(make_spec(defaults, overrides))


def _enc(defaults: dict, overrides: dict) -> ViTEncoder:
    return ViTEncoder(make_spec(defaults, overrides))


TINY = dict(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
            intermediate_size=64, decoder_hidden_size=32, decoder_num_hidden_layers=1,
            decoder_num_attention_heads=2, decoder_intermediate_size=64)
BASE = dict(image_size=224, patch_size=16, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
            intermediate_size=3072, decoder_hidden_size=512, decoder_num_hidden_layers=8,
            decoder_num_attention_heads=16, decoder_intermediate_size=2048)  # ViT-B/16 MAE, for GPU nodes


@register_model
def vit_mae_small(**overrides) -> MAE:
    """CPU-sized MAE: 64x64 documents, 8x8 patches, 128-d, 3 layers (~0.8M encoder parameters)."""
    return _mae({}, overrides)


@register_model
def vit_mae_tiny(**overrides) -> MAE:
    return _mae(TINY, overrides)


@register_model
def vit_mae_base(**overrides) -> MAE:
    return _mae(BASE, overrides)


@register_model
def vit_encoder_small(**overrides) -> ViTEncoder:
    return _enc({}, overrides)


@register_model
def vit_encoder_tiny(**overrides) -> ViTEncoder:
    return _enc(TINY, overrides)


@register_model
def vit_encoder_base(**overrides) -> ViTEncoder:
    return _enc(BASE, overrides)
