"""docray: document-image intelligence on Ray.

The library (this package) holds models, algorithms, storage and the synthetic world; it never
starts Ray. Ray lives in `cluster/`, `serve_apps/`, `train_jobs/` and `data_jobs/`.
"""
from docray import compat as _compat

_compat.patch_torchvision()  # before anything imports timm/transformers/diffusers; see compat.py

__version__ = "0.1.0"
