"""A user's own data, end to end: a dataset the synthetic world did not draw (tests/own_world.py: own
fonts, sizes and backgrounds, one Chinese-language document type added by a template file alone) is
imported, validated, and trains every method for one short epoch on local Ray."""
from __future__ import annotations


import pytest
from click.testing import CliRunner

from tests import own_world

TYPES = ["identity_card", "passport_page", "driving_licence", "cn_resident_card"]


@pytest.fixture(scope="module")
def own(cn_type, tmp_path_factory):
    """Every kind imported with `docray data import` from the layouts users have."""
    from docray.cli import main

    src, out = tmp_path_factory.mktemp("own-src"), tmp_path_factory.mktemp("own-data")
    own_world.write_documents(src / "documents", TYPES, per_type=10)
    own_world.write_faces(src / "faces", identities=6, per_identity=10)
    own_world.write_targets(src / "targets", 24)
    own_world.write_masks(src / "masks", 16)
    for kind in ("documents", "faces", "targets", "masks"):
        split = [] if kind == "masks" else ["--split", "--val-fraction", "0.2"]
        res = CliRunner().invoke(main, ["data", "import", kind, str(src / kind), str(out / kind), *split])
        assert res.exit_code == 0, res.output
    return out


def test_the_imported_datasets_validate_for_their_methods(own):
    from docray.cli import main

    for kind, path, method in (("documents", "documents/train", "regen"), ("documents", "documents/val", "unified"),
                               ("faces", "faces/train", "mask"), ("targets", "targets/train", "screening"),
                               ("masks", "masks", "mask")):
        res = CliRunner().invoke(main, ["data", "validate", kind, str(own / path), "--method", method])
        assert res.exit_code == 0, res.output


@pytest.mark.e2e
def test_every_method_trains_one_short_epoch_on_it(ray_cluster, own, tmp_path):
    from docray.storage.datasets import read_table
    from train_jobs import pretrain_recognition, train_screening, train_privacy, train_regen, train_recognition

    docs = {"train": str(own / "documents" / "train"), "val": str(own / "documents" / "val")}
    names = read_table(docs["train"], columns=["doc_type_name"]).column("doc_type_name").to_pylist()
    assert "cn_resident_card" in names and len(set(names)) == len(TYPES)
    common = ["num_workers=1", "cpus_per_worker=1", "epochs=1"]

    mae = pretrain_recognition.main(["--set", f"train={docs['train']}", f"val={docs['val']}", "model=vit_mae_tiny", "image_size=32",
                             "batch_size=8", "register_as=", f"out={tmp_path / 'mae'}", *common])
    assert mae["epochs"] == 1 and mae["loss"] > 0

    uni = train_recognition.main(["--set", f"train={docs['train']}", f"val={docs['val']}", "model=unified_tiny",
                              "encoder_from=", "text_encoder=hash", "tasks=[doc_type,layout_detection]", "batch_size=8", "register_as=",
                              f"out={tmp_path / 'unified'}", *common])
    assert 0 <= uni["val/doc_type"] <= 1 and 0 <= uni["val/layout_detection"] <= 1

    regen = train_regen.run(train_regen.RegenTrainConfig(
        model="regen_tiny", train=docs["train"], val=docs["val"], max_epochs=1, batch_size=8, to_registry=False,
        num_workers=1, out=str(tmp_path / "regen"), calibrate_search_others=0))  # the search: test_regen_gate
    assert regen["metrics"]["val_content"] > 0
    from docray.models import from_pretrained

    reader = from_pretrained(regen["model_dir"]).tokenizer
    assert "姓" not in reader.chars and any("\u4e00" <= ch <= "\u9fff" for ch in reader.chars)  # values' characters

    desc = train_screening.run(train_screening.ScreeningTrainConfig(
        model="descriptor_tiny", train=str(own / "targets" / "train"), val=str(own / "targets" / "val"),
        background=str(own / "targets" / "val"), epochs=1, batch_size=32, background_distractors=8,
        to_registry=False, num_workers=1, out=str(tmp_path / "descriptor"),
        calibrate_queries=0))  # the threshold's calibration: test_train_screening_data
    assert 0 <= desc["metrics"]["val_top1"] <= 1

    masks = train_privacy.run(train_privacy.PrivacyTrainConfig(
        train=str(own / "faces" / "train"), val=str(own / "faces" / "val"), masks=str(own / "masks"),
        recognizer="recognizer_tiny", inpainter="inpaint_unet_tiny", image_size=32, epochs=1, inpaint_epochs=1,
        batch_size=8, num_workers=1, out=str(tmp_path / "masks")))
    assert set(masks) == {"original", "masked", "inpaint"}  # kind -> (registry version, metrics)
    assert all(m["worker_imported_synth"] == 0 for _, m in masks.values())
