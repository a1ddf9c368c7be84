"""The README and docs/*.md agree with the repository: the README stays a short product page, every
relative link resolves inside the repository, and every command they name exists: `python -m X`
modules, `make T` targets, and the `--set key=value` keys of the jobs' typed configs.

Fast and static: nothing is run or imported but `importlib.util.find_spec`; config classes are
found by parsing (`ast`) the module's `parse_args(ConfigClass, ...)` call.
"""
from __future__ import annotations

import ast
import importlib.util
import re
import shlex
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = [README, *sorted((ROOT / "docs").glob("*.md"))]
MAX_README_LINES = 200

if str(ROOT) not in sys.path:  # benchmarks/ is not an installed package
    sys.path.insert(0, str(ROOT))

FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.S | re.M)
INLINE = re.compile(r"`([^`\n]+)`")
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
PYTHON_M = re.compile(r"\bpython3? -m ([A-Za-z_][\w.]*)")
MAKE = re.compile(r"(?:^|[\s;&|(])make ([a-z][\w-]*)")
SET_JOB = re.compile(r"\bpython3? -m ([A-Za-z_][\w.]*)\s(.*)")
SHELL_STOP = {";", "&&", "||", "|", "&", ">", "<"}


def _code(text: str) -> str:
    """The fenced blocks and inline code spans of a markdown text, one per line."""
    blocks = FENCE.findall(text)
    return "\n".join(blocks + INLINE.findall(FENCE.sub("", text)))


def _texts() -> dict[Path, str]:
    return {p: p.read_text() for p in DOCS}


def _name(p: Path) -> str:
    return str(p.relative_to(ROOT))


def test_readme_is_short():
    n = len(README.read_text().splitlines())
    assert n <= MAX_README_LINES, f"README.md has {n} lines (at most {MAX_README_LINES}): move details to docs/"


def test_readme_headlines_are_the_benchmark_records():
    from benchmarks import headlines

    readme = README.read_text()
    assert readme == headlines.with_table(readme, headlines.load()), \
        "README.md's headline table differs from benchmarks/RESULTS.json: run `python -m benchmarks.headlines --write`"


def test_headlines_read_records_and_say_what_is_missing():
    from benchmarks import headlines

    figures = {"fields": {"confidently_wrong_rate": 0.004, "regenerated_fields": 700, "regenerated_share_of_all_fields": 0.61},
               "ood_passed": 3, "gate": {"held-out documents (known types)": {"n": 200, "passed": 197, "share": 0.985},
                                         "non-document: noise": {"n": 40, "passed": 0, "share": 0.0},
                                         "document of an unknown type": {"n": 40, "passed": 3, "share": 0.075}}}
    text = headlines.table({"regen_vs_codecs": {"ok": True, "figures": figures},
                            "unified_vs_separate": {"ok": False, "figures": None},
                            "screening_quality": {"ok": True, "figures": {"cutout_micro_ap": 0.9}}})
    rows = {r.split(" | ")[0].lstrip("| "): r for r in text.splitlines()[2:]}
    assert ("0.40% of 700 regenerated fields read wrong, 61% of all fields regenerated; gate: 98.5% of held-out "
            "documents through, 3 of 80 out-of-distribution images through (3 of 40 document of an unknown type)") in \
        rows["[regen compression](docs/regen.md)"]
    assert "not measured yet" in rows["[unified recognition](docs/recognition.md)"]
    assert "not in its record: rerun it" in rows["[cut-out screening](docs/screening.md), drawn posters"]
    with pytest.raises(ValueError, match="no <!-- headlines"):
        headlines.with_table("# a README without the block\n", {})


def test_links_resolve_inside_the_repository():
    bad = []
    for path, text in _texts().items():
        for target in LINK.findall(text):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
                continue  # a URL or an anchor in the same page
            file = target.split("#")[0]
            resolved = (path.parent / file).resolve()
            if file.startswith("/") or not resolved.is_relative_to(ROOT):
                bad.append(f"{_name(path)}: {target} leaves the repository")
            elif not resolved.exists():
                bad.append(f"{_name(path)}: {target} does not exist")
    assert not bad, "\n".join(bad)


def test_python_modules_exist():
    # `python -m train_jobs.<name>` (a placeholder) names the package: `train_jobs` must exist
    missing = sorted({f"{_name(path)}: python -m {m}" for path, text in _texts().items()
                      for m in PYTHON_M.findall(text) if importlib.util.find_spec(m.rstrip(".")) is None})
    assert not missing, "modules named in the docs that do not exist:\n" + "\n".join(missing)


def _make_targets() -> set[str]:
    return set(re.findall(r"^([A-Za-z][\w-]*)\s*:(?!=)", (ROOT / "Makefile").read_text(), re.M))


def test_make_targets_exist():
    targets = _make_targets()
    missing = sorted({f"{_name(path)}: make {t}" for path, text in _texts().items()
                      for t in MAKE.findall(_code(text)) if t not in targets})
    assert not missing, "make targets named in the docs that the Makefile lacks:\n" + "\n".join(missing)


# --- `--set key=value` against the job's Config class -------------------------------------------------------

def _source(module: str) -> Path | None:
    spec = importlib.util.find_spec(module)
    return Path(spec.origin) if spec and spec.origin and spec.origin.endswith(".py") else None


def _config_class(path: Path) -> str | None:
    """The class handed to `parse_args(Cls, ...)` (docray.config's, a plain name) in `path`."""
    for node in ast.walk(ast.parse(path.read_text())):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "parse_args"
                and node.args and isinstance(node.args[0], ast.Name)):
            return node.args[0].id
    return None


def _find_class(path: Path, name: str) -> tuple[Path, ast.ClassDef] | None:
    """The class `name` as defined in `path`, or where `path` imports it from (`from m import name`)."""
    tree = ast.parse(path.read_text())
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == name:
            return path, node
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                if (alias.asname or alias.name) == name:
                    source = _source(node.module)
                    return _find_class(source, alias.name) if source else None
    return None


def _fields(path: Path, cls: ast.ClassDef) -> dict[str, ast.expr]:
    """{field: its annotation} of a pydantic class, its bases' (where they can be found) included."""
    out = {}
    for base in cls.bases:
        if isinstance(base, ast.Name) and base.id not in ("Config", "BaseModel"):
            found = _find_class(path, base.id)
            if found:
                out.update(_fields(*found))
    for node in cls.body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            out[node.target.id] = node.annotation
    return out


def _key_problem(module: str, key: str) -> str | None:
    """Why `--set key=...` does not fit `module`'s config, or None when it does. A nested key
    (`n.documents`) is followed into the field's class when its annotation names one."""
    source = _source(module)
    if source is None:
        return f"no module {module}"
    name = _config_class(source)
    found = _find_class(source, name) if name else None
    if found is None:
        return f"{module} has no parse_args(ConfigClass) to take --set"
    for part in key.split("."):
        fields = _fields(*found)
        if part not in fields:
            return f"{module}: {found[1].name} has no field {part!r} (key {key!r})"
        ann = fields[part]
        found = _find_class(found[0], ann.id) if isinstance(ann, ast.Name) else None
        if found is None:  # a plain type, dict, list...: nothing further to check
            return None
    return None


def _set_keys(code: str) -> list[tuple[str, str]]:
    """(module, key) for each `--set key=value` of a `python -m M ...` command in shell code."""
    out = []
    for line in code.replace("\\\n", " ").splitlines():
        m = SET_JOB.search(line)
        if not m:
            continue
        try:
            tokens = shlex.split(m.group(2), comments=True)
        except ValueError:
            tokens = m.group(2).split()
        in_set = False
        for tok in tokens:
            if tok in SHELL_STOP:  # the command ends
                break
            if tok.startswith("--"):
                in_set = tok == "--set"
            elif in_set and "=" in tok:
                out.append((m.group(1), tok.split("=", 1)[0]))
    return out


def _doc_set_keys() -> list[tuple[str, str, str]]:
    return [(_name(path), module, key) for path, text in _texts().items() for module, key in _set_keys(_code(text))
            if module.split(".")[0] in ("train_jobs", "data_jobs")]


def test_set_keys_are_config_fields():
    found = _doc_set_keys()
    assert len(found) >= 20, f"the parser found only {len(found)} --set keys in the docs"
    bad = sorted({f"{doc}: {problem}" for doc, module, key in found if (problem := _key_problem(module, key))})
    assert not bad, "--set keys in the docs that the job's Config lacks:\n" + "\n".join(bad)


@pytest.mark.parametrize("command, keys, problems", [
    ("python -m data_jobs.synth_corpus --set n.documents=5 n.nonsense=1 seed=2 # n.also=3",
     ["n.documents", "n.nonsense", "seed"], [False, True, False]),
    (".venv/bin/python -m data_jobs.privacy_grid --set funnel.top_k=3 runs=2 && ls --set x=1",
     ["funnel.top_k", "runs"], [False, False]),
    ("RAY_ADDRESS=x ray job submit -- \\\n    python -m train_jobs.train_privacy --set init_from.masked=r epoch=1",
     ["init_from.masked", "epoch"], [False, True]),
])
def test_the_set_check_catches_what_it_should(command, keys, problems):
    """The parser follows continuations, comments and shell operators; nested keys are followed into
    their class (here one imported from the library); a dict field takes any sub-key."""
    found = _set_keys(command)
    assert [k for _, k in found] == keys
    assert [_key_problem(m, k) is not None for m, k in found] == problems
