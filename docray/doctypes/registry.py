"""The registry of document types: the built-in template files, then the user's, in a stable order.

    reg = registry()                      # built-ins, then user types by name
    reg.names                             # ('identity_card', ..., 'business_licence', <user types>)
    reg.index("passport_page")            # 1: the class index every model and dataset uses
    reg["passport_page"].fields[0].name   # 'surname'
    t = load_doctype("examples/doctypes/cn_resident_card.yaml")   # one file, validated

User types are template files (`<name>.yaml`) in the folders of `$DOCRAY_DOCTYPES` (':'-separated)
and in `$DOCRAY_HOME/doctypes/`: drop a file there, no code. A file added, removed or edited is seen
by the next `registry()` call (it lists the folders and their files' modification times). The
order is the class order of every model trained on it: the built-ins in BUILTIN's order, then the
user types sorted by name; so a model trained with user types needs the same user types registered
where it runs.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import yaml
from pydantic import ValidationError

from docray import paths
from docray.doctypes.schema import NAME, Colors, DocType, FieldSpec, Fonts, Portrait, Seal

BUILTIN_DIR = Path(__file__).with_name("types")
# The built-in types in class order: append new ones, never reorder (trained models index them).
BUILTIN = ("identity_card", "passport_page", "driving_licence", "residence_permit", "property_certificate",
           "business_licence")
ENV = "DOCRAY_DOCTYPES"
_KEYS = {"": DocType, "fields": FieldSpec, "colors": Colors, "fonts": Fonts, "portrait": Portrait, "seal": Seal}


class DocTypeError(ValueError):
    """A template file that cannot be read, or a registry that cannot be built from the files."""


class UnknownDocType(KeyError, ValueError):
    """A document type that is not registered."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0])


def _explain(e: ValidationError, data: dict) -> list[str]:
    """pydantic's errors as one line each: where (field names spelled out), what, and the valid keys."""
    errors = e.errors()
    locs = [tuple(err["loc"]) for err in errors]
    out = []
    for err, loc in zip(errors, locs):
        if err["type"] == "too_short" and any(o != loc and o[:len(loc)] == loc for o in locs):
            continue  # a list whose bad items were dropped: the items' own errors say why
        where = []
        for i, p in enumerate(loc):
            if isinstance(p, int) and loc[:i] == ("fields",):
                items = data.get("fields") if isinstance(data.get("fields"), list) else []
                name = items[p].get("name") if p < len(items) and isinstance(items[p], dict) else None
                where.append(f"[{p}]" + (f" ({name})" if name else ""))
            else:
                where.append(("." if where else "") + str(p))
        at = "".join(where) or "the file"
        if err["type"] == "extra_forbidden":
            parent = next((str(p) for p in reversed(loc[:-1]) if isinstance(p, str)), "")
            keys = list(_KEYS.get(parent, DocType).model_fields)
            out.append(f"unknown key {at!r}; valid keys here: {keys}")
        elif err["type"] == "missing":
            out.append(f"missing key {at!r}")
        else:
            out.append(f"{at}: {err['msg'].removeprefix('Value error, ')}")
    return out


def load_doctype(path: str | Path) -> DocType:
    """The document type of one template file; its name is the file's stem. Raises DocTypeError
    with every problem (unknown key, box outside [0, 1], missing key, bad value) on its own line."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise DocTypeError(f"template {path}: cannot read it: {e}") from None
    if not isinstance(data, dict):
        raise DocTypeError(f"template {path}: expected a mapping of keys (aspect, fields, ...), got {type(data).__name__}")
    if not re.match(NAME, path.stem):
        raise DocTypeError(f"template {path}: a type's name is its file's name, {path.stem!r}: use lowercase "
                           "letters, digits and '_', starting with a letter (e.g. cn_resident_card.yaml)")
    if data.get("name", path.stem) != path.stem:
        raise DocTypeError(f"template {path}: a type's name is its file's name; name: {data['name']!r} "
                           f"differs from {path.stem!r}")
    try:
        return DocType.model_validate({**data, "name": path.stem})
    except ValidationError as e:
        raise DocTypeError(f"template {path}:\n  " + "\n  ".join(_explain(e, data))) from None


@dataclass(frozen=True)
class Registry:
    """Document types in class order, by name or index."""

    types: tuple[DocType, ...]
    files: tuple[str, ...]  # the template file of each type

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.types)

    def index(self, name: str) -> int:
        """The class index of `name`; UnknownDocType (a KeyError and ValueError) names the registered ones."""
        names = self.names
        if name not in names:
            raise UnknownDocType(f"unknown document type {name!r}; registered: {list(names)} (add one with a "
                                 f"template file <name>.yaml in ${ENV} or $DOCRAY_HOME/doctypes)")
        return names.index(name)

    def __getitem__(self, key: str | int) -> DocType:
        if isinstance(key, str):
            return self.types[self.index(key)]
        if not -len(self.types) <= int(key) < len(self.types):
            raise UnknownDocType(f"document type index {key} out of range 0..{len(self.types) - 1}")
        return self.types[int(key)]

    def __contains__(self, name) -> bool:
        return name in self.names

    def __len__(self) -> int:
        return len(self.types)

    def __iter__(self):
        return iter(self.types)


def user_dirs() -> tuple[Path, ...]:
    """The folders user types are read from: each of $DOCRAY_DOCTYPES, then $DOCRAY_HOME/doctypes
    (when it exists and is local). A folder named in $DOCRAY_DOCTYPES must exist."""
    out = []
    for d in filter(None, os.environ.get(ENV, "").split(":")):
        p = Path(d).expanduser()
        if not p.is_dir():
            raise DocTypeError(f"${ENV} names {d!r}, which is not a folder")
        out.append(p.resolve())
    home = paths.sub("doctypes")
    if "://" not in home and Path(home).is_dir() and Path(home).resolve() not in out:
        out.append(Path(home).resolve())
    return tuple(out)


def _templates(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file())


@lru_cache(maxsize=8)
def _build(user_files: tuple[tuple[str, int], ...]) -> Registry:
    builtin = {p.stem: p for p in _templates(BUILTIN_DIR)}
    if sorted(builtin) != sorted(BUILTIN):
        raise DocTypeError(f"the built-in templates in {BUILTIN_DIR} are {sorted(builtin)}, expected {sorted(BUILTIN)}")
    seen = {n: builtin[n] for n in BUILTIN}
    for file, _ in user_files:
        p = Path(file)
        if p.stem in seen:
            raise DocTypeError(f"document type {p.stem!r} of {p} is already defined by {seen[p.stem]}")
        seen[p.stem] = p
    order = [*BUILTIN, *sorted(n for n in seen if n not in BUILTIN)]
    return Registry(tuple(load_doctype(seen[n]) for n in order), tuple(str(seen[n]) for n in order))


def registry() -> Registry:
    """The registered document types: the built-ins (BUILTIN order), then the user's by name."""
    return _build(tuple((str(p), p.stat().st_mtime_ns) for d in user_dirs() for p in _templates(d)))
