"""`make models` (`docray models build --profile quick|standard`): every reference model from scratch, in order.

    docray models build --profile quick          # about 7 minutes on 2 cores: the flow, not the figures
    docray models build --profile standard       # the reference models (time budgets sum to 150 minutes)
    docray models build --profile standard --force train_regen    # redo one step (and what needs it)
    docray models build --profile standard --only screening_library  # one step (and the steps it needs)
    docray models build --profile quick --dry-run                 # check the profile, print the plan

A profile (`configs/models/<profile>.yaml`) lists the steps: each a Ray job (`python -m MODULE --set ...`,
submitted through the Jobs API with this repository as its working dir, the same path a cluster
user takes), the registry models it produces, and the steps it needs. The steps run in the file's
order on the trainers' default (synthetic) datasets: encoder -> unified model; descriptor -> cut-out
library; recognisers + inpainter -> mask grid -> target masks; regen models.

Resumable: a step that succeeded leaves a stamp (`$DOCRAY_HOME/builds/<profile>/<step>.json`: its key,
the job, its resolved config, its wall time, the model versions it registered). The key hashes the
step's module, its settings, the job's config as resolved from them (so a default changed in the code
counts) and the keys of the steps it needs: a step is skipped when its stamp has the same key and its
models are still in the registry, and re-run when its config changed or a step it needs ran again.
An interrupted build, run again, picks up at the first step without a valid stamp. Every job's log
goes to `$DOCRAY_HOME/builds/<profile>/logs/<step>.log`; a summary table ends the run.
"""
from __future__ import annotations

import hashlib
import importlib
import inspect
import json
import re
import time
from pathlib import Path

import click
import yaml
from pydantic import BaseModel, Field

from docray import paths
from docray.config import Config, ConfigError, load_config

ROOT = Path(__file__).resolve().parents[1]
PROFILES = ROOT / "configs" / "models"


class Step(Config):
    name: str = Field(description="the step's name (its stamp and log file)")
    module: str = Field(description="the job: python -m MODULE")
    set: list[str] = Field([], description="--set overrides of the job")
    needs: list[str] = Field([], description="steps whose output this one reads (run before it)")
    produces: list[str] = Field([], description="registry names the job registers a version of")
    timeout_s: float = Field(3600, gt=0, description="give up on the job after this long")


class Profile(Config):
    description: str = ""
    steps: list[Step]


def load_profile(name: str) -> Profile:
    """configs/models/<name>.yaml (or a YAML path), checked: unique step names, needs that come earlier,
    and every step's settings valid for its job (unknown keys and wrong types are errors)."""
    path = Path(name) if name.endswith((".yaml", ".yml")) else PROFILES / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in PROFILES.glob("*.yaml"))
        raise click.BadParameter(f"no profile {name!r} (known: {', '.join(known)})", param_hint="--profile")
    profile = load_config(Profile, path)
    seen: set[str] = set()
    for step in profile.steps:
        if step.name in seen:
            raise ConfigError(f"{path}: step {step.name!r} appears twice")
        missing = [n for n in step.needs if n not in seen]
        if missing:
            raise ConfigError(f"{path}: step {step.name!r} needs {missing}, which do not come before it")
        check_settings(step)
        seen.add(step.name)
    return profile


def check_settings(step: Step) -> None:
    """Raise ConfigError unless the step's job config accepts its --set overrides."""
    try:
        job_config(step.module, None, step.set)
    except ConfigError as e:
        raise ConfigError(f"step {step.name!r}: {e}") from None


def job_config(module_name: str, path: str | None = None, overrides: list[str] = ()) -> BaseModel:
    """The job module's config, resolved as the job resolves `--config path --set overrides` (code defaults,
    the file, the overrides, DOCRAY_TINY); ConfigError when it does not take them. The job's config class
    is the one its `main` hands to `parse_args`; failing that, the first of the module's that accepts them."""
    module = importlib.import_module(module_name)
    classes = [c for c in vars(module).values()
               if isinstance(c, type) and issubclass(c, BaseModel) and c.__module__ == module.__name__]
    try:
        named = re.search(r"parse_args\((\w+)", inspect.getsource(module.main))
    except (AttributeError, OSError, TypeError):  # no main, or no source to read: any class of the module
        named = None
    if named and isinstance(getattr(module, named[1], None), type) and issubclass(getattr(module, named[1]), BaseModel):
        classes = [getattr(module, named[1])]
    errors = []
    for cls in classes:
        try:
            return load_config(cls, path, overrides)
        except ConfigError as e:
            errors.append(str(e))
    raise ConfigError(f"{module_name} does not take {path or ''} {list(overrides)}: "
                      + (min(errors, key=len) if errors else "it has no config class"))


def resolved(step: Step) -> dict:
    """The step's job config as the job will resolve it: code defaults changed since a build count."""
    return job_config(step.module, None, step.set).model_dump(mode="json")


def step_keys(profile: Profile, legacy: bool = False) -> dict[str, str]:
    """name -> a hash of the step's resolved job config, module, settings and the keys of the steps it
    needs. `legacy`: the key of stamps written before configs were hashed (module and settings only)."""
    keys: dict[str, str] = {}
    for s in profile.steps:
        blob = [s.module, s.set, s.produces, [keys[n] for n in s.needs]] + ([] if legacy else [resolved(s)])
        keys[s.name] = hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:16]
    return keys


def _stamp(folder: Path, step: Step) -> dict | None:
    path = folder / f"{step.name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def is_done(stamp: dict | None, key: str, registry, legacy_key: str = "") -> bool:
    """A stamp of the same key whose registered versions are all still in the registry. A stamp from
    before configs were hashed (no "config" in it) counts when it has the step's legacy key."""
    if not stamp or stamp.get("key") != (key if "config" in stamp else legacy_key or key):
        return False
    return all(v in registry.versions(n) for n, v in stamp.get("versions", {}).items())


def build(profile_name: str, address: str = "", force: tuple[str, ...] = (), dry_run: bool = False,
          only: tuple[str, ...] = ()) -> list[dict]:
    """Run the profile's steps (or the `only` ones and what they need) that lack a valid stamp; one row per step."""
    from cluster.quickstart import run_job
    from docray.storage.registry import ModelRegistry

    profile = load_profile(profile_name)
    names = [s.name for s in profile.steps]
    for option, given in (("--force", force), ("--only", only)):
        unknown = sorted(set(given) - set(names))
        if unknown:
            raise click.BadParameter(f"no step(s) {unknown} in profile {profile_name!r} (steps: {', '.join(names)})",
                                     param_hint=option)
    wanted = set(only or names)  # --only: those steps and, transitively, the steps they need
    for s in reversed(profile.steps):
        if s.name in wanted:
            wanted |= set(s.needs)
    folder = Path(paths.sub("builds", Path(profile_name).stem))
    keys, legacy, registry = step_keys(profile), step_keys(profile, legacy=True), ModelRegistry()
    todo, runs = [], set(force)
    for s in profile.steps:  # a step that runs (forced, or not done) re-runs the steps that need it
        if s.name in runs or runs & set(s.needs) or not is_done(_stamp(folder, s), keys[s.name], registry,
                                                               legacy[s.name]):
            runs.add(s.name)
            todo += [s] if s.name in wanted else []
    print(f"profile {profile_name}: {len(profile.steps)} steps, {len(todo)} to run; stamps and logs in {folder}")
    if dry_run:
        for i, s in enumerate(profile.steps, 1):
            state = "run" if s in todo else "done" if s.name in wanted else "left out"
            print(f"[{i}/{len(names)}] {s.name:22s} {state:8s}  python -m {s.module} "
                  f"--set {' '.join(s.set)}")
        return []
    if todo and not address:
        from cluster.local import check_no_other_ray, dashboard_url, init_ray, this_python_first

        check_no_other_ray("docray models build", "docray models build --address http://127.0.0.1:8265 ...")
        this_python_first()
        init_ray(dashboard=True)
        address = dashboard_url()
    rows, failed = [], set()
    for i, s in enumerate(profile.steps, 1):
        head = f"[{i}/{len(names)}] {s.name}"
        if s.name not in wanted:
            continue  # not asked for with --only
        if s not in todo:
            stamp = _stamp(folder, s)
            old = "" if "config" in stamp else "; stamped before configs were, --force it for today's defaults"
            print(f"{head}: done earlier ({_versions(stamp)}{old}), skipped")
            rows.append({"step": s.name, "status": "skipped", "seconds": 0.0, "detail": _versions(stamp)})
            continue
        if failed & set(s.needs):
            print(f"{head}: not run, it needs {sorted(failed & set(s.needs))}")
            rows.append({"step": s.name, "status": "not run", "seconds": 0.0, "detail": f"needs {sorted(failed & set(s.needs))}"})
            failed.add(s.name)
            continue
        print(f"{head}: python -m {s.module} (log: {folder / 'logs' / (s.name + '.log')})", flush=True)
        res = run_job(s.name, s.module, s.set, address, s.timeout_s, log_dir=str(folder / "logs"))
        if not res["ok"]:
            failed.add(s.name)
            rows.append({"step": s.name, "status": "FAILED", "seconds": res["seconds"], "detail": res["detail"]})
            continue
        versions = {n: registry.latest(n) for n in s.produces}
        rates = throughput(registry, versions)
        if rates:
            print(f"   training throughput (last epoch): {rates}", flush=True)
        stamp = {"key": keys[s.name], "module": s.module, "set": s.set, "config": resolved(s),
                 "job": res["detail"], "seconds": res["seconds"],
                 "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "versions": versions,
                 "throughput": rates}
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{s.name}.json").write_text(json.dumps(stamp, indent=2))
        rows.append({"step": s.name, "status": "built", "seconds": res["seconds"], "detail": _versions(stamp)})
    return rows


def throughput(registry, versions: dict[str, str]) -> str:
    """What each model's trainer measured of its last epoch (`train_samples_per_s`: the batch rows of all
    workers a second, validation left out), and on what: a GPU's name, or the workers and CPUs."""
    parts = []
    for name, version in versions.items():
        card = registry.card(name, version)
        rate = card["metrics"].get("train_samples_per_s")
        if rate is not None:
            hw = card.get("hardware") or {}
            where = hw.get("gpu") or f"{hw.get('num_workers', '?')} worker(s) x {hw.get('cpus_per_worker', '?')} CPU"
            parts.append(f"{name} {rate:,.1f} samples/s ({where})")
    return "; ".join(parts)


def _versions(stamp: dict | None) -> str:
    return ", ".join(f"{n} {v}" for n, v in (stamp or {}).get("versions", {}).items()) or "-"


def report(rows: list[dict]) -> bool:
    print(f"\n{'step':24s} {'status':8s} {'min':>6s}  models")
    for r in rows:
        print(f"{r['step']:24s} {r['status']:8s} {r['seconds'] / 60:6.1f}  {r['detail']}")
    ok = all(r["status"] in ("built", "skipped") for r in rows)
    print(f"total: {sum(r['seconds'] for r in rows) / 60:.1f} min of jobs; "
          f"{'every step done' if ok else 'SOME STEPS DID NOT FINISH: run the same command again to resume'}")
    print(json.dumps({"steps": {r["step"]: {"status": r["status"], "minutes": round(r["seconds"] / 60, 2)} for r in rows},
                      "total_minutes": round(sum(r["seconds"] for r in rows) / 60, 2), "ok": ok}))
    return ok


@click.command("build")
@click.option("--profile", default="quick", show_default=True,
              help="quick (minutes: the flow) | standard (the reference models) | a profile YAML path")
@click.option("--address", default="", help="Jobs API of a running cluster ('' -> start local Ray)")
@click.option("--force", multiple=True, metavar="STEP", help="run STEP (and the steps that need it) even if done")
@click.option("--only", multiple=True, metavar="STEP", help="build only STEP (and the steps it needs, when not done)")
@click.option("--dry-run", is_flag=True, help="check the profile and print which steps would run")
def build_command(profile: str, address: str, force: tuple[str, ...], only: tuple[str, ...], dry_run: bool) -> None:
    """Train every reference model from scratch, each step a Ray job; resumes where a build stopped.

    Steps and settings: configs/models/<profile>.yaml. A step is skipped when it succeeded before with
    the same settings (and inputs) and its models are still registered."""
    try:
        rows = build(profile, address, force, dry_run, only)
    except ConfigError as e:
        raise click.ClickException(str(e)) from None
    if rows and not report(rows):
        raise SystemExit(1)


if __name__ == "__main__":
    build_command()
