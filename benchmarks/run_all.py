"""`make bench`: every benchmark against the registered models; writes `benchmarks/RESULTS.md`.

    python -m benchmarks.run_all                                   # profile standard -> benchmarks/RESULTS.md
    python -m benchmarks.run_all --profile quick                  # minutes; -> DOCRAY_HOME/reports/bench/
    python -m benchmarks.run_all --only screening_quality --only index_search
    python -m benchmarks.run_all --resume                          # skip what already ran on these models

A profile (`configs/bench/<profile>.yaml`) lists the benchmarks and their arguments. Each runs in its
own process (`python -m benchmarks.NAME ARGS`); its table (what it printed) and its figures (its
last line, one JSON object) go into the results file with its wall time, beside the machine it ran
on (CPU, GPU, versions, the git commit) and the model versions in the registry (with their weights'
sha256: version names count per registry). A benchmark that
fails is recorded as failed with the end of its output; the others still run, and the command exits
non-zero. `make models` first: the benchmarks that evaluate trained models read the registry.

Each run is also kept as a record in `<results file>.json` (RESULTS.json beside RESULTS.md), and the
Markdown is written from the records of every benchmark of the profile: `--only` replaces the named
ones and keeps the others, each with its own date, commit and model versions, so a long profile can
run in parts. `--resume` skips a benchmark whose record succeeded with the same arguments against
the same model versions; a section run against other models than the registry's latest says so.
Each record keeps the build steps of the home it ran in, so parts run on other machines (a fresh
one that rebuilt one model, say) keep the build and the models behind every section.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from pydantic import Field

from docray.config import Config, load_config

ROOT = Path(__file__).resolve().parents[1]
PROFILES = ROOT / "configs" / "bench"
RESULTS = ROOT / "benchmarks" / "RESULTS.md"  # the standard profile's results file (and RESULTS.json beside it)
MODELS = ["recognition-encoder", "recognition-unified", "descriptor", "regen", "mask_recognizer_original",
          "mask_recognizer_masked", "mask_inpainter"]


class Bench(Config):
    name: str = Field(description="benchmarks/<name>.py")
    args: list[str] = Field([], description="its command-line arguments")
    timeout_s: float = Field(1800, gt=0)
    key: str = Field("", description="its name in RESULTS.md, --only and the JSON line ('' -> name): one benchmark "
                                     "run twice with other arguments needs one")

    @property
    def label(self) -> str:
        return self.key or self.name


class BenchProfile(Config):
    description: str = ""
    benchmarks: list[Bench]


def machine() -> dict:
    import ray
    import torch

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    # the results files are this command's own output: a run in parts must not call the next part's commit dirty
    own = [f":!{f.relative_to(ROOT)}" for f in (RESULTS, RESULTS.with_suffix(".json"))]
    dirty = subprocess.run(["git", "status", "--porcelain", "--", ".", *own], cwd=ROOT, capture_output=True,
                           text=True).stdout.strip()
    return {"host": platform.node(), "cpu_cores": os.cpu_count(), "cpu": platform.processor() or platform.machine(),
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
            "python": platform.python_version(), "torch": torch.__version__, "ray": ray.__version__,
            "commit": commit + ("-dirty" if dirty else "")}


def model_versions() -> tuple[dict[str, str], dict[str, str]]:
    """(name -> latest registered version or 'none', name -> the first 12 hex digits of its weights'
    sha256) of the reference models: version names count per registry, the digest across them."""
    from docray.storage.registry import ModelRegistry

    reg, versions, digests = ModelRegistry(), {}, {}
    for name in MODELS:
        try:
            versions[name] = reg.latest(name)
            digests[name] = reg.digest(name, versions[name])[:12]
        except Exception:  # noqa: BLE001 -- not registered (yet): say so in the results
            versions[name] = "none"
    return versions, digests


def build_steps(profile: str) -> list[dict]:
    """The last `docray models build --profile <profile>` stamp of each of its steps (wall time, when,
    models), in the profile's order; [] when the profile is not a build profile or nothing was built."""
    from cluster.models_build import PROFILES as BUILD_PROFILES, load_profile
    from docray import paths

    if not (BUILD_PROFILES / f"{profile}.yaml").is_file():
        return []
    folder, rows = Path(paths.sub("builds", profile)), []
    for step in load_profile(profile).steps:
        stamp = folder / f"{step.name}.json"
        if stamp.is_file():
            s = json.loads(stamp.read_text())
            rows.append({"step": step.name, "seconds": s["seconds"], "finished": s["finished"],
                         "models": ", ".join(f"{k} {v}" for k, v in s.get("versions", {}).items()) or "-",
                         "throughput": s.get("throughput") or "-"})
    return rows


def run_one(b: Bench, info: dict, versions: dict, build: list[dict] = (), digests: dict | None = None) -> dict:
    """Run one benchmark; its record: output, figures (last JSON line), wall time, when, where, on
    which models (`info`, `versions`, `digests`) and the build steps that made them (`build`)."""
    cmd = [sys.executable, "-m", f"benchmarks.{b.name}", *b.args]
    print(f"-- {b.label}: {' '.join(cmd[1:])}", flush=True)
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=b.timeout_s)
        out, ok = proc.stdout, proc.returncode == 0
        err = proc.stderr
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        ok, err = False, f"timed out after {b.timeout_s:.0f} s"
    seconds = time.perf_counter() - t0
    lines = [ln for ln in out.splitlines() if ln.strip()]
    figures = None
    if lines:
        try:
            figures = json.loads(lines[-1])
            lines = lines[:-1]
        except json.JSONDecodeError:
            pass
    ok = ok and isinstance(figures, dict)
    tail = "" if ok else "\n".join((err or out).strip().splitlines()[-15:])
    print(f"   {'ok' if ok else 'FAILED'} in {seconds / 60:.1f} min", flush=True)
    return {"name": b.label, "module": b.name, "args": b.args, "ok": ok, "seconds": seconds,
            # the table keeps its last 400 lines: one of every cut and posting runs past 100
            "table": "\n".join(lines[-400:]), "figures": figures, "error": tail,
            "finished": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": info, "models": versions,
            "model_digests": dict(digests or {}), "build": list(build)}


def load_records(path: Path) -> dict[str, dict]:
    """The records kept beside the results file `path` (name -> record); {} when there are none."""
    kept = path.with_suffix(".json")
    return json.loads(kept.read_text()) if kept.is_file() else {}


def is_current(record: dict | None, b: Bench, versions: dict, digests: dict | None = None) -> bool:
    """Whether `record` is a successful run of `b` as configured now, against these model versions
    (and weights, where the record kept their digests)."""
    return bool(record and record.get("ok") and record.get("module") == b.name and record.get("args") == b.args
                and record.get("models") == versions and record.get("model_digests", digests) == digests)


def write_results(path: Path, profile: str, info: dict, versions: dict, results: list[dict],
                  build: list[dict] = (), digests: dict | None = None, not_run: list[str] = ()) -> None:
    """RESULTS.md from `results` (records, in profile order) and `build` (`build_steps` of this home),
    and RESULTS.json holding the records; `not_run`: the profile's benchmarks with no record yet, listed
    as such. The records may come from other machines (`--only` keeps
    the rest): the models table gives what each model's records ran against beside this registry's
    latest, and the build table each step's newest build among the records and this home."""
    digests = digests or {}
    here = {"models": versions, "model_digests": digests}

    def named(r: dict, k: str) -> str:  # "v0001 1a2b3c4d5e6f": the version and, where kept, its weights' digest
        d = (r.get("model_digests") or {}).get(k)
        return " ".join([(r.get("models") or {}).get(k, "none"), *([d] if d else [])])

    def differs(r: dict, k: str) -> bool:  # a model this registry lacks, or a record without digests, says what it can
        d = (r.get("model_digests") or {}).get(k)
        return versions.get(k, "none") not in ("none", r["models"][k]) or bool(d and k in digests and d != digests[k])

    def stale(r: dict) -> str:
        old = [f"{k} {named(r, k)}" for k in (r.get("models") or {}) if differs(r, k)]
        return f" Ran against other models than the latest: {', '.join(old)}." if old else ""

    def ran_on(model: str) -> str:
        seen = Counter(named(r, model) for r in results)
        return "; ".join(f"{v} ({n})" for v, n in seen.items()) or "-"

    newest: dict[str, dict] = {}
    for row in [b for r in results for b in r.get("build") or []] + list(build):
        if row["step"] not in newest or row["finished"] >= newest[row["step"]]["finished"]:
            newest[row["step"]] = row
    build = sorted(newest.values(), key=lambda b: b["finished"])

    md = [f"# Benchmark results ({profile} profile)", "",
          f"Written by `python -m benchmarks.run_all --profile {profile}` (`make bench`), "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, from the records in `{path.with_suffix('.json').name}`. "
          "Rerun it to replace this file; `--only NAME` reruns one benchmark and keeps the others.", "",
          "## Machine", "", "| | |", "|---|---|", *[f"| {k} | {v} |" for k, v in info.items()], "",
          "## Models", "", "| model | latest in this registry | the records ran against (how many) |", "|---|---|---|",
          *[f"| {k} | {named(here, k)} | {ran_on(k)} |" for k in versions], "",
          f"## Models build (`docray models build --profile {profile}`)", "",
          *([f"Each step's wall time as its Ray job (the newest build of each step, here or behind a record), "
             f"{sum(b['seconds'] for b in build) / 60:.0f} minutes in all; the training throughput is its trainers' last epoch "
             "(samples a second, all workers):", "", "| step | minutes | finished | models | training throughput |",
             "|---|---|---|---|---|",
             *[f"| {b['step']} | {b['seconds'] / 60:.1f} | {b['finished']} | {b['models']} | {b.get('throughput') or '-'} |"
               for b in build]]
            if build else ["No build of this profile on record here."]), "",
          "## Summary", "", "| benchmark | ok | minutes | finished | commit | arguments |", "|---|---|---|---|---|---|",
          *[f"| [{r['name']}](#{r['name'].replace('_', '-')}) | {'yes' if r['ok'] else 'FAILED'} | "
            f"{r['seconds'] / 60:.1f} | {r.get('finished', '-')} | {(r.get('machine') or {}).get('commit', '-')} | "
            f"`{' '.join(r['args']) or '-'}` |" for r in results],
          *[f"| {name} | not run yet | | | | |" for name in not_run], ""]
    for r in results:
        where = r.get("machine") or {}
        md += [f"## {r['name']}", "", f"`python -m benchmarks.{r['module']} {' '.join(r['args'])}`, "
               f"{r['seconds'] / 60:.1f} min{'' if r['ok'] else ', FAILED'}; finished {r.get('finished', '-')} on "
               f"{where.get('host', '-')} ({where.get('cpu_cores', '-')} cores, GPU {where.get('gpu') or 'none'}), "
               f"commit {where.get('commit', '-')}.{stale(r)}", "", "```", r["table"] or "(no output)", "```", ""]
        if r["figures"] is not None:
            md += ["Figures (its last line):", "", "```json", json.dumps(r["figures"], default=str)[:20000], "```", ""]
        if r["error"]:
            md += ["End of its output:", "", "```", r["error"], "```", ""]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(md))
    path.with_suffix(".json").write_text(json.dumps({r["name"]: r for r in results}, indent=1, default=str) + "\n")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n".join(__doc__.split("\n")[1:]))
    p.add_argument("--profile", default="standard", help="quick | standard | a profile YAML path")
    p.add_argument("--only", action="append", default=[], metavar="NAME", help="run only this benchmark (repeatable)")
    p.add_argument("--resume", action="store_true", help="skip a benchmark whose kept record succeeded with "
                   "the same arguments against the same model versions")
    p.add_argument("--out", default="", help="results file (default: benchmarks/RESULTS.md for the standard "
                   "profile, DOCRAY_HOME/reports/bench/RESULTS-<profile>.md for others)")
    a = p.parse_args(argv)
    path = Path(a.profile) if a.profile.endswith((".yaml", ".yml")) else PROFILES / f"{a.profile}.yaml"
    if not path.is_file():
        p.error(f"no profile {a.profile!r} (known: {', '.join(sorted(q.stem for q in PROFILES.glob('*.yaml')))})")
    profile = load_config(BenchProfile, path)
    names = [b.label for b in profile.benchmarks]
    if len(set(names)) < len(names):
        p.error(f"profile {a.profile!r} runs a benchmark twice under one name: give each run its own `key`")
    unknown = sorted(set(a.only) - set(names))
    if unknown:
        p.error(f"--only {unknown}: not in profile {a.profile!r} ({', '.join(names)})")
    missing = [b.name for b in profile.benchmarks if not (ROOT / "benchmarks" / f"{b.name}.py").is_file()]
    if missing:
        p.error(f"profile {a.profile!r} names benchmarks that do not exist: {missing}")
    if not a.out:
        from docray import paths

        a.out = str(RESULTS) if path == PROFILES / "standard.yaml" else \
            str(Path(paths.sub("reports", "bench"), f"RESULTS-{path.stem}.md"))
    (versions, digests), info, out = model_versions(), machine(), Path(a.out)
    records, ran = load_records(out), []

    build = build_steps(Path(path).stem)

    def write() -> None:  # every benchmark of the profile that has a record, in the profile's order
        write_results(out, Path(path).stem, info, versions, [records[n] for n in names if n in records], build, digests,
                      [n for n in names if n not in records])

    for b in profile.benchmarks:
        if a.only and b.label not in a.only:
            continue
        if a.resume and is_current(records.get(b.label), b, versions, digests):
            print(f"-- {b.label}: done {records[b.label].get('finished', '')} on these models, skipped", flush=True)
            continue
        records[b.label] = run_one(b, info, versions, build, digests)
        ran.append(records[b.label])
        write()  # after each: a stopped run keeps what it ran
    write()
    print(f"\n{'benchmark':24s} {'ok':6s} {'min':>6s}")
    for r in ran:
        print(f"{r['name']:24s} {'yes' if r['ok'] else 'FAILED':6s} {r['seconds'] / 60:6.1f}")
    print(f"results: {a.out}")
    print(json.dumps({"benchmarks": {r["name"]: {"ok": r["ok"], "minutes": round(r["seconds"] / 60, 2)} for r in ran},
                      "ok": all(r["ok"] for r in ran), "models": versions, **info}))
    return 0 if all(r["ok"] for r in ran) else 1


if __name__ == "__main__":
    sys.exit(main())
