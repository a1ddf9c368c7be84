"""The tile index's filters: id layout (a release window is a few id ranges), the choice between an
exact scan and the ANN index by selectivity, and filtered results against exact filtered search."""
from __future__ import annotations

import numpy as np
import pytest

from docray.screening import index as index_mod
from docray.screening.index import TileIndex
from docray.screening.library import Library, TileBatch, wild_tile
from docray.screening.rules import AttrFilter, mask


def unit(n, d, seed=0):
    v = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def in_ranges(ranges) -> set[int]:
    return {int(i) for a, b in ranges for i in range(a, b)}


def build(n, d, kind="ivfpq", adds=1, seed=0, **opts):
    """An index of n random vectors added in `adds` batches; the input rows' ids, times and cuts."""
    rng = np.random.default_rng(seed)
    v, times, cuts = unit(n, d, seed), rng.integers(0, 10_000, n), rng.integers(0, 8, n)
    idx = TileIndex(d, ann_threshold=min(n, 1000), kind=kind, **opts)
    id_of = np.concatenate([idx.add(v[s], times[s], cuts[s]) for s in np.array_split(np.arange(n), adds)])
    return idx, v, times, cuts, id_of


def test_window_is_one_range_per_run_and_fewer_when_adds_follow_in_time(monkeypatch):
    rng = np.random.default_rng(1)
    idx = TileIndex(8, ann_threshold=300, kind="ivfpq")
    for _ in range(4):  # four library versions, release times in any order, overlapping
        n = 200
        idx.add(unit(n, 8, int(rng.integers(1000))), rng.integers(0, 365, n), rng.integers(0, 8, n))
    assert idx.current_kind == "ivfpq" and len(idx.segments()) == 4 * 8  # a run per cut type of each add
    windows = [(100, 160), (0, 364), (200, 200), (400, 500), (None, 50), (300, None)]
    by_segment = [idx.window(lo, hi) for lo, hi in windows]
    for (lo, hi), ranges in zip(windows, by_segment):
        assert len(ranges) <= 4 * 8
        want = mask(AttrFilter(t_lo=lo, t_hi=hi), idx.times, idx.cuts)
        assert in_ranges(ranges) == set(np.flatnonzero(want).tolist())
        for cuts in ({3}, {0, 7}, {1, 2, 5}):  # cut types keep their runs' ranges: no bitmap
            f = AttrFilter(t_lo=lo, t_hi=hi, cuts=frozenset(cuts))
            p = idx.plan(f, 1000)
            assert p.ids is None and len(p.ranges) <= 4 * len(cuts)
            assert in_ranges(p.ranges) == set(np.flatnonzero(mask(f, idx.times, idx.cuts)).tolist())
    monkeypatch.setattr(index_mod, "MAX_SEGMENTS", 0)  # an index from before the layout: a full pass, same ids
    for (lo, hi), ranges in zip(windows, by_segment):
        assert in_ranges(idx.window(lo, hi)) == in_ranges(ranges)
        f = AttrFilter(t_lo=lo, t_hi=hi, cuts=frozenset({3}))
        p = idx.plan(f, 1000)  # and cut types by a bitmap
        assert p.ids is not None and set(p.ids.tolist()) == set(np.flatnonzero(mask(f, idx.times, idx.cuts)).tolist())

    grow = TileIndex(8, ann_threshold=10**6)
    for month in range(6):  # a library that grows with time: every window is a single range
        days = month * 30 + rng.permutation(30)
        grow.add(unit(30, 8, month), days, np.zeros(30))
    assert len(grow.segments()) == 1
    np.testing.assert_array_equal(grow.window(45, 100), [[45, 101]])


def test_library_ids_ascend_with_release_day_inside_a_version(tmp_path):
    from PIL import Image

    lib = Library.create(tmp_path / "lib", dim=8, tile_size=16, descriptor="fake", features=None)
    rng = np.random.default_rng(0)
    for version, days in enumerate(([50, 10, 30, 20, 40], [35, 5, 60])):
        batch = TileBatch()
        for j, d in enumerate(days):
            img = Image.fromarray(rng.integers(0, 256, (16, 16, 3), np.uint8))
            batch.extend(wild_tile(img, f"s{version}-{j}", d, 16))
        lib.append(batch, unit(len(days), 8, version), min_similarity=1.1)
    back = Library.open(tmp_path / "lib")
    days = back.meta.column("release_day").to_pylist()
    assert days == [10, 20, 30, 40, 50, 5, 35, 60] and back.meta.column("tile_id").to_pylist() == list(range(8))
    assert [r["source_id"] for r in back.rows([0, 5])] == ["s0-1", "s1-1"]  # rows follow the ids
    np.testing.assert_array_equal(back.index.window(30, 40), [[2, 4], [6, 7]])


def test_selector_choice_by_selectivity():
    n = 20_000
    idx, *_ = build(n, 16, nprobe=25, exact_below=0)  # nlist 500: an unfiltered search scans 1,000 codes
    nlist = index_mod._ivf(idx.index).nlist
    assert nlist == 500 and idx._scanned() == 1000

    def plan(frac, m=1000, cuts=None):
        return idx.plan(AttrFilter(t_lo=0, t_hi=round(10_000 * frac) - 1, cuts=cuts), m)

    p = idx.plan(None, 1000)
    assert (p.path, p.selector, p.nprobe) == ("ann", None, 25)
    p = plan(0.5)  # a wide window: the IVF index, nprobe as unfiltered; a range per cut type's run, as a bitmap
    assert (p.path, p.selector, p.nprobe) == ("ann", "bitmap", 25) and abs(p.n_pass - n / 2) < 500
    p = plan(0.15)  # fewer pass: more lists probed (WIDE_FRAC / f)
    assert (p.path, p.selector) == ("ann", "bitmap") and p.nprobe == pytest.approx(25 * 0.3 / 0.15, rel=0.1)
    p = plan(1.0, cuts=frozenset({3}))  # one cut type at any time: its run, one id range
    assert (p.path, p.selector) == ("ann", "range") and p.nprobe > 25 and len(p.ranges) == 1
    for frac in (0.05, 0.01, 0.001, 0.0001):  # few pass: an exact scan of just those
        assert plan(frac).path == "exact"
    assert plan(0.05, cuts=frozenset({3})).path == "exact"
    # one crossover, where n_pass * (1 + BATCH_READ / m) = EXACT_PER_CODE * widening * scanned and the
    # widening is WIDE_FRAC * n / n_pass: n_pass ~ sqrt(WIDE_FRAC * EXACT_PER_CODE * n * scanned)
    paths = {f: plan(f).path for f in np.linspace(0.02, 0.3, 29)}
    switch = max(f for f, p in paths.items() if p == "exact")
    assert all(p == "ann" for f, p in paths.items() if f > switch)
    assert abs(switch * n - np.sqrt(index_mod.WIDE_FRAC * index_mod.EXACT_PER_CODE * n * 1000)) < 0.011 * n
    # one query reads every passing vector for itself: the exact scan pays off only at fewer of them
    assert plan(switch, m=1).path == "ann" and plan(0.004, m=1).path == "exact"


@pytest.mark.parametrize("kind,adds", [("ivf", 1), ("ivf", 3), ("ivfpq", 3), ("flat", 3)])
def test_filtered_search_equals_exact_filtered_ground_truth(kind, adds):
    n, d, k = 4000, 16, 10
    idx, v, times, cuts, id_of = build(n, d, kind, adds=adds, nprobe=10**4, exact_below=0)  # all lists: exact
    assert idx.current_kind == kind and len(idx.segments()) <= adds * 8
    q = unit(20, d, seed=9)
    primary = AttrFilter(t_lo=5000, t_hi=5000, cuts=frozenset({2}))
    filters = [AttrFilter(t_lo=2000, t_hi=6000), AttrFilter(cuts=frozenset({1, 5})), AttrFilter(t_lo=0, t_hi=300),
               AttrFilter(t_lo=4000, t_hi=6000, cuts=frozenset({2}), exclude=primary),
               AttrFilter(t_lo=2000, t_hi=6000, cuts=frozenset({4})), AttrFilter(t_lo=100, t_hi=110)]  # the last: < k
    for f in filters:
        rows = np.flatnonzero(mask(f, times, cuts))
        truth = id_of[rows[np.argsort(-(q @ v[rows].T), axis=1)[:, :k]]]
        for path in ("auto", "exact", "ann"):
            sims, ids = idx.search(q, k, f, path=path)
            hits = [len(set(got[got >= 0]) & set(want)) / len(want) for got, want in zip(ids, truth)]
            # every path finds the exact filtered top-k; ivfpq's ANN path ranks by PQ codes first, then
            # re-ranks its best k_factor * k exactly: nearly all
            pq_ranked = kind == "ivfpq" and idx.plan(f, len(q), path).path == "ann"
            assert min(hits) >= (0.9 if pq_ranked else 1.0), (f, path)
            assert ((ids >= 0).sum(1) == min(k, len(rows))).all() and np.isneginf(sims[ids < 0]).all()
        if adds == 1 and f.cuts == {4} and kind != "flat":  # one cut type's run in one add: one id range
            assert idx.plan(f, len(q), "ann").selector == "range"
    sims, ids = idx.search(q, k, AttrFilter(t_lo=10**6, t_hi=10**6))  # nothing passes
    assert (ids == -1).all()


def test_forced_path_must_be_known():
    idx, *_ = build(200, 8, kind="flat")
    with pytest.raises(ValueError, match="search path"):
        idx.plan(AttrFilter(cuts=frozenset({1})), 1, path="gpu")


def test_index_search_benchmark_runs_small_and_ends_with_its_figures(capsys):
    import json

    from benchmarks import index_search

    index_search.main(["--set", "n=3000", "queries=40", "repeats=1", "crossover_batches=[16]", "crossover_queries=20",
                       "crossover_fracs=[0.05,0.3]"])
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["n_tiles"] == 3000 and out["unfiltered_s_per_1000_queries"] > 0
    for tag in ("100pct", "10pct", "1pct", "0_1pct", "0_01pct"):
        for name in ("window", "cut_window"):
            assert 0 <= out[f"{name}_{tag}_recall_at_10"] <= 1 and out[f"{name}_{tag}_path"] in ("exact", "ann")
    assert out["window_1pct_path"] == "exact" and out["min_recall_at_10"] > 0.9
    assert "crossover_m16_rule_exact_up_to_selectivity" in out
