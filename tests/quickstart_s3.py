"""The quickstart on object storage (`make quickstart-object-storage`): the same run with a local DOCRAY_HOME and with
DOCRAY_HOME=s3://docray-quickstart/home on a local S3 server, compared.

    python -m tests.quickstart_s3                          # both runs (~2 x 10 min on 2 cores), then the comparison
    python -m tests.quickstart_s3 --local-home DIR         # compare against an earlier local run's home (its
                                                           # reports/quickstart/summary.json): the S3 run only
    python -m tests.quickstart_s3 --keep DIR               # keep the homes, logs and comparison in DIR
    DOCRAY_TINY=1 python -m tests.quickstart_s3            # every job at smoke-test size (~2 x 7.5 min; what CI runs)

1. Local run: `python -m cluster.quickstart` with DOCRAY_HOME a fresh temporary folder.
2. S3 run: `moto` in server mode (tests/s3.py) with a bucket; the quickstart with DOCRAY_HOME on the bucket,
   the AWS_* environment pointing at the server, DOCRAY_DB_URL a SQLite file in the scratch folder (the
   repository's and the library's database: not object storage) and HOME a scratch folder of its own, so a
   file written to the default home (~/.docray) or ~/.cache/docray would show there.
3. The comparison (`compare`): the same steps in the same order with the same statuses; the figures
   that are deterministic (the corpus, the repository sample, the library's tiles, the routes' answers
   that no trained weight decides) equal; the figures of trained models side by side, not compared:
   see FIGURES. Then the bucket must hold every artifact (`EXPECTED_KEYS`) and the scratch HOME no
   docray file. Exit 1 on any difference.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.s3 import make_bucket, moto_server, s3_env  # noqa: E402

BUCKET = "docray-quickstart"
S3_HOME = f"s3://{BUCKET}/home"

# Routes whose answer no trained weight decides (equal in both runs); the others answer with a trained
# model's output (labels, scores, masks chosen by the grid, sizes of regenerated documents), which is not
# bitwise reproducible from run to run with the same seeds (measured: train_privacy's inpainter loss
# 0.1569 vs 0.1565 and the grid's no-mask accuracy of the masked recogniser 0.09 vs 0.34, so other target
# masks and verify scores; train_regen stops on a 60 s time budget): shown side by side, not compared.
EXACT_ROUTES = ("GET /healthz", "POST /v1/screen/targets", "GET /v1/screen/library", "GET /v1/file-types",
                "DELETE /v1/privacy/identities/{id}", "GET /v1/repository/{id}/original")
FIGURES = {  # what compare() reports besides the steps: (figure, deterministic?)
    "corpus": "each dataset's rows, hashed in id order: deterministic (seeded generator), must be equal",
    "steps": "each step's detail without job ids and times: equal",
    "calls": f"answers of {', '.join(EXACT_ROUTES)}: equal; the others (trained models) side by side",
    "models": "the grid's no-mask accuracies and targets, the rescan's abnormal documents: trained models, side by side",
}
EXPECTED_KEYS = ("datasets/synth/", "datasets/quickstart/quickstart.yaml", "datasets/quickstart/archive/part-00000.parquet",
                 "models/", "indexes/screening/", "repository/blobs/", "runs/", "reports/privacy/grid/targets.parquet",
                 "reports/rescan-archive/abnormal.parquet", "reports/quickstart/summary.json",
                 "reports/quickstart/serve-config.yaml", "reports/quickstart/train_regen.log")


def run_quickstart(env: dict, log: Path, args: list[str]) -> float:
    """`python -m cluster.quickstart` in `env`, its output to the terminal and `log`; returns its wall time."""
    wait_for_free_ray()
    t0 = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.Popen([sys.executable, "-m", "cluster.quickstart", *args], cwd=ROOT, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for line in proc.stdout:
            sys.stdout.write(line)
            f.write(line)
        proc.wait()
    wall = time.perf_counter() - t0
    print(f"-- quickstart exited {proc.returncode} after {wall / 60:.1f} min (log {log})", flush=True)
    return wall


def wait_for_free_ray(timeout_s: float = 120) -> None:
    """The previous run's embedded Ray takes a few seconds to let go of its ports."""
    from cluster.local import another_ray_on_host

    deadline = time.monotonic() + timeout_s
    while another_ray_on_host() and time.monotonic() < deadline:
        time.sleep(2)


def read_summary(home: str) -> dict:
    from docray import paths
    from docray.storage import blobs

    path = paths.join(home, "reports", "quickstart", "summary.json")
    if not blobs.exists(path):
        raise SystemExit(f"the quickstart wrote no {path}: it stopped before its steps (its output is above)")
    return json.loads(blobs.read_file(path))


def table_digest(url: str) -> dict:
    """{rows, sha256 of every column in id order} of the Parquet folder at `url` (a path or URI)."""
    import pyarrow.parquet as pq

    from docray.storage import blobs

    fs, path = blobs.filesystem(url)
    fs.invalidate_cache()
    files = sorted(f for f in fs.glob(f"{path.rstrip('/')}/**/*.parquet"))
    t = pq.read_table(files, filesystem=None if blobs.is_local(fs) else fs)
    if "id" in t.column_names:
        t = t.sort_by("id")
    h = hashlib.sha256()
    for name in sorted(t.column_names):
        h.update(name.encode())
        for v in t.column(name).to_pylist():
            h.update(v if isinstance(v, bytes) else repr(v).encode())
    return {"rows": t.num_rows, "sha256": h.hexdigest()[:16]}


def model_figures(home: str) -> dict:
    """Figures of the trained models: the grid's no-mask accuracies, the rescan's abnormal documents."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from docray import paths
    from docray.storage import blobs

    out = {}
    funnel = paths.join(home, "reports", "privacy", "grid", "funnel.json")
    if blobs.exists(funnel):
        s = json.loads(blobs.read_file(funnel))
        out.update({f"grid no-mask acc_{k}": round(v, 4) for k, v in s["no_mask"].items()}, **{"grid targets": s.get("n_targets")})
    abnormal = paths.join(home, "reports", "rescan-archive", "abnormal.parquet")
    if blobs.exists(abnormal):
        out["rescan abnormal"] = sorted(pq.read_table(pa.BufferReader(blobs.read_file(abnormal))).column("id").to_pylist())
    return out


def _detail(step: dict) -> str:
    """A step's detail without what differs by nature: job ids, seconds."""
    d = re.sub(r"raysubmit_\w+ ", "", str(step["detail"]))
    return re.sub(r"\d+(\.\d+)? ?s\b", "<s>", d)


def _answer(call: dict) -> str:
    return re.sub(r"quickstart-\d+-\d+", "quickstart-<id>-<pid>", str(call["answer"]))


def compare(local: dict, s3: dict, digests: tuple[dict, dict] = ({}, {}), models: tuple[dict, dict] = ({}, {})) -> tuple[list[str], list[str]]:
    """(differences, lines of the side-by-side report) between two quickstart summaries (summary.json)."""
    diffs, lines = [], []
    a = [(s["step"], s["ok"]) for s in local["steps"]]
    b = [(s["step"], s["ok"]) for s in s3["steps"]]
    if a != b:
        diffs.append(f"steps/statuses differ: local {a} vs s3 {b}")
    lines.append(f"{'step':30s} {'local s':>8s} {'s3 s':>8s}  ok(local/s3)  detail")
    for x, y in zip(local["steps"], s3["steps"]):
        same = _detail(x) == _detail(y)
        if not same:
            diffs.append(f"step {x['step']}: detail {_detail(x)!r} vs {_detail(y)!r}")
        lines.append(f"{x['step']:30s} {x['seconds']:8.1f} {y['seconds']:8.1f}  {x['ok']!s:5s}/{y['ok']!s:5s}  "
                     f"{_detail(x)[:70]}{'' if same else '  != ' + _detail(y)[:70]}")
    ra = [(c["route"], c["ok"]) for c in local["calls"]]
    rb = [(c["route"], c["ok"]) for c in s3["calls"]]
    if ra != rb:
        diffs.append(f"routes/statuses differ: local {ra} vs s3 {rb}")
    lines.append(f"\n{'route':36s} {'exact':5s}  local answer  ==/!=  s3 answer")
    for x, y in zip(local["calls"], s3["calls"]):
        exact = x["route"] in EXACT_ROUTES
        if exact and _answer(x) != _answer(y):
            diffs.append(f"{x['route']}: {_answer(x)!r} vs {_answer(y)!r}")
        mark = "==" if _answer(x) == _answer(y) else "!="
        lines.append(f"{x['route']:36s} {'yes' if exact else 'no':5s}  {_answer(x)[:48]}  {mark}  {_answer(y)[:48]}")
    lines.append("\ncorpus (rows, sha256 of the rows in id order)")
    for key in sorted(set(digests[0]) | set(digests[1])):
        da, db = digests[0].get(key), digests[1].get(key)
        if da != db:
            diffs.append(f"dataset {key}: {da} vs {db}")
        lines.append(f"  {key:22s} {da}  {'==' if da == db else '!='}  {db}")
    lines.append("\ntrained-model figures (side by side, not compared: see EXACT_ROUTES)")
    for key in sorted(set(models[0]) | set(models[1])):
        ma, mb = models[0].get(key), models[1].get(key)
        lines.append(f"  {key:28s} local {ma}  {'==' if ma == mb else '!='}  s3 {mb}")
    return diffs, lines


def corpus_digests(summary: dict) -> dict:
    return {f"{kind}/{split}": table_digest(row[split]) for kind, row in summary["corpus"].items() for split in ("train", "val")}


def bucket_keys(fs) -> list[str]:
    fs.invalidate_cache()
    prefix = S3_HOME.removeprefix("s3://") + "/"
    return [k[len(prefix):] for k in fs.find(S3_HOME.removeprefix("s3://"))]


def docray_files(scratch_home: Path) -> list[str]:
    """Files under the scratch HOME that belong to docray: its default home and its cache folder."""
    found = []
    for rel in (".docray", ".cache/docray"):
        base = scratch_home / rel
        if base.exists():
            found += [str(p.relative_to(scratch_home)) for p in base.rglob("*") if p.is_file()]
    return sorted(found)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--local-home", help="an earlier local run's DOCRAY_HOME: skip the local run")
    ap.add_argument("--keep", help="a folder for the homes, logs and the comparison (default: a temporary one, removed)")
    ap.add_argument("quickstart_args", nargs="*", help="passed to cluster.quickstart (e.g. --set seed=1)")
    args = ap.parse_args(argv)
    scratch = Path(args.keep or tempfile.mkdtemp(prefix="docray-quickstart-s3-")).resolve()
    scratch.mkdir(parents=True, exist_ok=True)
    base_env = {k: v for k, v in os.environ.items() if k not in ("DOCRAY_HOME", "DOCRAY_DB_URL", "DOCRAY_BLOB_ROOT",
                                                                 "RAY_ADDRESS")}
    base_env.pop("AWS_PROFILE", None)
    times = {}
    try:
        local_home = args.local_home
        if not local_home:
            local_home = str(scratch / "local-home")
            times["local"] = run_quickstart({**base_env, "DOCRAY_HOME": local_home}, scratch / "local.log",
                                            args.quickstart_args)
        local = read_summary(local_home)
        with moto_server() as endpoint:
            make_bucket(endpoint, BUCKET)
            aws = s3_env(endpoint)
            os.environ.update(aws)  # this process reads the bucket too
            home = scratch / "s3-run-home"  # HOME of the S3 run: ~/.docray, ~/.cache/docray would land here
            home.mkdir(exist_ok=True)
            (scratch / "db").mkdir(exist_ok=True)
            env = {**base_env, **aws, "DOCRAY_HOME": S3_HOME, "HOME": str(home),
                   "DOCRAY_DB_URL": f"sqlite:///{scratch / 'db' / 'docray.db'}"}
            times["s3"] = run_quickstart(env, scratch / "s3.log", args.quickstart_args)
            from docray.storage.blobs import filesystem

            fs = filesystem(S3_HOME)[0]
            keys = bucket_keys(fs)
            logs = [k for k in keys if k.startswith("reports/quickstart/")]
            (scratch / "s3-logs").mkdir(exist_ok=True)
            for k in logs:  # the bucket goes with the server: keep the S3 run's job logs and summary
                fs.get_file(f"{S3_HOME.removeprefix('s3://')}/{k}", str(scratch / "s3-logs" / k.rsplit("/", 1)[-1]))
            s3 = read_summary(S3_HOME)
            digests = (corpus_digests(local), corpus_digests(s3))
            models = (model_figures(local_home), model_figures(S3_HOME))
        diffs, lines = compare(local, s3, digests, models)
        missing = [k for k in EXPECTED_KEYS if not any(key.startswith(k) for key in keys)]
        if missing:
            diffs.append(f"not in the bucket: {missing}")
        stray = docray_files(home)
        if stray:
            diffs.append(f"docray files on local disk (scratch HOME) during the S3 run: {stray[:10]}")
        if (ROOT / "s3:").exists():
            diffs.append(f"{ROOT / 's3:'} exists: a URI was used as a local path")
        lines.append(f"\nquickstart total: local {local['total_s'] / 60:.1f} min, s3 {s3['total_s'] / 60:.1f} min"
                     + "".join(f"; wall {k} {v / 60:.1f} min" for k, v in times.items()))
        lines.append(f"bucket: {len(keys)} keys under {S3_HOME}; scratch HOME docray files: {len(stray)}")
        report = "\n".join(lines + ["", "DIFFERENCES:" if diffs else "same steps, statuses and deterministic figures",
                                    *[f"  - {d}" for d in diffs]])
        print("\n== quickstart: local vs s3 ==\n" + report)
        (scratch / "comparison.txt").write_text(report + "\n")
        (scratch / "comparison.json").write_text(json.dumps({"local": local, "s3": s3, "digests": digests, "models": models,
                                                             "times": times, "diffs": diffs}, indent=1, default=str))
        return 1 if diffs or not (local["ok"] and s3["ok"]) else 0
    finally:
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
