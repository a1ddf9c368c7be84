"""Tensors for the regen models, from images and from the synthetic world.

    x = content_input(img, (96, 160))            # (3, h, w) in [0, 1]: the content/type models' input
    c = cond_input(doc_type, values, (160, 256))  # (5, H, W) in [-1, 1]: glyph layer + document region
    ex = synth_examples(0, 64, seed=0, original_size=(384, 240), cfg=model.cfg, tokenizer=model.tokenizer)
    lines = line_input(crop_lines(capture, quad, doc_type, cfg.line_size))   # (n, 3, h, w) in [0, 1]

A training example pairs an ORIGINAL (a synthetic capture at `original_size`) with its labels and
the TARGET the generator must produce: the same document's flat clean render made directly at the
first size threshold (same seed and row, so the same content; rendered at that size, so its text
sits exactly where `layout.render_layer` draws it). For the content model each example also carries
the capture at `corner_size` with its labelled corners, and each field's line crop (cut with the
labelled corners, each jittered by `quad_jitter` px as a corner head's error would be) with its
value. A `flat_rate` share of the examples show a flat clean render instead of a photo, as a
processed image looks, half of them at the first size threshold (regen's own output size: its
glyphs are 2/3 the capture's), so the content model also reads regen's own output.
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


def line_input(lines: np.ndarray) -> torch.Tensor:
    """(n, h, w, 3) uint8 line crops -> (n, 3, h, w) float in [0, 1]."""
    return torch.from_numpy(lines).permute(0, 3, 1, 2).float() / 255


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


def synth_examples(start: int, stop: int, seed: int, original_size, cfg, tokenizer, flat_rate: float = 0.15,
                   quad_jitter: float = 1.5) -> dict:
    """Training tensors for rows [start, stop) of the synthetic documents (see the module docstring);
    `cfg` a `RegenConfig`. Line crops are kept as uint8 (`lines`), `line_doc` their example's index."""
    from docray.compression.fields import crop_lines, frame_quad
    from docray.synth import generate

    gen_size, size = tuple(cfg.gen_size), tuple(original_size)
    orig = generate("documents", start, stop, seed=seed, size=size, n_angles=0).to_pylist()
    flat = generate("documents", start, stop, seed=seed, size=(gen_size[1], gen_size[0]), n_angles=0).to_pylist()
    rng = np.random.default_rng([seed, start, 0xF1E1D])
    out = {k: [] for k in ("pixels", "corner_px", "quad", "cond", "target", "texts", "types", "lines", "line_texts", "line_doc")}
    for i, (o, f) in enumerate(zip(orig, flat)):
        values = [x["text"] for x in o["clean_fields"]]
        if rng.random() < flat_rate:  # a processed image: at the capture's size or at the first threshold's
            img = decode_image(o["clean"] if rng.random() < 0.5 else f["clean"])
            quad = frame_quad(o["doc_type"], img.size)
        else:
            img, quad = decode_image(o["image"]), np.reshape(o["doc_quad"], (4, 2))
        out["pixels"].append(content_input(img, cfg.content_size))
        out["corner_px"].append(content_input(img, cfg.corner_size))
        out["quad"].append(torch.tensor((quad / img.size).ravel(), dtype=torch.float32))
        jittered = quad + rng.normal(0, quad_jitter, quad.shape)
        out["lines"].append(torch.from_numpy(crop_lines(np.asarray(img), jittered, o["doc_type"], cfg.line_size)))
        out["line_texts"] += values
        out["line_doc"] += [i] * len(values)
        out["cond"].append(cond_input(o["doc_type"], values, gen_size)[0])
        clean = np.asarray(decode_image(f["clean"]), np.float32) / 127.5 - 1
        out["target"].append(torch.from_numpy(clean).permute(2, 0, 1))
        out["texts"].append(layout.join_content(values))
        out["types"].append(o["doc_type"])
    for k in ("pixels", "corner_px", "quad", "cond"):
        out[k] = torch.stack(out[k])
    out["target"] = torch.stack(out["target"]).float()
    out["lines"] = torch.cat(out["lines"]).permute(0, 3, 1, 2).contiguous()  # (n, 3, h, w) uint8
    out["types"], out["line_doc"] = torch.tensor(out["types"], dtype=torch.long), torch.tensor(out["line_doc"])
    out["content_ids"] = tokenizer.batch(out["texts"], cfg.max_len)
    out["line_ids"] = tokenizer.batch(out["line_texts"], cfg.field_len)
    return out
