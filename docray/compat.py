"""Make timm, transformers and diffusers import on a CPU torch next to a CUDA torchvision.

The trap: the package registry only has CUDA builds of torchvision. Next to the CPU build of
torch (`pip install torch==2.13.0` on a host without a GPU), `import torchvision` fails with
"operator torchvision::nms does not exist": its C++ ops library cannot load without CUDA, and
`torchvision/_meta_registrations.py` then registers fake kernels for ops that were never defined.
timm imports torchvision unconditionally, and transformers/diffusers find it installed and import
it too, so all three break.

The fix is narrow: in exactly that situation (CPU-only torch, CUDA-built torchvision) we pre-seed
an empty `torchvision._meta_registrations` module, so the pure-Python parts of torchvision
(transforms, `ops.misc`, model definitions) import normally. torchvision's C++ ops (`nms`,
`roi_align`, image decoding) stay unavailable there; docray does not call them. On a GPU host,
or wherever torchvision matches torch, nothing is touched.

`docray doctor` (run by `make install`) checks the whole stack.
"""
from __future__ import annotations

import importlib.util
import re
import sys
import types
from pathlib import Path

_SHIM = "torchvision._meta_registrations"


def _version_file(package: str) -> str:
    spec = importlib.util.find_spec(package)  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        return ""
    path = Path(next(iter(spec.submodule_search_locations)), "version.py")
    return path.read_text() if path.exists() else ""


def torchvision_needs_shim() -> bool:
    """True when torch is a CPU-only build and torchvision was built against CUDA."""
    tv = _version_file("torchvision")
    if not tv:
        return False
    torch_cuda = re.search(r"^cuda\b.*=\s*(.+)$", _version_file("torch"), re.M)
    torch_is_cpu = torch_cuda is None or torch_cuda.group(1).strip() == "None"
    return torch_is_cpu and re.search(r"__version__\s*=\s*'[^']*\+cu\d+", tv) is not None


def patch_torchvision() -> bool:
    """Apply the shim if needed (idempotent, cheap: reads two small files). Returns whether it is active."""
    if _SHIM in sys.modules:
        return isinstance(sys.modules[_SHIM], _ShimModule)
    if "torchvision" in sys.modules or not torchvision_needs_shim():
        return False
    sys.modules[_SHIM] = _ShimModule(_SHIM, "docray.compat: fake-kernel registrations skipped (CPU torch, CUDA torchvision)")
    return True


class _ShimModule(types.ModuleType):
    pass


def check() -> dict:
    """Import the model stack and run a timm ResNet forward; returns versions. Raises on failure."""
    active = patch_torchvision()
    import diffusers
    import timm
    import torch
    import torchvision
    import transformers
    from diffusers import UNet2DModel  # noqa: F401  (model imports are where breakage shows)
    from transformers import ViTMAEModel  # noqa: F401

    with torch.inference_mode():
        out = timm.create_model("resnet18", num_classes=4).eval()(torch.zeros(1, 3, 64, 64))
    assert out.shape == (1, 4), out.shape
    return {
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "timm": timm.__version__,
        "transformers": transformers.__version__,
        "diffusers": diffusers.__version__,
        "torchvision_shim": active,
    }


def main() -> None:
    info = check()
    print("model stack ok: " + ", ".join(f"{k} {v}" for k, v in info.items()))
