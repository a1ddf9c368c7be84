"""Speed of the tile index: build and search at 10^4, 10^5, 10^6 tiles.

    python -m benchmarks.index_search                         # sizes 1e4,1e5,1e6 (about 5 min on 2 cores)
    python -m benchmarks.index_search --sizes 10000 --hnsw    # also HNSW, and per-cut-type shards

Vectors are SYNTHETIC and clustered (a Gaussian mixture of 1 per 100 points around random unit
centres, L2-normalised, dim 128 as the descriptor): random uniform vectors have no neighbour
structure and would understate every ANN index. Queries are held-out draws from the same mixture.
Attributes: release time uniform in 0..364, cut code uniform in 0..7.

For each size: exact search (IndexFlatIP) QPS; the shipped `TileIndex` (IVF) QPS and recall@10
against exact, for several nprobe; filtered searches (cut type; release-time window +-30; both,
which falls to the exact-subset path) with their QPS, recall@10 against exact filtered search, and
cost relative to the unfiltered search. Last line: one JSON object.
"""
from __future__ import annotations

import argparse
import json
import time

import faiss
import numpy as np

from docray.screening.index import TileIndex
from docray.screening.rules import AttrFilter, mask


def clustered(n: int, dim: int, rng, n_centres: int) -> np.ndarray:
    centres = rng.normal(size=(n_centres, dim)).astype(np.float32)
    x = centres[rng.integers(0, n_centres, n)] + 1.0 * rng.normal(size=(n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def timed(fn, *a, **kw):
    t = time.perf_counter()
    out = fn(*a, **kw)
    return out, time.perf_counter() - t


def recall(ids: np.ndarray, truth: np.ndarray, k: int = 10) -> float:
    hits = [len(set(a[:k][a[:k] >= 0]) & set(b[:k][b[:k] >= 0])) / max(1, (b[:k] >= 0).sum()) for a, b in zip(ids, truth)]
    return float(np.mean(hits))


def exact_filtered(db, q, allowed, k):
    cand = np.flatnonzero(allowed)
    s = q @ db[cand].T
    top = np.argsort(-s, axis=1)[:, :k]
    return cand[top]


def run_size(n: int, dim: int, nq: int, k: int, hnsw: bool, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    data = clustered(n + nq, dim, rng, max(10, n // 100))
    db, q = data[:n], data[n:]
    times, cuts = rng.integers(0, 365, n), rng.integers(0, 8, n)
    flat = faiss.IndexFlatIP(dim)
    flat.add(db)
    (_, truth), t_exact = timed(flat.search, q, k)
    row = {"n": n, "exact_qps": nq / t_exact}

    idx = TileIndex(dim, ann_threshold=0, kind="ivf")
    _, row["ivf_build_s"] = timed(idx.add, db, times, cuts)
    row["nlist"] = idx.index.nlist
    sweep = {}
    for nprobe in (4, 8, 16, 32, 64, 128, 256):
        idx.nprobe = nprobe
        (_, ids), t = timed(idx.search, q, k)
        sweep[nprobe] = (nq / t, recall(ids, truth, k))
    ok = [p for p, (_, r) in sweep.items() if r >= 0.95]
    idx.nprobe = min(ok) if ok else 256
    row.update(nprobe=idx.nprobe, ivf_qps=sweep[idx.nprobe][0], ivf_recall10=sweep[idx.nprobe][1],
               speedup=sweep[idx.nprobe][0] / row["exact_qps"], sweep={p: [round(a), round(b, 4)] for p, (a, b) in sweep.items()})

    filters = {"cut": AttrFilter(cuts=frozenset({3})), "time_window": AttrFilter(t_lo=100, t_hi=160),
               "time_and_cut": AttrFilter(t_lo=100, t_hi=100, cuts=frozenset({3}))}
    for name, f in filters.items():
        allowed = mask(f, times, cuts)
        ftruth = exact_filtered(db, q, allowed, k)
        (_, ids), t = timed(idx.search, q, k, f)
        row[f"{name}_frac"] = float(allowed.mean())
        row[f"{name}_qps"] = nq / t
        row[f"{name}_recall10"] = recall(ids, ftruth, k)
        row[f"{name}_cost_ratio"] = row["ivf_qps"] / row[f"{name}_qps"]
        if name == "cut" and hnsw is not None:  # the alternative: one index per cut code
            shards = {}
            for c in range(8):
                s = TileIndex(dim, ann_threshold=0, kind="ivf", nprobe=idx.nprobe)
                sel = cuts == c
                s.add(db[sel], times[sel], cuts[sel])
                shards[c] = (s, np.flatnonzero(sel))
            s, rows = shards[3]
            (_, ids), t = timed(s.search, q, k)
            row["cut_shard_qps"], row["cut_shard_recall10"] = nq / t, recall(np.where(ids >= 0, rows[ids], -1), ftruth, k)
    if hnsw:
        h = TileIndex(dim, ann_threshold=0, kind="hnsw", ef_search=64)
        _, row["hnsw_build_s"] = timed(h.add, db, times, cuts)
        (_, ids), t = timed(h.search, q, k)
        row["hnsw_qps"], row["hnsw_recall10"] = nq / t, recall(ids, truth, k)
    return row


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="10000,100000,1000000")
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--hnsw", action="store_true", help="also build HNSW and per-cut-type shards (slow at 1e6)")
    args = ap.parse_args(argv)
    print(f"faiss {faiss.__version__}, {faiss.omp_get_max_threads()} threads, GPUs: {faiss.get_num_gpus()}")
    rows = []
    for n in (int(float(s)) for s in args.sizes.split(",")):
        row = run_size(n, args.dim, args.queries, 10, args.hnsw if args.hnsw else None)
        rows.append(row)
        print(f"\nn={n:,}  exact {row['exact_qps']:.0f} q/s | IVF nlist={row['nlist']} nprobe={row['nprobe']}: "
              f"{row['ivf_qps']:.0f} q/s ({row['speedup']:.1f}x), recall@10 {row['ivf_recall10']:.3f}, build {row['ivf_build_s']:.1f}s")
        print(f"  nprobe sweep (q/s, recall@10): {row['sweep']}")
        for f in ("cut", "time_window", "time_and_cut"):
            print(f"  filter {f:13s} passes {row[f + '_frac']:.4f}: {row[f + '_qps']:.0f} q/s, recall@10 "
                  f"{row[f + '_recall10']:.3f}, cost vs unfiltered {row[f + '_cost_ratio']:.2f}x")
        if "cut_shard_qps" in row:
            print(f"  per-cut-type shard instead: {row['cut_shard_qps']:.0f} q/s, recall@10 {row['cut_shard_recall10']:.3f}")
        if "hnsw_qps" in row:
            print(f"  HNSW M=32 ef=64: {row['hnsw_qps']:.0f} q/s, recall@10 {row['hnsw_recall10']:.3f}, build {row['hnsw_build_s']:.1f}s")
    summary = {}
    for r in rows:
        tag = f"n{r['n']}"
        for key in ("exact_qps", "ivf_qps", "speedup", "ivf_recall10", "ivf_build_s", "nprobe",
                    "cut_qps", "cut_recall10", "cut_cost_ratio", "time_window_cost_ratio", "time_window_recall10",
                    "time_and_cut_cost_ratio", "time_and_cut_recall10", "cut_shard_qps", "hnsw_qps", "hnsw_recall10", "hnsw_build_s"):
            if key in r:
                summary[f"{tag}_{key}"] = round(float(r[key]), 4)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
