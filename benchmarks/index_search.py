"""Speed of the tile index: build and search at 10^4, 10^5, 10^6 tiles.

    python -m benchmarks.index_search                         # sizes 1e4,1e5,1e6 (about 5 min on 2 cores)
    python -m benchmarks.index_search --sizes 10000 --hnsw    # also HNSW
    python -m benchmarks.index_search --sizes 1000000 --kinds ivfpq --time-shards   # selector vs shards

Vectors are SYNTHETIC and clustered (a Gaussian mixture of 1 per 100 points around random unit
centres, L2-normalised, dim 128 as the descriptor): random uniform vectors have no neighbour
structure and would understate every ANN index. Queries are held-out draws from the same mixture.
Attributes: release time uniform in 0..364, cut code uniform in 0..7.

For each size: exact search (IndexFlatIP) QPS; the shipped `TileIndex` (IVF) QPS and recall@10
against exact, for several nprobe; filtered searches (cut type; release-time window +-30; both,
which falls to the exact-subset path) with their QPS, recall@10 against exact filtered search, and
cost relative to the unfiltered search; with --time-shards, the same time window searched on one
index per month instead. Each timed search is the fastest of --repeats runs. Last line: one JSON object.
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


def best_of(n: int, fn, *a, **kw):
    """(output, the fastest of n timed calls): two shared cores are noisy, a single timing is not a figure."""
    runs = [timed(fn, *a, **kw) for _ in range(n)]
    return runs[0][0], min(t for _, t in runs)


def recall(ids: np.ndarray, truth: np.ndarray, k: int = 10) -> float:
    hits = [len(set(a[:k][a[:k] >= 0]) & set(b[:k][b[:k] >= 0])) / max(1, (b[:k] >= 0).sum()) for a, b in zip(ids, truth)]
    return float(np.mean(hits))


def exact_filtered(db, q, allowed, k):
    cand = np.flatnonzero(allowed)
    s = q @ db[cand].T
    top = np.argsort(-s, axis=1)[:, :k]
    return cand[top]


def ann(kind: str, db, q, truth, times, cuts, k: int, exact_qps: float, repeats: int) -> dict:
    """One ANN kind: the nprobe sweep, the smallest nprobe with recall@10 >= 0.95, and filtered searches."""
    nq, dim = len(q), db.shape[1]
    idx = TileIndex(dim, ann_threshold=0, kind=kind)
    _, build_s = timed(idx.add, db, times, cuts)
    sweep = {}
    for nprobe in (4, 8, 16, 32, 64, 128, 256):
        idx.nprobe = nprobe
        (_, ids), t = timed(idx.search, q, k)
        sweep[nprobe] = (nq / t, recall(ids, truth, k))
    ok = [p for p, (_, r) in sweep.items() if r >= 0.95]
    idx.nprobe = min(ok) if ok else 256
    _, t = best_of(repeats, idx.search, q, k)  # the chosen nprobe again, timed as the filtered ones
    sweep[idx.nprobe] = (nq / t, sweep[idx.nprobe][1])
    row = dict(build_s=build_s, nlist=faiss.extract_index_ivf(idx.index).nlist, nprobe=idx.nprobe, qps=sweep[idx.nprobe][0],
               recall10=sweep[idx.nprobe][1], speedup=sweep[idx.nprobe][0] / exact_qps,
               sweep={p: [round(a), round(b, 4)] for p, (a, b) in sweep.items()})
    filters = {"cut": AttrFilter(cuts=frozenset({3})), "time_window": AttrFilter(t_lo=100, t_hi=160),
               "time_and_cut": AttrFilter(t_lo=100, t_hi=100, cuts=frozenset({3}))}
    for name, f in filters.items():
        allowed = mask(f, times, cuts)
        ftruth = exact_filtered(db, q, allowed, k)
        (_, ids), t = best_of(repeats, idx.search, q, k, f)
        row[f"{name}_frac"] = float(allowed.mean())
        row[f"{name}_qps"] = nq / t
        row[f"{name}_recall10"] = recall(ids, ftruth, k)
        row[f"{name}_cost_ratio"] = row["qps"] / row[f"{name}_qps"]
    return row


def time_shards(db, q, times, cuts, k: int, nprobe_frac: float, repeats: int) -> dict:
    """The alternative to an ID selector: one index per month of release time (12 shards). A time
    window searches only the months it touches (a bitmap selector inside the partly covered ones) and
    merges their top-k. Each shard probes m times the fraction of its lists the single index probes,
    for m in 1, 2, 4, 8 (a shard holds fewer vectors per list); the row is the smallest m whose
    recall@10 reaches 0.95, with the sweep beside it."""
    month = np.minimum(times * 12 // 365, 11)
    shards = []
    t0 = time.perf_counter()
    for m in range(12):
        ids = np.flatnonzero(month == m)
        idx = TileIndex(db.shape[1], ann_threshold=0, kind="ivfpq")
        idx.add(db[ids], times[ids], cuts[ids])
        shards.append((ids, idx))
    build_s = time.perf_counter() - t0
    f = AttrFilter(t_lo=100, t_hi=160)

    def search():
        sims, ids = [], []
        for m in sorted(set(month[(times >= f.t_lo) & (times <= f.t_hi)])):
            rows, idx = shards[m]
            s, i = idx.search(q, k, f)
            sims.append(s)
            ids.append(np.where(i >= 0, rows[np.clip(i, 0, None)], -1))
        s, i = np.concatenate(sims, 1), np.concatenate(ids, 1)
        top = np.argsort(-s, axis=1)[:, :k]
        return np.take_along_axis(s, top, 1), np.take_along_axis(i, top, 1)

    truth = exact_filtered(db, q, mask(f, times, cuts), k)
    sweep = {}
    for m in (1, 2, 4, 8):
        for _, idx in shards:
            nlist = faiss.extract_index_ivf(idx.index).nlist
            idx.nprobe = min(nlist, max(1, round(m * nprobe_frac * nlist)))
        (_, ids), t = best_of(repeats, search)
        sweep[m] = (len(q) / t, recall(ids, truth, k))
    ok = [m for m, (_, r) in sweep.items() if r >= 0.95]
    m = min(ok) if ok else 8
    return dict(build_s=build_s, nprobe_mult=m, qps=sweep[m][0], recall10=sweep[m][1],
                sweep={m: [round(a), round(b, 4)] for m, (a, b) in sweep.items()})


def run_size(n: int, dim: int, nq: int, k: int, kinds: list[str], hnsw: bool, shards: bool, repeats: int = 3,
             seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    data = clustered(n + nq, dim, rng, max(10, n // 100))
    db, q = data[:n], data[n:]
    times, cuts = rng.integers(0, 365, n), rng.integers(0, 8, n)
    flat = faiss.IndexFlatIP(dim)
    flat.add(db)
    (_, truth), t_exact = best_of(repeats, flat.search, q, k)
    row = {"n": n, "exact_qps": nq / t_exact}
    for kind in kinds:
        row[kind] = ann(kind, db, q, truth, times, cuts, k, row["exact_qps"], repeats)
    if shards and "ivfpq" in kinds:
        r = row["ivfpq"]
        row["shards"] = time_shards(db, q, times, cuts, k, r["nprobe"] / r["nlist"], repeats)
        row["shards"]["cost_ratio"] = r["qps"] / row["shards"]["qps"]
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
    ap.add_argument("--hnsw", action="store_true", help="also build HNSW (slow at 1e6)")
    ap.add_argument("--time-shards", action="store_true", help="also build one ivfpq index per month of release "
                    "time and search the time window there, against the ID selector on the one index")
    ap.add_argument("--kinds", default="ivf,ivfpq", help="ANN kinds of TileIndex: ivf (IVF-Flat), ivfpq "
                    "(IVF with 4-bit fast-scan PQ, then an exact re-rank of k_factor x k candidates)")
    ap.add_argument("--repeats", type=int, default=3, help="each timed search runs this many times; the fastest counts")
    args = ap.parse_args(argv)
    kinds = args.kinds.split(",")
    print(f"faiss {faiss.__version__}, {faiss.omp_get_max_threads()} threads, GPUs: {faiss.get_num_gpus()}")
    rows = []
    for n in (int(float(s)) for s in args.sizes.split(",")):
        row = run_size(n, args.dim, args.queries, 10, kinds, args.hnsw, args.time_shards, args.repeats)
        rows.append(row)
        print(f"\nn={n:,}  exact {row['exact_qps']:.0f} q/s")
        for kind in kinds:
            r = row[kind]
            print(f"  {kind:6s} nlist={r['nlist']} nprobe={r['nprobe']}: {r['qps']:.0f} q/s ({r['speedup']:.1f}x exact), "
                  f"recall@10 {r['recall10']:.3f}, build {r['build_s']:.1f}s")
            print(f"         nprobe sweep (q/s, recall@10): {r['sweep']}")
            for f in ("cut", "time_window", "time_and_cut"):
                print(f"         filter {f:13s} passes {r[f + '_frac']:.4f}: {r[f + '_qps']:.0f} q/s, recall@10 "
                      f"{r[f + '_recall10']:.3f}, cost vs unfiltered {r[f + '_cost_ratio']:.2f}x")
        if "shards" in row:
            r = row["shards"]
            print(f"  ivfpq per-month shards, time window, {r['nprobe_mult']}x the lists' share: {r['qps']:.0f} q/s, "
                  f"recall@10 {r['recall10']:.3f}, cost vs unfiltered {r['cost_ratio']:.2f}x, build {r['build_s']:.1f}s")
            print(f"         share sweep (q/s, recall@10): {r['sweep']}")
        if "hnsw_qps" in row:
            print(f"  HNSW M=32 ef=64: {row['hnsw_qps']:.0f} q/s, recall@10 {row['hnsw_recall10']:.3f}, build {row['hnsw_build_s']:.1f}s")
    summary = {}
    for r in rows:
        tag = f"n{r['n']}"
        summary[f"{tag}_exact_qps"] = round(r["exact_qps"], 2)
        for kind in kinds:
            for key in ("qps", "speedup", "recall10", "build_s", "nprobe", "cut_cost_ratio", "cut_recall10",
                        "time_window_cost_ratio", "time_window_recall10", "time_and_cut_cost_ratio", "time_and_cut_recall10"):
                summary[f"{tag}_{kind}_{key}"] = round(float(r[kind][key]), 4)
        for key, v in r.get("shards", {}).items():
            if key != "sweep":
                summary[f"{tag}_time_shards_{key}"] = round(float(v), 4)
        for key in ("hnsw_qps", "hnsw_recall10", "hnsw_build_s"):
            if key in r:
                summary[f"{tag}_{key}"] = round(float(r[key]), 4)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
