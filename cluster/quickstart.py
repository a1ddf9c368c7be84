"""The main job (`make quickstart`): every method trained, batch-run and served on local Ray, end to end.

    python -m cluster.quickstart                       # about 10 minutes on 2 cores, CPU only (10.0 min measured)
    python -m cluster.quickstart --set jobs.regen=false --help

1. Ray starts embedded (or is joined through RAY_ADDRESS) with its Jobs API on :8265.
2. A synthetic corpus of every kind through Ray Data (train and val Parquet folders in the dataset
   contracts + contact sheets): the datasets the training jobs then read (`train=`/`val=`), as they
   would read a user's; a sample of documents goes into the image repository.
3. Short training and batch jobs, each submitted through the Jobs API like `docray submit` does
   (runtime_env working_dir = this repository): MAE pre-training -> multi-task training, the tile
   descriptor -> the cut-out library build, the two recognisers + inpainter -> the mask x image grid
   evaluation, the regen models; then an archive rescan against the library.
4. The gateway (`configs/serve/gateway.yaml`, private verification under its development override:
   the short run's masks are not privacy-selected) deployed with `serve deploy`; every endpoint called
   once through `docray.client.DocrayClient` (a face enrolled, verified, identified, deleted).
5. A summary table: each step's time and outcome, and where the reports and pictures are; the same
   as JSON in DOCRAY_HOME/reports/quickstart/summary.json.

`DOCRAY_HOME` may be a URI (`s3://bucket/prefix`, with the AWS_* environment of docs/architecture.md):
every file the steps write (datasets, models, library, reports, job logs, the Serve config deployed)
goes there through `docray.paths` / `docray.storage.blobs`. Local, in a temporary folder removed at
the end: the copy of the Serve config that `serve deploy` reads and, for a URI home, the privacy grid's
targets/funnel/calibration files the Privacy app reads (it opens local files only). The image
repository and the library's versions need a database (`DOCRAY_DB_URL`); for a URI home without one,
a SQLite file under ~/.cache/docray/ (one machine only: set DOCRAY_DB_URL for a cluster).

The short runs show the flow, not accuracy: the answers are printed beside the truth. The figures
that matter come from `benchmarks/` with full settings.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from pydantic import Field

from docray import paths
from docray.config import Config, parse_args, save_config
from docray.storage import blobs
from docray.storage.datasets import read_table
from docray.storage.repository import ImageRepository
from data_jobs.synth_corpus import Counts, save_contact_sheet
from train_jobs.common import synth_dataset

ROOT = Path(__file__).resolve().parents[1]


GATEWAY = "configs/serve/gateway.yaml"
HEARTBEAT_S = 300  # a job run without its logs on the terminal says it is still running this often


class Jobs(Config):
    """Which jobs run (each is short here; `--set jobs.X=false` skips one and the steps that need it)."""
    recognition: bool = Field(True, description="pretrain_recognition -> train_recognition")
    screening: bool = Field(True, description="train_screening -> screening_library -> screening_archive")
    privacy: bool = Field(True, description="train_privacy -> privacy_grid")
    regen: bool = Field(True, description="train_regen (the gateway's regen app serves its model)")


class QuickstartConfig(Config):
    seed: int = Field(0, description="seed of the synthetic world")
    n: Counts = Counts(documents=300, faces=320, targets=120, masks=120)
    store_documents: int = Field(20, ge=0, description="documents put into the image repository")
    jobs: Jobs = Jobs()
    recognition_epochs: int = Field(2, ge=1, description="epochs of MAE pre-training and of multi-task training")
    mask_identities: int = Field(16, ge=2, description="identities of the faces (n.faces rows cycle through them)")
    serve_config: str = Field(GATEWAY, description="the gateway's Serve config (serve deploy); with a method "
                              "switched off, a config that serves only the trained ones (configs/serve/)")
    address: str = Field("", description="Jobs API of a running cluster ('' -> the one this job starts)")
    job_timeout_s: float = Field(900, description="give up on a job after this long")


# Generator options of the quickstart's corpus: documents large enough for regen (its first size
# threshold is 256x160) with one angle view and balanced recapture/substitution for recognition.
CORPUS_OPTIONS = {"documents": {"size": [384, 240], "n_angles": 1, "recapture_rate": 0.5, "swap_rate": 0.5}}


def make_corpus(cfg: QuickstartConfig) -> dict[str, dict]:
    """Every kind (`n` rows) as train and val Parquet folders (`train_jobs.common.synth_dataset`, through Ray Data),
    a tenth of the rows held out, each with a contact sheet: {kind: {"train", "val", "rows", "contact_sheet"}}."""
    counts = cfg.n.model_dump()
    options = {**CORPUS_OPTIONS, "faces": {"n_identities": cfg.mask_identities}}
    out = {}
    for kind, n in counts.items():
        n_val = max(n // 10, 2)
        train, val = synth_dataset(kind, n - n_val, n_val, cfg.seed, options.get(kind))
        out[kind] = {"train": train, "val": val, "rows": n, "contact_sheet": save_contact_sheet(kind, train)}
    return out


def job_list(cfg: QuickstartConfig, corpus: dict[str, dict]) -> list[tuple[str, str, list[str]]]:
    """(name, module, --set overrides) in dependency order; small settings that finish in a minute or two.
    Every trainer reads its dataset from the corpus."""
    e, k = cfg.recognition_epochs, cfg.mask_identities

    def data(kind: str) -> list[str]:
        return [f"train={corpus[kind]['train']}", f"val={corpus[kind]['val']}"]

    jobs = []
    if cfg.jobs.recognition:
        jobs += [("pretrain_recognition", "train_jobs.pretrain_recognition", [*data("documents"), f"epochs={e}"]),
                 ("train_recognition", "train_jobs.train_recognition", [*data("documents"), f"epochs={e}"])]
    if cfg.jobs.screening:
        jobs += [("train_screening", "train_jobs.train_screening",
                  [*data("targets"), f"background={corpus['targets']['val']}", "epochs=1", "steps_per_epoch=60",
                   "batch_size=64", "background_distractors=200", "calibrate_queries=50"]),
                 ("screening_library", "data_jobs.screening_library", ["synth_n=80"])]
    if cfg.jobs.privacy:
        jobs += [("train_privacy", "train_jobs.train_privacy",
                  [*data("faces"), f"masks={corpus['masks']['train']}", "epochs=4", "inpaint_epochs=2"]),
                 # Recognisers trained for seconds cannot open the method's gaps (0.30, 0.07): the funnel's
                 # thresholds are off here, so its masks show the serving flow, not privacy-selected masks;
                 # and its attack check (stage 5: an attacker trained on people of its own, ~8 min here)
                 # is left to the standard build and `docray privacy attacks`.
                 ("privacy_grid", "data_jobs.privacy_grid", [f"n_identities={k}", "samples=20", "n_masks=36", "runs=2",
                                                                 "funnel.gap_threshold=-1", "funnel.drop_threshold=-1",
                                                                 "attack.enabled=false"])]
    if cfg.jobs.regen:
        jobs += [("train_regen", "train_jobs.train_regen", [*data("documents"), "max_epochs=1", "time_budget_s=60",
                                                             "calibrate_search_others=0"])]
    return jobs


NEEDS = {"train_recognition": "pretrain_recognition", "screening_library": "train_screening", "privacy_grid": "train_privacy"}


def store_sample(documents_dir: str, k: int) -> int:
    """Put the first k documents (capture as original, clean render as processed) in the repository."""
    repo = ImageRepository()
    table = read_table(documents_dir, columns=["id", "image", "clean", "doc_type_name"]).slice(0, k)
    for row in table.to_pylist():
        repo.add(original=row["image"], processed=row["clean"], doc_type=row["doc_type_name"], meta={"synth_id": row["id"]})
    return repo.count()


def screening_uploads(seed: int) -> dict[str, list[bytes]]:
    """Pictures of a clean document, and of one that carries a tile of the library (abnormal)."""
    from docray.imageio import encode_png
    from docray.screening.library import Library
    from docray.synth import generate
    from docray.synth.targets import make_upload

    benign = generate("targets", 10_000, 10_004, seed=seed + 1, target_rate=0.0).column("image").to_pylist()
    tile = Library.open(Library.default_root()).tile_image(0)
    upload = make_upload(tile, np.random.default_rng(seed), n_pictures=3)["image"]
    return {"clean": benign[:2], "abnormal": [benign[2], encode_png(upload)]}


def write_archive(seed: int, out: str) -> str:
    """A small archive of documents (pictures per document) for the rescan: every third one abnormal.
    `out`: a local folder or a URI."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = []
    for i in range(6):
        pics = screening_uploads(seed + i)["abnormal" if i % 3 == 0 else "clean"]
        rows.append({"id": f"archive-{i}", "pictures": pics, "release_time": None})
    buf = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_pylist(rows, schema=pa.schema([("id", pa.string()), ("pictures", pa.list_(pa.binary())),
                                                                ("release_time", pa.string())])), buf)
    blobs.write_file(paths.join(out, "part-00000.parquet"), buf.getvalue().to_pybytes())
    return out


def run_job(name: str, module: str, overrides: list[str], address: str, timeout_s: float,
            log_dir: str | None = None, follow_logs: bool = False) -> dict:
    """One job through the Jobs API; its log goes to `log_dir`/<name>.log (default
    DOCRAY_HOME/reports/quickstart: a local folder or a URI), and to the terminal as it runs with `follow_logs`."""
    from cluster.submit import JobFailed, JobTimeout, connect, last_line, submit_job

    log = paths.join(log_dir or paths.sub("reports", "quickstart"), f"{name}.log")
    entry = f"python -m {module} --set " + " ".join(shlex.quote(o) for o in overrides)
    t0 = time.perf_counter()
    print(f"\n-- job {name}: {entry}", flush=True)
    try:
        job_id, status = submit_job(entry, address=address, working_dir=str(ROOT), follow_logs=follow_logs,
                                    timeout_s=timeout_s, heartbeat_s=HEARTBEAT_S)
        error = ""
    except JobFailed as e:
        job_id, status, error = e.job_id, e.status, e.logs_tail.splitlines()[-1] if e.logs_tail else str(e)
    except JobTimeout as e:  # past the step's limit: stopped, so a local cluster can end and a resumed run redo it
        connect(address).stop_job(e.job_id)
        job_id, status, error = e.job_id, "TIMED OUT", f"still {e.status} after {timeout_s:.0f} s (timeout_s): stopped"
    except (ConnectionError, RuntimeError) as e:  # not submitted (no agent, cluster gone): this step fails, not the run
        blobs.write_file(log, f"not submitted: {e}\n".encode())
        print(f"   NOT SUBMITTED: {e}", flush=True)
        return {"step": name, "seconds": time.perf_counter() - t0, "ok": False, "detail": f"not submitted: {str(e)[:120]}",
                "log": log}
    logs = connect(address).get_job_logs(job_id)
    blobs.write_file(log, logs.encode())
    last = error or last_line(logs)
    print(f"   {status} in {time.perf_counter() - t0:.0f} s: {last[:160]}", flush=True)
    return {"step": name, "seconds": time.perf_counter() - t0, "ok": status == "SUCCEEDED", "detail": f"{job_id} {status}",
            "log": log}


def with_dev_override(serve_config: str, local_dir: str | None = None) -> Path:
    """A copy of the Serve config with `privacy.dev_override: true`: the short run's target masks carry no
    attacker verdict and no calibrated threshold, so verification would refuse (docs/privacy.md#serving);
    the override is for development, and the Privacy replicas log it. Written beside the job logs
    (DOCRAY_HOME/reports/quickstart/serve-config.yaml, a local folder or a URI); for a URI home also into
    `local_dir`, since `serve deploy` reads a local file (the one returned). The Privacy app reads the
    grid's targets from the home itself, a local folder or a URI."""
    import yaml

    conf = yaml.safe_load((ROOT / serve_config).read_text())
    for app in conf.get("applications", []):
        if (app.get("args") or {}).get("privacy") is not None:
            app["args"]["privacy"] = {**app["args"]["privacy"], "dev_override": True}
    text = yaml.safe_dump(conf, sort_keys=False).encode()
    kept = blobs.write_file(paths.sub("reports", "quickstart", "serve-config.yaml"), text)
    if not paths.is_uri(kept):
        return Path(kept)
    if local_dir is None:
        raise ValueError(f"DOCRAY_HOME is a URI ({paths.home()}): `serve deploy` needs a local copy; pass local_dir")
    return Path(blobs.write_file(os.path.join(local_dir, "serve-config.yaml"), text))


def deploy_gateway(serve_config: str, address: str, local_dir: str, timeout_s: float = 300) -> None:
    """`serve deploy` the gateway config (privacy under its development override) and wait until it is RUNNING."""
    from ray import serve

    serve_bin = Path(sys.executable).with_name("serve")
    subprocess.run([str(serve_bin), "deploy", str(with_dev_override(serve_config, local_dir)), "--address", address], check=True,
                   capture_output=True, text=True)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        app = serve.status().applications.get("docray")
        if app is not None and app.status == "RUNNING":
            return
        if app is not None and app.status == "DEPLOY_FAILED":
            raise RuntimeError(f"the gateway failed to deploy: {app.message} (replica logs: /tmp/ray/session_latest/logs/serve/)")
        time.sleep(2)
    raise TimeoutError(f"the gateway was not RUNNING after {timeout_s:.0f} s: {serve.status()}")


def _short(result: dict) -> str:
    """One task's answer in a few characters."""
    if "label" in result:
        return str(result["label"])
    if "value" in result:
        return f"{result['value']:.2f}"
    if "boxes" in result:
        return f"{len(result['boxes'])} boxes"
    return "mask" if "mask_png" in result else result.get("error", "?")


def _metrics_once_exported(dc, timeout_s: float = 30.0) -> str:
    """GET /metrics until Ray's exporter (every few seconds) shows the gateway's request counter."""
    deadline = time.monotonic() + timeout_s
    while True:
        text = dc.metrics()
        if "ray_docray_http_requests_total" in text or time.monotonic() > deadline:
            return text
        time.sleep(2)


def call_every_endpoint(cfg: QuickstartConfig, out: dict[str, dict]) -> list[dict]:
    """One call per route through the client, on held-out rows of the corpus `out`: (route, ok, ms,
    what came back, the truth)."""
    from docray.client import DocrayClient, DocrayError

    docs = read_table(out["documents"]["val"], columns=["image", "flash", "doc_type_name", "recapture"]).slice(0, 1).to_pylist()[0]
    faces = read_table(out["faces"]["val"], columns=["image", "identity"]).to_pylist()
    poster = None
    rows: list[dict] = []

    def call(route: str, fn, summary, truth: str = ""):
        t0 = time.perf_counter()
        try:
            res = fn()
            rows.append({"route": route, "ok": True, "ms": (time.perf_counter() - t0) * 1e3, "answer": summary(res), "truth": truth})
            return res
        except DocrayError as e:
            rows.append({"route": route, "ok": False, "ms": (time.perf_counter() - t0) * 1e3, "answer": f"{e.status} {e.code}: {e}"[:90], "truth": truth})

    with DocrayClient("http://127.0.0.1:8000", timeout=300) as dc:
        call("GET /healthz", dc.healthz, lambda r: f"{r['status']}: " + ", ".join(r["apps"]))
        call("POST /v1/recognize", lambda: dc.recognize(docs["image"], frames=[docs["flash"]]),
             lambda r: ", ".join(f"{t}={_short(v)}" for t, v in list(r["results"].items())[:3]),
             f"doc_type={docs['doc_type_name']}, recapture={docs['recapture']}")
        if cfg.jobs.screening:
            up = screening_uploads(cfg.seed + 100)
            call("POST /v1/screen (clean)", lambda: dc.screen(up["clean"]), lambda r: f"abnormal={r['abnormal']}", "abnormal=False")
            call("POST /v1/screen (tile)", lambda: dc.screen(up["abnormal"]),
                 lambda r: f"abnormal={r['abnormal']} matches={len(r['matches'])}", "abnormal=True")
            from docray.synth import generate

            poster = generate("targets", 20_000, 20_001, seed=cfg.seed, target_rate=1.0).column("image")[0].as_py()
            call("POST /v1/screen/targets", lambda: dc.add_target(poster, "2026-11-21", "quickstart"),
                 lambda r: f"+{r['tiles_added']} tiles -> v{r['library_version']}")
            call("GET /v1/screen/library", dc.library, lambda r: f"v{r['version']}, {r['tiles']} tiles, {r['index']}")
        if cfg.jobs.privacy:  # one face enrolled, another photo of the person verified and identified, then deleted
            a = faces[0]
            b = next((f for f in faces[1:] if f["identity"] == a["identity"]), faces[0])
            who = f"quickstart-{a['identity']}-{os.getpid()}"  # a fresh identity per run
            call("GET /v1/privacy/masks", dc.private_masks, lambda r: f"{len(r['masks'])} target masks")
            call("POST /v1/privacy/enrol", lambda: dc.enrol(who, a["image"]),
                 lambda r: f"{r['enrolments']} enrolment via {r['mask_id']}")
            call("POST /v1/privacy/verify", lambda: dc.verify(b["image"], who),
                 lambda r: f"match={r['match']} ({r['score']:.2f} vs {r['threshold']:.2f})", "match=True")
            call("POST /v1/privacy/identify", lambda: dc.identify(b["image"], top_k=3),
                 lambda r: ", ".join(f"{c['identity_id']} {c['score']:.2f}" for c in r["candidates"]), who)
            call("DELETE /v1/privacy/identities/{id}", lambda: dc.delete_identity(who),
                 lambda r: f"{r['enrolments']} enrolment(s) deleted")
        if cfg.jobs.regen:  # the regen app serves train_regen's model
            server = call("POST /v1/compress?mode=server", lambda: dc.compress(docs["image"]),
                          lambda r: (f"{r['type']}" if r.get("method") != "codec" else f"codec ({r.get('reason')})")
                          + f": {r['sizes']['original']:,} -> {r['sizes']['compressed']:,} B", docs["doc_type_name"])
            call("POST /v1/compress?mode=split", lambda: dc.compress_split(docs["image"]),
                 lambda r: f"terminal-compressed {len(r[0]):,} B")
            call("GET /v1/file-types", dc.file_types, lambda r: f"{len(r['types'])} types")
            if server:
                call("GET /v1/repository/{id}/original", lambda: dc.repository(server["record_id"], "original"),
                     lambda r: f"{len(r):,} B (admin: auth is off locally)")
        call("GET /metrics", lambda: _metrics_once_exported(dc),
             lambda r: f"{sum(ln.startswith('ray_docray_http_requests_total') for ln in r.splitlines())} request series")
    return rows


def database_for_uri_home(joining: bool) -> str | None:
    """For a URI `DOCRAY_HOME` without `DOCRAY_DB_URL`: a SQLite file of this machine for the image repository
    and the library's versions (~/.cache/docray/quickstart-<home hash>.db, one per home), set as
    DOCRAY_DB_URL before Ray starts so every job and replica inherits it. Returns the URL set (None: nothing to do)."""
    home = paths.home()
    if not paths.is_uri(home) or os.environ.get("DOCRAY_DB_URL"):
        return None
    folder = Path.home() / ".cache" / "docray"
    folder.mkdir(parents=True, exist_ok=True)
    url = f"sqlite:///{folder / ('quickstart-' + hashlib.sha256(home.encode()).hexdigest()[:12] + '.db')}"
    os.environ["DOCRAY_DB_URL"] = url
    print(f"DOCRAY_HOME is a URI and DOCRAY_DB_URL is not set: the repository and the library's versions go to {url}"
          + (" -- the cluster you join must reach it: set DOCRAY_DB_URL (Postgres) instead" if joining else ""))
    return url


def main(argv=None) -> None:
    cfg = parse_args(QuickstartConfig, argv, description=__doc__.split("\n\n")[0])
    from cluster.local import check_no_other_ray, dashboard_url, init_ray, this_python_first

    # Per-job package notices ("Uploading package", "'.git' is now ignored by default") would drown the steps.
    logging.getLogger("ray.dashboard.modules.dashboard_sdk").setLevel(logging.WARNING)
    logging.getLogger("ray._private.runtime_env.working_dir").setLevel(logging.ERROR)
    this_python_first()
    database_for_uri_home(joining=bool(cfg.address or os.environ.get("RAY_ADDRESS")))
    t_start = time.perf_counter()
    steps: list[dict] = []

    def timed(name, fn, detail=lambda r: ""):
        t0 = time.perf_counter()
        try:
            res = fn()
        except Exception as e:  # noqa: BLE001 -- reported in the summary, which then exits 1
            steps.append({"step": name, "seconds": time.perf_counter() - t0, "ok": False, "detail": f"{type(e).__name__}: {e}"[:200]})
            return None
        steps.append({"step": name, "seconds": time.perf_counter() - t0, "ok": True, "detail": detail(res)})
        return res

    if not cfg.address:
        check_no_other_ray("the quickstart", "RAY_ADDRESS=127.0.0.1:6379 python -m cluster.quickstart "
                           "--set address=http://127.0.0.1:8265")
    resources = init_ray(dashboard=not cfg.address)
    address = cfg.address or dashboard_url()
    print(f"Ray up: {resources.get('CPU', 0):g} CPUs, {resources.get('GPU', 0):g} GPUs; Jobs API {address}; "
          f"DOCRAY_HOME={paths.home()}")
    out = paths.sub("datasets", "quickstart")
    save_config(cfg, out, "quickstart.yaml")
    corpus = timed("synth corpus (Ray Data)", lambda: make_corpus(cfg),
                   lambda r: ", ".join(f"{x['rows']} {kind}" for kind, x in r.items()))
    if corpus is None:
        return report(steps, [], {}, out, time.perf_counter() - t_start)
    with tempfile.TemporaryDirectory(prefix="docray-quickstart-") as local_dir:  # what must be a local file
        steps_and_calls(cfg, corpus, out, address, steps, timed, local_dir, t_start)


def steps_and_calls(cfg: QuickstartConfig, corpus: dict, out: str, address: str, steps: list[dict], timed,
                    local_dir: str, t_start: float) -> None:
    """The steps after the corpus: the image repository sample, the jobs, the gateway and its calls, the summary."""
    timed("image repository sample", lambda: store_sample(corpus["documents"]["train"], cfg.store_documents),
          lambda n: f"{n} records")
    failed: set[str] = set()
    for name, module, overrides in job_list(cfg, corpus):
        if NEEDS.get(name, "") in failed:  # its input was not made: skip, say why
            steps.append({"step": name, "seconds": 0.0, "ok": False, "detail": f"skipped: {NEEDS[name]} failed"})
        else:
            steps.append(run_job(name, module, overrides, address, cfg.job_timeout_s))
        if not steps[-1]["ok"]:
            failed.add(name)
    if cfg.jobs.screening and "screening_library" not in failed:
        archive = write_archive(cfg.seed, paths.join(out, "archive"))
        steps.append(run_job("screening_archive", "data_jobs.screening_archive", [f"input={archive}"], address, cfg.job_timeout_s))
    calls = []
    # The full gateway serves every method's models; a single-method config (configs/serve/) serves one.
    served = all(cfg.jobs.model_dump().values()) or cfg.serve_config != GATEWAY
    if served and not failed:
        timed("gateway (serve deploy)", lambda: deploy_gateway(cfg.serve_config, address, local_dir),
              lambda r: cfg.serve_config)
        if steps[-1]["ok"]:
            calls = timed("one call per endpoint", lambda: call_every_endpoint(cfg, corpus),
                          lambda r: f"{sum(c['ok'] for c in r)}/{len(r)} answered") or []
    else:
        print(f"\nskipping the gateway ({cfg.serve_config} serves every method's models): "
              f"{'failed: ' + ', '.join(sorted(failed)) if failed else 'a method was switched off in jobs'}")
    report(steps, calls, corpus, out, time.perf_counter() - t_start)


def report(steps: list[dict], calls: list[dict], corpus: dict[str, dict], out: str, total_s: float) -> None:
    """Print the summary table and write it as JSON (reports/quickstart/summary.json); exit 1 when a step failed."""
    ok = all(s["ok"] for s in steps) and all(c["ok"] for c in calls)
    summary = {"home": paths.home(), "ok": ok, "total_s": total_s, "steps": steps, "calls": calls, "corpus": corpus}
    blobs.write_file(paths.sub("reports", "quickstart", "summary.json"), json.dumps(summary, indent=1).encode())
    print("\n== docray quickstart summary ==")
    print(f"{'step':28s} {'s':>6s}  {'ok':3s} detail")
    for s in steps:
        print(f"{s['step']:28s} {s['seconds']:6.1f}  {'yes' if s['ok'] else 'NO':3s} {s['detail']}")
    if calls:
        print(f"\n{'endpoint (through DocrayClient)':36s} {'ms':>7s}  answer  [truth]")
        for c in calls:
            print(f"{c['route']:36s} {c['ms']:7.0f}  {'' if c['ok'] else 'FAILED '}{c['answer']}"
                  + (f"  [{c['truth']}]" if c["truth"] else ""))
    reports = paths.sub("reports")
    print("\nwhere to look:")
    for kind, row in corpus.items():
        print(f"  {kind}: {row['train']} (train), {row['val']} (val); contact sheet {row['contact_sheet']}")
    if blobs.exists(paths.join(reports, "privacy")):
        print("  (the short mask run's funnel thresholds are off: its target masks are not privacy-selected, so the "
              "gateway serves verification under privacy.dev_override)")
    for rel in ("privacy/grid/bins.csv", "privacy/grid/sample_face.png", "rescan-archive", "quickstart/summary.json"):
        if blobs.exists(paths.join(reports, *rel.split("/"))):
            print(f"  {paths.join(reports, *rel.split('/'))}")
    print(f"  models: {paths.sub('models')}   library: {paths.sub('indexes', 'screening')}")
    print(f"  repository: {paths.sub('repository')} (originals readable by the admin role only)")
    print(f"  job logs: {paths.join(reports, 'quickstart')}/<job>.log;  the gateway's /docs while this runs")
    print(f"total: {total_s / 60:.1f} min, {'every step succeeded' if ok else 'SOME STEPS FAILED (see above)'}")
    if not ok:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
