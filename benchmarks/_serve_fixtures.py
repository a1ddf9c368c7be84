"""Tiny UNTRAINED models, a tiny screening library and sample requests for `benchmarks/serve_load.py`.

Everything is written under one temporary folder (the benchmark's DOCRAY_HOME); nothing is read from
or written to ~/.docray. The weights are random: the figures measure serving overhead, not quality.
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml
from PIL import Image

# The file-type library of tests/test_regen_models.py (copied, not imported: benchmarks do not
# import tests): the regen_tiny output size (96x64) as the first threshold, a small second one per type.
TYPES = ("identity_card", "passport_page", "driving_licence", "residence_permit", "property_certificate", "business_licence")
TINY_LIB = {"first": {"width": 96, "height": 64, "bytes": 30000},
            "types": {t: {"base": 80, "format": "jpeg" if i % 2 else "webp", "second": {"width": 96, "height": 64, "bytes": 2500}}
                      for i, t in enumerate(TYPES)}}
DESCRIPTOR = "build:descriptor_tiny"  # random weights, seeded: the same in every replica
SCREEN = {"text_finder": "none", "learn": False}  # no OCR model, no library writes under load
PRIVATE_SIZE = 32


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def recognition(root: Path) -> dict:
    """A save_pretrained folder of an untrained `unified_tiny`."""
    from docray.models import build_model, save_pretrained

    torch.manual_seed(0)
    save_pretrained(build_model("unified_tiny").eval(), root / "unified")
    return {"folder": str(root / "unified"), "select": "doc_type"}


def privacy(root: Path) -> dict:
    """An untrained tiny recogniser folder and a targets parquet of two synthetic masks (no attacker verdict,
    no calibrated threshold: served under the development override)."""
    from docray.privacy.masks import synthetic_masks
    from docray.models import build_model, save_pretrained

    torch.manual_seed(0)
    save_pretrained(build_model("recognizer_tiny", num_classes=4).eval(), root / "masked")
    t = synthetic_masks(7, seed=3, size=PRIVATE_SIZE).to_pandas().iloc[[5, 4]]
    t.assign(acc_masked=[0.8, 0.7], acc_original=[0.1, 0.2], drop=[0.1, 0.1]).to_parquet(root / "targets.parquet")
    return {"masked": str(root / "masked"), "targets": str(root / "targets.parquet"), "image_size": PRIVATE_SIZE,
            "dev_override": True}


def screening(root: Path, n_targets: int = 6) -> tuple[dict, bytes]:
    """A library of a few synthetic targets' tiles (descriptor with random weights); one tile as PNG."""
    from docray.screening.embed import Embedder
    from docray.screening.library import Library, TileBatch, cut_target, to_day
    from docray.synth import generate

    embed = Embedder.load(DESCRIPTOR)
    lib = Library.create(root / "library", dim=embed.dim, tile_size=32, descriptor=DESCRIPTOR, templates=["2x2", "1x3"])
    batch = TileBatch()
    for row in generate("targets", 0, n_targets, seed=0, target_rate=1.0).to_pylist():
        img = Image.open(io.BytesIO(row["image"])).convert("RGB")
        batch.extend(cut_target(img, row["id"], "bench", to_day("2024-01-01"), 32, ["2x2", "1x3"],
                                features=lib.feature_spec))  # the targets' SIFT features: verification can run
    lib.append(batch, embed(batch.tiles))
    return {"library": str(root / "library"), "screen": SCREEN, "reload_interval_s": 60}, _png(lib.tile_image(0))


def regen(root: Path) -> dict:
    lib = root / "file_types.yaml"
    lib.write_text(yaml.safe_dump(TINY_LIB))
    return {"untrained": "regen_tiny", "file_types": str(lib), "repository_url": f"sqlite:///{root}/repository.db",
            "blob_root": str(root / "blobs"), "steps": 1}


def build(root: Path) -> tuple[dict, dict]:
    """(GatewayConfig args, sample request bodies) with every model and file under `root`."""
    from docray.synth import generate

    root.mkdir(parents=True, exist_ok=True)
    screen_cfg, tile = screening(root)
    args = {"recognition": recognition(root), "screening": screen_cfg, "privacy": privacy(root),
            "regen": regen(root)}
    doc = generate("documents", 5, 6, seed=0, n_angles=0).column("image")[0].as_py()  # 256x160 capture
    benign = generate("targets", 600, 601, seed=3, target_rate=0.0).column("image")[0].as_py()
    face = generate("faces", 0, 1, seed=0, size=PRIVATE_SIZE).column("image")[0].as_py()
    from docray.client import mask_locally
    from docray.privacy.masks import decode_mask

    target = pd.read_parquet(args["privacy"]["targets"]).iloc[0]
    samples = {"document": doc, "pictures": [benign, tile], "face": mask_locally(face, decode_mask(target["mask"])),
               "face_mask_id": str(target["mask_id"])}  # masked as the client does: the raw face is never sent
    assert np.asarray(Image.open(io.BytesIO(face))).shape[:2] == (PRIVATE_SIZE, PRIVATE_SIZE)
    return args, samples
