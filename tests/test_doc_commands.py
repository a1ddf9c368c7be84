"""Every shell command in the README and docs/ still fits the code: a renamed module, config key,
CLI command or option, config file or make target fails here. The commands are checked, not run:
`python -m MODULE --set k=v ...` imports MODULE and validates the keys and values against its
config class (the check `docray models build` makes before submitting), `--config FILE` loads the
file into it; `docray ...` resolves its subcommand and options in the click tree; `serve run|deploy
FILE` loads the Serve config and imports its applications; `make T` finds the target. Other lines
(pip, ray start, curl) are left to their tools. A line is skipped only with a `# not checked: why`
comment."""
from __future__ import annotations

import importlib
import re
import shlex
from pathlib import Path

import click
import pytest
import yaml

from cluster.models_build import job_config

ROOT = Path(__file__).resolve().parents[1]
FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def shell_lines() -> list[tuple[str, str]]:
    """(file name, line) for each line of the bash blocks of FILES, in order, continuations joined,
    comments kept (the `# not checked:` / `# not run:` markers live there)."""
    return [(path.name, line) for path in FILES
            for block in re.findall(r"```(?:bash|sh|shell)\n(.*?)```", path.read_text(), re.S)
            for line in block.replace("\\\n", " ").splitlines()]


def commands() -> list[tuple[str, str]]:
    """(where, command) for each command line of the bash blocks (continuations joined, comments cut)."""
    out = []
    for where, line in shell_lines():
        if "# not checked:" in line:
            continue
        line = re.sub(r"\s+#.*$", "", line).strip()
        if line and not line.startswith("#"):
            out += [(where, part.strip()) for part in re.split(r"\s*(?:&&|;)\s*", line) if part.strip()]
    return out


def _argv(command: str) -> list[str]:
    argv = shlex.split(command)
    while argv and re.match(r"^[A-Z_]+=", argv[0]):  # VAR=value prefixes
        argv = argv[1:]
    if argv and argv[0].startswith(".venv/bin/"):
        argv[0] = argv[0].removeprefix(".venv/bin/")
    return argv


def check_python_module(argv: list[str]) -> None:
    module, rest = argv[2], argv[3:]
    importlib.import_module(module)
    if not module.startswith(("train_jobs.", "data_jobs.", "cluster.", "benchmarks.")) or not {"--set", "--config"} & set(rest):
        return
    overrides = []
    if "--set" in rest:
        for a in rest[rest.index("--set") + 1:]:
            if a.startswith("--"):
                break
            overrides.append(a)
    config = None
    if "--config" in rest:
        config = ROOT / rest[rest.index("--config") + 1]
        assert config.is_file(), f"--config {config} does not exist"
    job_config(module, config, overrides)


def check_docray(argv: list[str]) -> None:
    from cluster.cli import main

    cmd, ctx, args = main, click.Context(main), argv[1:]
    while isinstance(cmd, click.Group) and args and not args[0].startswith("-"):
        sub = cmd.get_command(ctx, args[0])
        assert sub is not None, f"docray has no command {' '.join(argv[1:argv.index(args[0]) + 1])!r}"
        cmd, ctx, args = sub, click.Context(sub, parent=ctx), args[1:]
    known = {o for p in cmd.params for o in getattr(p, "opts", []) + getattr(p, "secondary_opts", [])} | {"--help"}
    if not getattr(cmd, "ignore_unknown_options", False) and not (cmd.context_settings or {}).get("ignore_unknown_options"):
        for a in args:
            if a == "--":
                break
            if a.startswith("--"):
                assert a.split("=")[0] in known, f"{' '.join(argv[:3])}: no option {a!r} (has {sorted(known)})"


def check_serve(argv: list[str]) -> None:
    assert argv[1] in ("run", "deploy", "status"), argv
    if argv[1] == "status":
        return
    config = yaml.safe_load((ROOT / argv[2]).read_text())
    for app in config["applications"]:
        module, _, attr = app["import_path"].partition(":")
        assert hasattr(importlib.import_module(module), attr), app["import_path"]


def check_make(argv: list[str]) -> None:
    targets = set(re.findall(r"^([a-z-]+):", (ROOT / "Makefile").read_text(), re.M))
    assert set(argv[1:]) <= targets, f"make {argv[1:]}: the Makefile has {sorted(targets)}"


CHECKS = {"python": check_python_module, "docray": check_docray, "serve": check_serve, "make": check_make}
ALL = commands()


def test_the_docs_have_commands_of_every_kind():
    kinds = {_argv(c)[0] for _, c in ALL}
    assert {"python", "docray", "serve", "make"} <= kinds and len(ALL) > 60


@pytest.mark.parametrize("where,command", [c for c in ALL if _argv(c[1])[0] in CHECKS],
                         ids=lambda v: v[:60] if isinstance(v, str) else None)
def test_command_fits_the_code(where, command):
    argv = _argv(command)
    if argv[0] == "python" and argv[1] != "-m":
        argv = ["python", "-m", argv[1].removesuffix(".py").replace("/", "."), *argv[2:]]
    CHECKS[argv[0]](argv)


def test_the_checks_catch_a_stale_command():
    with pytest.raises(Exception, match="epoch"):
        check_python_module(["python", "-m", "train_jobs.pretrain_recognition", "--set", "epoch=4"])
    with pytest.raises(ModuleNotFoundError):
        check_python_module(["python", "-m", "train_jobs.no_such_job"])
    with pytest.raises(AssertionError, match="no command"):
        check_docray(["docray", "data", "imprt", "documents"])
    with pytest.raises(AssertionError, match="no option '--max-fp'"):
        check_docray(["docray", "calibrate", "screening", "x", "--max-fp", "0.1"])
    with pytest.raises(AssertionError, match="Makefile"):
        check_make(["make", "modelz"])
