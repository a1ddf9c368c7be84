"""The attack suite and the baseline protections, one interface each.

An attack gets what leaked, a masked image batch and its mask, and returns its reconstruction:

    attack(masked, mask) -> (b, 3, h, w)   masked (b, 3, h, w) in [0, 1] (hidden pixels 0),
                                           mask (b or 1, 1, h, w) in {0, 1} (1 kept, 0 hidden)

Kept pixels come back unchanged; only hidden ones are filled. Every attack is deterministic (the
same input gives the same output, bit for bit) and works in plain PyTorch / NumPy, one image at a
time where the library is per image (OpenCV, scikit-image).

    none          no reconstruction: the masked image itself goes to the recogniser
    learned       the attacker's own inpainter (docray.models.inpaint, trained on its own identities)
    telea         OpenCV's fast-marching inpainting (Telea 2004), cv2.INPAINT_TELEA
    navier_stokes OpenCV's Navier-Stokes inpainting (Bertalmio et al. 2001), cv2.INPAINT_NS
    biharmonic    scikit-image's biharmonic inpainting (skimage.restoration.inpaint_biharmonic)

The attacker does not hold the mask set (docs/privacy.md, the threat model): it reads the hole off
the leaked image, the pixels that are black in every channel (`leaked_mask`); the suite hands the
attacks that estimate unless told to give them the true mask (an attacker stronger than the model).

A protection hides the same region of the whole image another way (`protect(name, images, mask)`):
`mask` is the method (hidden pixels black: docray.privacy.masks.overlay); `blur` and `mosaic` are
the usual baselines, reported beside it. They are protections, not attacks: the attacker's
recogniser reads a blurred or mosaicked image as it is.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from docray.privacy.masks import overlay

ATTACKS = ("none", "learned", "telea", "navier_stokes", "biharmonic")
PROTECTIONS = ("mask", "blur", "mosaic")


def leaked_mask(masked: torch.Tensor, tol: float = 2 / 255) -> torch.Tensor:
    """What an attacker sees of the mask: (b, 3, h, w) -> (b, 1, h, w), 0 where every channel is <= tol."""
    return (masked.amax(1, keepdim=True) > tol).to(masked.dtype)


def _check(masked: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The mask expanded to (b, 1, h, w), after checking the shapes."""
    if masked.ndim != 4 or masked.shape[1] != 3:
        raise ValueError(f"masked images must be (b, 3, h, w), got {tuple(masked.shape)}")
    if mask.ndim != 4 or mask.shape[1] != 1 or mask.shape[0] not in (1, masked.shape[0]) or mask.shape[-2:] != masked.shape[-2:]:
        raise ValueError(f"mask must be (1 or {masked.shape[0]}, 1, {masked.shape[2]}, {masked.shape[3]}), "
                         f"got {tuple(mask.shape)}")
    return mask.to(masked).expand(masked.shape[0], -1, -1, -1)


def _compose(masked: torch.Tensor, mask: torch.Tensor, fill: torch.Tensor) -> torch.Tensor:
    """Kept pixels from `masked`, hidden ones from `fill`."""
    return masked * mask + fill.to(masked).clamp(0, 1) * (1 - mask)


class Attack:
    """Base: `name`, and `__call__(masked, mask) -> reconstruction` (see the module docstring)."""
    name = "attack"

    def fill(self, masked: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @torch.inference_mode()
    def __call__(self, masked: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        mask = _check(masked, mask)
        return _compose(masked * mask, mask, self.fill(masked * mask, mask))


class MaskedOnly(Attack):
    """No reconstruction: the masked image itself."""
    name = "none"

    def fill(self, masked, mask):
        return torch.zeros_like(masked)


class LearnedInpaint(Attack):
    """The attacker's own learned inpainter (an `Inpainter`, eval mode), in chunks of `chunk` images
    (a U-Net's activations grow with the chunk: 256 images of 64 x 64 take about 2 GB)."""
    name = "learned"

    def __init__(self, model: nn.Module, chunk: int = 64):
        self.model, self.chunk = model.eval(), chunk

    def fill(self, masked, mask):
        device = next(self.model.parameters()).device
        parts = [self.model(masked[i:i + self.chunk].to(device), mask[i:i + self.chunk].to(device)).cpu()
                 for i in range(0, len(masked), self.chunk)]
        return torch.cat(parts)


class _PerImage(Attack):
    """An attack run image by image on uint8 (h, w, 3) / float64 arrays."""

    def fill_one(self, image: np.ndarray, hole: np.ndarray) -> np.ndarray:
        """image float (h, w, 3) in [0, 1], hole bool (h, w) (True = hidden) -> float (h, w, 3)."""
        raise NotImplementedError

    def fill(self, masked, mask):
        images = masked.detach().cpu().permute(0, 2, 3, 1).double().numpy()  # (b, h, w, 3)
        holes = mask.detach().cpu()[:, 0].numpy() < 0.5  # (b, h, w)
        out = [self.fill_one(img, hole) if hole.any() else img for img, hole in zip(images, holes)]
        return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).float()


class OpenCVInpaint(_PerImage):
    """cv2.inpaint with method "telea" (INPAINT_TELEA) or "navier_stokes" (INPAINT_NS), on uint8 pixels."""

    def __init__(self, method: str = "telea", radius: float = 3.0):
        import cv2

        flags = {"telea": cv2.INPAINT_TELEA, "navier_stokes": cv2.INPAINT_NS}
        if method not in flags:
            raise ValueError(f"OpenCV inpainting method must be one of {sorted(flags)}, got {method!r}")
        self.name, self.flag, self.radius = method, flags[method], float(radius)

    def fill_one(self, image, hole):
        import cv2

        u8 = np.ascontiguousarray(np.rint(image * 255).astype(np.uint8))
        out = cv2.inpaint(u8, hole.astype(np.uint8), self.radius, self.flag)  # hole: nonzero = to fill
        return out.astype(np.float64) / 255


class BiharmonicInpaint(_PerImage):
    """skimage.restoration.inpaint_biharmonic, channel by channel on float pixels."""
    name = "biharmonic"

    def fill_one(self, image, hole):
        from skimage.restoration import inpaint_biharmonic

        return inpaint_biharmonic(image, hole, channel_axis=-1)


def build_attacks(names=ATTACKS, inpainter: nn.Module | None = None, radius: float = 3.0) -> dict[str, Attack]:
    """{name: attack} for `names` (of ATTACKS); "learned" needs the attacker's `inpainter`."""
    out: dict[str, Attack] = {}
    for name in names:
        if name == "none":
            out[name] = MaskedOnly()
        elif name == "learned":
            if inpainter is None:
                raise ValueError("the 'learned' attack needs the attacker's inpainter")
            out[name] = LearnedInpaint(inpainter)
        elif name in ("telea", "navier_stokes"):
            out[name] = OpenCVInpaint(name, radius)
        elif name == "biharmonic":
            out[name] = BiharmonicInpaint()
        else:
            raise ValueError(f"unknown attack {name!r}; choose from {ATTACKS}")
    return out


# -- protections -----------------------------------------------------------------------------------

def gaussian_blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """(b, 3, h, w) -> the same, blurred by a separable Gaussian of `sigma` pixels (reflected edges)."""
    r = max(1, min(int(np.ceil(3 * sigma)), images.shape[-1] - 1, images.shape[-2] - 1))  # reflect needs r < side
    k = torch.exp(-torch.arange(-r, r + 1, dtype=images.dtype, device=images.device) ** 2 / (2 * sigma ** 2))
    k = (k / k.sum()).view(1, 1, 1, -1).repeat(3, 1, 1, 1)  # (3, 1, 1, 2r + 1): one kernel per channel
    x = F.conv2d(F.pad(images, (r, r, 0, 0), mode="reflect"), k, groups=3)  # along x
    return F.conv2d(F.pad(x, (0, 0, r, r), mode="reflect"), k.transpose(-1, -2), groups=3)  # along y


def mosaic(images: torch.Tensor, block: int) -> torch.Tensor:
    """(b, 3, h, w) -> the same, each block x block cell (aligned to the top-left) its mean colour."""
    h, w = images.shape[-2:]
    small = F.avg_pool2d(images, block, stride=block, ceil_mode=True, count_include_pad=False)
    return F.interpolate(small, scale_factor=block, mode="nearest")[..., :h, :w]


@torch.inference_mode()
def protect(name: str, images: torch.Tensor, mask: torch.Tensor, blur_sigma: float = 0.0625,
            mosaic_block: float = 0.125) -> torch.Tensor:
    """The whole images (b, 3, h, w) in [0, 1] with the mask's hidden region protected by `name`
    (of PROTECTIONS); blur_sigma and mosaic_block are fractions of the image side."""
    mask = _check(images, mask)
    side = images.shape[-1]
    if name == "mask":
        return overlay(images, mask)
    if name == "blur":
        return _compose(images, mask, gaussian_blur(images, max(blur_sigma * side, 0.5)))
    if name == "mosaic":
        return _compose(images, mask, mosaic(images, max(int(round(mosaic_block * side)), 2)))
    raise ValueError(f"unknown protection {name!r}; choose from {PROTECTIONS}")
