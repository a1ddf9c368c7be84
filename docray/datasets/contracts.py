"""Dataset contracts: the columns each method trains on, written once as pyarrow schemas.

    contract("documents").schema          # every column a documents dataset may carry, with its type
    contract("documents").required        # the columns every row must have (a user dataset too)
    contract("documents").for_method("regen")   # required + what regen compression needs beyond that

Four kinds, one per thing the methods learn from (`docs/datasets.md` explains every column):

| kind      | rows                                   | methods                                  |
|-----------|----------------------------------------|------------------------------------------|
| documents | identity documents and certificates    | regen compression, unified recognition   |
| faces     | identity images (a person per identity) | mask privacy                            |
| targets   | sensitive and benign pictures          | cut-out screening                        |
| masks     | occlusion masks (255 kept, 0 hidden)   | mask privacy                             |

The synthetic world (`docray.synth`) writes exactly these schemas; `docray data import` writes them
from a user's files; `docray data validate KIND PATH` checks a dataset against them. Images are
encoded bytes (PNG/JPEG/WebP...) in binary columns; boxes are `[x0, y0, x1, y1]` int32 pixels of the
image they belong to (x1, y1 exclusive), `[]` when absent. Columns a kind declares but a dataset
lacks are optional: a trainer that needs one says so (`for_method`).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import pyarrow as pa

BOX = pa.list_(pa.int32())
FIELD = pa.struct([("name", pa.string()), ("text", pa.string()), ("box", BOX)])
SPLITS = ("train", "val", "test")

DOCUMENTS = pa.schema(
    [
        ("id", pa.string()), ("split", pa.string()), ("doc_type", pa.int32()), ("doc_type_name", pa.string()),
        ("image", pa.binary()), ("clean", pa.binary()), ("seg", pa.binary()), ("flash", pa.binary()),
        ("angles", pa.list_(pa.binary())), ("fields", pa.list_(FIELD)), ("clean_fields", pa.list_(FIELD)),
        ("portrait_box", BOX), ("seal_box", BOX), ("tamper_box", BOX), ("clean_portrait_box", BOX),
        ("clean_seal_box", BOX), ("clean_tamper_box", BOX), ("clean_doc_box", BOX), ("doc_quad", pa.list_(pa.float32())),
        ("seal_color", pa.string()), ("seal_shape", pa.string()), ("identity", pa.int32()),
        ("quality", pa.float32()), ("blur", pa.float32()), ("noise", pa.float32()), ("glare", pa.float32()),
        ("jpeg_quality", pa.int32()), ("recapture", pa.bool_()), ("tampered", pa.bool_()),
        ("tamper_field", pa.string()), ("angles_tampered", pa.bool_()), ("angles_swapped", pa.bool_()),
    ]
)
FACES = pa.schema(
    [
        ("id", pa.string()), ("image", pa.binary()), ("identity", pa.int32()), ("sample", pa.int32()),
        ("split", pa.string()), ("angle", pa.float32()), ("shift_x", pa.float32()), ("shift_y", pa.float32()),
        ("scale", pa.float32()), ("light_angle", pa.float32()), ("light", pa.float32()),
        ("brightness", pa.float32()), ("smile", pa.float32()), ("noise", pa.float32()),
    ]
)
TARGETS = pa.schema(
    [
        ("id", pa.string()), ("image", pa.binary()), ("is_target", pa.bool_()), ("category", pa.string()),
        ("text", pa.string()), ("text_box", BOX), ("release_time", pa.timestamp("s", tz="UTC")),
        ("source_id", pa.string()), ("split", pa.string()),
    ]
)
MASKS = pa.schema(
    [("id", pa.string()), ("mask", pa.binary()), ("hole_ratio", pa.float32()), ("bin", pa.int32()),
     ("n_strokes", pa.int32()), ("split", pa.string())]
)


@dataclass(frozen=True)
class Contract:
    """One kind's schema, the columns every dataset of it must carry, and what each method adds."""

    kind: str
    schema: pa.Schema
    required: tuple[str, ...]
    image_columns: tuple[str, ...]  # binary columns holding encoded images (decoded by validation)
    box_columns: tuple[str, ...] = ()  # [x0, y0, x1, y1] in the pixels of the image column they belong to
    methods: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def for_method(self, method: str) -> tuple[str, ...]:
        """The columns `method` needs of this kind: `required` plus its own."""
        if method not in self.methods:
            raise KeyError(f"{self.kind}: no method {method!r}; one of {sorted(self.methods)}")
        return self.required + tuple(c for c in self.methods[method] if c not in self.required)

    def type_of(self, column: str) -> pa.DataType:
        return self.schema.field(column).type


CONTRACTS: dict[str, Contract] = {
    "documents": Contract(
        "documents", DOCUMENTS, required=("id", "image", "doc_type_name"),
        image_columns=("image", "clean", "seg", "flash"),
        box_columns=("portrait_box", "seal_box", "tamper_box", "clean_portrait_box", "clean_seal_box",
                     "clean_tamper_box", "clean_doc_box"),
        methods={"unified": ("split",), "regen": ("clean", "fields", "clean_fields", "doc_quad")},
    ),
    "faces": Contract("faces", FACES, required=("id", "image", "identity"), image_columns=("image",),
                      methods={"mask": ("split",)}),
    "targets": Contract("targets", TARGETS, required=("id", "image"), image_columns=("image",),
                        box_columns=("text_box",), methods={"screening": ()}),
    "masks": Contract("masks", MASKS, required=("id", "mask"), image_columns=("mask",), methods={"mask": ()}),
}
KINDS = tuple(CONTRACTS)


def contract(kind: str) -> Contract:
    """The contract of `kind` (documents | faces | targets | masks)."""
    if kind not in CONTRACTS:
        raise ValueError(f"unknown dataset kind {kind!r}; expected one of {KINDS}")
    return CONTRACTS[kind]


def conform(kind: str, table: pa.Table) -> pa.Table:
    """`table` with the contract's column order and types, optional columns it lacks added as nulls.

    Raises ValueError naming a missing required column, an unknown column, or one that cannot be
    cast to its contract type. Use `docray.datasets.validate` for a full per-row report.
    """
    c = contract(kind)
    missing = [n for n in c.required if n not in table.column_names]
    if missing:
        raise ValueError(f"{kind}: missing required column(s) {missing}")
    unknown = [n for n in table.column_names if n not in c.schema.names]
    if unknown:
        raise ValueError(f"{kind}: unknown column(s) {unknown}; the contract has {c.schema.names}")
    cols = []
    for f in c.schema:
        if f.name in table.column_names:
            try:
                cols.append(table.column(f.name).cast(f.type))
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
                raise ValueError(f"{kind}: column {f.name!r} is {table.schema.field(f.name).type}, "
                                 f"the contract wants {f.type}: {e}") from None
        else:
            cols.append(pa.nulls(table.num_rows, f.type))
    return pa.Table.from_arrays(cols, schema=c.schema)
