"""Datasets: `docray data validate` names every fault; `docray data import` round-trips each layout.

Fast and Ray-free: tiny synthetic tables (docray.synth) corrupted one fault at a time, and tiny
user folders written here.
"""
from __future__ import annotations

import json
import re
import struct
import zlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from click.testing import CliRunner

from docray.cli import main
from docray.datasets import CONTRACTS, contract
from docray.datasets.importers import import_dataset, split_of_id
from docray.datasets.validate import validate
from docray.imageio import decode_image, encode_png
from docray.storage.datasets import read_table, write_shards
from docray.synth import generate

DOCS_MD = Path(__file__).resolve().parents[1] / "docs" / "datasets.md"


@pytest.fixture(scope="module")
def docs() -> pa.Table:
    return generate("documents", 0, 8, seed=0)


def png(w: int = 48, h: int = 32, seed: int = 0) -> bytes:
    return encode_png(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def huge_png(w: int = 7000, h: int = 7000) -> bytes:
    """A valid 8x8 PNG whose header claims w x h (49 MP, over MAX_PIXELS): a decompression bomb."""
    data = bytearray(png(8, 8))
    data[16:24] = struct.pack(">II", w, h)  # IHDR width, height
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))  # IHDR CRC over type + data
    return bytes(data)


def put(table: pa.Table, column: str, row: int, value) -> pa.Table:
    values = table.column(column).to_pylist()
    values[row] = value
    i = table.schema.get_field_index(column)
    return table.set_column(i, table.schema.field(i), pa.array(values, table.schema.field(i).type))


def run_validate(tmp_path, kind: str, table: pa.Table, *args: str):
    """`docray data validate --json` on `table` written as 3-row shards: (exit code, report dict)."""
    out = tmp_path / "ds"
    write_shards(table, str(out), rows_per_shard=3, overwrite=True)
    res = CliRunner().invoke(main, ["data", "validate", kind, str(out), "--json", *args])
    assert res.exception is None or isinstance(res.exception, SystemExit), res.output
    return res.exit_code, json.loads(res.output)


def only(report: dict, code: str) -> dict:
    """The one problem of `report`, which must have `code`."""
    assert [p["code"] for p in report["problems"]] == [code], report["problems"]
    return report["problems"][0]


# -- validate ----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(CONTRACTS))
def test_synthetic_dataset_validates_clean(tmp_path, kind, docs):
    table = docs if kind == "documents" else generate(kind, 0, 8, seed=0)
    for method in [None, *contract(kind).methods]:
        code, report = run_validate(tmp_path, kind, table, *(["--method", method] if method else []))
        assert code == 0 and report["ok"] and report["rows"] == 8, report


@pytest.mark.parametrize("fault, code", [
    (lambda d: b"this is not an image", "image_unsupported_format"),
    (lambda d: d[: len(d) * 2 // 3], "image_corrupt"),  # truncated: the header is whole, the pixels are not
    (lambda d: huge_png(), "image_too_many_pixels"),
    (lambda d: b"", "image_empty"),
])
def test_bad_image_is_named_with_row_id_and_column(tmp_path, docs, fault, code):
    image = docs.column("image")[4].as_py()
    exit_code, report = run_validate(tmp_path, "documents", put(docs, "image", 4, fault(image)))
    p = only(report, code)
    assert exit_code == 1 and (p["row"], p["id"], p["column"]) == (4, docs.column("id")[4].as_py(), "image")


def test_bad_angle_view_is_named(tmp_path, docs):
    angles = docs.column("angles")[2].as_py()
    exit_code, report = run_validate(tmp_path, "documents", put(docs, "angles", 2, [angles[0], angles[1][:50]]))
    p = only(report, "image_corrupt")
    assert exit_code == 1 and (p["row"], p["column"]) == (2, "angles") and p["reason"].startswith("angles[1]")


def test_missing_column_is_named_without_a_row(tmp_path, docs):
    exit_code, report = run_validate(tmp_path, "documents", docs.drop_columns(["doc_type_name"]))
    p = only(report, "missing_column")
    assert exit_code == 1 and (p["row"], p["column"]) == (None, "doc_type_name")


def test_method_needs_its_columns(tmp_path, docs):
    table = docs.drop_columns(["clean", "clean_fields", "clean_portrait_box", "clean_seal_box", "clean_tamper_box",
                               "clean_doc_box"])
    assert run_validate(tmp_path, "documents", table)[0] == 0  # `clean` is optional ...
    exit_code, report = run_validate(tmp_path, "documents", table, "--method", "regen")
    assert exit_code == 1  # ... but regen trains on it
    assert {(p["column"], p["row"], p["code"]) for p in report["problems"]} == {
        ("clean", None, "missing_column"), ("clean_fields", None, "missing_column")}


def test_null_in_a_required_column(tmp_path, docs):
    exit_code, report = run_validate(tmp_path, "documents", put(docs, "doc_type_name", 6, None))
    p = only(report, "missing_value")
    assert exit_code == 1 and (p["row"], p["column"]) == (6, "doc_type_name")


def test_wrong_type_is_named_once(tmp_path, docs):
    table = docs.set_column(docs.schema.get_field_index("identity"), "identity",
                            pc.cast(docs.column("identity"), pa.string()))
    exit_code, report = run_validate(tmp_path, "documents", table)
    p = only(report, "wrong_type")
    assert exit_code == 1 and (p["row"], p["column"]) == (None, "identity") and "int32" in p["reason"]


def test_lossless_cast_is_accepted_and_an_overflow_named(tmp_path, docs):
    wide = pc.cast(docs.column("identity"), pa.int64())
    table = docs.set_column(docs.schema.get_field_index("identity"), "identity", wide)
    assert run_validate(tmp_path, "documents", table)[0] == 0  # int64 in range: accepted
    exit_code, report = run_validate(tmp_path, "documents", put(table, "identity", 3, 2**40))
    p = only(report, "bad_value")
    assert exit_code == 1 and (p["row"], p["column"]) == (3, "identity")


def test_box_outside_the_image(tmp_path, docs):
    w, h = decode_image(docs.column("image")[1].as_py()).size
    exit_code, report = run_validate(tmp_path, "documents", put(docs, "portrait_box", 1, [0, 0, w + 5, 10]))
    p = only(report, "box_outside_image")
    assert exit_code == 1 and (p["row"], p["column"]) == (1, "portrait_box") and f"{w}x{h}" in p["reason"]


def test_field_box_outside_the_image_and_a_malformed_box(tmp_path, docs):
    fields = docs.column("fields")[5].as_py()
    fields[0]["box"] = [10, 10, 10_000, 20]
    table = put(put(docs, "fields", 5, fields), "seal_box", 0, [5, 5, 1])
    exit_code, report = run_validate(tmp_path, "documents", table)
    problems = {(p["row"], p["column"], p["code"]) for p in report["problems"]}
    assert exit_code == 1 and problems == {(5, "fields", "box_outside_image"), (0, "seal_box", "bad_box")}


def test_unknown_document_type_and_a_user_template(tmp_path, docs, home):
    table = put(docs, "doc_type_name", 2, "library_card")
    exit_code, report = run_validate(tmp_path, "documents", table)
    p = only(report, "unknown_doc_type")
    assert exit_code == 1 and (p["row"], p["column"]) == (2, "doc_type_name") and "library_card" in p["reason"]
    (home / "doctypes").mkdir(parents=True)
    (home / "doctypes" / "library_card.yaml").write_text("aspect: 1.5\nfields:\n  - {name: number, x: 0.1, y: 0.2}\n")
    assert run_validate(tmp_path, "documents", table)[0] == 0  # a type added by a template file is known


def test_empty_field_text(tmp_path, docs):
    fields = docs.column("fields")[7].as_py()
    fields[1]["text"] = ""
    exit_code, report = run_validate(tmp_path, "documents", put(docs, "fields", 7, fields))
    p = only(report, "empty_field_text")
    assert exit_code == 1 and (p["row"], p["column"]) == (7, "fields") and fields[1]["name"] in p["reason"]


def test_duplicate_id_names_both_rows(tmp_path, docs):
    exit_code, report = run_validate(tmp_path, "documents", put(docs, "id", 5, docs.column("id")[1].as_py()))
    p = only(report, "duplicate_id")
    assert exit_code == 1 and (p["row"], p["column"]) == (5, "id") and "row 1" in p["reason"]


def test_unknown_column_and_bad_split(tmp_path):
    faces = generate("faces", 0, 6, seed=0)
    table = put(faces.append_column("colour", pa.array(["red"] * 6)), "split", 3, "training")
    exit_code, report = run_validate(tmp_path, "faces", table)
    assert exit_code == 1
    assert {(p["row"], p["column"], p["code"]) for p in report["problems"]} == {
        (None, "colour", "unknown_column"), (3, "split", "bad_split")}


def test_shards_that_disagree_are_named(tmp_path):
    import pyarrow.parquet as pq

    faces = generate("faces", 0, 4, seed=0)
    (tmp_path / "ds").mkdir()
    pq.write_table(faces, tmp_path / "ds" / "part-00000.parquet")
    pq.write_table(faces.set_column(2, "identity", pa.array(["ann", "bo", "cy", "di"])),
                   tmp_path / "ds" / "part-00001.parquet")
    report = validate("faces", str(tmp_path / "ds"))
    assert [p.code for p in report.problems] == ["unreadable"] and "ann" in report.problems[0].reason


def test_table_output_and_nothing_written(tmp_path, docs):
    out = tmp_path / "ds"
    write_shards(put(docs, "image", 4, b"junk"), str(out), rows_per_shard=3)
    before = {p: p.stat().st_mtime_ns for p in out.iterdir()}
    res = CliRunner().invoke(main, ["data", "validate", "documents", str(out)])
    assert res.exit_code == 1
    header, row, summary = res.output.strip().splitlines()
    assert header.split() == ["row", "id", "column", "problem"]
    assert row.split()[:4] == ["4", docs.column("id")[4].as_py(), "image", "image_unsupported_format:"]
    assert summary.startswith("FAILED") and "8 rows, 1 problem(s)" in summary
    assert {p: p.stat().st_mtime_ns for p in out.iterdir()} == before


def test_validate_reads_in_batches(tmp_path, docs, monkeypatch):
    """Validation never asks for more than its batch of rows at once (the dataset is not held whole)."""
    import docray.storage.datasets as storage

    sizes = []
    real = storage.iter_batches

    def spy(path, batch_size, columns=None):
        for b in real(path, batch_size, columns):
            sizes.append(b.num_rows)
            yield b

    monkeypatch.setattr(storage, "iter_batches", spy)
    write_shards(docs, str(tmp_path / "ds"), rows_per_shard=3)
    report = validate("documents", str(tmp_path / "ds"), batch_rows=3)
    assert report.ok and sizes == [3, 3, 2]


def test_validate_errors_are_messages(tmp_path):
    res = CliRunner().invoke(main, ["data", "validate", "faces", str(tmp_path / "nothing")])
    assert res.exit_code == 1 and "no such file or folder" in res.output and "Traceback" not in res.output
    write_shards(generate("faces", 0, 2), str(tmp_path / "f"))
    res = CliRunner().invoke(main, ["data", "validate", "faces", str(tmp_path / "f"), "--method", "regen"])
    assert res.exit_code == 1 and "no method 'regen'" in res.output


# -- import ------------------------------------------------------------------------------------


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def documents_folder(root: Path, n: int = 4) -> list[dict]:
    """n document images under root/ids/ and their labels.jsonl rows."""
    (root / "ids").mkdir(parents=True)
    rows = []
    for i in range(n):
        (root / "ids" / f"{i:03d}.png").write_bytes(png(64, 40, seed=i))
        rows.append({"file": f"ids/{i:03d}.png", "doc_type_name": "passport_page",
                     "fields": [{"name": "name", "text": f"名字 {i}", "box": [4, 4, 40, 12]}],
                     "portrait_box": [44, 4, 60, 30], "quality": 0.5 + i / 10})
    write_jsonl(root / "labels.jsonl", rows)
    return rows


def run_import(*args: str):
    res = CliRunner().invoke(main, ["data", "import", *args])
    assert res.exception is None or isinstance(res.exception, SystemExit), res.output
    return res


@pytest.mark.parametrize("sidecar", ["jsonl", "csv"])
def test_import_documents_round_trips(tmp_path, sidecar):
    rows = documents_folder(tmp_path / "src")
    if sidecar == "csv":  # the same labels, lists and structs as JSON in their cells
        import csv

        (tmp_path / "src" / "labels.jsonl").unlink()
        with open(tmp_path / "src" / "labels.csv", "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows({k: json.dumps(v, ensure_ascii=False) if isinstance(v, list) else v for k, v in r.items()}
                        for r in rows)
    res = run_import("documents", str(tmp_path / "src"), str(tmp_path / "out"))
    assert res.exit_code == 0, res.output
    t = read_table(str(tmp_path / "out"))
    assert t.schema.equals(contract("documents").schema) and t.num_rows == 4
    assert t.column("id").to_pylist() == [r["file"] for r in rows]
    assert t.column("fields").to_pylist() == [r["fields"] for r in rows]  # Unicode text kept
    assert t.column("portrait_box").to_pylist() == [r["portrait_box"] for r in rows]
    assert np.allclose(t.column("quality").to_pylist(), [r["quality"] for r in rows])
    assert t.column("image").to_pylist() == [(tmp_path / "src" / r["file"]).read_bytes() for r in rows]
    assert t.column("split").to_pylist() == [split_of_id(r["file"], 0.1) for r in rows]
    assert validate("documents", str(tmp_path / "out")).ok


def test_import_csv_sidecar_targets(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(3):
        (src / f"t{i}.png").write_bytes(png(seed=i))
    (src / "labels.csv").write_text(
        "file,is_target,category,text,text_box,release_time,split\n"
        't0.png,true,url_poster,www.example.org,"[2, 2, 30, 10]",2024-03-01T10:00:00Z,train\n'
        "t1.png,false,landscape,,,1704067200,val\n"
        "t2.png,0,shapes,,[],,\n")
    res = run_import("targets", str(src), str(tmp_path / "out"))
    assert res.exit_code == 0, res.output
    t = read_table(str(tmp_path / "out"))
    assert t.column("is_target").to_pylist() == [True, False, False]
    assert t.column("text").to_pylist() == ["www.example.org", None, None]
    assert t.column("text_box").to_pylist() == [[2, 2, 30, 10], None, []]
    times = t.column("release_time").to_pylist()
    assert times[0].isoformat() == "2024-03-01T10:00:00+00:00" and times[1].year == 2024 and times[2] is None
    assert t.column("split").to_pylist()[:2] == ["train", "val"]


def test_import_faces_lfw_layout_with_split(tmp_path):
    src = tmp_path / "lfw"
    files = [f"{p}/{p}_{k:04d}.jpg" for p in ("Ada_Lovelace", "Bob_Marley", "Cher") for k in range(1, 5)]
    for i, f in enumerate(files):
        (src / f).parent.mkdir(parents=True, exist_ok=True)
        (src / f).write_bytes(png(32, 32, seed=i))
    res = run_import("faces", str(src), str(tmp_path / "out"), "--split", "--val-fraction", "0.4")
    assert res.exit_code == 0, res.output
    want = {f: split_of_id(f, 0.4) for f in files}
    assert {"train", "val"} == set(want.values())  # both splits are exercised
    for split in ("train", "val"):
        t = read_table(str(tmp_path / "out" / split))
        ids = t.column("id").to_pylist()
        assert ids == sorted(f for f, s in want.items() if s == split)
        assert t.column("identity").to_pylist() == [["Ada_Lovelace", "Bob_Marley", "Cher"].index(i.split("/")[0])
                                                    for i in ids]
    assert not (tmp_path / "out" / "test").exists() and not list((tmp_path / "out").glob("*.parquet"))


@pytest.mark.parametrize("invert", [False, True])
def test_import_mask_folder(tmp_path, invert):
    src = tmp_path / "masks"
    src.mkdir()
    hidden = [0.25, 0.5]
    for k, frac in enumerate(hidden):
        kept = np.ones((16, 16), bool)
        kept[: int(16 * frac)] = False  # the top rows hidden
        stored = ~kept if invert else kept
        (src / f"m{k}.png").write_bytes(encode_png((stored * 255).astype(np.uint8)))
    res = run_import("masks", str(src), str(tmp_path / "out"), *(["--invert"] if invert else []))
    assert res.exit_code == 0, res.output
    t = read_table(str(tmp_path / "out"))
    assert t.column("id").to_pylist() == ["m0.png", "m1.png"]
    assert np.allclose(t.column("hole_ratio").to_pylist(), hidden)
    assert t.column("bin").to_pylist() == [2, 4]  # (0.2, 0.3] and (0.4, 0.5]
    top = np.asarray(decode_image(t.column("mask")[0].as_py(), mode="L"))
    assert top[0].max() == 0 and top[-1].min() == 255  # stored 255 = kept, whatever the source's convention


def test_import_parquet_conforms_it(tmp_path):
    faces = generate("faces", 0, 6, seed=1).select(["id", "image", "identity", "angle"])
    faces = faces.set_column(2, "identity", pc.cast(faces.column("identity"), pa.int64()))
    write_shards(faces, str(tmp_path / "src"))
    res = run_import("faces", str(tmp_path / "src"), str(tmp_path / "out"))
    assert res.exit_code == 0, res.output
    t = read_table(str(tmp_path / "out"))
    assert t.schema.equals(contract("faces").schema)
    assert t.column("identity").to_pylist() == faces.column("identity").to_pylist()
    assert t.column("split").to_pylist() == [split_of_id(i, 0.1) for i in faces.column("id").to_pylist()]
    assert t.column("smile").null_count == 6


def test_import_and_validate_uris(tmp_path):
    """Object-store paths (memory:// stands in for s3://) work for SRC, OUT and validate's PATH."""
    import fsspec

    fs = fsspec.filesystem("memory")
    root = f"/{tmp_path.name}"
    for k, person in enumerate(["ann", "ann", "bo", "bo"]):
        fs.pipe_file(f"{root}/lfw/{person}/{k}.png", png(16, 16, seed=k))
    out = f"memory://{root}/faces"
    res = run_import("faces", f"memory://{root}/lfw", out)
    assert res.exit_code == 0, res.output
    t = read_table(out)
    assert t.column("id").to_pylist() == ["ann/0.png", "ann/1.png", "bo/2.png", "bo/3.png"]
    assert t.column("identity").to_pylist() == [0, 0, 1, 1]
    assert CliRunner().invoke(main, ["data", "validate", "faces", out]).exit_code == 0


def test_rejected_import_writes_nothing(tmp_path):
    rows = documents_folder(tmp_path / "src")
    rows[1]["doc_type_name"] = "library_card"
    rows[2]["file"] = "ids/missing.png"
    rows[3]["fields"][0]["text"] = ""
    write_jsonl(tmp_path / "src" / "labels.jsonl", rows)
    res = run_import("documents", str(tmp_path / "src"), str(tmp_path / "out"))
    assert res.exit_code == 1
    assert re.search(r"^\s+1\s+ids/001.png\s+doc_type_name\s+unknown_doc_type", res.output, re.M)
    assert re.search(r"^\s+2\s+ids/missing.png\s+file\s+missing_file", res.output, re.M)
    assert re.search(r"^\s+3\s+ids/003.png\s+fields\s+empty_field_text", res.output, re.M)
    assert "nothing written" in res.output and not (tmp_path / "out").exists()
    # an OUT that holds an earlier import is left as it was
    write_shards(generate("documents", 0, 2), str(tmp_path / "out"))
    before = {p: p.read_bytes() for p in (tmp_path / "out").iterdir()}
    assert run_import("documents", str(tmp_path / "src"), str(tmp_path / "out"), "--overwrite").exit_code == 1
    assert {p: p.read_bytes() for p in (tmp_path / "out").iterdir()} == before


def test_import_refuses_to_overwrite(tmp_path):
    documents_folder(tmp_path / "src")
    out = str(tmp_path / "out")
    assert run_import("documents", str(tmp_path / "src"), out, "--split").exit_code == 0
    res = run_import("documents", str(tmp_path / "src"), out)
    assert res.exit_code == 1 and "already holds shards" in res.output
    res = run_import("documents", str(tmp_path / "src"), out, "--overwrite")
    assert res.exit_code == 0, res.output
    # the flat import replaced the split one: no stale split shards are left to be read twice
    assert sorted(p.name for p in (tmp_path / "out").rglob("*.parquet")) == ["part-00000.parquet"]


def test_import_layout_errors_are_messages(tmp_path):
    (tmp_path / "src" / "a").mkdir(parents=True)
    (tmp_path / "src" / "a" / "x.png").write_bytes(png())
    res = run_import("documents", str(tmp_path / "src"), str(tmp_path / "out"))
    assert res.exit_code == 1 and "labels.jsonl or labels.csv" in res.output and "Traceback" not in res.output
    write_jsonl(tmp_path / "src" / "labels.jsonl", [{"file": "a/x.png", "doc_type_name": "passport_page", "colour": 1}])
    res = run_import("documents", str(tmp_path / "src"), str(tmp_path / "out"))
    assert res.exit_code == 1 and "unknown_column" in res.output and "colour" in res.output


# -- docs --------------------------------------------------------------------------------------


def short_type(t: pa.DataType) -> str:
    """A contract type as docs/datasets.md writes it."""
    if pa.types.is_list(t):
        return f"list<{short_type(t.value_type)}>"
    if pa.types.is_struct(t):
        return "struct<" + ", ".join(t.field(i).name for i in range(t.num_fields)) + ">"
    if pa.types.is_timestamp(t):
        return f"timestamp[{t.unit}, {t.tz}]"
    return str(t)


@pytest.mark.parametrize("kind", list(CONTRACTS))
def test_docs_list_every_column_of_the_contract(kind):
    """docs/datasets.md has a table per kind: | column | type | required | methods | meaning |, as in the code."""
    text = DOCS_MD.read_text()
    section = text.split(f"\n### {kind}\n", 1)[1].split("\n### ", 1)[0]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip().strip("`") for c in line.strip().strip("|").split("|")]
        if line.startswith("| `") and len(cells) == 5:
            rows[cells[0]] = cells[1:]
    c = contract(kind)
    assert list(rows) == c.schema.names
    for f in c.schema:
        typ, required, methods, meaning = rows[f.name]
        assert typ == short_type(f.type), f.name
        assert (required == "yes") == (f.name in c.required), f.name
        assert set(filter(None, methods.replace(",", " ").split())) == \
            {m for m, cols in c.methods.items() if f.name in cols and f.name not in c.required}, f.name
        assert meaning, f.name


@pytest.mark.parametrize("job", ["pretrain_recognition", "train_recognition", "train_regen", "train_screening", "train_privacy"])
def test_every_trainer_help_lists_its_dataset_uris(job, capsys):
    """Every trainer's --help names `train`, `val` and `init_from` (the user's data and a start model)."""
    import importlib

    with pytest.raises(SystemExit):
        importlib.import_module(f"train_jobs.{job}").main(["--help"])
    text = capsys.readouterr().out
    for key in ("train (str", "val (str", "init_from"):
        assert key in text, (job, key)
