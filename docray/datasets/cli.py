"""`docray data ...`: check a dataset against its contract, import a user's files (docs/datasets.md).

    docray data validate documents s3://bucket/docs/train [--method regen] [--json]
    docray data import faces lfw/ ~/data/faces --split [--val-fraction 0.1] [--overwrite]
    docray data import masks irregular_masks/ ~/data/masks --invert
"""
from __future__ import annotations

import json

import click

from docray.datasets.contracts import CONTRACTS, KINDS

METHODS = sorted({m for c in CONTRACTS.values() for m in c.methods})


@click.group("data", context_settings={"help_option_names": ["-h", "--help"]})
def data() -> None:
    """Datasets: validate one against its kind's contract, import a user's files as one.

    KIND is documents, faces, targets or masks; the columns of each are in docs/datasets.md.
    """


@data.command("validate")
@click.argument("kind", type=click.Choice(KINDS))
@click.argument("path")
@click.option("--method", type=click.Choice(METHODS), default=None,
              help="Also require the columns this method trains on (e.g. regen, unified).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (kind, rows, ok, problems).")
def validate_cmd(kind: str, path: str, method: str | None, as_json: bool) -> None:
    """Check the Parquet file or folder PATH (local or s3://) against KIND's contract; writes nothing.

    Names every bad row (row number from 0, id, column, reason) and every missing, unknown or
    mistyped column; exits 1 when there is any problem, 0 when the dataset is clean.
    """
    from docray.datasets.validate import format_report, validate

    try:
        report = validate(kind, path, method, progress=not as_json)
    except (FileNotFoundError, ValueError) as e:
        raise click.ClickException(str(e)) from None
    click.echo(json.dumps(report.to_dict()) if as_json else format_report(report))
    if not report.ok:
        raise SystemExit(1)


@data.command("import")
@click.argument("kind", type=click.Choice(KINDS))
@click.argument("src")
@click.argument("out")
@click.option("--split", is_flag=True, help="Write OUT/train, OUT/val (and OUT/test) instead of OUT.")
@click.option("--val-fraction", type=click.FloatRange(0.0, 1.0, max_open=True), default=0.1, show_default=True,
              help="Rows without a split go to val by a stable hash of their id at this rate.")
@click.option("--overwrite", is_flag=True, help="Replace the shards OUT already holds.")
@click.option("--invert", is_flag=True, help="masks: the files store holes white (NVIDIA's irregular masks).")
@click.option("--rows-per-shard", type=click.IntRange(min=1), default=1000, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (report, files, counts).")
def import_cmd(kind: str, src: str, out: str, split: bool, val_fraction: float, overwrite: bool, invert: bool,
               rows_per_shard: int, as_json: bool) -> None:
    """Import SRC as a KIND dataset of Parquet shards at OUT (local or s3://).

    SRC is Parquet (a file or folder), or a folder of images with an optional labels.jsonl or
    labels.csv sidecar (masks: a folder of PNG masks); docs/datasets.md gives the sidecar columns of
    each kind. Every row is validated first: with any problem the problems are printed, nothing is
    written and the exit status is 1.
    """
    from docray.datasets.importers import import_dataset
    from docray.datasets.validate import format_report

    try:
        result = import_dataset(kind, src, out, split=split, val_fraction=val_fraction, overwrite=overwrite,
                                invert=invert, rows_per_shard=rows_per_shard, progress=not as_json)
    except (FileNotFoundError, FileExistsError, ValueError) as e:
        raise click.ClickException(str(e)) from None
    if as_json:
        click.echo(json.dumps({**result.report.to_dict(), "out": out, "files": result.files,
                               "counts": result.counts, "unused_files": result.unused}))
    elif result.ok:
        per = ", ".join(f"{k}: {v}" for k, v in result.counts.items())
        click.echo(f"imported {result.report.rows} {kind} rows from {src} to {out}: {len(result.files)} shard(s) "
                   f"({per})")
    else:
        click.echo(format_report(result.report))
        click.echo(f"nothing written to {out}")
    if result.unused and not as_json:
        click.echo(f"note: {result.unused} image file(s) under {src} are named by no sidecar row and were not imported")
    if not result.ok:
        raise SystemExit(1)
