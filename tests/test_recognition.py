"""Unified recognition without Ray: MAE masking, the model's units and gate, catalogue, metrics, predictor."""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from docray.models import build_model, from_pretrained, save_pretrained
from docray.recognition import metrics
from docray.recognition.data import DocumentSet, documents_table, prepare
from docray.recognition.engine import LossWeights, compute_loss, evaluate, fit, model_inputs, task_slots
from docray.recognition.tasks import UnknownTask, load_catalogue
from docray.recognition.text import embed_texts

S = 32  # tiny image side (vit_encoder_tiny)


@pytest.fixture(scope="module")
def cat():
    return load_catalogue()


@pytest.fixture(scope="module")
def arrays(cat):
    return prepare(documents_table(20, seed=0), cat, S)


def tiny(cat, seed=0):
    torch.manual_seed(seed)
    m = build_model("unified_tiny", catalogue=cat.model_dump())
    m.set_query_text(embed_texts([t.query for t in cat.tasks], "hash"))
    return m


# -- MAE -----------------------------------------------------------------------------------------------


def test_masking_keeps_lowest_noise_and_reinserts_in_order():
    mae = build_model("vit_mae_tiny", mask_ratio=0.75)
    emb = mae.net.vit.embeddings
    b, n, d = 2, 16, 3
    seq = torch.arange(b * n * d, dtype=torch.float32).view(b, n, d)
    noise = torch.rand(b, n, generator=torch.Generator().manual_seed(0))
    kept, mask, ids_restore = emb.random_masking(seq, noise)
    assert kept.shape == (b, 4, d) and mask.sum(1).tolist() == [12.0, 12.0]
    for i in range(b):  # 0 is keep, 1 is remove: the 4 lowest-noise patches are kept
        assert set(torch.nonzero(mask[i] == 0).flatten().tolist()) == set(noise[i].argsort()[:4].tolist())
    # the decoder's re-insertion: visible tokens, then mask tokens, unshuffled by ids_restore
    full = torch.cat([kept, torch.full((b, n - 4, d), -1.0)], 1)
    back = torch.gather(full, 1, ids_restore.unsqueeze(-1).expand(-1, -1, d))
    visible = mask == 0
    assert torch.equal(back[visible], seq[visible])
    assert bool((back[~visible] == -1).all())


def test_mae_loss_reconstruction_and_encoder_handoff():
    torch.manual_seed(0)
    mae = build_model("vit_mae_tiny")
    x = torch.rand(2, 3, S, S)
    noise = torch.rand(2, 16)
    out = mae(x, noise=noise)
    assert out.logits.shape == (2, 16, 8 * 8 * 3) and torch.isfinite(out.loss)
    assert torch.equal(out.mask, mae(x, noise=noise).mask)  # `noise=` fixes the mask
    masked, recon = mae.reconstruct(x, noise)
    assert masked.shape == recon.shape == x.shape and 0 <= float(recon.min()) and float(recon.max()) <= 1
    enc = build_model("vit_encoder_tiny")
    enc.load_state_dict(mae.encoder_state_dict())
    tokens = enc(x)
    assert tokens.shape == (2, 17, 32)
    # every patch, in order: with random noise the same tokens come out shuffled by argsort(noise)
    noise = torch.rand(2, 16)
    shuffled = enc.vit((x - 0.5) / 0.25, noise=noise).last_hidden_state[:, 1:]
    order = noise.argsort(1).unsqueeze(-1).expand(-1, -1, 32)
    assert torch.allclose(shuffled, torch.gather(tokens[:, 1:], 1, order), atol=1e-5)
    with pytest.raises(ValueError, match="expected images"):
        enc(torch.rand(2, 3, 16, 16))


# -- the unified model ----------------------------------------------------------------------------------


def test_unit_output_shapes(cat):
    m = tiny(cat)
    b = 3
    ids = torch.arange(len(cat.tasks)).expand(b, -1).clone()
    ids[1, 4:] = -1  # a request asking fewer tasks
    frames = {"flash": torch.rand(b, 1, 3, S, S), "angles": torch.rand(b, 2, 3, S, S)}
    out = m(torch.rand(b, 3, S, S), ids, frames, route="type")
    assert out["features"].shape == (b, len(cat.tasks), 32) and out["task_logits"].shape == (b, len(cat.tasks))
    n_cls = sum(t.type == "cls" for t in cat.tasks)
    assert out["cls"]["out"].shape == (3 * n_cls - 3, 6)  # row 1 asks only doc_type; doc_type has 6 classes
    assert out["reg"]["out"].shape == (3,)
    assert out["seg"]["out"].shape == (3, 4, S // 2, S // 2)
    assert out["det"]["out"].shape == (3, 3, 5)
    reg = out["reg"]["out"]
    assert bool(((reg >= 0) & (reg <= 1)).all())  # quality range [0, 1]
    assert bool((out["det"]["out"][..., 1:] >= 0).all() and (out["det"]["out"][..., 1:] <= 1).all())
    seal = out["cls"]["out"][out["cls"]["task"] == cat.index("seal_color")]
    assert torch.isinf(seal[:, 3:]).all() and torch.isfinite(seal[:, :3]).all()  # sliced to its 3 classes
    with pytest.raises(ValueError, match="flash"):
        m(torch.rand(1, 3, S, S), torch.tensor([[cat.index("screen_recapture")]]))


@pytest.fixture(scope="module")
def gated(cat):
    """A tiny model whose guidance unit was trained (30 steps) to route every task; and its inputs."""
    m = tiny(cat)
    b = 2
    ids = torch.arange(len(cat.tasks)).expand(b, -1)
    frames = {"flash": torch.rand(b, 1, 3, S, S), "angles": torch.rand(b, 1, 3, S, S)}
    x = torch.rand(b, 3, S, S)
    opt = torch.optim.Adam(m.parameters(), 3e-3)
    want = m.task_type[ids]
    for _ in range(30):
        g = m(x, ids, frames, route="type")["gate_logits"]
        loss = torch.nn.functional.cross_entropy(g.flatten(0, 1), want.flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
    return m.eval(), (x, ids, frames)


def test_gate_routes_each_task_to_its_unit(cat, gated):
    m, (x, ids, frames) = gated
    out = m(x, ids, frames, route="type")
    for ty in ("cls", "reg", "seg", "det"):  # the gate control unit: every task in the unit of its type
        assert {cat.tasks[i].type for i in out[ty]["task"].tolist()} == {ty}
    out = m(x, ids, frames, route="gate")  # the guidance unit's own routing, learnt from the task features
    assert torch.equal(out["route"], m.task_type[ids])
    for ty in ("cls", "reg", "seg", "det"):
        assert {cat.tasks[i].type for i in out[ty]["task"].tolist()} == {ty}


def test_save_load_round_trip(cat, tmp_path):
    m = tiny(cat).eval()
    save_pretrained(m, tmp_path / "u")
    m2 = from_pretrained(tmp_path / "u").eval()
    assert torch.equal(m2.query_text, m.query_text)  # the frozen query vectors travel in the weights
    assert m2.catalogue.names() == cat.names()
    x, ids = torch.rand(2, 3, S, S), torch.tensor([[0, 1, 2, 3, 6]] * 2)
    a, b = m(x, ids, route="type"), m2(x, ids, route="type")
    for ty in ("cls", "reg", "seg", "det"):
        assert torch.allclose(a[ty]["out"], b[ty]["out"], atol=1e-6)
    from safetensors.torch import load_file, save_file

    w = load_file(tmp_path / "u" / "model.safetensors")  # weights of an older architecture: a clear error
    save_file({k: v for k, v in w.items() if k != "query.view_pos"}, tmp_path / "u" / "model.safetensors")
    with pytest.raises(ValueError, match="do not fit the current 'unified_tiny' architecture"):
        from_pretrained(tmp_path / "u")


def test_training_step_reduces_loss_and_evaluate(cat, arrays):
    m = tiny(cat)
    ds = DocumentSet(arrays, "train")
    batch = torch.utils.data.default_collate([ds[i] for i in range(8)])
    slots = task_slots(cat, 0, frame_tasks_per_batch=2)
    assert slots == list(range(len(cat.tasks)))
    assert task_slots(cat, 1) != task_slots(cat, 0)  # the multi-frame task cycles
    opt = torch.optim.AdamW(m.parameters(), 2e-3)
    losses = []
    for _ in range(15):
        out = m(**model_inputs(batch, cat, slots, "cpu"), route="type")
        loss, parts = compute_loss(out, batch, cat, slots, LossWeights())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert set(cat.names()) <= set(parts) and losses[-1] < losses[0]
    w = LossWeights()  # each task's loss counts with its catalogue loss_weight (segmentation: more than 1)
    assert cat.get("layout_segmentation").loss_weight > 1
    assert losses[-1] == pytest.approx(sum(t.loss_weight * parts[t.name] for t in cat.tasks) + w.gate * parts["gate"]
                                       + w.task_classifier * parts["task_classifier"], rel=1e-4)
    res = evaluate(m, torch.utils.data.DataLoader(DocumentSet(arrays, None), batch_size=8), cat, "cpu")
    assert set(cat.names()) <= set(res) and 0 <= res["gate_accuracy"] <= 1


# -- catalogue, data, metrics -----------------------------------------------------------------------------


def test_catalogue_selection_and_a_yaml_only_task(cat, arrays):
    assert "screen_recapture" not in cat.for_doc_type("business_licence")
    assert "screen_recapture" in cat.for_doc_type("passport_page")
    with pytest.raises(UnknownTask, match="nope"):
        cat.check_names(["doc_type", "nope"])
    data = cat.model_dump()
    data["tasks"].append({"name": "seal_shape", "type": "cls", "query": "What shape is the seal?", "label": "seal_shape",
                          "values": ["", "circle", "ellipse", "rectangle", "square"],
                          "classes": ["none", "circle", "ellipse", "rectangle", "square"]})
    bigger = load_catalogue(data)
    m = tiny(bigger)  # a new task is a catalogue entry: the model builds and answers it
    out = m(torch.rand(1, 3, S, S), torch.tensor([[bigger.index("seal_shape")]]), route="type")
    assert out["cls"]["out"].shape == (1, 6) and torch.isinf(out["cls"]["out"][0, 5])
    with pytest.raises(ValueError, match="classes"):
        load_catalogue({"tasks": [{"name": "x", "type": "cls", "query": "what?", "label": "doc_type"}]})


def test_targets_from_synthetic_documents(cat, arrays):
    table = documents_table(20, seed=0)
    t = arrays["targets"]
    assert t["doc_type"].tolist() == table.column("doc_type").to_pylist()
    assert t["angle_consistency"].tolist() == [int(v) for v in table.column("angles_swapped").to_pylist()]
    assert 0 < t["angle_consistency"].sum() < 20  # DOC_OPTIONS: half the angle views are substituted
    assert t["layout_segmentation"].shape == (20, S // 2, S // 2) and t["layout_segmentation"].max() <= 3
    det = t["layout_detection"]  # [present, cx, cy, w, h]
    has_portrait = [len(b) > 0 for b in table.column("portrait_box").to_pylist()]
    assert (det[:, 0, 0] > 0.5).tolist() == has_portrait
    assert (det[:, 2, 0] == 1).all() and (det[..., 1:] <= 1).all()  # every document has a text block
    assert arrays["flash"].shape == (20, 1, 3, S, S) and arrays["angles"].shape[1] == 1


def test_metrics_on_known_cases():
    assert metrics.accuracy([1, 2, 3], [1, 2, 0]) == pytest.approx(2 / 3)
    assert metrics.mae([0.5, 1.0], [0.0, 1.0]) == pytest.approx(0.25)
    seg_t = np.array([[0, 0], [1, 1]])
    assert metrics.miou(seg_t, seg_t, 2) == 1.0
    assert metrics.miou(np.array([[0, 0], [0, 1]]), seg_t, 2) == pytest.approx((2 / 3 + 1 / 2) / 2)
    gt = np.array([[[1, 0.5, 0.5, 0.2, 0.2]], [[1, 0.3, 0.3, 0.2, 0.2]], [[0, 0, 0, 0, 0]]])
    perfect = gt.copy()
    perfect[:, 0, 0] = [0.9, 0.8, 0.1]
    assert metrics.map50(perfect, gt) == pytest.approx(1.0)
    wrong_place = perfect.copy()
    wrong_place[1, 0, 1:3] = [0.8, 0.8]  # one box far away -> recall 1/2
    assert metrics.map50(wrong_place, gt) == pytest.approx(0.5)
    ranked_fp_first = perfect.copy()
    ranked_fp_first[2, 0] = [0.95, 0.5, 0.5, 0.2, 0.2]  # a confident false positive on an image without one
    assert metrics.map50(ranked_fp_first, gt) < 1.0


# -- the predictor ----------------------------------------------------------------------------------------


def _png(arr) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    return buf.getvalue()


def test_predictor_answers_and_selects(cat, gated, tmp_path):
    from docray.recognition.predictor import MissingFrames, RecognitionPredictor

    save_pretrained(gated[0], tmp_path / "u")
    p = RecognitionPredictor(folder=str(tmp_path / "u"), device="cpu")
    row = documents_table(20, seed=0).slice(0, 1).to_pylist()[0]
    res = p.recognize([row["image"]], tasks=[["doc_type", "capture_quality", "layout_segmentation", "layout_detection"]])[0]
    assert res["doc_type"]["label"] in cat.get("doc_type").classes
    assert 0 <= res["capture_quality"]["value"] <= 1
    assert Image.open(io.BytesIO(res["layout_segmentation"]["mask_png"])).size == (256, 160)  # the input's size
    assert all(len(b["box"]) == 4 for b in res["layout_detection"]["boxes"])
    with pytest.raises(MissingFrames, match="flash"):
        p.recognize([row["image"]], tasks=[["screen_recapture"]])
    with pytest.raises(UnknownTask):
        p.recognize([row["image"]], tasks=[["no_such_task"]])
    auto = p.recognize([row["image"], row["image"]], frames=[{"flash": [row["flash"]]}, {}])
    for r in auto:  # chosen from the predicted document type; frame tasks without frames are skipped
        assert "doc_type" in r and "angle_consistency" not in r
    p_all = RecognitionPredictor(folder=str(tmp_path / "u"), device="cpu", select="all")
    out = p_all({"image": np.array([row["image"]], dtype=object), "id": np.array(["a"])})
    assert out["id"].tolist() == ["a"] and "doc_type_label" in out and "angle_consistency" in out["results"][0]


def test_unified_vs_separate_benchmark_reports_every_task(tmp_path, capsys):
    import json
    from pathlib import Path

    from benchmarks import unified_vs_separate as bench

    r = bench.main(["--set", "model=unified_tiny", "encoder_from=", "text_encoder=hash", "n_docs=40", "epochs=1",
                    "batch_size=8", "timing_repeats=1", "seeds=[0,1]", f"out={tmp_path}"])
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == json.loads(Path(tmp_path, "result.json").read_text())
    assert [t["task"] for t in r["tasks"]] == load_catalogue().names()
    for t in r["tasks"]:  # unified, separate and chance scored on the same held-out documents
        assert all(np.isfinite(t[k]) for k in ("chance", "unified", "separate"))
        assert len(t["unified_by_seed"]) == len(t["separate_by_seed"]) == 2  # one run per seed, their mean
        assert t["unified"] == pytest.approx(np.mean(t["unified_by_seed"]))
        assert min(t["gap_points_by_seed"]) <= t["unified_minus_separate_points"] <= max(t["gap_points_by_seed"])
    assert r["worst_gap_points_any_seed"] <= r["worst_gap_points"]
    again = bench.main(["--set", "model=unified_tiny", "encoder_from=", "text_encoder=hash", "n_docs=40", "epochs=1",
                        "batch_size=8", "timing_repeats=1", "seeds=[1]", f"out={tmp_path / 'again'}"])
    for t, u in zip(r["tasks"], again["tasks"]):  # a seed gives the same models whatever ran before it
        assert (u["unified"], u["separate"]) == (t["unified_by_seed"][1], t["separate_by_seed"][1])
    assert r["unified_params"] < r["separate_params"]  # one encoder instead of one per task
    assert r["worst_gap_points"] == min(t["unified_minus_separate_points"] for t in r["tasks"])

