"""train_regen reads its documents through Ray Data: datasets by URI, 2 workers, no generator in a worker."""
from __future__ import annotations

import io
import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

N_TRAIN, N_VAL = 16, 8


@pytest.fixture(scope="module")
def docs(tmp_path_factory):
    """A documents dataset written by the test itself (as a user's would be): train/ and val/ folders."""
    from docray.synth import generate

    root = tmp_path_factory.mktemp("regen-docs")
    table = generate("documents", 0, N_TRAIN + N_VAL, seed=5, size=(192, 120), n_angles=0)
    rows = table.to_pylist()
    rows[0]["clean_fields"][0]["text"] += " Zoë 张"  # characters beyond ASCII: the reader's vocabulary grows
    table = pa.Table.from_pylist(rows, schema=table.schema)
    for split, rows in (("train", table.slice(0, N_TRAIN)), ("val", table.slice(N_TRAIN))):
        (root / split).mkdir()
        pq.write_table(rows, root / split / "part-0.parquet")
    return root


def _cfg(docs, out, **kw):
    from train_jobs.train_regen import RegenTrainConfig

    return RegenTrainConfig(model="regen_tiny", train=str(docs / "train"), val=str(docs / "val"), batch_size=8,
                            max_epochs=2, reader_steps=1, line_batch=8, num_workers=2, cpus_per_worker=0.5,
                            out=str(out), to_registry=False, calibrate_search_others=0, **kw)  # the search: test_regen_gate


def test_two_workers_train_from_dataset_uris(ray_cluster, docs, tmp_path):
    """Every rank runs the same steps; validation covers both ranks' val shards; no worker imports docray.synth."""
    import torch.nn.functional as F

    from docray.regen.data import RegenBatch
    from docray.doctypes import registry
    from docray.models import from_pretrained
    from docray.models.regen import CHARS
    from train_jobs.train_regen import run

    res = run(_cfg(docs, tmp_path / "run", time_budget_s=3600))  # a budget: the ranks share one clock every step
    m = res["metrics"]
    assert m["worker_imported_synth"] is False and m["train_samples_per_s"] > 0
    assert m["epoch"] == 1 and len(res["history"]["type"]) == 2
    assert m["steps"] == N_TRAIN // 2 // 4  # each worker's 8 rows in batches of 4
    assert (tmp_path / "run" / "samples" / "epoch_001.png").exists()
    assert 0 <= m["val_line_exact"] <= 1 and 0 <= m["val_line_exact_processed"] <= 1  # the round trip's reads too
    assert m["train_outlier"] >= math.log(len(registry())) - 1e-4  # the type steps saw non-documents
    # val_type is the type loss of the final model over ALL val rows: the two shards' sums, added
    model = from_pretrained(res["model_dir"]).eval()
    val = pq.read_table(docs / "val").to_pydict()
    rows = {k: [*v] for k, v in val.items()}
    b = RegenBatch(model.cfg, model.tokenizer)(rows)
    with torch.no_grad():
        whole = F.cross_entropy(model.type_model(b["pixels"]), b["types"]).item()
    assert m["val_type"] == pytest.approx(whole, rel=1e-4)
    assert {"ë", "张"} <= set(model.tokenizer.chars) and model.tokenizer.chars.startswith(CHARS)
    train = pq.read_table(docs / "train").to_pydict()  # corner_rest: where the training captures' documents lie
    fr = [np.reshape(q, (4, 2)) / Image.open(io.BytesIO(im)).size for q, im in zip(train["doc_quad"], train["image"])]
    x0, y0, x1, y1 = model.cfg.corner_rest
    assert abs(x0 - np.mean([f[[0, 3], 0] for f in fr])) < 1e-3 and abs(y1 - np.mean([f[[2, 3], 1] for f in fr])) < 1e-3
    assert 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1
    assert model.cfg.n_types == len(registry())


def test_help_lists_the_datasets(capsys):
    from train_jobs.train_regen import main

    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "\n  train (str, default ''): training documents" in out and "\n  val (str, default ''): held-out" in out


def test_dataset_without_a_needed_column_is_named(ray_cluster, docs, tmp_path):
    from train_jobs.train_regen import datasets

    for split in ("train", "val"):
        (tmp_path / split).mkdir()
        pq.write_table(pq.read_table(docs / split).drop_columns(["clean_fields"]), tmp_path / split / "p.parquet")
    with pytest.raises(ValueError, match=r"train dataset .*missing column\(s\) \['clean_fields'\]"):
        datasets(_cfg(tmp_path, tmp_path / "out"))
    with pytest.raises(ValueError, match="both train= and val="):
        datasets(_cfg(docs, tmp_path / "out").model_copy(update={"val": ""}))


def test_init_from_keeps_the_rows_a_grown_model_shares(tmp_path):
    """Fine-tuning on data with new characters or types: the saved model's rows are kept, new ones start fresh."""
    from docray.models import build_model, save_pretrained
    from docray.models.regen import CHARS
    from train_jobs.train_regen import _init_from

    torch.manual_seed(0)
    old = build_model("regen_tiny")
    save_pretrained(old, tmp_path / "m")
    new = build_model("regen_tiny", chars=CHARS + "张", n_types=old.cfg.n_types + 1)
    fresh = new.ctc_head.weight.detach().clone()
    _init_from(new, str(tmp_path / "m"))
    for name in ("ctc_head.weight", "char_embed.weight", "type_embed.weight"):
        a, b = old.state_dict()[name], new.state_dict()[name]
        assert len(b) == len(a) + 1 and torch.equal(b[: len(a)], a)
    assert torch.equal(new.ctc_head.weight[-1], fresh[-1])  # the new character's row: as built
    assert torch.equal(new.unet.conv_in.weight, old.unet.conv_in.weight)
