"""The `docray` command. Every command and group has `--help`.

    docray info                                  versions, devices, Ray address, DOCRAY_HOME
    docray doctor                                check that the model stack imports and runs here
    docray synth documents --n 500 --out DIR     synthetic data as Parquet shards + a contact sheet
    docray api health                            call the gateway (every route; DOCRAY_URL, DOCRAY_API_KEY)
"""
from __future__ import annotations

import importlib
import importlib.util
import json
import os
import platform
import sys
from importlib import metadata
from pathlib import Path

import click
import yaml

from docray import paths

STACK = ["docray", "torch", "torchvision", "ray", "transformers", "diffusers", "timm", "faiss-cpu",
         "pyarrow", "pillow", "opencv-python-headless", "rapidocr", "onnxruntime", "sqlalchemy"]


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


# Method command groups, imported only when used so `docray --help` stays fast.
LAZY_GROUPS = {
    "screen": "docray.screening.cli:screen",
    "masks": "docray.masking.cli:masks",
    "recognize": "docray.recognition.cli:recognize",
    "compress": "docray.compression.cli:compress",
    "api": "docray.api_cli:api",
    "submit": "cluster.submit:submit",
    "data": "docray.datasets.cli:data",
    "calibrate": "docray.calibration:calibrate",
}


class LazyGroup(click.Group):
    """A click group whose method sub-groups load on first use (click's documented lazy pattern)."""

    def _lazy(self) -> dict[str, str]:
        return {name: target for name, target in LAZY_GROUPS.items()
                if importlib.util.find_spec(target.split(":")[0].rsplit(".", 1)[0]) is not None
                and importlib.util.find_spec(target.split(":")[0]) is not None}

    def list_commands(self, ctx):
        return sorted({*super().list_commands(ctx), *self._lazy()})

    def get_command(self, ctx, name):
        target = self._lazy().get(name)
        if target is None:
            return super().get_command(ctx, name)
        module, attr = target.split(":")
        return getattr(importlib.import_module(module), attr)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(_version("docray"), prog_name="docray")
def main() -> None:
    """docray: document-image intelligence on Ray.

    Artifacts (models, indexes, reports, the image repository, datasets) live under DOCRAY_HOME
    (default ~/.docray). Jobs join RAY_ADDRESS when it is set and start Ray embedded otherwise.
    """


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
        "versions": {d: _version(d) for d in STACK},
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


@main.command()
def doctor() -> None:
    """Check that torch, timm, transformers and diffusers import and a timm ResNet runs here.

    On a host with the CPU build of torch next to the registry's CUDA build of torchvision, docray
    applies a narrow shim (see docray/compat.py); this command says whether it is active.
    """
    from docray.compat import check

    try:
        result = check()
    except Exception as e:  # the point of this command is to report, not to crash
        raise click.ClickException(f"model stack broken: {type(e).__name__}: {e}") from None
    click.echo("model stack ok: " + ", ".join(f"{k} {v}" for k, v in result.items()))


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


if __name__ == "__main__":
    sys.exit(main())
