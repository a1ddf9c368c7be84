"""The model stack imports and runs here: the torchvision trap is handled (docray/compat.py)."""
import subprocess
import sys

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


import pytest


@pytest.mark.gpu
def test_timm_resnet_on_gpu():
    import timm
    import torch

    assert torch.cuda.is_available(), "run -m gpu on a host with a CUDA GPU"
    m = timm.create_model("resnet18", num_classes=3).cuda().eval()
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16):
        assert m(torch.zeros(2, 3, 64, 64, device="cuda")).shape == (2, 3)
