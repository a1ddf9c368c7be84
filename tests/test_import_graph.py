"""The import graph runs one way: the library (docray/) never imports an entry layer, and no module of the
repository reaches itself again through imports. Parsed with `ast` (nothing is imported); imports inside
functions count like module-level ones, `import a.b` depends on a.b, `from a import b` on a.b when b is
a module, else on a."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LIBRARY = "docray"
ENTRY_LAYERS = ("cluster", "serve_apps", "train_jobs", "data_jobs")


def _modules() -> dict[str, Path]:
    """{dotted module name: file} for every .py file of the library and the entry layers."""
    out = {}
    for top in (LIBRARY, *ENTRY_LAYERS):
        for path in sorted((ROOT / top).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


MODULES = _modules()


def _imports(name: str, path: Path) -> list[tuple[int, str, str]]:
    """(line, the import statement, the repository module it depends on) for each import in `path`."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from .x import y
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([node.module] if node.module else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in MODULES:  # `import docray.x.Y`-style names: the module holding them
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add((node.lineno, ast.unparse(node), target))
    return sorted(found)


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _where(name: str, line: int, text: str) -> str:
    return f"{MODULES[name].relative_to(ROOT)}:{line}: {text}"


def test_library_never_imports_an_entry_layer():
    bad = dict.fromkeys(_where(name, line, text) for name, edges in GRAPH.items() if name.split(".")[0] == LIBRARY
                        for line, text, target in edges if target.split(".")[0] in ENTRY_LAYERS)
    assert not bad, "the library imports an entry layer (move the code above docray/):\n" + "\n".join(bad)


def _cycles() -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []
    for root in GRAPH:
        if root in index:
            continue
        work = [(root, iter(GRAPH[root]))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, edges = work[-1]
            for _, _, nxt in edges:
                if nxt not in index:
                    index[nxt] = low[nxt] = len(index)
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(GRAPH[nxt])))
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        out.append(sorted(component))
    return out


def test_no_import_cycles():
    report = []
    for component in _cycles():
        report.append("cycle: " + ", ".join(component))
        report += dict.fromkeys("  " + _where(name, line, text) for name in component
                                for line, text, target in GRAPH[name] if target in component)
    assert not report, "import cycles (make the graph run one way):\n" + "\n".join(report)


def test_the_checks_catch_what_they_should():
    """The parser sees function-level and relative imports, and the cycle finder finds a planted cycle."""
    edges = {target for _, _, target in GRAPH["cluster.cli"]}
    assert {"docray.cli", "cluster.submit", "cluster.quickstart", "data_jobs.synth_corpus"} <= edges
    GRAPH["docray.paths"].append((0, "planted", "docray.cli"))
    GRAPH["docray.cli"].append((0, "planted", "docray.paths"))
    try:
        assert ["docray.cli", "docray.paths"] in _cycles()
    finally:
        GRAPH["docray.paths"].pop()
        GRAPH["docray.cli"].pop()
