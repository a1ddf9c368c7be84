"""The descriptor's training data through Ray Data: CopyPairBatch (collate_fn), datasets by URI, a 2-worker run."""
from __future__ import annotations

import io
import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image, ImageDraw

from docray.screening.augment import EDIT_KINDS
from docray.screening.data import WHOLE, CopyPairBatch, EditedTileBatch, passes_per_epoch, raw_tiles, tile_key, tiles_of
from docray.screening.postings import POSTINGS, upload


def picture(i: int, size: int = 96) -> Image.Image:
    """A picture the synthetic world did not draw: shapes and a line of text on a plain colour."""
    rng = np.random.default_rng([7, i])
    img = Image.new("RGB", (size, size), tuple(int(c) for c in rng.integers(0, 256, 3)))
    d = ImageDraw.Draw(img)
    for _ in range(10):
        x, y = (int(v) for v in rng.integers(0, size, 2))
        w, h = (int(v) for v in rng.integers(8, size // 2, 2))
        d.rectangle([x, y, x + w, y + h], fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
    d.text((4, size // 2), f"No {i * 7919} Elm St", fill=(0, 0, 0))
    return img


def png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def batch_of(ids: list[str], pictures: list[Image.Image]) -> dict:
    """Numpy columns, as iter_torch_batches hands a batch to its collate_fn."""
    return {"id": np.array(ids, dtype=object), "image": np.array([png(p) for p in pictures], dtype=object)}


def write_pictures(folder, ids: list[str], pictures: list[Image.Image], columns=("id", "image")) -> str:
    """A targets dataset with only the columns the contract requires, in two Parquet files."""
    data = {"id": pa.array(ids, pa.string()), "image": pa.array([png(p) for p in pictures], pa.binary())}
    t = pa.table({c: data[c] for c in columns})
    folder.mkdir(parents=True)
    half = t.num_rows // 2
    pq.write_table(t.slice(0, half), folder / "part-0.parquet")
    pq.write_table(t.slice(half), folder / "part-1.parquet")
    return str(folder)


def test_copy_pair_batch_cuts_tiles_draws_views_and_keys():
    pics, ids = [picture(i) for i in range(3)], ["p0", "p1", "p2"]
    batch = batch_of(ids, pics)
    tiles = {tile_key(pid, i): t for pid, p in zip(ids, pics) for i, t in tiles_of(p)}
    assert len(tiles) == len(raw_tiles(pics)) > 30  # keys distinct over pictures and tile indices
    xa, xb, keys = CopyPairBatch(32, distractor_rate=0.3, seed=0, epoch=0)(batch)
    assert xa.shape == xb.shape == (len(tiles), 3, 32, 32) and keys.dtype == torch.int64
    whole = {tile_key(pid, WHOLE) for pid in ids}
    n_whole = sum(int(k) in whole for k in keys)
    assert all(int(k) in tiles or int(k) in whole for k in keys)
    assert 0.1 * len(keys) < n_whole < 0.5 * len(keys)  # ~30% of the items are whole pictures
    # the same (seed, epoch, key) -> the same item, however the pictures were batched (split over workers)
    apart = [CopyPairBatch(32, distractor_rate=0.3, seed=0, epoch=0)(batch_of([pid], [p])) for pid, p in zip(ids, pics)]
    assert torch.equal(torch.cat([a[1] for a in apart]), xb) and torch.equal(torch.cat([a[2] for a in apart]), keys)
    next_epoch = CopyPairBatch(32, distractor_rate=0.3, seed=0, epoch=1)(batch)
    assert not torch.equal(next_epoch[1], xb)  # new edits each epoch
    # tiles_per_picture 5: 5 textured tiles of each picture a pass; the 7 passes of an epoch take every tile
    assert passes_per_epoch(5) == 7 and passes_per_epoch(0) == 1
    parts = [[CopyPairBatch(32, seed=0, epoch=e, tiles_per_picture=5, part=p)(batch)[2].tolist() for p in range(7)]
             for e in (0, 1)]
    for epoch in parts:
        assert all(len(p) == 15 for p in epoch) and set(sum(epoch, [])) == set(tiles)
    assert parts[0][0] != parts[1][0]  # another share next epoch
    _, grey, _ = CopyPairBatch(32, grey_rate=1.0)(batch)
    assert torch.equal(grey[:, 0], grey[:, 1]) and torch.equal(grey[:, 1], grey[:, 2])  # every copy went grey
    # validation: clean tiles and their copies, no distractors, the same edits whatever the epoch
    clean, edited, vkeys = EditedTileBatch(32)(batch)
    assert [int(k) for k in vkeys] == list(tiles) and not torch.equal(clean, edited)
    from docray.screening.augment import to_tensor

    assert torch.equal(clean, to_tensor(list(tiles.values()), 32))
    # a batch whose tiles are all flat is empty (the trainer steps with a zero loss)
    xa, xb, keys = CopyPairBatch(32)(batch_of(["flat"], [Image.new("RGB", (96, 96), (90, 90, 90))]))
    assert xa.shape == xb.shape == (0, 3, 32, 32) and keys.shape == (0,)


def test_sscd_edits_keep_size_and_type():
    from docray.screening.augment import area_crop, blur, collage, sscd_edit

    tile, others = picture(0, 80).crop((0, 0, 80, 60)), [picture(1), picture(2)]
    for k in range(20):
        rng = np.random.default_rng(k)
        c = area_crop(tile, rng)
        assert c.width * c.height >= 80 * 60 / 9 - 80 and c.width <= 80 and c.height <= 60  # down to a ninth
        for out in (blur(tile, rng), collage(tile, rng, others), collage(tile, rng), sscd_edit(tile, rng, others)):
            assert out.size == (80, 60) and out.mode == "RGB"
    assert np.asarray(blur(tile, np.random.default_rng(0))).std() < np.asarray(tile).std()
    # the training pairs under edits="sscd": the same shapes and keys as the default edits, other copies
    batch = batch_of(["p0", "p1"], [picture(0), picture(1)])
    xa, xb, keys = CopyPairBatch(32, seed=0, tiles_per_picture=4)(batch)
    sa, sb, skeys = CopyPairBatch(32, seed=0, tiles_per_picture=4, edits="sscd")(batch)
    assert sa.shape == sb.shape == xa.shape == (8, 3, 32, 32) and torch.equal(skeys, keys)
    assert torch.equal(sa, xa) and not torch.equal(sb, xb)  # the library view is the same, the copy is not
    with pytest.raises(ValueError, match="edits"):
        CopyPairBatch(32, edits="heavy")


def test_help_lists_the_dataset_fields(capsys):
    from train_jobs.train_screening import main

    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for key in ("train", "val", "background", "init_from"):
        assert f"  {key} (str" in out
    assert "  synth_mix (float, default 0.0)" in out and "  edits (Literal, default 'default')" in out


def test_a_dataset_missing_the_image_column_is_named(ray_cluster, tmp_path):
    from train_jobs.train_screening import ScreeningTrainConfig, run

    bad = write_pictures(tmp_path / "bad", ["a", "b"], [picture(0), picture(1)], columns=("id",))
    good = write_pictures(tmp_path / "good", ["c", "d"], [picture(2), picture(3)])
    with pytest.raises(ValueError, match=r"train dataset .*bad.*no column 'image'"):
        run(ScreeningTrainConfig(model="descriptor_tiny", train=bad, val=good, out=str(tmp_path / "run")))


@pytest.mark.parametrize("mix", [0.0, 0.5])
def test_synthetic_default_train_split_val_and_background(ray_cluster, home, mix):
    from docray.synth import generate
    from docray.storage.datasets import read_table
    from train_jobs.train_screening import (CALIBRATION_START, LIBRARY_START, ScreeningTrainConfig, calibration_uri,
                                            library_uri, read_background, training_datasets)

    cfg = ScreeningTrainConfig(n_pictures=20, val_pictures=4, background_pictures=1, background_distractors=3,
                               synth_mix=mix, calibrate_pictures=2, calibrate_library_pictures=2)
    ds = training_datasets(cfg)
    rows = sorted((r["id"], r["image"]) for r in ds["train"].take_all())
    assert [i for i, _ in rows] == [f"tgt-0-{i:07d}" for i in range(20) if i % 10 < 8]  # the 'train' split of rows 0..19
    assert sorted(r["id"] for r in ds["val"].take_all()) == [f"tgt-0-{i:07d}" for i in range(20, 24)]
    assert ds["train"].schema().names == ["id", "image"]
    want = generate("targets", 0, 20, seed=0, mix=mix).column("image").to_pylist()  # the mix's pictures, or posters
    assert [img for _, img in rows] == [want[i] for i in range(20) if i % 10 < 8]
    bg = read_background(cfg)
    want = generate("targets", 24, 27, seed=0).column("image").to_pylist()  # the rows after train and val
    assert sorted(bg) == sorted(want)
    cal = sorted(read_table(calibration_uri(cfg)).column("id").to_pylist())  # calibration: far past all those
    assert cal == [f"tgt-0-{i:07d}" for i in (CALIBRATION_START, CALIBRATION_START + 1)]
    more = sorted(read_table(library_uri(cfg)).column("id").to_pylist())  # the calibration library's: past the re-ranker's
    assert more == [f"tgt-0-{i:07d}" for i in (LIBRARY_START, LIBRARY_START + 1)]
    assert library_uri(cfg.model_copy(update={"calibrate_library_pictures": 0})) == ""


def test_a_tiny_run_on_the_procedural_mix_with_sscd_edits(ray_cluster, home, tmp_path):
    """`--set synth_mix=0.5 edits=sscd`: the synthetic default through the same dataset path, 2 steps."""
    from docray.config import parse_args
    from train_jobs.train_screening import ScreeningTrainConfig, run

    res = run(parse_args(ScreeningTrainConfig, ["--set", "model=descriptor_tiny", "synth_mix=0.5", "edits=sscd", "n_pictures=10", "val_pictures=4",
                "epochs=1", "steps_per_epoch=2", "batch_size=16", "background_pictures=1", "background_distractors=2",
                "calibrate_queries=0", "to_registry=false", f"out={tmp_path / 'run'}"]))
    m = res["metrics"]
    assert m["steps_per_epoch"] == 2 and math.isfinite(m["loss"]) and 0 <= m["val_top1"] <= 1
    assert m["worker_imported_synth"] is False and m["train_samples_per_s"] > 0
    assert any(p.name.startswith("targets-") for p in (home / "datasets" / "synth").iterdir())


def test_two_workers_train_on_a_dataset_given_by_uri(ray_cluster, home, tmp_path):
    """24 train / 8 val pictures of size 96, none from the synthetic world: one epoch on 2 workers, then
    the threshold calibrated on 8 more pictures, and a re-ranker fitted on them too (a smoke size)."""
    from docray.screening.embed import Embedder
    from train_jobs.common import steps_per_epoch
    from train_jobs.train_screening import ScreeningTrainConfig, run

    train = write_pictures(tmp_path / "train", [f"t{i}" for i in range(24)], [picture(i) for i in range(24)])
    val_pics = [picture(100 + i) for i in range(8)]
    val = write_pictures(tmp_path / "val", [f"v{i}" for i in range(8)], val_pics)
    bg_pics = [picture(200 + i) for i in range(4)]
    background = write_pictures(tmp_path / "bg", [f"b{i}" for i in range(4)], bg_pics)
    calibrate = tmp_path / "cal"  # the targets contract with is_target: 4 sensitive pictures, 4 benign
    calibrate.mkdir()
    pq.write_table(pa.table({"id": [f"c{i}" for i in range(8)], "image": [png(picture(300 + i)) for i in range(8)],
                             "is_target": [i % 2 == 0 for i in range(8)]}), calibrate / "part-0.parquet")
    cfg = ScreeningTrainConfig(model="descriptor_tiny", train=train, val=val, background=background, epochs=1,
                                batch_size=32, num_workers=2, cpus_per_worker=0.5, background_pictures=2,
                                background_distractors=4, to_registry=False, out=str(tmp_path / "run"),
                                calibrate=str(calibrate), calibrate_library=background, calibrate_queries=4,
                                max_fpr=0.25, rerank_queries=4,
                                rerank_pictures=str(calibrate))
    res = run(cfg)
    m = res["metrics"]
    assert m["worker_imported_synth"] is False  # no worker imported the synthetic world
    # 32 tiles a step over 2 workers, 2 tiles a picture: 8 pictures a step on each, 1 step a pass over
    # its 12 pictures, 18 passes to take every tile once
    assert m["steps_per_epoch"] == steps_per_epoch(24, 8, 2) * 18 == 18 and m["tiles_per_step"] == 32
    assert m["val_tiles"] == len(raw_tiles(val_pics))  # both workers' val shards, gathered
    assert 0 <= m["val_top1"] <= 1 and math.isfinite(m["loss"])
    bank = Embedder.load(res["model_dir"]).background
    assert bank.shape == (len(raw_tiles(bg_pics[:2])) + 4, 32)  # tiles of 2 pictures + 4 whole ones
    cal = Embedder.load(res["model_dir"]).calibration  # calibrated after training: calibration.json beside it
    assert cal == res["calibration"] and cal["pictures"] == str(calibrate) and cal["n_pos"] == cal["n_neg"] == 4
    assert cal["max_fpr"] == 0.25 and cal["fpr"] <= 0.25 and cal["postings"] == list(POSTINGS)
    assert cal["library_pictures"] == background  # its library held the background pictures' tiles too
    rr = Embedder.load(res["model_dir"]).reranker  # rerank.pkl beside it, its threshold calibrated
    assert rr is not None and rr.threshold == res["rerank"]["threshold"] and rr.record["queries"] == 4
    assert rr.record["library_pictures"] == background
    assert not (home / "datasets" / "synth").exists()  # nothing synthetic was materialised either


def test_an_upload_names_its_edits_without_changing_them():
    """`upload(..., applied)` lists the copy edits it made (the benchmark's rows per edit) and draws
    exactly the upload it draws without the list."""
    tile = Image.fromarray(np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    seen = set()
    for seed in range(40):
        applied = []
        a = upload(tile, POSTINGS[seed % len(POSTINGS)], np.random.default_rng(seed), applied)
        b = upload(tile, POSTINGS[seed % len(POSTINGS)], np.random.default_rng(seed))
        assert np.array_equal(np.asarray(a), np.asarray(b))
        assert set(applied) <= set(EDIT_KINDS) and len(applied) == len(set(applied))
        seen |= set(applied)
    assert seen == set(EDIT_KINDS)  # every edit is drawn at least once in 40 uploads
