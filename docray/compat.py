"""Make timm, transformers and diffusers import on a CPU torch next to a CUDA torchvision (and Ray's CLIs
send its auth token).

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

At interpreter start: `make install` writes `docray-compat.pth` into the venv's site-packages
(`install_pth()`). Its one line runs this file by path, without importing the `docray` package (a
job's working_dir copy of docray must still win), and so calls `at_start()`:
- `patch_torchvision()`, so `import timm` (transformers, diffusers) works as a script's first import;
- `ray_token_auth()`: Ray 2.60 turns token auth on for a `ray start` cluster when a token exists
  (~/.ray/auth_token, e.g. written by an earlier embedded `ray.init()`), but `serve deploy|run|status`
  and `ray job submit` send it only with RAY_AUTH_MODE=token set. Where a token exists and the mode
  is unset, the hook sets it, as `ray start` and `ray.init` decide for themselves.
Both read a few small files at most, and do nothing where torchvision or a token is absent.

`docray doctor` (run by `make install`) checks the whole stack.
"""
from __future__ import annotations

import importlib.util
import os
import re
import sys
import sysconfig
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
        return getattr(sys.modules[_SHIM], "__docray_shim__", False)  # also when set by the start hook
    if "torchvision" in sys.modules or not torchvision_needs_shim():
        return False
    shim = types.ModuleType(_SHIM, "docray.compat: fake-kernel registrations skipped (CPU torch, CUDA torchvision)")
    shim.__docray_shim__ = True
    sys.modules[_SHIM] = shim
    return True


def ray_token_auth() -> bool:
    """Set RAY_AUTH_MODE=token when it is unset and a Ray token exists (RAY_AUTH_TOKEN, the file at
    RAY_AUTH_TOKEN_PATH, or ~/.ray/auth_token), as Ray's own `ray start` decides. Returns whether set."""
    if "RAY_AUTH_MODE" in os.environ:
        return False
    path = os.environ.get("RAY_AUTH_TOKEN_PATH") or os.path.join(os.path.expanduser("~"), ".ray", "auth_token")
    if not (os.environ.get("RAY_AUTH_TOKEN") or os.path.isfile(path)):
        return False
    os.environ["RAY_AUTH_MODE"] = "token"
    return True


def at_start() -> None:
    """What `docray-compat.pth` runs at interpreter start; never raises."""
    for fix in (patch_torchvision, ray_token_auth):
        try:
            fix()
        except Exception:  # noqa: BLE001 -- a start hook must not break the interpreter
            pass


PTH_NAME = "docray-compat.pth"  # sorts after setuptools' __editable__ .pth, so `docray` is findable by then
PTH_LINE = ('import importlib.util as u, os; s = u.find_spec("docray"); s and s.origin and exec(compile(open('
            'os.path.join(os.path.dirname(s.origin), "compat.py")).read(), "docray/compat.py", "exec"), '
            '{"__name__": "docray.compat.at_start"})\n')


def install_pth(site_packages: str | None = None) -> Path:
    """Write the start hook into `site_packages` (default: this interpreter's); idempotent."""
    path = Path(site_packages or sysconfig.get_paths()["purelib"], PTH_NAME)
    if not path.exists() or path.read_text() != PTH_LINE:
        path.write_text(PTH_LINE)
    return path


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


if __name__ == "docray.compat.at_start":  # executed by docray-compat.pth
    at_start()
