"""Tensors for the regen models, from images and from rows of a documents dataset.

    x = content_input(img, (96, 160))            # (3, h, w) in [0, 1]: the content/type models' input
    c = cond_input(doc_type, values, (160, 256))  # (5, H, W) in [-1, 1]: glyph layer + document region
    lines = line_input(crop_lines(capture, quad, doc_type, cfg.line_size))   # (n, 3, h, w) in [0, 1]
    batch = RegenBatch(model.cfg, model.tokenizer)(rows)   # rows of the documents contract -> model(**batch)

Inference (`pipeline.RegenCompressor`) and training share these functions. A training example
(`RegenBatch`, one per row of the documents contract: `image`, `doc_type_name`, `clean`,
`clean_fields`, `doc_quad`) pairs the capture with its labels and the TARGET the generator must
produce: the row's flat `clean` render resized to the first size threshold (`gen_size`). For the
content model each example also carries the capture at `corner_size` with its labelled corners
(`doc_quad`), and each template field's line crop (cut with those corners, each jittered by
`quad_jitter` px as a corner head's error would be) with its value from `clean_fields`, matched by
field name. A `flat_rate` share of the examples show the flat `clean` render instead of the
capture, as a processed image looks, half of them at the first size threshold (regen's own output
size: its glyphs are smaller than the capture's), so the content model also reads regen's own output.
With `processed_lines`, every example also gives its lines as the pipeline draws them: the glyph
layer composited onto the target (`processed_lines` in the batch, labelled as `line_ids`): the
round trip re-reads regen's output, whose glyphs are drawn at the small size, not downscaled.
"""
from __future__ import annotations

import zlib

import numpy as np
import torch
from PIL import Image

from docray.regen import fields, layout
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


def resize(img: Image.Image, size_hw: tuple[int, int]) -> Image.Image:
    """`img` at (h, w) `size_hw` (antialiased)."""
    return img.resize((size_hw[1], size_hw[0]), Image.Resampling.LANCZOS)


class RegenBatch:
    """Rows of a documents dataset -> the batch `RegenModels.forward` takes.

    `__call__(rows)`: `rows` a dict of column arrays (`id`, `image`, `doc_type_name`, `clean`,
    `clean_fields`, `doc_quad`; as Ray Data's `iter_torch_batches(collate_fn=...)` gives them), b rows.
    Returns pixels (b, 3, h, w) and corner_px (b, 3, h', w') in [0, 1], quad (b, 8) corners as
    fractions of the image, cond (b, 5, H, W) and target (b, 3, H, W) in [-1, 1] at gen_size,
    content_ids (b, max_len), types (b,), lines (n, 3, lh, lw) in [0, 1] with one line per template
    field of each row, line_ids (n, field_len); with `processed_lines`, processed_lines (n, 3, lh, lw):
    the same fields cut from the row's target with its glyph layer composited. `cfg` a `RegenConfig`.
    A row's random choices (flat or capture, the corners' jitter) are seeded by `seed` and its id, so
    they repeat every epoch.
    """

    def __init__(self, cfg, tokenizer, flat_rate: float = 0.15, quad_jitter: float = 1.5, seed: int = 0,
                 processed_lines: bool = False):
        self.cfg, self.tokenizer = cfg, tokenizer
        self.flat_rate, self.quad_jitter, self.seed = flat_rate, quad_jitter, seed
        self.processed_lines = processed_lines

    def __call__(self, rows: dict) -> dict[str, torch.Tensor]:
        ex = [self.example(*(rows[k][i] for k in ("id", "image", "doc_type_name", "clean", "clean_fields", "doc_quad")))
              for i in range(len(rows["id"]))]
        out = {k: torch.stack([e[k] for e in ex]) for k in ("pixels", "corner_px", "quad", "cond", "target")}
        out["types"] = torch.tensor([e["type"] for e in ex], dtype=torch.long)
        out["content_ids"] = self.tokenizer.batch([layout.join_content(e["values"]) for e in ex], self.cfg.max_len)
        out["lines"] = line_input(np.concatenate([e["lines"] for e in ex]))
        out["line_ids"] = self.tokenizer.batch([v for e in ex for v in e["values"]], self.cfg.field_len)
        if self.processed_lines:
            out["processed_lines"] = line_input(np.concatenate([e["processed_lines"] for e in ex]))
        return out

    def example(self, row_id, image, doc_type, clean, clean_fields, doc_quad) -> dict:
        """One row's tensors; `values` its field values in template order, `lines` (n, lh, lw, 3) uint8."""
        c, gen_hw = self.cfg, tuple(self.cfg.gen_size)
        type_no, names = layout.type_index(doc_type), layout.field_names(doc_type)
        texts = {f["name"]: f["text"] for f in clean_fields}
        unknown = sorted(set(texts) - set(names))
        if unknown:
            raise ValueError(f"row {row_id}: clean_fields {unknown} are not fields of {doc_type!r} ({names})")
        values = [texts.get(n, "") for n in names]  # a field the row lacks is read as empty
        flat = decode_image(clean, name="clean")
        target = resize(flat, gen_hw)
        rng = np.random.default_rng([self.seed, zlib.crc32(str(row_id).encode())])
        if rng.random() < self.flat_rate:  # a processed image: at its own size or at the first threshold's
            img = flat if rng.random() < 0.5 else target
            quad = fields.frame_quad(doc_type, img.size)
        else:
            img, quad = decode_image(image), np.asarray(doc_quad, np.float64)
            if quad.size != 8:
                raise ValueError(f"row {row_id}: doc_quad must hold 8 numbers (4 corners' x, y), got {quad.size}")
            quad = quad.reshape(4, 2)
        jittered = quad + rng.normal(0, self.quad_jitter, quad.shape)
        cond, layer = cond_input(doc_type, values, gen_hw)
        tgt = np.asarray(target)
        out = {"pixels": content_input(img, c.content_size), "corner_px": content_input(img, c.corner_size),
               "quad": torch.tensor((quad / img.size).ravel(), dtype=torch.float32),
               "lines": fields.crop_lines(np.asarray(img), jittered, doc_type, c.line_size), "cond": cond,
               "target": torch.from_numpy(tgt.astype(np.float32) / 127.5 - 1).permute(2, 0, 1),
               "type": type_no, "values": values}
        if self.processed_lines:  # as `RegenCompressor.generate` draws them, over the target for the generated image
            frame = fields.frame_quad(doc_type, target.size)
            out["processed_lines"] = fields.crop_lines(layout.composite(layer, tgt),
                                                       frame + rng.normal(0, self.quad_jitter / 2, frame.shape),
                                                       doc_type, c.line_size)
        return out
