"""The `docray` command (the console script): the library's commands (docray/cli.py) and the ones that
drive Ray jobs, which live here because the library never imports cluster/, train_jobs/ or data_jobs/.

    docray info                                  versions, devices, Ray address, DOCRAY_HOME
    docray doctor                                check that the model stack imports and runs here
    docray synth documents --n 500 --out DIR     synthetic data as Parquet shards + a contact sheet
    docray submit -- python -m train_jobs.pretrain_recognition     a job through the Jobs API (cluster/submit.py)
    docray recognition pretrain|train|archive|quickstart  the recognition jobs (and `recognition image`)
    docray screening train|build|rescan          the screening jobs (and `screening query|info`)
    docray privacy train|grid                    the mask-privacy jobs (and `privacy report|tables|sheet`)
    docray regen train|archive                   the regen jobs
    docray api health                            call the gateway (every route; DOCRAY_URL, DOCRAY_API_KEY)
"""
from __future__ import annotations

import copy
import importlib
import json
import os
import platform
import sys
from pathlib import Path

import click
import yaml

from cluster.models_build import build_command
from cluster.submit import submit
from docray import cli as lib
from docray import paths
from docray.config import tiny

STACK = ["docray", "torch", "torchvision", "ray", "transformers", "diffusers", "timm", "faiss-cpu",
         "pyarrow", "pillow", "opencv-python-headless", "rapidocr", "onnxruntime", "sqlalchemy"]
PASS = dict(context_settings={"ignore_unknown_options": True})


class EntryGroup(click.Group):
    """The library's `docray` group plus this layer's commands; the job commands join the library's
    method groups of the same name (in a copy of each: the library's group objects stay as they are)."""

    def list_commands(self, ctx):
        return sorted({*super().list_commands(ctx), *lib.main.list_commands(ctx), *JOB_COMMANDS})

    def get_command(self, ctx, name):
        cmd = super().get_command(ctx, name) or lib.main.get_command(ctx, name)
        jobs = JOB_COMMANDS.get(name)
        if jobs is None:
            return cmd
        if cmd is None:  # a group of job commands only
            return click.Group(name, commands={c.name: c for c in jobs},
                              help=GROUP_HELP.get(name, f"docray {name}") + ": " + ", ".join(c.name for c in jobs))
        group = copy.copy(cmd)
        group.commands = {**cmd.commands, **{c.name: c for c in jobs}}
        return group


@click.group(cls=EntryGroup, help=lib.main.help, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(lib._version("docray"), prog_name="docray")
def main() -> None:
    pass


main.add_command(submit)


def gather_info() -> dict:
    """What `docray info` prints, as a dict (no Ray is started)."""
    import torch

    from cluster.local import ray_address

    try:
        import faiss

        faiss_gpus = faiss.get_num_gpus()
    except Exception:  # faiss missing or broken: report, don't fail
        faiss_gpus = 0
    return {
        "python": platform.python_version(),
        "versions": {d: lib._version(d) for d in STACK},
        "devices": {
            "cpu_count": os.cpu_count(),
            "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
            "gpu_count": torch.cuda.device_count(),
            "gpu_names": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
            "faiss_gpus": faiss_gpus,
        },
        "ray_address": ray_address() or "none set: jobs start embedded Ray on this host",
        "docray_home": paths.home(),
    }


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of a table.")
def info(as_json: bool) -> None:
    """Print versions, devices (CPU and GPU counts), the Ray address in use and DOCRAY_HOME."""
    data = gather_info()
    if as_json:
        click.echo(json.dumps(data))
        return
    click.echo(f"docray {data['versions']['docray']}  (python {data['python']})")
    click.echo("versions:")
    for name, v in data["versions"].items():
        click.echo(f"  {name:24s} {v}")
    d = data["devices"]
    click.echo(f"devices:\n  cpus                     {d['cpu_count']} ({d['cpus_usable']} usable)")
    click.echo(f"  gpus                     {d['gpu_count']} {', '.join(d['gpu_names'])}".rstrip())
    click.echo(f"  faiss gpus               {d['faiss_gpus']}")
    click.echo(f"ray address                {data['ray_address']}")
    click.echo(f"DOCRAY_HOME                {data['docray_home']}")


def _parse_opts(items: tuple[str, ...]) -> dict:
    opts = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep:
            raise click.BadParameter(f"{item!r}: expected key=value", param_hint="--opt")
        value = yaml.safe_load(raw)
        opts[key.strip()] = tuple(value) if isinstance(value, list) else value
    return opts


@main.command()
@click.argument("kind", metavar="KIND", type=click.Choice(["documents", "faces", "targets", "masks"]))
@click.option("--n", "n", type=click.IntRange(min=1), default=200, show_default=True, help="Number of rows.")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Output folder for Parquet shards [default: DOCRAY_HOME/datasets/<kind>].")
@click.option("--seed", type=int, default=0, show_default=True, help="Rows depend only on (seed, kind, index).")
@click.option("--start", type=click.IntRange(min=0), default=0, show_default=True, help="First row index.")
@click.option("--rows-per-shard", type=click.IntRange(min=1), default=1000, show_default=True)
@click.option("--opt", "opts", multiple=True, metavar="KEY=VALUE",
              help="Generator option, e.g. --opt size=[256,160] (documents), --opt n_identities=300 (faces).")
@click.option("--ray/--no-ray", "use_ray", default=None,
              help="Generate through Ray Data [default: only when --n >= 2000].")
def synth(kind: str, n: int, out: str | None, seed: int, start: int, rows_per_shard: int,
          opts: tuple[str, ...], use_ray: bool | None) -> None:
    """Write N synthetic KIND rows as Parquet shards (readable by ray.data.read_parquet).

    KIND is one of documents, faces, targets, masks. Also saves a contact sheet PNG with the labels
    drawn, as <out>/contact_sheet.png.
    """
    from data_jobs.synth_corpus import generate_local, generate_with_ray, save_contact_sheet

    out = out or paths.sub("datasets", kind)
    options = _parse_opts(opts)
    if tiny():  # DOCRAY_TINY=1: smoke-test size (docray/tiny.yaml's rule for the jobs)
        n = min(n, 8)
    use_ray = n >= 2000 if use_ray is None else use_ray
    try:
        if use_ray:
            from cluster.local import init_ray

            init_ray()
            files = generate_with_ray(kind, n, out, seed=seed, start=start, rows_per_shard=rows_per_shard, **options)
        else:
            files = generate_local(kind, n, out, seed=seed, start=start, rows_per_shard=rows_per_shard, **options)
    except ValueError as e:
        raise click.ClickException(str(e)) from None
    sheet = save_contact_sheet(kind, out, seed=seed, start=start, **options)
    click.echo(f"wrote {n} {kind} rows in {len(files)} shard(s) to {out}")
    click.echo(f"contact sheet: {sheet}")


# -- the job-driving commands added to the library's groups -----------------------------------------
def _job(name: str, module: str, summary: str) -> click.Command:
    """`docray <group> <name> ARGS...`: runs `python -m <module> ARGS...` in this process; `--help` is the
    module's own, which lists every config key."""

    @click.command(name, help=f"{summary} (arguments as `python -m {module}`).", add_help_option=False, **PASS)
    @click.argument("args", nargs=-1, type=click.UNPROCESSED)
    def command(args) -> None:
        importlib.import_module(module).main(list(args))

    return command


@click.command("quickstart")
@click.option("--docs", default=200, show_default=True, help="synthetic documents")
@click.option("--epochs", default=2, show_default=True)
def quickstart(docs: int, epochs: int) -> None:
    """The quickstart with recognition only: a short MAE pre-training, a short multi-task training,
    then the gateway's calls (`make quickstart` runs every method)."""
    from cluster.quickstart import main

    main(["--set", "jobs.screening=false", "jobs.privacy=false", "jobs.regen=false", f"n.documents={docs}",
          "serve_config=configs/serve/recognition.yaml",
          f"recognition_epochs={epochs}"])


# the library's `recognition` group has `image`, `screening` has `query` and `info`, `privacy` has `report`,
# `tables` and `sheet`; `regen` is a group of job commands only
JOB_COMMANDS = {
    "recognition": [_job("pretrain", "train_jobs.pretrain_recognition", "MAE pre-training of the encoder"),
                    _job("train", "train_jobs.train_recognition", "Multi-task training"),
                    _job("archive", "data_jobs.recognition_archive", "Recognise an archive with Ray Data"), quickstart],
    "screening": [_job("train", "train_jobs.train_screening", "Train the descriptor"),
                  _job("build", "data_jobs.screening_library", "Build or extend the library"),
                  _job("rescan", "data_jobs.screening_archive", "Rescan an archive")],
    "privacy": [_job("train", "train_jobs.train_privacy", "Train the original and masked recognisers and the inpainter"),
                _job("grid", "data_jobs.privacy_grid", "The mask x image grid, the funnel, the target masks")],
    "regen": [_job("train", "train_jobs.train_regen", "Joint training of the regen models"),
              _job("archive", "data_jobs.regen_archive", "Re-compress an archive with Ray Data")],
    "models": [build_command],  # the library's `models` group lists and shows registered models
}
GROUP_HELP = {"regen": "Regen compression: recognise a document, regenerate a smaller image, compress it per type"}

if __name__ == "__main__":
    sys.exit(main())
