"""The model stack imports and runs here: the torchvision trap is handled (docray/compat.py)."""
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

from docray import compat


def test_stack_imports_and_timm_resnet_runs():
    info = compat.check()
    assert info["torch"].startswith("2.13.0")
    # the shim is active exactly when torch is CPU-only and torchvision was built for CUDA
    assert info["torchvision_shim"] == compat.torchvision_needs_shim()


def test_shim_detection_matches_this_host():
    import torch

    tv_cuda = "+cu" in compat._version_file("torchvision")
    assert compat.torchvision_needs_shim() == (torch.version.cuda is None and tv_cuda)


def test_fresh_interpreter_imports_timm_transformers_diffusers_via_docray():
    code = ("import docray, timm, transformers, diffusers, torch;"
            "from transformers import ViTMAEModel; from diffusers import UNet2DModel;"
            "m = timm.create_model('resnet18', num_classes=3).eval();"
            "print(tuple(m(torch.zeros(1, 3, 64, 64)).shape))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().endswith("(1, 3)")


def _fresh(code: str, cwd, **env) -> subprocess.CompletedProcess:
    """`code` in a new interpreter of this venv, outside the repository, without docray imported first."""
    clean = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN",
                                                              "RAY_AUTH_TOKEN_PATH")}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=cwd,
                          env={**clean, **env})


def test_start_hook_is_installed_in_this_venv():
    hook = Path(sysconfig.get_paths()["purelib"], compat.PTH_NAME)
    assert hook.exists() and hook.read_text() == compat.PTH_LINE, "run `make install` (it writes the start hook)"


def test_timm_as_the_first_import_in_a_fresh_interpreter(tmp_path):
    code = ("import sys, timm, torch; from transformers import ViTMAEModel; from diffusers import UNet2DModel;"
            "m = timm.create_model('resnet18', num_classes=3).eval();"
            "print(tuple(m(torch.zeros(1, 3, 64, 64)).shape), 'docray' in sys.modules)")
    out = _fresh(code, tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-3:] == ["(1,", "3)", "False"]  # and the hook did not import the docray package


def test_start_hook_sets_ray_token_mode_only_where_a_token_exists(tmp_path):
    code = "import os; print(os.environ.get('RAY_AUTH_MODE'))"
    assert _fresh(code, tmp_path, HOME=str(tmp_path)).stdout.strip() == "None"
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text("t" * 32)
    assert _fresh(code, tmp_path, HOME=str(tmp_path)).stdout.strip() == "token"
    assert _fresh(code, tmp_path, HOME=str(tmp_path), RAY_AUTH_MODE="disabled").stdout.strip() == "disabled"


import pytest


@pytest.mark.gpu
def test_timm_resnet_on_gpu():
    import timm
    import torch

    assert torch.cuda.is_available(), "run -m gpu on a host with a CUDA GPU"
    m = timm.create_model("resnet18", num_classes=3).cuda().eval()
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16):
        assert m(torch.zeros(2, 3, 64, 64, device="cuda")).shape == (2, 3)
