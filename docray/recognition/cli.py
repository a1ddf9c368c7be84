"""`docray recognition ...`: unified recognition from the shell.

    docray recognition image DOC.png [--flash F.png] [--task doc_type ...]   # the latest model, no Ray

The job commands of this group (`pretrain`, `train`, `archive`, `quickstart`) drive Ray jobs, so they
live in the entry layer (cluster/cli.py), which adds them to this group in the `docray` command.
"""
from __future__ import annotations

import json
from pathlib import Path

import click


@click.group("recognition")
def recognition() -> None:
    """Unified recognition: MAE pre-training, multi-task training, batch and single-image recognition."""


@recognition.command("image")
@click.argument("image", type=click.Path(exists=True, dir_okay=False))
@click.option("--flash", type=click.Path(exists=True, dir_okay=False), help="the flash frame")
@click.option("--angle", "angles", multiple=True, type=click.Path(exists=True, dir_okay=False), help="an angle view")
@click.option("--task", "tasks", multiple=True, help="a task name (repeat); none: from the document type")
@click.option("--model", default="recognition-unified", show_default=True)
def image(image, flash, angles, tasks, model) -> None:
    """Answer tasks for one image file with the latest registered model (masks left out of the JSON)."""
    from docray.recognition.predictor import RecognitionPredictor

    frames = {}
    if flash:
        frames["flash"] = [Path(flash).read_bytes()]
    if angles:
        frames["angles"] = [Path(a).read_bytes() for a in angles]
    res = RecognitionPredictor(model).recognize([Path(image).read_bytes()], [frames], [list(tasks) or None])[0]
    for r in res.values():
        if isinstance(r, dict) and "mask_png" in r:
            r["mask_png"] = f"<{len(r['mask_png'])} bytes of PNG>"
    click.echo(json.dumps(res, indent=2))

