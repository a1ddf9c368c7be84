"""How often region proposals frame a tile pasted into a background (issue 20 item 1), no descriptor.

    python -m benchmarks.screening_proposals --n 100

Uploads: a tile (every template in turn) of a synthetic poster (seed 3, pictures the descriptor never
saw), edited (`copy_edit`), scaled 3x, pasted by `docray.screening.backgrounds.paste_upload` into
each background kind in turn (0.15-0.5 of the shorter side, random position), JPEG q50-90. For each
proposer, the share of uploads where one of its boxes overlaps the pasted tile with IoU >= 0.5 and
>= 0.7, boxes per upload, and ms per upload (this host, one process). Proposers: the layout's
`picture_boxes` (connected components on a plain background; every box here, the matcher keeps
the 8 largest), `edge_boxes` and `window_boxes` (16 at most each). Last line: JSON.
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np

from docray.screening.augment import copy_edit, jpeg
from docray.screening.backgrounds import BACKGROUNDS, paste_upload
from docray.screening.matching import picture_boxes
from docray.screening.proposals import edge_boxes, iou, window_boxes
from docray.screening.templates import DEFAULT_TEMPLATES, cut


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=100, help="uploads, in equal shares per background kind")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    from docray.screening.data import synth_pictures

    pics, _ = synth_pictures(0, 60, seed=3)
    rng = np.random.default_rng(args.seed)
    proposers = {"layout": picture_boxes, "edges": edge_boxes, "windows": lambda img: window_boxes(img.size)}
    rows: dict[tuple[str, str], list] = {}
    for i in range(args.n):
        kind, tpl = BACKGROUNDS[i % len(BACKGROUNDS)], DEFAULT_TEMPLATES[i % len(DEFAULT_TEMPLATES)]
        tiles = cut(pics[int(rng.integers(len(pics)))], tpl, None)
        tile = copy_edit(tiles[int(rng.integers(len(tiles)))].image, rng)
        up = paste_upload(tile.resize((tile.width * 3, tile.height * 3)), rng, kind)
        img = jpeg(up["image"], rng, 50, 90)
        for name, fn in proposers.items():
            t0 = time.perf_counter()
            boxes = fn(img)
            ms = 1000 * (time.perf_counter() - t0)
            best = max((iou(b, up["box"]) for b in boxes), default=0.0)
            for key in ((name, kind), (name, "all")):
                rows.setdefault(key, []).append((best, len(boxes), ms))
    print(f"{args.n} pasted uploads; share with a box at IoU >= 0.5 / 0.7 of the pasted tile")
    print(f"{'proposer':8s} {'background':15s} {'IoU>=.5':>8s} {'IoU>=.7':>8s} {'boxes':>6s} {'ms':>5s}")
    summary = {"uploads": args.n}
    for (name, kind), v in sorted(rows.items()):
        v = np.array(v)
        r5, r7 = float((v[:, 0] >= 0.5).mean()), float((v[:, 0] >= 0.7).mean())
        print(f"{name:8s} {kind:15s} {r5:8.2f} {r7:8.2f} {v[:, 1].mean():6.1f} {v[:, 2].mean():5.0f}")
        summary.update({f"{name}_{kind}_recall_iou50": round(r5, 3), f"{name}_{kind}_recall_iou70": round(r7, 3)})
        if kind == "all":
            summary.update({f"{name}_boxes_per_upload": round(float(v[:, 1].mean()), 1),
                            f"{name}_ms_per_upload": round(float(v[:, 2].mean()), 1)})
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
