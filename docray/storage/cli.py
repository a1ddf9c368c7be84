"""`docray models list|show`: the registered models and their cards (`docray.storage.registry`);
`docray repository purge|delete|audit`: data protection in the image repository (`docray.storage.repository`).

    docray models list                          every version: when, key metric, commit
    docray models list recognition-unified      one model's versions
    docray models show descriptor               the latest version's card
    docray models show regen:v0002 --json       one version's card as JSON

The registry is DOCRAY_HOME/models (a local path or an fsspec URI such as s3://bucket/docray/models).

    docray repository purge --older-than 30d --dry-run   which originals the retention period would purge
    docray repository purge --older-than 30d             purge them (and finish deletions left under way)
    docray repository delete ID                          a record with every image and attachment
    docray repository audit --record ID                  reads of originals, deletes, purges

The repository is DOCRAY_DB_URL and DOCRAY_BLOB_ROOT (or --db-url, --blob-root), else DOCRAY_HOME/repository.
"""
from __future__ import annotations

import getpass
import json
import re
from datetime import timedelta

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
    """Every version of every model (or of NAME): its weights' sha256 (the first 12 digits: version
    names count per registry), when it was saved, its key metric, its commit."""
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
                             "value": value, "commit": card.get("commit"), "weights_sha256": card.get("weights_sha256")})
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
    click.echo(f"{'NAME':<{width}}  VERSION  WEIGHTS       SAVED (UTC)           KEY METRIC                      COMMIT")
    for r in rows:
        metric = f"{r['metric']}={r['value']:.4g}" if isinstance(r["value"], (int, float)) else "-"
        click.echo(f"{r['name']:<{width}}  {r['version']:<7}  {(r['weights_sha256'] or '-')[:12]:<12}  "
                   f"{r['saved_at'] or '-':<20}  {metric:<30}  "
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
             f"  weights    sha256 {card.get('weights_sha256', 'unknown')}",
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
    """The model card of one version (default: the latest): weights' sha256, commit, job, hardware, datasets,
    metrics, configs."""
    from docray.storage.registry import PREFIX, parse_ref

    try:
        name, version = parse_ref(ref if ref.startswith(PREFIX) else PREFIX + ref)
        reg = _registry()
        card = reg.card(name, version)
        if "weights_sha256" not in card:  # saved before cards kept it
            card["weights_sha256"] = reg.digest(name, card["version"])
    except Exception as e:  # noqa: BLE001
        _fail(e)
    click.echo(json.dumps(card, indent=2, sort_keys=True) if as_json else render(card))


# -- the image repository: delete, purge, audit ---------------------------------------------------

_UNITS = {"d": "days", "h": "hours", "m": "minutes", "s": "seconds"}


def parse_age(text: str) -> timedelta:
    """'30d', '12h', '90m', '0s' (a number and its unit) as a timedelta."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([dhms])", text.strip())
    if not m:
        raise click.BadParameter(f"{text!r} is not an age such as 30d, 12h, 90m or 0s", param_hint="--older-than")
    return timedelta(**{_UNITS[m.group(2)]: float(m.group(1))})


def _actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except Exception:  # noqa: BLE001 -- no user name in this environment
        return "cli"


@click.group("repository")
@click.option("--db-url", envvar="DOCRAY_DB_URL", default=None,
              help="The repository's database [env: DOCRAY_DB_URL; default: SQLite in DOCRAY_HOME/repository].")
@click.option("--blob-root", envvar="DOCRAY_BLOB_ROOT", default=None,
              help="Its blobs, a folder or s3:// URI [env: DOCRAY_BLOB_ROOT; default: DOCRAY_HOME/repository/blobs].")
@click.pass_context
def repository(ctx: click.Context, db_url: str | None, blob_root: str | None) -> None:
    """The image repository's data protection: retention purge, deletion, the audit log."""
    ctx.obj = {"db_url": db_url, "blob_root": blob_root}


def _repo(ctx: click.Context):
    from docray.storage.repository import ImageRepository

    return ImageRepository(ctx.obj["db_url"], ctx.obj["blob_root"])


@repository.command()
@click.option("--older-than", "older_than", required=True, help="The retention period: 30d, 12h, 90m, 0s.")
@click.option("--dry-run", is_flag=True, help="List what would be purged; change nothing.")
@click.option("--json", "as_json", is_flag=True, help="The result as one JSON object.")
@click.pass_context
def purge(ctx, older_than: str, dry_run: bool, as_json: bool) -> None:
    """Purge the originals of records older than the period (and the attachments holding their pixels:
    portrait, document); processed and compressed images and seals stay. Finishes deletions and purges an
    earlier run left under way. Audited. Exit 1 when some blobs could not be removed (run it again)."""
    age = parse_age(older_than)
    with _repo(ctx) as repo:
        out = repo.purge(age, dry_run=dry_run, actor=_actor(), role="admin", route="docray repository purge")
    if as_json:
        click.echo(json.dumps(out, indent=2))
    else:
        verb = "would purge" if dry_run else "purged"
        click.echo(f"records created before {out['cutoff']}: {verb} {len(out['purged'])} original(s)")
        for p in out["purged"]:
            extra = "".join(f", attachment {a['n']} ({a['kind']})" for a in p["attachments"])
            click.echo(f"  {p['record_id']}  {p['created_at']}  original {_size(p['original_bytes'])}{extra}")
        if out["deleted"]:
            click.echo(f"{'would finish' if dry_run else 'finished'} {len(out['deleted'])} deletion(s) left under way")
        for rid, err in out["pending"].items():
            click.echo(f"  pending {rid}: {err}", err=True)
    if out["pending"]:
        ctx.exit(1)


@repository.command()
@click.argument("record_id")
@click.pass_context
def delete(ctx, record_id: str) -> None:
    """Delete a record with its original, processed and compressed images and every attachment (blobs and
    rows). Audited. A record half-deleted by an earlier failure is finished."""
    from docray.storage.blobs import NotFound
    from docray.storage.repository import DeletionIncomplete

    with _repo(ctx) as repo:
        try:
            out = repo.delete(record_id, actor=_actor(), role="admin", route="docray repository delete")
        except (NotFound, DeletionIncomplete) as e:
            raise click.ClickException(str(e)) from None
    click.echo(json.dumps(out))


@repository.command()
@click.option("--record", "record_id", default=None, help="Only this record's entries.")
@click.option("--action", type=click.Choice(["read", "delete", "purge", "enrol"]), default=None, help="Only this action.")
@click.option("--limit", type=click.IntRange(min=1), default=100, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per entry.")
@click.pass_context
def audit(ctx, record_id: str | None, action: str | None, limit: int, as_json: bool) -> None:
    """The audit log, newest first: every admin read of an original, every delete and purge (UTC time,
    actor: API-key id or role, action, record, what, route)."""
    with _repo(ctx) as repo:
        entries = repo.audit_log(record_id, action, limit)
    for e in entries:
        click.echo(json.dumps(e) if as_json else
                   f"{e['at']}  {e['actor']:<18}  {e['action']:<6}  {e['record_id'] or '-'}  {e['what']}  ({e['route'] or '-'})")
