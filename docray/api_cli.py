"""`docray api`: every gateway route from the shell, through `docray.client.DocrayClient`.

    export DOCRAY_URL=http://127.0.0.1:8000 DOCRAY_API_KEY=...
    docray api health
    docray api recognize id.png --frame flash.png --task doc_type
    docray api screen a.jpg b.jpg --release-time 2024-05-01
    docray api compress scan.png --mode split --out scan.jpg
    docray api delete-record ID                 # admin: a record with every image and attachment
    docray api --api-key ADMIN enrol alice face.png; docray api verify face2.png alice   # masked here
    docray api audit --record ID                # admin: reads of originals, deletes, purges

Answers are pretty JSON on stdout (base64 and binary blobs shown by their length unless
`docray api --full`). A refused request prints the server's code and message on stderr and
exits 1; a usage error exits 2.
"""
from __future__ import annotations

import base64
import binascii
import json
import re
import sys
from pathlib import Path

import click

from docray.client import DEFAULT_URL, DocrayClient, DocrayError

IMAGE = click.Path(exists=True, dir_okay=False, path_type=Path)
_BASE64 = re.compile(r"^[A-Za-z0-9+/]+={0,2}$")


def _make_client(url: str, api_key: str | None, timeout: float) -> DocrayClient:
    """The client every command uses (tests replace this to point at a stub app)."""
    return DocrayClient(url, api_key=api_key, timeout=timeout)


def shorten(value, full: bool = False):
    """JSON-ready copy of an answer: bytes and long base64 strings become '<N bytes ...>' unless full."""
    if isinstance(value, dict):
        return {k: shorten(v, full) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [shorten(v, full) for v in value]
    if isinstance(value, (bytes, bytearray)):
        return base64.b64encode(value).decode() if full else f"<{len(value)} bytes>"
    if isinstance(value, str) and not full and len(value) >= 256 and _BASE64.match(value):
        try:
            return f"<{len(base64.b64decode(value, validate=True))} bytes, base64>"
        except binascii.Error:
            return value
    return value


def _run(ctx: click.Context, fn, out: Path | None = None):
    """Call fn(client); print its answer as JSON (or write bytes to out); errors exit 1."""
    o = ctx.obj  # set by the `api` group
    try:
        with _make_client(o["url"], o["api_key"], o["timeout"]) as dc:
            result = fn(dc)
    except DocrayError as e:
        click.echo(f"error: {e.code} (HTTP {e.status}): {e.message}" if e.status else f"error: {e.code}: {e.message}", err=True)
        ctx.exit(1)
    except (ValueError, OSError) as e:  # a bad input found before sending (unknown mask id, unreadable file)
        click.echo(f"error: bad_input: {e}", err=True)
        ctx.exit(1)
    if isinstance(result, str):
        click.echo(result, nl=not result.endswith("\n"))
    else:
        click.echo(json.dumps(shorten(result, o["full"]), indent=2, ensure_ascii=False))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--url", envvar="DOCRAY_URL", default=DEFAULT_URL, show_default=True,
              help="The gateway's base URL [env: DOCRAY_URL].")
@click.option("--api-key", envvar="DOCRAY_API_KEY", default=None, help="API key sent as a Bearer token [env: DOCRAY_API_KEY].")
@click.option("--timeout", type=click.FloatRange(min=0.1), default=60.0, show_default=True, help="Seconds per request.")
@click.option("--full", is_flag=True, help="Print base64 and binary fields in full instead of their length.")
@click.pass_context
def api(ctx: click.Context, url: str, api_key: str | None, timeout: float, full: bool) -> None:
    """Call the docray gateway: one command per HTTP route.

    \b
    Example:
      docray api --url http://127.0.0.1:8000 --api-key KEY health
    """
    ctx.obj = {"url": url, "api_key": api_key, "timeout": timeout, "full": full}


@api.command()
@click.pass_context
def health(ctx):
    """GET /healthz: the gateway's status and its apps'.

    \b
    Example:  docray api health
    """
    _run(ctx, lambda dc: dc.healthz())


@api.command()
@click.pass_context
def metrics(ctx):
    """GET /metrics: Prometheus text (requests, latency, batch sizes).

    \b
    Example:  docray api metrics | grep docray_http_requests_total
    """
    _run(ctx, lambda dc: dc.metrics())


@api.command()
@click.argument("image", type=IMAGE)
@click.option("--frame", "frames", multiple=True, type=IMAGE, help="An extra capture (flash first, then angles); repeatable.")
@click.option("--frame-kind", "frame_kinds", multiple=True, help="Kind of each --frame (flash | angles), in order.")
@click.option("--task", "tasks", multiple=True, help="A task to run (default: the server's selection); repeatable.")
@click.option("--attrs", default=None, help='User attributes as a JSON object, e.g. \'{"name": "Ada"}\'.')
@click.pass_context
def recognize(ctx, image, frames, frame_kinds, tasks, attrs):
    """POST /v1/recognize: recognise a document capture.

    \b
    Example:  docray api recognize id.png --frame flash.png --task doc_type --task quality
    """
    try:
        user_attrs = json.loads(attrs) if attrs else None
    except json.JSONDecodeError as e:
        raise click.BadParameter(f"not JSON: {e}", param_hint="--attrs") from None
    if user_attrs is not None and not isinstance(user_attrs, dict):
        raise click.BadParameter("must be a JSON object", param_hint="--attrs")
    _run(ctx, lambda dc: dc.recognize(image, frames=list(frames), frame_kinds=list(frame_kinds) or None,
                                      tasks=list(tasks) or None, user_attrs=user_attrs))


@api.command()
@click.argument("pictures", nargs=-1, required=True, type=IMAGE)
@click.option("--release-time", default=None, help="Release date of the upload, e.g. 2024-05-01.")
@click.option("--cut-type", default=None, help="How the pictures were cut, e.g. 1x3, 2x2, 3x3.")
@click.pass_context
def screen(ctx, pictures, release_time, cut_type):
    """POST /v1/screen: screen one upload's pictures against the target library.

    \b
    Example:  docray api screen p1.jpg p2.jpg p3.jpg --release-time 2024-05-01 --cut-type 1x3
    """
    _run(ctx, lambda dc: dc.screen(list(pictures), release_time=release_time, cut_type=cut_type))


@api.command("add-target")
@click.argument("image", type=IMAGE)
@click.option("--release-time", required=True, help="When the target was released, e.g. 2024-05-01.")
@click.option("--source-id", required=True, help="Where the target came from.")
@click.option("--target-id", default=None, help="Id for the target (default: the server picks one).")
@click.pass_context
def add_target(ctx, image, release_time, source_id, target_id):
    """POST /v1/screen/targets (admin): add a sensitive target to the library.

    \b
    Example:  docray api --api-key ADMIN add-target poster.png --release-time 2024-05-01 --source-id feed-7
    """
    _run(ctx, lambda dc: dc.add_target(image, release_time, source_id, target_id=target_id))


@api.command()
@click.pass_context
def library(ctx):
    """GET /v1/screen/library: the target library's version and size.

    \b
    Example:  docray api library
    """
    _run(ctx, lambda dc: dc.library())


_MASK_ID = click.option("--mask-id", default=None, help="The target mask to use (default: one of the server's, at random).")


@api.command()
@click.argument("identity_id")
@click.argument("image", type=IMAGE)
@_MASK_ID
@click.pass_context
def enrol(ctx, identity_id, image, mask_id):
    """POST /v1/privacy/enrol (admin): enrol a face under IDENTITY_ID, masked HERE (the raw face never leaves).

    \b
    Example:  docray api --api-key ADMIN enrol alice face.png
    """
    _run(ctx, lambda dc: dc.enrol(identity_id, image, mask_id=mask_id))


@api.command()
@click.argument("image", type=IMAGE)
@click.argument("identity_id")
@_MASK_ID
@click.pass_context
def verify(ctx, image, identity_id, mask_id):
    """POST /v1/privacy/verify: is the face (masked HERE) IDENTITY_ID? match, score, threshold.

    \b
    Example:  docray api verify face2.png alice
    """
    _run(ctx, lambda dc: dc.verify(image, identity_id, mask_id=mask_id))


@api.command()
@click.argument("image", type=IMAGE)
@click.option("--top-k", type=click.IntRange(1, 1000), default=5, show_default=True, help="Identities to list.")
@_MASK_ID
@click.pass_context
def identify(ctx, image, top_k, mask_id):
    """POST /v1/privacy/identify: the enrolled identities closest to the face (masked HERE).

    \b
    Example:  docray api identify face2.png --top-k 3
    """
    _run(ctx, lambda dc: dc.identify(image, top_k=top_k, mask_id=mask_id))


@api.command("delete-identity")
@click.argument("identity_id")
@click.pass_context
def delete_identity(ctx, identity_id):
    """DELETE /v1/privacy/identities/IDENTITY_ID (admin): every enrolment of an identity, audited.

    \b
    Example:  docray api --api-key ADMIN delete-identity alice
    """
    _run(ctx, lambda dc: dc.delete_identity(identity_id))


@api.command()
@click.argument("image", type=IMAGE)
@click.option("--mode", type=click.Choice(["server", "split"]), default="server", show_default=True,
              help="server: the server compresses; split: the server regenerates, this side compresses and "
                   "uploads the file into the record (PUT /v1/repository/ID/compressed).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the compressed image here (split mode: compressed on this side).")
@click.pass_context
def compress(ctx, image, mode, out):
    """POST /v1/compress: regen compression of a document capture.

    \b
    Example:  docray api compress scan.png --mode split --out scan.jpg
    """
    def call(dc):
        if mode == "server":
            body = dc.compress(image, mode="server")
            data = body["compressed"]
        else:
            data, body = dc.compress_split(image)
            body["terminal_compressed_bytes"] = len(data)
        if out is not None:
            out.write_bytes(data)
            body["out"] = str(out)
        return body

    _run(ctx, call)


@api.command("file-types")
@click.option("--set-from", "set_from", type=IMAGE, default=None,
              help="Replace the library with this YAML or JSON file (admin).")
@click.pass_context
def file_types(ctx, set_from):
    """GET /v1/file-types, or PUT it from a file (admin): the per-type compression limits.

    \b
    Example:  docray api file-types > types.json; docray api file-types --set-from types.yaml
    """
    if set_from is None:
        _run(ctx, lambda dc: dc.file_types())
        return
    import yaml

    try:
        lib = yaml.safe_load(set_from.read_text())  # YAML is a superset of JSON
    except yaml.YAMLError as e:
        raise click.BadParameter(f"not YAML/JSON: {e}", param_hint="--set-from") from None
    if not isinstance(lib, dict):
        raise click.BadParameter("must hold a mapping (the file-type library)", param_hint="--set-from")
    _run(ctx, lambda dc: dc.update_file_types(lib))


@api.command()
@click.argument("record_id")
@click.option("--which", type=click.Choice(["original", "processed", "compressed"]), default="processed",
              show_default=True, help="Which image of the record (original: admin only).")
@click.option("--attachment", type=click.IntRange(min=0), default=None,
              help="Download attachment N instead (the compress answer lists them: seals for users; the portrait "
                   "and the document without it for admins).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True, help="Where to write the image.")
@click.pass_context
def repository(ctx, record_id, which, attachment, out):
    """GET /v1/repository/RECORD_ID/WHICH (or /attachments/N): download an image of a stored record.

    \b
    Example:  docray api repository rec-0001 --which compressed --out rec.jpg
              docray api repository rec-0001 --attachment 2 --out seal.jpg
    """
    def call(dc):
        data = dc.repository(record_id, which) if attachment is None else dc.attachment(record_id, attachment)
        out.write_bytes(data)
        what = {"which": which} if attachment is None else {"attachment": attachment}
        return {"record_id": record_id, **what, "bytes": len(data), "out": str(out)}

    _run(ctx, call)


@api.command("delete-record")
@click.argument("record_id")
@click.pass_context
def delete_record(ctx, record_id):
    """DELETE /v1/repository/RECORD_ID (admin): delete a record with its original, processed and compressed
    images and every attachment (blobs and rows).

    \b
    Example:  docray api --api-key ADMIN delete-record 3f2c...e1
    """
    _run(ctx, lambda dc: dc.delete_record(record_id))


@api.command()
@click.option("--record", "record_id", default=None, help="Only this record's entries.")
@click.option("--action", type=click.Choice(["read", "delete", "purge", "enrol"]), default=None, help="Only this action.")
@click.option("--limit", type=click.IntRange(1, 1000), default=None, help="At most this many entries (default 100).")
@click.pass_context
def audit(ctx, record_id, action, limit):
    """GET /v1/audit (admin): the repository's audit log, newest first (reads of originals, deletes, purges).

    \b
    Example:  docray api --api-key ADMIN audit --action read --limit 20
    """
    _run(ctx, lambda dc: dc.audit(record_id=record_id, action=action, limit=limit))


if __name__ == "__main__":
    sys.exit(api())
