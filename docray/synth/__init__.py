"""The synthetic world: documents, faces, screening targets and occlusion masks, deterministic from a seed.

    table = generate("documents", 0, 100, seed=0, size=(256, 160))   # rows 0..99 as a pyarrow.Table
    schema("faces")                                                   # the pyarrow schema of a kind
    contact_sheet(table, "documents").save("sheet.png")               # for a person to look at

Row i of kind k is drawn from `np.random.default_rng([seed, KIND_NO[k], i])` only, so any split of
an index range into pieces (Ray Data tasks) gives the same rows. Images are PNG bytes in binary
columns; the columns of each kind are documented in its module:
    documents -> docray.synth.documents   faces -> docray.synth.faces
    targets   -> docray.synth.targets     masks -> docray.synth.masks
Options (keyword arguments of `generate`), defaults in each module's config dataclass:
    documents: size=(256, 160) (w, h), n_angles=2, n_identities=256, recapture_rate=0.2, tamper_rate=0.2, swap_rate=0.0
    faces:     size=64, n_identities=256
    targets:   size=192, target_rate=0.5, mix=0.0 (share of procedural pictures), families=() (all)
    masks:     size=64
"""
from __future__ import annotations

import pyarrow as pa

from docray.synth import documents, faces, masks, targets
from docray.synth.common import make_config, row_rng
from docray.synth.sheets import contact_sheet

KINDS = ("documents", "faces", "targets", "masks")
_MODULES = {"documents": (documents, documents.DocumentsConfig), "faces": (faces, faces.FacesConfig),
            "targets": (targets, targets.TargetsConfig), "masks": (masks, masks.MasksConfig)}

__all__ = ["KINDS", "generate", "schema", "contact_sheet"]


def _module(kind: str):
    if kind not in _MODULES:
        raise ValueError(f"unknown kind {kind!r}; expected one of {KINDS}")
    return _MODULES[kind]


def schema(kind: str) -> pa.Schema:
    """The pyarrow schema of the rows of `kind`."""
    return _module(kind)[0].SCHEMA


def generate(kind: str, start: int, stop: int, seed: int = 0, **options) -> pa.Table:
    """Rows [start, stop) of `kind` as a pyarrow Table; row i depends only on (seed, kind, i)."""
    mod, cfg_cls = _module(kind)
    cfg = make_config(cfg_cls, kind, options)
    if int(seed) < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    if not 0 <= int(start) <= int(stop):
        raise ValueError(f"need 0 <= start <= stop, got start={start}, stop={stop}")
    rows = [mod.make_row(i, row_rng(seed, mod.KIND_NO, i), int(seed), cfg) for i in range(int(start), int(stop))]
    return pa.Table.from_pylist(rows, schema=mod.SCHEMA)
