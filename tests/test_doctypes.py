"""Document types as data: the registry (built-ins, user folders, order, errors), and a user's Chinese
type (examples/doctypes/cn_resident_card.yaml) through recognition's classes, the file-type library,
the reader's vocabulary and the regen pipeline. No Ray."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from docray.doctypes import BUILTIN, DocTypeError, UnknownDocType, doc_rect, load_doctype, registry

EXAMPLES = Path(__file__).parents[1] / "examples" / "doctypes"
CN = "cn_resident_card"


@pytest.fixture
def cn_type(monkeypatch):
    """The example Chinese type registered through $DOCRAY_DOCTYPES."""
    monkeypatch.setenv("DOCRAY_DOCTYPES", str(EXAMPLES))
    return registry()[CN]


def _write(folder: Path, stem: str, changes: dict | None = None) -> Path:
    """A copy of the example template as `<stem>.yaml`, with top-level keys changed (None deletes)."""
    data = yaml.safe_load((EXAMPLES / f"{CN}.yaml").read_text(encoding="utf-8"))
    for k, v in (changes or {}).items():
        data.pop(k) if v is None else data.__setitem__(k, v)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{stem}.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    return path


# ---------------------------------------------------------------- the registry


def test_builtins_in_their_class_order(monkeypatch):
    monkeypatch.delenv("DOCRAY_DOCTYPES", raising=False)
    reg = registry()
    assert reg.names == BUILTIN == ("identity_card", "passport_page", "driving_licence", "residence_permit",
                                    "property_certificate", "business_licence")
    assert reg.index("passport_page") == 1 and reg["passport_page"] is reg[1]
    t = reg["identity_card"]
    assert t.field_names == ("name", "sex", "nationality", "birth_date", "address", "id_number")
    assert t.portrait.box() == (0.66, 0.18, 0.29, 0.56) and t.seal.rate == 0.5 and reg["business_licence"].portrait is None
    assert reg["passport_page"].stacked and not t.stacked
    assert t.value_font(t.fields[-1]) == "mono-bold" and t.value_font(t.fields[0]) == "sans" and t.title_font == "sans-bold"
    with pytest.raises(UnknownDocType, match="unknown document type 'visa'.*registered: \\['identity_card'"):
        reg.index("visa")
    assert doc_rect((256, 160), t.aspect) == (9, 5, 238, 150)  # 5 px margins, 150 x 1.585 = 238 wide, centred


def test_user_types_follow_the_builtins_by_name(tmp_path, monkeypatch, home):
    a, b = tmp_path / "a", tmp_path / "b"
    _write(b, "zz_permit")
    _write(a, "mm_card")
    _write(home / "doctypes", "aa_home_card")  # $DOCRAY_HOME/doctypes is read too
    monkeypatch.setenv("DOCRAY_DOCTYPES", f"{b}:{a}")
    reg = registry()
    assert reg.names == (*BUILTIN, "aa_home_card", "mm_card", "zz_permit")  # not the folders' order
    assert reg.files[reg.index("mm_card")] == str(a / "mm_card.yaml")
    assert reg["zz_permit"].language == "zh" and reg["zz_permit"].title_font == "cjk-sans"
    _write(a, "ab_new")  # a file dropped in later: the next call sees it
    assert registry().names == (*BUILTIN, "aa_home_card", "ab_new", "mm_card", "zz_permit")
    monkeypatch.setenv("DOCRAY_DOCTYPES", str(tmp_path / "missing"))
    with pytest.raises(DocTypeError, match="DOCRAY_DOCTYPES names .*missing.*not a folder"):
        registry()


def test_a_type_defined_twice_is_an_error(tmp_path, monkeypatch):
    _write(tmp_path, "passport_page")
    monkeypatch.setenv("DOCRAY_DOCTYPES", str(tmp_path))
    with pytest.raises(DocTypeError, match="'passport_page' of .* is already defined by .*types/passport_page.yaml"):
        registry()


@pytest.mark.parametrize("changes, error", [
    ({"colour": [1, 2, 3]}, r"unknown key 'colour'; valid keys here: \['name', 'title'"),
    ({"fields": [{"name": "a", "x": 0.1, "y": 0.2, "colour": 1}]}, r"unknown key 'fields\[0\] \(a\)\.colour'; valid keys here: \['name', 'caption'"),
    ({"fields": [{"name": "a", "x": 1.2, "y": 0.2}]}, r"fields\[0\] \(a\)\.x: Input should be less than or equal to 1"),
    ({"fields": [{"name": "a", "x": 0.1, "y": 0.96}]}, r"fields\[0\] \(a\): value box outside \[0, 1\]: y \+ size = 1.028 > 1"),
    ({"portrait": {"x": 0.8, "y": 0.1, "w": 0.3, "h": 0.5}}, r"portrait: portrait box outside \[0, 1\]: x \+ w = 1.100"),
    ({"fields": [{"name": "a", "x": 0.1}]}, r"missing key 'fields\[0\] \(a\)\.y'"),
    ({"fields": None}, r"missing key 'fields'"),
    ({"aspect": None}, r"missing key 'aspect'"),
    ({"fonts": {"value": "comic"}}, r"fonts.value: unknown font style 'comic'"),
    ({"seal": {"shapes": ["star"], "colors": ["red"], "x": 0.5, "y": 0.5, "height": 0.2}}, r"seal.shapes.0: Input should be 'circle'"),
    ({"name": "other"}, r"a type's name is its file's name; name: 'other' differs from 'bad'"),
])
def test_a_bad_template_names_its_file_and_key(tmp_path, changes, error):
    path = _write(tmp_path, "bad", changes)
    with pytest.raises(DocTypeError, match=f"(?s)template .*bad.yaml.*{error}") as e:
        load_doctype(path)
    assert "too_short" not in str(e.value) and "at least 1 item" not in str(e.value)  # only the real problem


def test_a_type_is_named_by_its_file(tmp_path):
    with pytest.raises(DocTypeError, match="'My-Card': use lowercase letters, digits and '_'"):
        load_doctype(_write(tmp_path, "My-Card"))
    assert load_doctype(_write(tmp_path, "my_card")).name == "my_card"


def test_a_bad_user_file_stops_the_registry(tmp_path, monkeypatch):
    _write(tmp_path, "bad", {"aspect": -1})
    monkeypatch.setenv("DOCRAY_DOCTYPES", str(tmp_path))
    with pytest.raises(DocTypeError, match="bad.yaml:\n  aspect: Input should be greater than 0.2"):
        registry()
    (tmp_path / "notes.txt").write_text("not a template")  # other files are ignored
    (tmp_path / "bad.yaml").write_text("- a list\n")
    with pytest.raises(DocTypeError, match="expected a mapping of keys"):
        registry()


# ---------------------------------------------------------------- a user's Chinese type, end to end


def test_recognition_and_file_types_read_the_registry(cn_type, tmp_path):
    from docray.regen.file_types import load_file_types
    from docray.recognition.tasks import load_catalogue

    cat = load_catalogue()
    assert cat.get("doc_type").classes == list(registry().names) and cat.get("doc_type").classes[-1] == CN
    assert cat.for_doc_type(CN) == cat.names()  # a type by_doc_type does not list gets every task
    assert load_catalogue(cat.model_dump()).get("doc_type").classes[-1] == CN  # a stored catalogue keeps its names
    bad = yaml.safe_load(Path("docray/recognition/tasks.yaml").read_text())
    bad["by_doc_type"]["visa"] = ["doc_type"]
    (tmp_path / "tasks.yaml").write_text(yaml.safe_dump(bad))
    with pytest.raises(ValueError, match=r"by_doc_type names unregistered document type\(s\) \['visa'\]"):
        load_catalogue(tmp_path / "tasks.yaml")
    lib = load_file_types()
    assert lib.get(CN) == lib.default and lib.get("passport_page").base == 85
    no_default = lib.model_dump() | {"default": None}
    with pytest.raises(KeyError, match="no entry for document type 'cn_resident_card' and no default"):
        load_file_types(no_default).get(CN)


def test_reader_vocabulary_comes_from_the_texts():
    from docray.models.regen import CHARS, CharTokenizer

    texts = ["王伟", "北京市朝阳区建国路88号", "1987年3月12日", "Anna|Smith"]
    tok = CharTokenizer.from_texts(texts)
    assert tok.chars[: len(CHARS)] == CHARS  # the ASCII ids are unchanged
    assert set("王伟北京年月日号") <= set(tok.chars) and tok.vocab_size == len(set(CHARS + "".join(texts))) + 3
    for text in texts:
        ids = tok.encode(text, 32)
        assert ids[0] == 1 and tok.decode(ids[1:]) == text
    assert CharTokenizer().decode(CharTokenizer().encode("王a", 8)[1:]) == "?a"  # the default set: ASCII
    only = CharTokenizer.from_texts(["男女"], base="")
    assert only.chars == "女男?" and only.decode(only.encode("男人", 8)[1:]) == "男?"
    with pytest.raises(ValueError, match="distinct and include '\\?'"):
        CharTokenizer("ab")


def test_a_chinese_regen_model_saves_its_vocabulary_and_runs_the_pipeline(cn_type, tmp_path, monkeypatch):
    from docray.regen import fields, layout
    from docray.regen.file_types import load_file_types
    from docray.regen.pipeline import RegenCompressor
    from docray.models import build_model, from_pretrained, save_pretrained
    from docray.models.regen import CharTokenizer
    from docray.synth import generate

    rows = generate("documents", 0, 2, seed=0, doc_types=[CN], n_angles=0, size=(96, 64)).to_pylist()
    tok = CharTokenizer.from_texts(f["text"] for r in rows for f in r["clean_fields"])
    torch.manual_seed(0)
    model = build_model("regen_tiny", chars=tok.chars, n_types=len(registry()))
    save_pretrained(model, tmp_path / "m")
    again = from_pretrained(tmp_path / "m")
    assert again.tokenizer.chars == tok.chars and again.cfg.n_types == 7
    text = rows[0]["clean_fields"][0]["text"]
    assert again.tokenizer.decode(again.tokenizer.encode(text, 16)[1:]) == text
    old = build_model("regen_tiny")  # a model saved before `chars` existed: config without it, ASCII
    save_pretrained(old, tmp_path / "old")
    assert from_pretrained(tmp_path / "old").tokenizer.chars == CharTokenizer().chars

    lib = {"first": {"width": 96, "height": 64, "bytes": 30000},
           "default": {"base": 80, "format": "jpeg", "second": {"width": 96, "height": 64, "bytes": 2500}}, "types": {}}
    rc = RegenCompressor(again, file_types=load_file_types(lib))
    assert rc.doc_types == registry().names and rc.predict_types([Image.new("RGB", (96, 64))])[0][0] in rc.doc_types
    img = Image.open(__import__("io").BytesIO(rows[0]["image"]))
    content = rc.read_contents([img], [CN])[0]  # untrained: any text, one value per field of the template
    assert len(layout.split_content(content)) == len(cn_type.fields) == len(fields.value_boxes(CN))
    out = rc.generate([CN], [layout.join_content([f["text"] for f in rows[0]["clean_fields"]])])[0]
    assert out.size == (96, 64)
    monkeypatch.delenv("DOCRAY_DOCTYPES")  # where it runs, its user type must be registered
    with pytest.raises(ValueError, match="trained on 7 document types but only 6 are registered"):
        RegenCompressor(again, file_types=load_file_types(lib))
