"""Tensors for the regen models, from images and from the synthetic world.

    x = content_input(img, (96, 160))            # (3, h, w) in [0, 1]: the content/type models' input
    c = cond_input(doc_type, values, (160, 256))  # (5, H, W) in [-1, 1]: glyph layer + document region
    ex = synth_examples(0, 64, seed=0, original_size=(384, 240), gen_size=(160, 256))

A training example pairs an ORIGINAL (a synthetic capture at `original_size`) with its labels and
the TARGET the generator must produce: the same document's flat clean render made directly at the
first size threshold (same seed and row, so the same content; rendered at that size, so its text
sits exactly where `layout.render_layer` draws it).
"""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from docray.compression import layout
from docray.imageio import decode_image


def content_input(img: Image.Image, size_hw: tuple[int, int]) -> torch.Tensor:
    """(3, h, w) float in [0, 1]."""
    arr = np.asarray(img.convert("RGB").resize((size_hw[1], size_hw[0]), Image.Resampling.BILINEAR))
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float() / 255


def cond_input(doc_type, values: list[str], size_hw: tuple[int, int]) -> tuple[torch.Tensor, np.ndarray]:
    """(condition (5, H, W) in [-1, 1], the RGBA layer (H, W, 4) uint8) for the generator."""
    wh = (size_hw[1], size_hw[0])
    layer = layout.render_layer(doc_type, values, wh)
    region = np.zeros(size_hw, np.float32)
    x0, y0, x1, y1 = layout.doc_box(doc_type, wh)
    region[y0:y1, x0:x1] = 1
    chans = np.concatenate([layer.astype(np.float32) / 127.5 - 1, region[..., None] * 2 - 1], axis=2)
    return torch.from_numpy(chans).permute(2, 0, 1).contiguous(), layer


def to_image(x: torch.Tensor) -> np.ndarray:
    """(3, H, W) in [-1, 1] -> (H, W, 3) uint8."""
    return ((x.detach().cpu().float().clamp(-1, 1) + 1) * 127.5 + 0.5).byte().permute(1, 2, 0).numpy()


def synth_examples(start: int, stop: int, seed: int, original_size=(384, 240), gen_size=(160, 256),
                   content_size=(96, 160), max_len: int = 160, tokenizer=None) -> dict:
    """Training tensors for rows [start, stop) of the synthetic documents (see the module docstring)."""
    from docray.synth import generate

    orig = generate("documents", start, stop, seed=seed, size=tuple(original_size), n_angles=0).to_pylist()
    flat = generate("documents", start, stop, seed=seed, size=(gen_size[1], gen_size[0]), n_angles=0).to_pylist()
    px, cond, tgt, texts, types = [], [], [], [], []
    for o, f in zip(orig, flat):
        values = [x["text"] for x in o["clean_fields"]]
        px.append(content_input(decode_image(o["image"]), content_size))
        cond.append(cond_input(o["doc_type"], values, gen_size)[0])
        clean = np.asarray(decode_image(f["clean"]), np.float32) / 127.5 - 1
        tgt.append(torch.from_numpy(clean).permute(2, 0, 1))
        texts.append(layout.join_content(values))
        types.append(o["doc_type"])
    out = {"pixels": torch.stack(px), "cond": torch.stack(cond), "target": torch.stack(tgt).float(),
           "types": torch.tensor(types, dtype=torch.long), "texts": texts}
    if tokenizer is not None:
        out["content_ids"] = tokenizer.batch(texts, max_len)
    return out
