"""`docray privacy ...`: the mask-privacy report and a look at mask sets.

    docray privacy report [--run DIR] [--out DIR]       Markdown + PNG plots of a grid run
    docray privacy tables [--run DIR]                   Table 1 and the funnel stages, in the terminal
    docray privacy sheet --out masks.png [--folder DIR --invert]   a contact sheet of a mask set, by bin
    docray privacy attacks [--set KEY=VALUE ...]        the attack suite's table per mask (open-set protocol)
    docray privacy calibrate [--set KEY=VALUE ...]      the verification threshold at FAR 1e-2 -> calibration.json
"""
from __future__ import annotations

import json
import os

import click

from docray import paths


def _default_run() -> str:
    return paths.sub("reports", "privacy", "grid")


@click.group("privacy", context_settings={"help_option_names": ["-h", "--help"]})
def privacy() -> None:
    """Mask privacy: occlusion masks that defeat ordinary recognisers but not the masked one."""


@privacy.command("report")
@click.option("--run", "run_dir", default=None, help="grid run folder (default DOCRAY_HOME/reports/privacy/grid)")
@click.option("--out", default=None, help="where report.md and the PNGs go (default: the run folder)")
def report(run_dir: str | None, out: str | None) -> None:
    """Write report.md with per-bin accuracies, the candidate table and the target masks over a face."""
    from docray.privacy.report import write_report

    try:
        path = write_report(run_dir or _default_run(), out)
    except FileNotFoundError as e:
        raise click.ClickException(str(e)) from None
    click.echo(path)


@privacy.command("tables")
@click.option("--run", "run_dir", default=None, help="grid run folder (default DOCRAY_HOME/reports/privacy/grid)")
def tables(run_dir: str | None) -> None:
    """Print Table 1 (per-bin accuracies) and the funnel stages of a grid run."""
    import pandas as pd

    run_dir = run_dir or _default_run()
    if not os.path.exists(os.path.join(run_dir, "bins.csv")):
        raise click.ClickException(f"{run_dir}: no bins.csv (run data_jobs.privacy_grid first)")
    click.echo(pd.read_csv(os.path.join(run_dir, "bins.csv")).to_string(index=False))
    summary = json.load(open(os.path.join(run_dir, "funnel.json")))
    for s in summary["stages"]:
        click.echo(f"{s['name']}: {s['n_in']} -> {s['n_out']}" + (f"  ({s['note']})" if s.get("note") else ""))


@privacy.command("sheet")
@click.option("--out", required=True, help="PNG to write")
@click.option("--folder", default=None, help="a folder of mask PNGs (default: synthetic masks)")
@click.option("--invert", is_flag=True, help="the folder stores holes as white (NVIDIA's set)")
@click.option("--n", default=36, show_default=True, help="synthetic masks to draw")
@click.option("--seed", default=7, show_default=True)
def sheet(out: str, folder: str | None, invert: bool, n: int, seed: int) -> None:
    """A contact sheet of a mask set (kept white, hidden black), one row per area bin."""
    import numpy as np
    from PIL import Image

    from docray.privacy.masks import load_mask_folder, mask_stack, synthetic_masks

    table = load_mask_folder(folder, invert=invert) if folder else synthetic_masks(n, seed=seed)
    stack, bins = mask_stack(table), np.asarray(table.column("bin").to_pylist())
    s = stack.shape[1]
    rows = [stack[bins == b][:12] for b in sorted(set(bins.tolist()))]
    canvas = np.full((len(rows) * (s + 2), max(map(len, rows)) * (s + 2)), 128, np.uint8)
    for i, row in enumerate(rows):
        for j, m in enumerate(row):
            canvas[i * (s + 2):i * (s + 2) + s, j * (s + 2):j * (s + 2) + s] = (m * 255).astype(np.uint8)
    Image.fromarray(canvas).save(out)
    click.echo(f"{out}: {table.num_rows} masks, bins {sorted(set(bins.tolist()))}")


@privacy.command("attacks", add_help_option=False, context_settings={"ignore_unknown_options": True})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def attacks(args) -> None:
    """The attack suite on the open-set protocol: per mask, each recogniser's and attack's TAR at
    FAR 1e-3 / 1e-2 and rank-1 (arguments as `python -m docray.privacy.suite`; --help lists the keys)."""
    from docray.privacy.suite import main

    main(list(args))


@privacy.command("calibrate", add_help_option=False, context_settings={"ignore_unknown_options": True})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def calibrate(args) -> None:
    """The served verification threshold: the masked recogniser at FAR 1e-2 on identities nobody trained
    on, checked on a held-out half, written beside the target masks as calibration.json (arguments as
    `python -m docray.privacy.verification`; --help lists the keys)."""
    from docray.privacy.verification import main

    main(list(args))
