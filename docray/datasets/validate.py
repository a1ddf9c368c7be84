"""Check a dataset against its contract, batch by batch: every bad row named with its column and reason.

    report = validate("documents", "s3://bucket/docs/train", method="regen")
    report.ok                       # False
    report.problems[0]              # Problem(row=12, id='doc-7', column='image', code='image_corrupt', reason=...)
    print(format_report(report))    # the table `docray data validate` prints

Checks, by `code` (docs/datasets.md shows an example of the output):
  without a row (named once)
    missing_column      a required column, or one `method` needs (`contract(kind).for_method`), is absent
    unknown_column      a column the contract does not have
    wrong_type          a column neither of the contract type nor of one that casts to it losslessly
    empty_dataset       no rows at all
    unreadable          a shard whose columns cannot be read with the first shard's schema
  per row
    missing_value       null in a required (or `method`-needed) column
    bad_value           a value the lossless cast refuses (an int64 out of int32's range, ms in a
                        timestamp[s]); the row is named, the column keeps its accepted type
    image_<code>        an image column that `docray.imageio.decode_image` refuses: image_unsupported_format
                        and image_empty (undecodable), image_corrupt (truncated or corrupt data),
                        image_too_many_pixels (over MAX_PIXELS, read from the header), image_too_many_bytes
    bad_box             a box that is not [] nor [x0, y0, x1, y1] with x0 <= x1 and y0 <= y1
    box_outside_image   a box past the image it belongs to (size from the image header)
    unknown_doc_type    doc_type_name not in the document-type registry (`known_doc_types`)
    empty_field_text    a field in `fields` / `clean_fields` with an empty or null `text` (or `name`)
    bad_split           a split other than train, val, test
    duplicate_id        an id already used by an earlier row (which is named)

Types: a column is accepted when it has the contract type, or one of the same family that Arrow
casts to it without loss: integers of any width (each value must fit, else bad_value), floats of
any width, string/large_string, binary/large_binary, timestamps of any unit, lists (also large or
fixed-size) of accepted items, structs with the same field names, dictionary-encoded columns of an
accepted value type, and all-null columns. Across families (string "12" for an int, int for a
float) it is wrong_type: a silent parse is how a label gets lost.

Rows are numbered from 0 over the shards in name order (the order `read_table` and Ray read them).
Boxes named `clean_*` (and those in `clean_fields`) are in the pixels of the `clean` image, every
other box in those of `image`. Only the image headers and one batch of rows are held at a time;
nothing is written.
"""
from __future__ import annotations

import itertools
import json
from dataclasses import asdict, dataclass, field

import numpy as np
import pyarrow as pa

from docray.datasets.contracts import SPLITS, contract
from docray.imageio import ImageDecodeError, decode_image

BATCH_ROWS = 64  # rows decoded at a time: a few MB of documents
_ARROW_ERRORS = (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError)


@dataclass(frozen=True)
class Problem:
    """One fault: `row` is None for a fault of the whole column (missing, unknown, wrong type)."""

    row: int | None
    id: str | None
    column: str
    code: str
    reason: str


@dataclass
class Report:
    """What `validate` found: `ok` when there is no problem."""

    kind: str
    path: str
    method: str | None = None
    rows: int = 0
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict:
        return {"kind": self.kind, "path": self.path, "method": self.method, "rows": self.rows, "ok": self.ok,
                "problems": [asdict(p) for p in self.problems]}


def known_doc_types() -> set[str]:
    """The document types a `doc_type_name` may name: the document-type registry's
    (`docray.doctypes.registry().names`: the built-ins and the user's template files).

    Until `docray.doctypes` exists, the synthetic world's built-in types plus the stem of each
    template file in `$DOCRAY_HOME/doctypes/` (*.yaml, *.yml).
    """
    try:
        from docray.doctypes import registry
    except ModuleNotFoundError as e:
        if e.name != "docray.doctypes":
            raise
    else:
        return set(registry().names)
    from docray import paths
    from docray.storage.blobs import filesystem
    from docray.synth.templates import DOC_TYPES

    fs, root = filesystem(paths.sub("doctypes"))
    root = root.rstrip("/")
    files = fs.glob(f"{root}/*.yaml") + fs.glob(f"{root}/*.yml") if fs.isdir(root) else []
    return set(DOC_TYPES) | {f.rsplit("/", 1)[-1].rsplit(".", 1)[0] for f in files}


# -- types -------------------------------------------------------------------------------------

_FAMILIES = (pa.types.is_integer, pa.types.is_floating, pa.types.is_boolean, pa.types.is_timestamp,
             lambda t: pa.types.is_string(t) or pa.types.is_large_string(t),
             lambda t: pa.types.is_binary(t) or pa.types.is_large_binary(t))


def _is_list(t: pa.DataType) -> bool:
    return pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)


def castable(have: pa.DataType, want: pa.DataType) -> bool:
    """Whether a column of type `have` is accepted for contract type `want` (see the module docstring)."""
    if have == want or pa.types.is_null(have):
        return True
    if pa.types.is_dictionary(have):
        return castable(have.value_type, want)
    if _is_list(have) and _is_list(want):
        return castable(have.value_type, want.value_type)
    if pa.types.is_struct(have) and pa.types.is_struct(want):
        names = {want.field(i).name: want.field(i).type for i in range(want.num_fields)}
        got = {have.field(i).name: have.field(i).type for i in range(have.num_fields)}
        return set(got) == set(names) and all(castable(got[n], names[n]) for n in names)
    return any(f(have) and f(want) for f in _FAMILIES)


def _cast(col: pa.Array, want: pa.DataType, name: str, rows: range, ids: list, out: list[Problem]) -> pa.Array:
    """`col` cast losslessly to `want`; a value that does not fit is a bad_value problem and becomes null."""
    if col.type == want:
        return col
    try:
        return col.cast(want, safe=True)
    except _ARROW_ERRORS:
        pass
    values = []
    for i, row in enumerate(rows):  # the rare slow path: find the rows that do not fit
        try:
            values.append(col.slice(i, 1).cast(want, safe=True)[0].as_py())
        except _ARROW_ERRORS as e:
            out.append(Problem(row, ids[i], name, "bad_value", f"{col[i].as_py()!r} does not fit {want}: {e}"))
            values.append(None)
    return pa.array(values, want)


def _schema_problems(c, schema: pa.Schema, needed: tuple[str, ...], method: str | None) -> list[Problem]:
    out = []
    for name in needed:
        if name not in schema.names:
            why = "required" if name in c.required else f"needed by method {method!r}"
            out.append(Problem(None, None, name, "missing_column", f"column is missing ({why})"))
    for f in schema:
        if f.name not in c.schema.names:
            out.append(Problem(None, None, f.name, "unknown_column",
                               f"not a {c.kind} column; the contract has {', '.join(c.schema.names)}"))
        elif not castable(f.type, c.type_of(f.name)):
            want = c.type_of(f.name)
            out.append(Problem(None, None, f.name, "wrong_type", f"is {f.type}, the contract wants {want}"))
    return out


# -- rows --------------------------------------------------------------------------------------


def _decode(data: bytes, column: str) -> tuple[tuple[int, int] | None, tuple[str, str] | None]:
    """((w, h), None) for a good image, (None, (code, reason)) for one decode_image refuses."""
    try:
        return decode_image(data, mode=None, name=column).size, None
    except ImageDecodeError as e:
        return None, (f"image_{e.code}", str(e).removeprefix(f"{column}: "))


def _box_fault(box, size: tuple[int, int] | None) -> tuple[str, str] | None:
    """(code, reason) when `box` is malformed or past an image of `size` (w, h); None when fine or empty."""
    if not box:
        return None
    if len(box) != 4 or any(v is None for v in box):
        return "bad_box", f"box {box} is not [x0, y0, x1, y1]"
    x0, y0, x1, y1 = box
    if x1 < x0 or y1 < y0:
        return "bad_box", f"box {box} has x1 < x0 or y1 < y0"
    if size is not None and (x0 < 0 or y0 < 0 or x1 > size[0] or y1 > size[1]):
        return "box_outside_image", f"box {box} lies outside the {size[0]}x{size[1]} image"
    return None


def _image_of(column: str) -> str:
    """The image column whose pixels a box column is in."""
    return "clean" if column.startswith("clean_") else "image"


def _images(c, cols: dict, first: int, ids: list, out: list[Problem]) -> dict[str, list]:
    """Decode every image cell (image columns, and lists of images such as `angles`); returns the
    (w, h) of each row's image per image column (None where it is null or refused)."""
    lists = [f.name for f in c.schema if f.type == pa.list_(pa.binary())]
    sizes = {}
    for name in [n for n in (*c.image_columns, *lists) if n in cols]:
        sizes[name] = [None] * len(cols[name])
        for i, v in enumerate(cols[name]):
            for k, data in enumerate((v or []) if name in lists else [v]):
                if data is None:
                    continue
                size, fault = _decode(data, name)
                if fault:
                    where = f"{name}[{k}]: " if name in lists else ""
                    out.append(Problem(first + i, ids[i], name, fault[0], where + fault[1]))
                elif name not in lists:
                    sizes[name][i] = size
    return sizes


def _boxes_and_fields(c, cols: dict, sizes: dict, first: int, ids: list, out: list[Problem]) -> None:
    """Box columns, and the name, text and box of each field in `fields` / `clean_fields`."""
    for name in [n for n in (*c.box_columns, "fields", "clean_fields") if n in cols]:
        size = sizes.get(_image_of(name), [None] * len(cols[name]))
        for i, v in enumerate(cols[name]):
            if name in c.box_columns:
                fault = _box_fault(v, size[i])
                if fault:
                    out.append(Problem(first + i, ids[i], name, *fault))
                continue
            for k, f in enumerate(v or ()):
                f = f or {"name": None, "text": None, "box": None}
                label = f"{name}[{k}] ({f['name']!r})"
                if not f["name"] or not f["text"]:
                    what = "name" if not f["name"] else "text"
                    out.append(Problem(first + i, ids[i], name, "empty_field_text", f"{label}: empty {what}"))
                fault = _box_fault(f["box"], size[i])
                if fault:
                    out.append(Problem(first + i, ids[i], name, fault[0], f"{label}: {fault[1]}"))


def _check_rows(c, table: pa.Table, first: int, ids: list, doc_types: set[str], seen: dict,
                out: list[Problem]) -> None:
    """Append the problems of `table` (conformed columns; its row 0 is dataset row `first`) to `out`."""
    cols = {name: table.column(name).to_pylist() for name in table.column_names}
    sizes = _images(c, cols, first, ids, out)
    _boxes_and_fields(c, cols, sizes, first, ids, out)
    for i, t in enumerate(cols.get("doc_type_name", ())):
        if t is not None and t not in doc_types:
            out.append(Problem(first + i, ids[i], "doc_type_name", "unknown_doc_type",
                               f"{t!r} is not a known document type ({', '.join(sorted(doc_types))}; "
                               "add a template under $DOCRAY_HOME/doctypes)"))
    for i, s in enumerate(cols.get("split", ())):
        if s is not None and s not in SPLITS:
            out.append(Problem(first + i, ids[i], "split", "bad_split", f"{s!r} is not one of {', '.join(SPLITS)}"))
    for i, id_ in enumerate(cols.get("id", ())):
        if id_ is None:
            continue
        if id_ in seen:
            out.append(Problem(first + i, id_, "id", "duplicate_id", f"id already used by row {seen[id_]}"))
        else:
            seen[id_] = first + i


def _unreadable(row: int, e: Exception) -> Problem:
    """Shards that disagree: Arrow reads every shard with the first one's schema."""
    return Problem(None, None, "", "unreadable", f"the shards from about row {row} on cannot be read with the "
                   f"first shard's schema: {e}")


def validate(kind: str, path: str, method: str | None = None, batch_rows: int = BATCH_ROWS,
             progress: bool = False) -> Report:
    """Check the Parquet file or folder at `path` (local or URI) against `kind`'s contract.

    `method` adds the columns that method needs (`contract(kind).for_method`). Reads `batch_rows`
    rows at a time. Raises FileNotFoundError when `path` holds no Parquet, ValueError for an
    unknown kind or method; every fault of the data itself is a `Problem` in the report.
    """
    from tqdm import tqdm

    from docray.storage.datasets import iter_batches

    c = contract(kind)
    try:
        needed = c.for_method(method) if method else c.required
    except KeyError as e:
        raise ValueError(e.args[0]) from None
    report = Report(kind, path, method)
    batches = iter_batches(path, batch_rows)
    try:
        first = next(batches, None)
    except _ARROW_ERRORS as e:
        report.problems.append(_unreadable(0, e))
        return report
    if first is None:
        report.problems.append(Problem(None, None, "", "empty_dataset", "the dataset has no rows"))
        return report
    report.problems += _schema_problems(c, first.schema, needed, method)
    bad = {p.column for p in report.problems}
    keep = [f.name for f in first.schema if f.name in c.schema.names and f.name not in bad]
    doc_types = known_doc_types() if "doc_type_name" in keep else set()
    seen: dict[str, int] = {}
    bar = tqdm(unit="row", desc=f"validate {kind}", disable=None if progress else True)
    try:
        for b in itertools.chain([first], batches):
            rows = range(report.rows, report.rows + b.num_rows)
            ids = b.column("id").to_pylist() if "id" in keep else [None] * b.num_rows
            ids = [None if v is None else str(v) for v in ids]
            for n in [n for n in needed if n in keep]:
                for i in np.flatnonzero(b.column(n).is_null().to_numpy(zero_copy_only=False)):
                    report.problems.append(Problem(rows[i], ids[i], n, "missing_value", "null in a required column"))
            cols = [_cast(b.column(n), c.type_of(n), n, rows, ids, report.problems) for n in keep]
            _check_rows(c, pa.Table.from_arrays(cols, names=keep), report.rows, ids, doc_types, seen, report.problems)
            report.rows += b.num_rows
            bar.update(b.num_rows)
    except _ARROW_ERRORS as e:
        report.problems.append(_unreadable(report.rows, e))
    bar.close()
    report.problems = sort_problems(report.problems)
    return report


def sort_problems(problems: list[Problem]) -> list[Problem]:
    """Column problems first, then by row (stable: a row's problems keep the order they were found in)."""
    return sorted(problems, key=lambda p: (p.row is not None, p.row or 0))


def format_report(report: Report) -> str:
    """The problems as a table (row, id, column, problem) and a summary line."""
    lines = []
    if report.problems:
        ids = [p.id or "-" for p in report.problems]
        wid = min(max(len("id"), *map(len, ids)), 40)
        wcol = max(len("column"), *(len(p.column) for p in report.problems))
        lines.append(f"{'row':>7}  {'id':<{wid}}  {'column':<{wcol}}  problem")
        for p, id_ in zip(report.problems, ids):
            row = "-" if p.row is None else str(p.row)
            lines.append(f"{row:>7}  {id_[:wid]:<{wid}}  {p.column:<{wcol}}  {p.code}: {p.reason}")
    method = f" (method {report.method})" if report.method else ""
    if report.ok:
        lines.append(f"ok: {report.kind} dataset {report.path}{method}: {report.rows} rows, no problems")
    else:
        n_rows = len({p.row for p in report.problems if p.row is not None})
        n_cols = len({p.column for p in report.problems if p.row is None and p.column})
        lines.append(f"FAILED: {report.kind} dataset {report.path}{method}: {report.rows} rows, "
                     f"{len(report.problems)} problem(s): {n_rows} bad row(s), {n_cols} bad column(s)")
    return "\n".join(lines)


def report_json(report: Report) -> str:
    return json.dumps(report.to_dict())
