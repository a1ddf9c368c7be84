"""How a tile reaches the screening service: the postings of an upload, for calibration and the benchmark.

    img = upload(tile, "post", rng)     # copy-edited, posted, JPEG q50-90: what the service receives

POSTINGS, in the order queries take them (equal shares, in turn):
- alone: the edited tile is the whole upload (at 1-2.5x its size);
- post: `docray.synth.targets.make_upload`, a post with a caption and 3 pictures on a plain page;
- pasted_photo / pasted_texture: `docray.screening.backgrounds.paste_upload`, the tile (at 3x) pasted at
  a random position and scale into a procedural photo-like or textured background.
`docray calibrate screening` and `benchmarks.screening_quality` both post their queries with `upload`.
"""
from __future__ import annotations

import numpy as np
from PIL import Image

from docray.screening.augment import copy_edit, jpeg
from docray.screening.backgrounds import paste_upload

POSTINGS = ("alone", "post", "pasted_photo", "pasted_texture")


def upload(tile: Image.Image, posting: str, rng: np.random.Generator, applied: list | None = None) -> Image.Image:
    """`tile` after a copy edit (crop, rescale, recolour, text, JPEG), posted as `posting` (one of POSTINGS),
    re-encoded as JPEG q50-90. `applied`, when a list, gets the copy edit's names (`copy_edit`)."""
    if posting not in POSTINGS:
        raise ValueError(f"unknown posting {posting!r}; known: {', '.join(POSTINGS)}")
    edited = copy_edit(tile, rng, applied=applied)
    if posting == "alone":
        s = rng.uniform(1.0, 2.5)
        img = edited.resize((round(edited.width * s), round(edited.height * s)), Image.BILINEAR)
    elif posting == "post":
        from docray.synth.targets import make_upload

        img = make_upload(edited, rng)["image"]
    else:  # pasted_photo / pasted_texture
        img = paste_upload(edited.resize((edited.width * 3, edited.height * 3), Image.BILINEAR), rng,
                           group=posting.split("_")[1])["image"]
    return jpeg(img, rng, 50, 90)
