"""Every shell command of the README and docs/ RUNS, at smoke-test size, and succeeds.

    make test-docs                                    # (.ci/run runs it after the default suite)
    python -m pytest -m docs tests/test_doc_commands_run.py -k README

The commands are taken as `tests/test_doc_commands.py` takes them (the bash blocks of README.md,
then docs/*.md), and run in that order, one shell line at a time, in ONE sandbox: HOME is a
temporary folder (so `~/data`, `~/.docray` and Ray's token live there), the working directory holds
links to the repository's packages, configs and `.venv`, and `DOCRAY_TINY=1` shrinks every job
(docray/tiny.yaml), so a README that trains, then serves, then rescans runs as written. The
placeholders the docs use (`ARCHIVE`, `DIR`, `PIC.png`, `my_ids/`, `lfw/`, ...) are made first
(`tests/own_world.py` draws the user-layout folders). `serve run FILE` passes when the app answers
`/healthz`, then it is stopped. A line is left out only with a `# not run: why` comment on it.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from tests.test_doc_commands import ROOT, shell_lines

pytestmark = pytest.mark.docs
LINKS = ["train_jobs", "data_jobs", "cluster", "serve_apps", "benchmarks", "configs", "docray", "tests", ".venv", ".gitignore",
         "Makefile", "pyproject.toml", "constraints.txt"]
TIMEOUT_S = 600


def lines() -> list[tuple[str, str]]:
    """(file, shell line) for each command line of the bash blocks, continuations joined, in order; a
    line written again later (docs/<method>.md repeats the README's) runs once, where it first appears."""
    out, seen = [], set()
    for where, line in shell_lines():
        command = re.sub(r"\s+#.*$", "", line).strip()
        if command and not command.startswith("#") and "# not run:" not in line and command not in seen:
            seen.add(command)
            out.append((where, command))
    return out


def not_run() -> list[tuple[str, str, str]]:
    """(file, command, reason) of every line marked `# not run: reason`."""
    return [(where, *(part.strip() for part in line.split("# not run:", 1)))
            for where, line in shell_lines() if "# not run:" in line]


def make_sandbox(root: Path) -> dict:
    """The working folder, HOME and environment the commands run in, with every placeholder made."""
    import pyarrow.parquet as pq

    from docray.synth import generate
    from tests import own_world

    work, home = root / "work", root / "home"
    work.mkdir(parents=True)
    home.mkdir()
    (root / "logs").mkdir()  # each command's output, as it ran
    for name in LINKS:
        (work / name).symlink_to(ROOT / name)
    docs = generate("documents", 0, 4, seed=5, n_angles=0).select(["id", "image"])
    for name in ("ARCHIVE", "ARCHIVE_DIR"):
        (work / name).mkdir()
        pq.write_table(docs, work / name / "part-0.parquet")
    pictures = generate("faces", 0, 2, seed=5)
    for name, data in (("PIC.png", docs.column("image")[0].as_py()), ("face.png", pictures.column("image")[0].as_py()),
                       ("face2.png", pictures.column("image")[1].as_py())):
        (work / name).write_bytes(data)
    own_world.write_documents(work / "my_ids", ["identity_card", "passport_page"], per_type=12)
    own_world.write_faces(work / "lfw", identities=10, per_identity=4)
    own_world.write_targets(work / "pictures", 40)  # val: 5 targets, 5 benign (calibrate screening needs both)
    own_world.write_masks(work / "irregular_masks", 8)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "DOCRAY_", "PYTEST"))}
    env.update(HOME=str(home), DOCRAY_TINY="1", PYTHONPATH=str(ROOT),
               PATH=f"{ROOT / '.venv' / 'bin'}{os.pathsep}{env.get('PATH', '')}")
    return {"cwd": work, "env": env}


def serve_run(command: str, box: dict, timeout_s: float = 300) -> tuple[bool, str]:
    """`serve run ...` in the background until its app answers /healthz (True), it exits, or time runs out."""
    log = box["cwd"] / "serve-run.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(command, shell=True, cwd=box["cwd"], env=box["env"], stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    ok, deadline = False, time.monotonic() + timeout_s
    try:
        while not ok and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(2)
            try:
                ok = urllib.request.urlopen("http://127.0.0.1:8000/healthz", timeout=5).status == 200
            except OSError:
                pass
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGKILL):
            if proc.poll() is not None:
                break
            os.killpg(proc.pid, sig)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                pass
    return ok, log.read_text()[-3000:]


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
    box = make_sandbox(tmp_path_factory.mktemp("doc-commands"))
    yield box
    subprocess.run("ray stop", shell=True, cwd=box["cwd"], env=box["env"], capture_output=True, timeout=120)


COMMANDS = lines()


@pytest.mark.parametrize("where,command", COMMANDS, ids=[f"{w}:{i}" for i, (w, _) in enumerate(COMMANDS)])
def test_command_runs(sandbox, where, command):
    started = time.monotonic()
    if re.search(r"(^|[\s/])serve run\s", command):
        ok, log = serve_run(command, sandbox)
        assert ok, f"{where}: `{command}` never answered /healthz:\n{log}"
        return
    done = subprocess.run(command, shell=True, cwd=sandbox["cwd"], env=sandbox["env"], capture_output=True,
                          text=True, timeout=TIMEOUT_S, stdin=subprocess.DEVNULL)
    took = time.monotonic() - started
    log = sandbox["cwd"].parent / "logs" / f"{len(list((sandbox['cwd'].parent / 'logs').glob('*.log'))):03d}.log"
    log.write_text(f"$ {command}\nexit {done.returncode} after {took:.0f} s\n{done.stdout}\n{done.stderr}")
    assert done.returncode == 0, (f"{where}: `{command}` exited {done.returncode} after {took:.0f} s:\n"
                                  f"{done.stdout[-2000:]}\n{done.stderr[-4000:]}")


def test_every_left_out_command_says_why():
    short = [(w, c) for w, c, reason in not_run() if len(reason.split()) < 3]
    assert not short, f"`# not run:` needs its reason (a few words): {short}"
