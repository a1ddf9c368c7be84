"""train_privacy reads its datasets through Ray Data: faces and masks by URI, an ImageFolder, the collate classes."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import torch

from docray.privacy.data import FacePreprocess, MaskedFaces, face_pixels, faces_from_image_folder, to_tensor
from docray.synth import generate

N_IDS, SAMPLES, SIZE = 6, 10, 32


@pytest.fixture(scope="module")
def faces() -> pa.Table:
    """6 identities x 10 samples, 32 px, split by sample (8 train, 1 val, 1 test each)."""
    return generate("faces", 0, N_IDS * SAMPLES, seed=0, size=SIZE, n_identities=N_IDS)


@pytest.fixture(scope="module")
def datasets(faces, tmp_path_factory) -> dict[str, str]:
    """train / val faces and a 12-mask bank as Parquet folders (written here, not by Ray workers)."""
    root = tmp_path_factory.mktemp("mask-data")
    split = np.asarray(faces.column("split").to_pylist())
    out = {}
    for s in ("train", "val"):
        (root / s).mkdir()
        pq.write_table(faces.filter(pa.array(split == s)).drop_columns(["split"]), root / s / "part-0.parquet")
        out[s] = str(root / s)
    (root / "masks").mkdir()
    pq.write_table(generate("masks", 0, 12, seed=5, size=SIZE), root / "masks" / "part-0.parquet")
    out["masks"] = str(root / "masks")
    return out


def tiny_config(tmp_path, **kw):
    from train_jobs.train_privacy import PrivacyTrainConfig

    return PrivacyTrainConfig(recognizer="recognizer_tiny", inpainter="inpaint_unet_tiny", image_size=SIZE, epochs=1,
                            inpaint_epochs=1, batch_size=8, num_workers=2, cpus_per_worker=0.5, out=str(tmp_path / "run"),
                            **kw)


def test_help_lists_train_and_val(capsys):
    from train_jobs.train_privacy import main

    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    for key in ("train (str", "val (str", "masks (str", "init_from"):
        assert key in text


def test_collate_classes(faces):
    batch = {k: np.asarray(faces.column(k).to_pylist(), dtype=object if k in ("id", "image") else None)
             for k in ("id", "image", "identity")}
    classes = [10 + i for i in range(N_IDS)]  # identity values need not be 0..n-1
    shifted = {**batch, "identity": batch["identity"] + 10}
    x, y = FacePreprocess(SIZE, classes)(shifted)
    assert x.shape == (N_IDS * SAMPLES, 3, SIZE, SIZE) and x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1
    assert torch.equal(y, torch.as_tensor(batch["identity"], dtype=torch.long))
    # the evaluation's pixels (Identities.tensors via face_pixels) are the training's
    assert torch.equal(x, to_tensor(face_pixels(batch["image"], SIZE)))
    # another size is resized, as at inference
    assert FacePreprocess(16, classes)(shifted)[0].shape[-1] == 16
    with pytest.raises(ValueError, match="identity 15 is not one of the 5"):
        FacePreprocess(SIZE, classes[:5])(shifted)

    bank = generate("masks", 0, 6, seed=5, size=SIZE).column("mask").to_pylist()
    fixed = MaskedFaces(SIZE, classes, bank)
    _, _, m = fixed(shifted)
    assert m.shape == (len(y), 1, SIZE, SIZE) and set(m.unique().tolist()) <= {0.0, 1.0}
    rev = {k: v[::-1] for k, v in shifted.items()}
    assert torch.equal(fixed(rev)[2], m.flip(0))  # validation: a row's mask follows its id, not its position
    drawn = MaskedFaces(SIZE, classes, bank, seed=[0, 1])
    a, b = drawn(shifted)[2], drawn(shifted)[2]
    assert not torch.equal(a, b)  # training: drawn afresh for every batch


def test_warm_start_loads_matching_weights(tmp_path):
    from docray.privacy.training import warm_start
    from docray.models import build_model, save_pretrained

    torch.manual_seed(0)
    src = build_model("recognizer_tiny", num_classes=4)
    save_pretrained(src, tmp_path / "rec")
    dst = build_model("recognizer_tiny", num_classes=6)  # other identities: the classifier differs
    loaded, total = warm_start(dst, str(tmp_path / "rec"))
    own, theirs = dst.state_dict(), src.state_dict()
    same = [k for k in own if own[k].shape == theirs[k].shape]
    assert loaded == len(same) < total
    assert all(torch.equal(own[k], theirs[k]) for k in same)
    with pytest.raises(ValueError, match="no weight matches"):
        warm_start(build_model("inpaint_unet_tiny"), str(tmp_path / "rec"))


def test_two_workers_train_from_datasets_by_uri(ray_cluster, datasets, tmp_path, home):
    from docray.storage.registry import ModelRegistry
    from train_jobs.train_privacy import run

    cfg = tiny_config(tmp_path, train=datasets["train"], val=datasets["val"], masks=datasets["masks"], models=["masked"])
    version, metrics = run(cfg)["masked"]
    assert metrics["worker_imported_synth"] == 0 and metrics["train_samples_per_s"] > 0
    assert metrics["steps"] == 48 // 2 // 8  # 48 training rows, 2 workers, batch 8: the same on both ranks
    assert np.isfinite(metrics["loss"]) and 0 <= metrics["val_acc_whole"] <= 1 and 0 <= metrics["val_acc_masked"] <= 1
    _, config, _ = ModelRegistry().load("mask_recognizer_masked", version)
    assert config["overrides"]["num_classes"] == N_IDS  # the classes are the training set's identities
    card = ModelRegistry().card("mask_recognizer_masked", version)  # the model card names the datasets it read
    assert {k: d["uri"] for k, d in card["datasets"].items()} == {k: datasets[k] for k in ("train", "val", "masks")}
    assert card["key_metric"] == "val_acc_masked" and card["hardware"]["num_workers"] == 2


def test_validation_sums_add_up_over_shards(faces):
    """Each rank sums its val shard (evaluate), all_sum adds them: two halves give the whole's metrics."""
    from docray.privacy.training import evaluate, val_metrics
    from docray.models import build_model

    torch.manual_seed(0)
    bank = generate("masks", 0, 6, seed=5, size=SIZE).column("mask").to_pylist()
    prep = MaskedFaces(SIZE, list(range(N_IDS)), bank)
    rows = {k: faces.column(k).to_pylist() for k in ("id", "image", "identity")}
    whole = [prep({k: v[:40] for k, v in rows.items()})]
    halves = [prep({k: v[:25] for k, v in rows.items()}), prep({k: v[25:40] for k, v in rows.items()})]
    models = {"masked": build_model("recognizer_tiny", num_classes=N_IDS), "inpaint": build_model("inpaint_unet_tiny")}
    for kind, model in models.items():
        one, two = evaluate(model, kind, whole), [evaluate(model, kind, [h]) for h in halves]
        assert val_metrics({k: two[0][k] + two[1][k] for k in one}) == pytest.approx(val_metrics(one), rel=1e-5)
    x, y, m = whole[0]
    rec = models["masked"].eval()
    with torch.no_grad():
        want = {"val_acc_whole": rec(x).argmax(1).eq(y).float().mean().item(),
                "val_acc_masked": rec(x * m).argmax(1).eq(y).float().mean().item()}
    assert val_metrics(evaluate(rec, "masked", whole)) == pytest.approx(want)
    assert evaluate(rec, "masked", []) == {"correct_whole": 0.0, "correct_masked": 0.0, "n": 0.0}  # an empty shard


def test_bad_datasets_are_named(ray_cluster, datasets, tmp_path, home):
    from train_jobs.train_privacy import run

    bad = tmp_path / "bad"
    bad.mkdir()
    pq.write_table(pq.read_table(datasets["val"]).drop_columns(["identity"]), bad / "part-0.parquet")
    with pytest.raises(ValueError, match=r"no column\(s\) \['identity'\]"):
        run(tiny_config(tmp_path, train=datasets["train"], val=str(bad), masks=datasets["masks"]))
    with pytest.raises(ValueError, match=r"no column\(s\) \['split'\]"):  # one dataset, no split to take val from
        run(tiny_config(tmp_path, train=datasets["train"], masks=datasets["masks"]))
    pq.write_table(pq.read_table(datasets["masks"]).drop_columns(["mask"]), bad / "part-0.parquet")
    with pytest.raises(ValueError, match=r"masks dataset has no column\(s\) \['mask'\]"):
        run(tiny_config(tmp_path, train=datasets["train"], val=datasets["val"], masks=str(bad)))
    other = pq.read_table(datasets["val"])
    pq.write_table(other.set_column(other.schema.get_field_index("identity"), "identity",
                                    pc.add(other.column("identity"), 100)), bad / "part-0.parquet")
    with pytest.raises(ValueError, match="6 validation identities never appear in training"):
        run(tiny_config(tmp_path, train=datasets["train"], val=str(bad), masks=datasets["masks"]))
    nulls = pa.array([None, *other.column("identity").to_pylist()[1:]], pa.int32())
    pq.write_table(other.set_column(other.schema.get_field_index("identity"), "identity", nulls), bad / "part-0.parquet")
    with pytest.raises(ValueError, match=r"1 val row\(s\) have no identity"):
        run(tiny_config(tmp_path, train=datasets["train"], val=str(bad), masks=datasets["masks"]))


def test_image_folder_is_imported_and_trained(ray_cluster, faces, datasets, tmp_path, home):
    from docray.imageio import decode_image
    from train_jobs.train_privacy import run

    root = tmp_path / "lfw"
    names = ["Ada_L", "Bo_K", "Cy_D", "Di_P", "Ed_S", "Flo_R"]
    for row in faces.to_pylist():
        folder = root / names[row["identity"]]
        folder.mkdir(parents=True, exist_ok=True)
        decode_image(row["image"]).resize((40, 40)).save(folder / f"{row['sample']:04d}.png")  # not image_size
    table = faces_from_image_folder(str(root))
    assert table.column("id").to_pylist()[:2] == ["Ada_L/0000.png", "Ada_L/0001.png"]
    assert table.column("split").to_pylist()[:10] == ["train"] * 8 + ["val", "test"]
    version, metrics = run(tiny_config(tmp_path, data=str(root), masks=datasets["masks"], models=["inpaint"]))["inpaint"]
    assert metrics["worker_imported_synth"] == 0 and metrics["steps"] == 3 and 0 < metrics["val_hole_l1"] < 1
    assert (tmp_path / "run" / "data" / "faces").is_dir()
