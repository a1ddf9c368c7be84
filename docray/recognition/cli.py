"""`docray recognize ...`: thin wrappers over the unified-recognition jobs and the predictor.

    docray recognize pretrain [--set epochs=2 n_train=200 n_val=40]    # train_jobs.mae_pretrain
    docray recognize train    [--set train=DIR val=DIR]                # train_jobs.unified_train
    docray recognize archive  --set input=DIR out=DIR          # data_jobs.recognize_archive
    docray recognize image DOC.png [--flash F.png] [--task doc_type ...]   # the latest model, no Ray
    docray recognize quickstart                                # short pre-training + training + one /v1/recognize
"""
from __future__ import annotations

import json
from pathlib import Path

import click

PASS = dict(context_settings={"ignore_unknown_options": True})


@click.group("recognize")
def recognize() -> None:
    """Unified recognition: MAE pre-training, multi-task training, batch and single-image recognition."""


@recognize.command("pretrain", **PASS)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def pretrain(args) -> None:
    """MAE pre-training of the encoder (arguments as `python -m train_jobs.mae_pretrain`)."""
    from train_jobs.mae_pretrain import main

    main(list(args))


@recognize.command("train", **PASS)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def train(args) -> None:
    """Multi-task training (arguments as `python -m train_jobs.unified_train`)."""
    from train_jobs.unified_train import main

    main(list(args))


@recognize.command("archive", **PASS)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def archive(args) -> None:
    """Recognise an archive with Ray Data (arguments as `python -m data_jobs.recognize_archive`)."""
    from data_jobs.recognize_archive import main

    main(list(args))


@recognize.command("image")
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


@recognize.command("quickstart")
@click.option("--docs", default=200, show_default=True, help="synthetic documents")
@click.option("--epochs", default=2, show_default=True)
def quickstart(docs: int, epochs: int) -> None:
    """A short MAE pre-training, a short multi-task training, then one POST /v1/recognize through Serve."""
    from cluster.local import init_ray
    from cluster.quickstart import recognition_step

    init_ray()
    click.echo(json.dumps(recognition_step(docs, epochs), indent=2, default=str))
