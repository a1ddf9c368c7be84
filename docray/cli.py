"""The library's own `docray` commands. Every command and group has `--help`.

    docray doctor                                check that the model stack imports and runs here
    docray data validate documents DIR           datasets against their contracts (docray/datasets/cli.py)
    docray api health                            call the gateway (every route; DOCRAY_URL, DOCRAY_API_KEY)
    docray models list | show NAME[@VERSION]     registered models and their model cards (docray/storage/cli.py)
    docray repository purge | delete | audit     the image repository's data protection (docray/storage/cli.py)

The `docray` console script is `cluster.cli:main`: these commands plus the ones that drive Ray jobs
(`info`, `synth`, `submit`, `recognize pretrain|train|archive|quickstart`, `screen build|rescan`),
which live above the library because the library never imports cluster/, train_jobs/ or data_jobs/.
"""
from __future__ import annotations

import importlib
import importlib.util
import sys
from importlib import metadata

import click


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


# Method command groups, imported only when used so `docray --help` stays fast.
LAZY_GROUPS = {
    "screening": "docray.screening.cli:screening",
    "privacy": "docray.privacy.cli:privacy",
    "recognition": "docray.recognition.cli:recognition",
    "api": "docray.api_cli:api",
    "data": "docray.datasets.cli:data",
    "calibrate": "docray.calibration:calibrate",
    "models": "docray.storage.cli:models",
    "repository": "docray.storage.cli:repository",
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


if __name__ == "__main__":
    sys.exit(main())
