"""The task catalogue (tasks.yaml): loading, validation, task selection, user attributes.

    cat = load_catalogue()                       # the packaged tasks.yaml, or a path
    cat.names()                                  # ['doc_type', 'capture_quality', ...]
    cat.for_doc_type("business_licence")         # tasks configured for a document type
    cat.check_names(["doc_type", "nope"])        # UnknownTask with the known names

Document types come from the doc-type registry (`docray.doctypes`): a task with `classes: doctypes`
(the packaged `doc_type` task) gets the registered type names, in class order, when the catalogue
is loaded; `by_doc_type` in a YAML file may name registered types only, and a type it does not
name (a user's new type) gets every task. A model stores its catalogue with the names spelled out.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

TASK_TYPES = ("cls", "reg", "seg", "det")  # the output units, in gate order
FRAME_KINDS = ("none", "flash", "angles")
DEFAULT_PATH = Path(__file__).with_name("tasks.yaml")


class UnknownTask(KeyError):
    """A requested task that is not in the catalogue (a 4xx at the API)."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0])


class Task(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    type: Literal["cls", "reg", "seg", "det"]
    query: str = Field(min_length=3)
    frames: Literal["none", "flash", "angles"] = "none"
    label: str | dict[str, str]
    classes: list[str] = []
    values: list | None = None  # raw label values, in class order (cls on a non-integer column)
    range: tuple[float, float] = (0.0, 1.0)  # reg output range
    loss_weight: float = Field(1.0, gt=0)  # its loss's weight in multi-task training

    @model_validator(mode="before")
    @classmethod
    def _doctypes(cls, data):
        if isinstance(data, dict) and data.get("classes") == "doctypes":  # the registry's names, in class order
            from docray.doctypes import registry

            data = {**data, "classes": list(registry().names)}
        return data

    @model_validator(mode="after")
    def _check(self):
        if self.type in ("cls", "seg", "det") and len(self.classes) < (1 if self.type == "det" else 2):
            raise ValueError(f"task {self.name!r}: a {self.type} task needs `classes`")
        if self.type == "det":
            if not isinstance(self.label, dict) or sorted(self.label) != sorted(self.classes):
                raise ValueError(f"task {self.name!r}: det `label` must map every class to a box column")
        elif not isinstance(self.label, str):
            raise ValueError(f"task {self.name!r}: `label` must be a column name")
        if self.values is not None and len(self.values) != len(self.classes):
            raise ValueError(f"task {self.name!r}: `values` and `classes` differ in length")
        return self

    @property
    def n_out(self) -> int:
        """Outputs of its unit: classes (cls/seg/det) or 1 (reg)."""
        return 1 if self.type == "reg" else len(self.classes)

    @property
    def type_id(self) -> int:
        return TASK_TYPES.index(self.type)


class Catalogue(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tasks: list[Task]
    by_doc_type: dict[str, list[str]] = {}
    user_attrs: dict = {"categorical": {}, "numeric": {}}

    @model_validator(mode="after")
    def _check(self):
        names = [t.name for t in self.tasks]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate task names in {names}")
        for doc, chosen in self.by_doc_type.items():
            bad = sorted(set(chosen) - set(names))
            if bad:
                raise ValueError(f"by_doc_type[{doc!r}] names unknown tasks {bad}")
        return self

    def names(self) -> list[str]:
        return [t.name for t in self.tasks]

    def index(self, name: str) -> int:
        return self.names().index(self.check_names([name])[0])

    def get(self, name: str) -> Task:
        return self.tasks[self.index(name)]

    def check_names(self, names) -> list[str]:
        if isinstance(names, str) or not all(isinstance(n, str) for n in names):
            raise UnknownTask(f"tasks must be a list of task names, got {names!r}")
        bad = [n for n in names if n not in self.names()]
        if bad:
            raise UnknownTask(f"unknown task(s) {bad}; known: {self.names()}")
        return list(names)

    def for_doc_type(self, doc_type: str) -> list[str]:
        """Tasks configured for a document type (all tasks for a type without an entry)."""
        return list(self.by_doc_type.get(doc_type, self.names()))

    def task_set_matrix(self, doc_types: list[str]) -> np.ndarray:
        """(n_doc_types, n_tasks) 0/1: the task classifier's targets, one row per document type."""
        out = np.zeros((len(doc_types), len(self.tasks)), np.float32)
        for i, d in enumerate(doc_types):
            for n in self.for_doc_type(d):
                out[i, self.names().index(n)] = 1
        return out

    # -- user attributes ---------------------------------------------------------------------------

    def attr_spec(self) -> tuple[dict[str, list[str]], dict[str, dict]]:
        return dict(self.user_attrs.get("categorical", {})), dict(self.user_attrs.get("numeric", {}))

    def encode_attrs(self, attrs: dict | None) -> tuple[list[int], list[float]]:
        """User attributes -> (categorical indices, standardised numbers); missing -> unknown / 0."""
        cats, nums = self.attr_spec()
        attrs = attrs or {}
        if not isinstance(attrs, dict):
            raise ValueError(f"user_attrs must be an object, got {type(attrs).__name__}")
        extra = sorted(set(attrs) - set(cats) - set(nums))
        if extra:
            raise ValueError(f"unknown user attribute(s) {extra}; known: {sorted(cats) + sorted(nums)}")
        ci = []
        for k, vocab in cats.items():
            v = attrs.get(k, vocab[0])
            if v not in vocab:
                raise ValueError(f"user attribute {k!r}: {v!r} is not one of {vocab}")
            ci.append(vocab.index(v))
        nv = []
        for k, s in nums.items():
            v = attrs.get(k)
            try:
                nv.append(0.0 if v is None else (float(v) - s["mean"]) / s["std"])
            except (TypeError, ValueError):
                raise ValueError(f"user attribute {k!r} must be a number, got {v!r}") from None
        return ci, nv


def load_catalogue(source: str | Path | dict | Catalogue | None = None) -> Catalogue:
    """The catalogue from a YAML path, a dict (e.g. a model's stored config), or the packaged default."""
    if isinstance(source, Catalogue):
        return source
    if isinstance(source, dict):
        data = source
    else:
        path = Path(source) if source else DEFAULT_PATH
        if not path.exists():
            raise FileNotFoundError(f"task catalogue not found: {path}")
        data = yaml.safe_load(path.read_text()) or {}
        _check_doc_types(data, path)
    try:
        return Catalogue.model_validate(data)
    except ValidationError as e:
        raise ValueError(f"invalid task catalogue: {e}") from None


def _check_doc_types(data: dict, path: Path) -> None:
    """A catalogue file's by_doc_type names registered document types only (a stored catalogue may
    name types of another registry: it is not checked)."""
    from docray.doctypes import registry

    names = registry().names
    bad = sorted(set((data.get("by_doc_type") or {})) - set(names))
    if bad:
        raise ValueError(f"invalid task catalogue {path}: by_doc_type names unregistered document type(s) {bad}; "
                         f"registered: {list(names)}")


def subset(cat: Catalogue, names: list[str]) -> Catalogue:
    """A catalogue with only `names` (the separate single-task baselines)."""
    cat.check_names(names)
    keep = [t for t in cat.tasks if t.name in names]
    by = {d: [n for n in ts if n in names] for d, ts in cat.by_doc_type.items()}
    return Catalogue(tasks=keep, by_doc_type=by, user_attrs=cat.user_attrs)
