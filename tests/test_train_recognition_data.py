"""pretrain_recognition and train_recognition read documents through Ray Data: datasets by URI, 2 workers, no
generator in a worker, rows with missing labels, a killed worker that resumes from its checkpoint."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml

N_TRAIN, N_VAL = 32, 8
TINY_UNIFIED = ["model=unified_tiny", "text_encoder=hash", "encoder_from=", "batch_size=4", "num_workers=2",
                "cpus_per_worker=0.5", "register_as="]


def _numpy(table: pa.Table) -> dict:
    """Columns as Ray Data hands them to a collate_fn (numpy arrays, object for bytes and lists)."""
    return {c: table.column(c).to_numpy(zero_copy_only=False) for c in table.column_names}


def _null(table: pa.Table, column: str, rows: list[int]) -> pa.Table:
    values = table.column(column).to_pylist()
    for i in rows:
        values[i] = None
    return table.set_column(table.schema.get_field_index(column), column, pa.array(values, table.schema.field(column).type))


@pytest.fixture(scope="module")
def docs(tmp_path_factory):
    """A documents dataset written by the test itself, as a user's would be: only the columns
    recognition reads, `quality` missing in every 4th row and `flash` in every 5th."""
    from docray.recognition.data import DOC_OPTIONS
    from docray.synth import generate

    root = tmp_path_factory.mktemp("recognition-docs")
    table = generate("documents", 0, N_TRAIN + N_VAL, seed=3, **DOC_OPTIONS).drop_columns(["clean", "clean_fields"])
    table = _null(_null(table, "quality", list(range(0, N_TRAIN + N_VAL, 4))), "flash", list(range(1, N_TRAIN + N_VAL, 5)))
    for split, rows in (("train", table.slice(0, N_TRAIN)), ("val", table.slice(N_TRAIN))):
        (root / split).mkdir()
        pq.write_table(rows, root / split / "part-0.parquet")
    return root


# -- the preprocessing class (no Ray) -----------------------------------------------------------------


def test_document_batch_asks_each_document_only_what_it_has_labels_for(docs):
    from docray.recognition.data import DocumentBatch, doc_types
    from docray.recognition.engine import LossWeights, compute_loss, model_inputs, task_slots
    from docray.recognition.tasks import load_catalogue
    from docray.recognition.text import embed_texts
    from docray.models import build_model

    cat = load_catalogue()
    table = pq.read_table(docs / "train").slice(0, 8).drop_columns(["seg"])  # no segmentation labels at all
    batch = DocumentBatch(cat, 32)(_numpy(table))
    lab = batch["labelled"]
    has_q = [q is not None for q in table.column("quality").to_pylist()]
    has_f = [f is not None for f in table.column("flash").to_pylist()]
    assert lab[:, cat.index("capture_quality")].tolist() == has_q and not all(has_q)
    assert lab[:, cat.index("screen_recapture")].tolist() == has_f and not all(has_f)
    assert not lab[:, cat.index("layout_segmentation")].any() and lab[:, cat.index("doc_type")].all()
    names = table.column("doc_type_name").to_pylist()
    assert batch["targets"]["doc_type"].tolist() == [doc_types(cat).index(n) for n in names]
    assert batch["image"].shape == (8, 3, 32, 32) and batch["flash"].shape == (8, 1, 3, 32, 32)

    torch.manual_seed(0)
    model = build_model("unified_tiny", catalogue=cat.model_dump())
    model.set_query_text(embed_texts([t.query for t in cat.tasks], "hash"))
    slots = task_slots(cat, 0, frame_tasks_per_batch=2)
    inputs = model_inputs(batch, cat, slots, "cpu")
    assert (inputs["task_ids"] == -1).equal(~lab[:, slots])  # the unlabelled pairs are not asked
    loss, parts = compute_loss(model(**inputs, route="type"), batch, cat, slots, LossWeights())
    assert torch.isfinite(loss) and "layout_segmentation" not in parts and "capture_quality" in parts

    table = table.set_column(table.schema.get_field_index("doc_type_name"), "doc_type_name",
                             pa.array(["alien_permit"] * 8))
    with pytest.raises(ValueError, match="alien_permit"):
        DocumentBatch(cat, 32)(_numpy(table))


def test_views_decoded_once_are_the_views_mae_trained_on(docs):
    """DocumentViews (once, in Ray Data) + ViewBatch (per step) give the images DocumentImages gave."""
    from docray.recognition.data import DocumentImages, DocumentViews, ViewBatch

    rows = _numpy(pq.read_table(docs / "train").slice(0, 6))  # row 1 has no flash frame
    for frames in (True, False):
        direct = DocumentImages(32, frames)(rows)
        stored = DocumentViews(32, frames)(rows)["views"]
        assert len(stored) == 6 and len(stored[1]) < len(stored[0]) if frames else all(len(v) == 1 for v in stored)
        batched = ViewBatch(32)({"views": stored})
        assert batched.shape == direct.shape and batched.dtype == torch.uint8
        key = lambda t: sorted(x.numpy().tobytes() for x in t)  # noqa: E731 -- the same images, another order
        assert key(batched) == key(direct)
        one_each = DocumentViews(32, frames, per_view=True)(rows)["views"]  # a row per view: shuffled apart
        assert all(len(v) == 1 for v in one_each) and key(ViewBatch(32)({"views": one_each})) == key(direct)


def test_views_are_counted_from_the_frame_columns(ray_cluster, docs):
    import ray

    from docray.recognition.data import DocumentImages, count_views

    table = pq.read_table(docs / "train")
    ds = ray.data.from_arrow(table)
    for frames in (True, False):
        assert count_views(ds, frames) == len(DocumentImages(32, frames)(_numpy(table)))


def test_documents_decoded_once_give_the_batch_of_encoded_ones(docs):
    """DocumentPixels (once, in Ray Data) + DocumentBatch give what DocumentBatch gives on the encoded
    rows: the same pixels, frames (row 1 has no flash) and targets (boxes need the capture's size)."""
    from docray.recognition.data import DocumentBatch, DocumentPixels
    from docray.recognition.tasks import load_catalogue

    cat, table = load_catalogue(), pq.read_table(docs / "train").slice(0, 6)
    direct = DocumentBatch(cat, 32)(_numpy(table))
    decoded = DocumentPixels(32)(table)
    assert len(decoded.column("image")[0].as_py()) == 3 * 32 * 32 and "image_w" in decoded.column_names
    again = DocumentBatch(cat, 32)(_numpy(decoded))
    for key in ("image", "flash", "angles", "attr_cat", "attr_num", "task_set", "labelled"):
        assert again[key].equal(direct[key]), key
    for task, target in direct["targets"].items():
        assert torch.as_tensor(again["targets"][task]).equal(torch.as_tensor(target)), task
    assert "flash" not in DocumentPixels(32, frames=False)(table).column_names


def test_check_labels_names_what_a_dataset_lacks(ray_cluster, docs):
    import ray.data

    from docray.recognition.data import check_labels
    from docray.recognition.tasks import load_catalogue, subset

    cat = load_catalogue()
    table = pq.read_table(docs / "val")
    counts = check_labels(ray.data.from_arrow(table), cat)
    assert counts["capture_quality"] == sum(q is not None for q in table.column("quality").to_pylist()) < N_VAL
    with pytest.raises(ValueError, match=r"'seal_color' needs column\(s\) \['seal_color'\]"):
        check_labels(ray.data.from_arrow(table.drop_columns(["seal_color"])), cat)
    with pytest.raises(ValueError, match=r"no row labels task\(s\) 'capture_quality' \(columns \['quality'\]\)"):
        check_labels(ray.data.from_arrow(_null(table, "quality", list(range(N_VAL)))), subset(cat, ["capture_quality"]))
    odd = table.set_column(table.schema.get_field_index("doc_type_name"), "doc_type_name", pa.array(["x"] * N_VAL))
    with pytest.raises(ValueError, match=r"unknown document type\(s\) \['x'\]"):
        check_labels(ray.data.from_arrow(odd), subset(cat, ["doc_type"]), require=False)


@pytest.mark.parametrize("job", ["pretrain_recognition", "train_recognition"])
def test_help_lists_the_datasets(job, capsys):
    import importlib

    with pytest.raises(SystemExit):
        importlib.import_module(f"train_jobs.{job}").main(["--help"])
    out = capsys.readouterr().out
    assert "\n  train (str, default ''): training documents" in out and "\n  val (str, default ''): validation" in out
    assert "\n  init_from (str, default '')" in out


def test_only_train_or_only_val_is_an_error(ray_cluster, docs):
    from train_jobs.pretrain_recognition import RecognitionPretrainConfig, documents_datasets

    with pytest.raises(ValueError, match="both train= and val="):
        documents_datasets(RecognitionPretrainConfig(train=str(docs / "train")), ["image"], ("image",))
    c = RecognitionPretrainConfig(train=str(docs / "train"), val=str(docs / "val"))
    with pytest.raises(ValueError, match=r"train dataset .*missing column\(s\) \['portrait'\]"):
        documents_datasets(c, ["image"], ("image", "portrait"))


# -- the trainers on Ray ---------------------------------------------------------------------------------


@pytest.mark.e2e
def test_mae_pretrain_killed_worker_resumes_from_its_checkpoint(ray_cluster, docs, tmp_path):
    """2 workers on a dataset URI, from a registered encoder; rank 0's process dies in epoch 1 and
    the restarted group resumes from epoch 0's checkpoint."""
    from PIL import Image

    from docray.models import build_model
    from docray.storage.registry import ModelRegistry
    from train_jobs import pretrain_recognition

    start = pretrain_recognition.RecognitionPretrainConfig(model="vit_mae_tiny", register_as="test-start-encoder")
    pretrain_recognition.register_encoder(start, build_model("vit_mae_tiny").state_dict(), {})
    steps = N_TRAIN // 2 // 4  # each worker's 16 documents in batches of 4
    out = tmp_path / "mae"
    r = pretrain_recognition.main(["--set", "model=vit_mae_tiny", f"train={docs / 'train'}", f"val={docs / 'val'}",
                           "init_from=registry:test-start-encoder", "epochs=2", "batch_size=4", "num_workers=2",
                           "cpus_per_worker=0.5", f"exit_at_step={steps + 1}", "register_as=test-mae-uri", f"out={out}"])
    assert (out / ".exited_once").exists()
    assert r["resumed_at_epoch"] == 1 and r["epochs"] == 2 and r["steps"] == 2 * steps
    assert r["worker_imported_synth"] is False
    assert np.isfinite(r["loss"]) and np.isfinite(r["val_loss"])
    for epoch in (0, 1):
        w, h = Image.open(out / "grids" / f"epoch_{epoch:03d}.png").size
        assert w % 3 == 0 and h == N_VAL // 2 * (w // 3)  # original | masked | reconstruction of rank 0's val images
    state, config, _ = ModelRegistry().load("test-mae-uri")
    assert config["name"] == "vit_encoder_tiny" and config["pretrain"]["train"] == str(docs / "train")


def test_unified_train_two_workers_fine_tune_from_a_folder(ray_cluster, docs, tmp_path):
    """2 workers on a dataset URI with missing labels, from a saved model (init_from), stopped by its
    time budget; the val metrics cover every val row: those of the final model evaluated here."""
    from docray.models import build_model, save_pretrained
    from docray.recognition.data import DocumentBatch
    from docray.recognition.engine import evaluate
    from docray.recognition.predictor import load_unified
    from docray.storage.registry import ModelRegistry
    from train_jobs import train_recognition

    base = train_recognition.RecognitionTrainConfig(model="unified_tiny", text_encoder="hash", encoder_from="", seed=1)
    torch.manual_seed(7)
    start, _ = train_recognition.build(base)
    save_pretrained(start, tmp_path / "start")
    save_pretrained(build_model("vit_encoder_tiny"), tmp_path / "encoder")  # not a unified model: a clear error
    with pytest.raises(ValueError, match="none of its tensors fit"):
        train_recognition.main(["--set", *TINY_UNIFIED, f"init_from={tmp_path / 'encoder'}"])
    r = train_recognition.main(["--set", *TINY_UNIFIED, f"train={docs / 'train'}", f"val={docs / 'val'}", "epochs=2",
                            "time_budget_s=0.001", f"init_from={tmp_path / 'start'}", "lr=1e-12", "encoder_lr=1e-12",
                            "register_as=test-unified-uri", f"out={tmp_path / 'run'}"])
    assert r["worker_imported_synth"] is False and np.isfinite(r["loss"])
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["steps_per_epoch"] == N_TRAIN // 2 // 4 and saved["train"] == str(docs / "train")
    assert r["steps"] == 1 and r["epochs"] == 1  # the time budget: one decision after the first step, on both ranks
    model = load_unified("test-unified-uri")
    for k, v in start.state_dict().items():  # init_from loaded every tensor (a learning rate of 1e-12 kept them)
        assert torch.allclose(model.state_dict()[k], v, atol=1e-6), k
    cat = model.catalogue
    whole = evaluate(model, [DocumentBatch(cat, model.image_size)(_numpy(pq.read_table(docs / "val")))], cat, "cpu")
    assert set(whole) == {k.removeprefix("val/") for k in r if k.startswith("val/")}
    for k, v in whole.items():
        assert r[f"val/{k}"] == pytest.approx(v, abs=1e-5), k
    assert ModelRegistry().load("test-unified-uri")[1]["train"]["init_from"] == str(tmp_path / "start")


@pytest.mark.e2e
def test_a_run_repeats_with_its_seed(ray_cluster, tmp_path):
    """One worker, the same seed, twice, on a dataset of several files (so several blocks to order):
    the same rows in the same order every epoch (seeded block order and shuffle buffer, rows kept in
    order), so the same weights."""
    from docray.recognition.data import DOC_OPTIONS
    from docray.storage.registry import ModelRegistry
    from docray.synth import generate
    from train_jobs import pretrain_recognition

    table = generate("documents", 0, 80, seed=4, **DOC_OPTIONS).select(["id", "image", "flash", "angles"])
    for split, (lo, hi) in {"train": (0, 72), "val": (72, 80)}.items():
        (tmp_path / split).mkdir()
        for j in range(lo, hi, 8):
            pq.write_table(table.slice(j, 8), tmp_path / split / f"part-{j:03d}.parquet")

    def weights(name: str) -> dict:
        pretrain_recognition.main(["--set", "model=vit_mae_tiny", f"train={tmp_path / 'train'}", f"val={tmp_path / 'val'}",
                                   "epochs=2", "batch_size=8", "shuffle_buffer=16", f"register_as={name}",
                                   f"out={tmp_path / name}"])
        return ModelRegistry().load(name)[0]

    a, b = weights("test-repeat-a"), weights("test-repeat-b")
    assert all(torch.equal(a[k], b[k]) for k in a)
