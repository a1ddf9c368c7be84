"""`docray models list|show`: the registered models and their cards (`docray.storage.registry`).

    docray models list                          every version: when, key metric, commit
    docray models list recognition-unified      one model's versions
    docray models show descriptor               the latest version's card
    docray models show regen:v0002 --json       one version's card as JSON

The registry is DOCRAY_HOME/models (a local path or an fsspec URI such as s3://bucket/docray/models).
"""
from __future__ import annotations

import json

import click


def _registry():
    from docray.storage.registry import ModelRegistry

    return ModelRegistry()


def key_metric(card: dict) -> tuple[str, float | None]:
    """(name, value) of the card's key metric: the one its trainer named, else the first validation
    figure; ('', None) when there is none."""
    metrics = card.get("metrics", {})
    name = card.get("key_metric") or next((k for k in sorted(metrics) if k.startswith("val")), "")
    return name, metrics.get(name)


def _fail(e: Exception):
    from docray.storage.blobs import NotFound

    if isinstance(e, (NotFound, ValueError)):
        raise click.ClickException(str(e)) from None
    raise e


@click.group("models")
def models() -> None:
    """Registered models: their versions and model cards (DOCRAY_HOME/models)."""


@models.command("list")
@click.argument("name", required=False)
@click.option("--json", "as_json", is_flag=True, help="one JSON object per version")
def list_models(name: str | None, as_json: bool) -> None:
    """Every version of every model (or of NAME): when it was saved, its key metric, its commit."""
    reg = _registry()
    try:
        names = [name] if name else reg.names()
        if name and not reg.versions(name):
            reg.latest(name)  # NotFound naming the models there are
        rows = []
        for n in names:
            for v in reg.versions(n):
                card = reg.card(n, v)
                metric, value = key_metric(card)
                rows.append({"name": n, "version": v, "saved_at": card.get("saved_at"), "metric": metric,
                             "value": value, "commit": card.get("commit")})
    except Exception as e:  # noqa: BLE001 -- _fail re-raises what is not a user error
        _fail(e)
    if as_json:
        for r in rows:
            click.echo(json.dumps(r))
        return
    if not rows:
        click.echo(f"no models in {reg.root}")
        return
    width = max(len(r["name"]) for r in rows)
    click.echo(f"{'NAME':<{width}}  VERSION  SAVED (UTC)           KEY METRIC                      COMMIT")
    for r in rows:
        metric = f"{r['metric']}={r['value']:.4g}" if isinstance(r["value"], (int, float)) else "-"
        click.echo(f"{r['name']:<{width}}  {r['version']:<7}  {r['saved_at'] or '-':<20}  {metric:<30}  "
                   f"{(r['commit'] or '-')[:12] + ('-dirty' if str(r['commit']).endswith('-dirty') else '')}")


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024


def render(card: dict) -> str:
    """A card as text: the provenance first, then metrics, the build config and the job's config."""
    import yaml

    hw = card.get("hardware") or {}
    saved = card.get("saved_at") or "unknown (a version saved before cards)"
    lines = [f"{card['name']} {card['version']}  saved {saved}",
             f"  commit     {card.get('commit', 'unknown')}",
             f"  job        {card.get('job', 'unknown')}, wall time "
             + (f"{card['wall_time_s']:.1f} s" if "wall_time_s" in card else "unknown")]
    if hw:
        lines.append(f"  hardware   {hw.get('num_workers')} worker(s) x {hw.get('cpus_per_worker')} CPU, GPU "
                     f"{hw.get('gpu') or 'none'} (cluster: {hw.get('cluster_cpus')} CPU, {hw.get('cluster_gpus')} GPU)")
    for split, d in (card.get("datasets") or {}).items():
        lines.append(f"  {split:<10} {d['uri']}  ({d['files']} files, {_size(d['bytes'])}, {d['rows']} rows, "
                     f"sha256 {d['sha256'][:16]})")
    metric, _ = key_metric(card)
    lines.append("  metrics" + ("" if card.get("metrics") else "    none"))
    for k, v in sorted(card.get("metrics", {}).items()):
        lines.append(f"    {'*' if k == metric else ' '} {k}: {v:.6g}" if isinstance(v, float) else f"      {k}: {v}")
    for title, key in (("config (how the model is built)", "config"), ("job config", "job_config")):
        if card.get(key):
            lines += [f"  {title}:"] + ["    " + ln for ln in yaml.safe_dump(card[key], sort_keys=True).splitlines()]
    return "\n".join(lines)


@models.command("show")
@click.argument("ref", metavar="NAME[@VERSION]")
@click.option("--json", "as_json", is_flag=True, help="the card as JSON")
def show(ref: str, as_json: bool) -> None:
    """The model card of one version (default: the latest): commit, job, hardware, datasets, metrics, configs."""
    from docray.storage.registry import PREFIX, parse_ref

    try:
        name, version = parse_ref(ref if ref.startswith(PREFIX) else PREFIX + ref)
        card = _registry().card(name, version)
    except Exception as e:  # noqa: BLE001
        _fail(e)
    click.echo(json.dumps(card, indent=2, sort_keys=True) if as_json else render(card))
