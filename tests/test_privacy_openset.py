"""The open-set protocol: disjoint identity roles, the LFW-layout read, TAR@FAR and rank-1 on embeddings
whose answer is known."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from docray.models import build_model
from docray.privacy.openset import (MIN_GENUINE, MIN_IMPOSTOR, Protocol, check_disjoint, embed, enrol_probe,
                                    load_openset, pair_scores, rank1, split_identities, tar_at_far)

COUNTS = {"train": 3, "eval": 2, "attacker": 2}


def test_split_identities_is_disjoint_and_ordered():
    labels = np.repeat(np.arange(10), 3)
    ids = split_identities(labels, COUNTS)
    assert [ids[r].tolist() for r in ("train", "eval", "attacker")] == [[0, 1, 2], [3, 4], [5, 6]]
    shuffled = split_identities(labels, COUNTS, seed=4)
    assert sum(len(v) for v in shuffled.values()) == 7
    assert any(shuffled[r].tolist() != ids[r].tolist() for r in ids)
    assert shuffled["eval"].tolist() == split_identities(labels, COUNTS, seed=4)["eval"].tolist()  # fixed by the seed
    check_disjoint(shuffled)
    with pytest.raises(ValueError, match="share 1 identities"):
        check_disjoint({"train": np.array([1, 2]), "attacker": np.array([2, 3])})


def test_split_identities_leaves_out_single_image_people_and_says_when_short():
    labels = np.array([0, 0, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7])  # identity 1 has one image
    ids = split_identities(labels, COUNTS)
    assert 1 not in np.concatenate(list(ids.values()))
    with pytest.raises(ValueError, match="only 7 have at least 2 images"):
        split_identities(labels, {"train": 4, "eval": 2, "attacker": 2})
    with pytest.raises(ValueError, match="unknown identity role"):
        split_identities(labels, {**COUNTS, "probe": 1})
    with pytest.raises(ValueError, match="at least one identity"):
        split_identities(labels, {**COUNTS, "attacker": 0})


def test_synthetic_open_set_roles_hold_their_own_identities():
    data = load_openset("synth", COUNTS, samples=3, size=32)
    assert data.identities["train"].tolist() == [0, 1, 2]  # what train_privacy's n_identities=3 trains on
    for role, ids in data.identities.items():
        assert set(data[role].labels.tolist()) == set(ids.tolist())
        assert data[role].images.shape == (3 * len(ids), 32, 32, 3)
    check_disjoint(data.identities)


def test_lfw_layout_folder_reads_as_the_synthetic_faces(tmp_path):
    synth = load_openset("synth", COUNTS, samples=3, size=32)
    for role in synth.roles.values():  # root/<identity>/<identity>_000k.png, the LFW layout
        seen: dict[int, int] = {}
        for img, lab in zip(role.images, role.labels.tolist()):
            folder = tmp_path / f"Person_{lab:03d}"
            folder.mkdir(exist_ok=True)
            seen[lab] = seen.get(lab, 0) + 1
            Image.fromarray(img).save(folder / f"Person_{lab:03d}_{seen[lab]:04d}.png")
    (tmp_path / "Single_Person").mkdir()  # one image: left out of every role
    Image.fromarray(synth["eval"].images[0]).save(tmp_path / "Single_Person" / "Single_Person_0001.png")
    (tmp_path / "Person_000" / "notes.txt").write_text("not an image")
    folder = load_openset(str(tmp_path), COUNTS, size=32)
    for role in synth.roles:
        assert folder.identities[role].tolist() == synth.identities[role].tolist()  # folder index = identity
        a, b = synth[role], folder[role]
        ia, ib = np.argsort(a.labels, kind="stable"), np.argsort(b.labels, kind="stable")
        assert np.array_equal(a.labels[ia], b.labels[ib]) and np.array_equal(a.images[ia], b.images[ib])


def test_enrol_probe_takes_the_first_images_of_each_identity():
    labels = np.array([5, 7, 5, 7, 5, 9, 9])
    gallery, probes = enrol_probe(labels)
    assert gallery.tolist() == [0, 1, 5] and probes.tolist() == [2, 3, 4, 6]
    assert enrol_probe(labels, 2)[0].tolist() == [0, 1, 2, 3, 5, 6]
    with pytest.raises(ValueError, match="no probe left"):
        enrol_probe(np.array([1, 2, 3]))


def test_tar_at_far_known_answer():
    impostor = np.arange(1000) / 1000  # 0.000 .. 0.999
    genuine = np.r_[np.full(50, 0.5), np.full(50, 0.995)]
    tar, thr = tar_at_far(genuine, impostor, 1e-2)
    assert thr == pytest.approx(0.989) and tar == 0.5  # 10 impostors (0.990..0.999) above: FAR 1e-2
    assert (impostor > thr).mean() == pytest.approx(1e-2)
    tar, thr = tar_at_far(genuine, impostor, 1e-3)
    assert thr == pytest.approx(0.998) and tar == 0.0  # 1 impostor above; 0.995 is not
    assert tar_at_far(np.full(10, 2.0), impostor, 1e-3)[0] == 1.0
    with pytest.raises(ValueError):
        tar_at_far(genuine, np.array([]), 1e-2)


def test_pair_scores_counts_and_values():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(6), [2, 3, 4, 2, 5, 4])  # 20 images
    e = rng.normal(size=(20, 8)).astype(np.float32)
    gen, imp = pair_scores(e, e, labels, block=7)  # blocks do not change the answer
    n_gen = 1 + 3 + 6 + 1 + 10 + 6
    assert len(gen) == n_gen and len(imp) == 190 - n_gen
    full = e @ e.T
    iu = np.triu_indices(20, 1)
    same = labels[iu[0]] == labels[iu[1]]
    assert np.allclose(np.sort(gen), np.sort(full[iu][same])) and np.allclose(np.sort(imp), np.sort(full[iu][~same]))
    _, sub = pair_scores(e, e, labels, max_impostor=50, seed=1)
    assert 20 < len(sub) < 100 and np.isin(sub, imp).all()


def test_rank1_known_answer():
    gallery = np.eye(4, dtype=np.float32)  # identity k's template is axis k
    probes = np.array([[1, .1, 0, 0], [0, 1, 0, 0], [0, .9, .1, 0], [0, 0, 0, 1]], np.float32)  # the third is wrong
    assert rank1(gallery, np.array([10, 11, 12, 13]), probes, np.array([10, 11, 12, 13])) == 0.75
    two = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1]], np.float32)  # identity 1 enrolled twice: mean template
    assert rank1(two, np.array([0, 1, 1]), np.array([[0, .6, .6]], np.float32), np.array([1])) == 1.0
    with pytest.raises(ValueError, match="not enrolled"):
        rank1(gallery, np.arange(4), probes[:1], np.array([9]))


def test_protocol_on_constructed_embeddings():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(64), 20)  # the support the protocol asks for
    centres = rng.normal(size=(64, 32))
    close = centres[labels] + 0.05 * rng.normal(size=(len(labels), 32))
    close = (close / np.linalg.norm(close, axis=1, keepdims=True)).astype(np.float32)
    p = Protocol.of(labels)
    out = p.evaluate(close)
    assert out["n_genuine"] == 64 * 190 >= MIN_GENUINE and out["n_impostor"] >= MIN_IMPOSTOR and out["support_ok"]
    assert out["tar@0.001"] == 1.0 and out["tar@0.01"] == 1.0 and out["rank1"] == 1.0
    noise = rng.normal(size=close.shape).astype(np.float32)
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    out = p.evaluate(noise)
    assert out["tar@0.01"] < 0.05 and out["rank1"] < 0.1  # chance: FAR and 1/64
    out = p.evaluate(noise, close)  # query unrelated to the reference side
    assert out["tar@0.01"] < 0.05
    small = Protocol.of(np.repeat(np.arange(4), 3)).evaluate(close[:12])
    assert not small["support_ok"]


def test_embed_is_normalised_and_recognizers_give_512_d():
    torch.manual_seed(0)
    m = build_model("recognizer_tiny", num_classes=4).eval()
    x = torch.rand(5, 3, 32, 32)
    e = embed(m, x, chunk=2)
    assert e.shape == (5, 32) and np.allclose(np.linalg.norm(e, axis=1), 1, atol=1e-5)
    assert np.allclose(e, embed(m, x))  # chunks do not change the answer
    assert build_model("recognizer_small", num_classes=3).cfg.embed_dim == 512


def test_cosine_head_and_margin():
    from docray.privacy.training import recognizer_step

    torch.manual_seed(0)
    lin = build_model("recognizer_tiny", num_classes=4)
    assert {"classifier.weight", "classifier.bias"} <= set(lin.state_dict())  # saved linear models still load
    cos = build_model("recognizer_tiny", num_classes=4, head="cosine", scale=10.0, margin=0.3).eval()
    x, y = torch.rand(3, 3, 32, 32), torch.tensor([0, 1, 2])
    logits = cos(x)
    assert logits.shape == (3, 4) and logits.abs().max() <= 10.0 + 1e-4
    plain = torch.nn.functional.cross_entropy(logits, y)
    assert recognizer_step(cos, x, y, None) > plain  # the margin makes the true class harder
    with pytest.raises(ValueError, match="head"):
        build_model("recognizer_tiny", head="arc")
