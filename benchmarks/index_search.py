"""Filtered search of the tile index at every selectivity: seconds per 1,000 queries and recall@10.

    python -m benchmarks.index_search                               # 10^6 tiles (about 3 min on 2 quiet cores)
    python -m benchmarks.index_search --set n=20000 queries=200     # smoke (seconds)
    python -m benchmarks.index_search --set "crossover_batches=[]"  # without the crossover sweep

Vectors are SYNTHETIC and clustered (a Gaussian mixture of 1 centre per 100 points around random
unit centres, L2-normalised, dim 128 as the descriptor): random uniform vectors have no neighbour
structure and would understate every ANN index. Queries are held-out draws from the same mixture.
Release days are uniform over 10,000 days (one day passes 0.01% of the tiles), cut codes uniform in
0..7. The tiles arrive in `segments` adds, as library versions do: each holds its own period's
tiles and a third of the previous period's (pictures registered late), so a window is a few ids ranges.

Steps: exact search (IndexFlatIP); the shipped `TileIndex` (`kind`), its nprobe the smallest of
`nprobes` whose unfiltered recall@10 reaches `target_recall`; then for each selectivity s two filters:
- window: release days in a window passing s (ids in a range per cut type's run of each segment);
- cut_window: one cut type AND a window 8x as wide (that type's runs: as few ranges as segments);
  at 100% every cut type.
Each row: the index's choice (exact scan or ANN with a selector), seconds per 1,000 queries (the
fastest of `repeats`, each run beside an unfiltered one, both in one batch of `queries` on faiss's
threads), recall@10 against the exact filtered top-10, and the cost relative to the unfiltered search.
The crossover sweep then forces each path (exact scan / ANN with its widened nprobe) on cut_window
filters passing `crossover_fracs`, in batches of each of `crossover_batches` queries: where the
exact scan stops being the cheaper, against where the index's rule switches. Last line: one JSON object.
"""
from __future__ import annotations

import json
import os
import sys
import time

import faiss
import numpy as np
from pydantic import Field

from docray.config import Config, parse_args
from docray.screening.index import TileIndex, _ivf
from docray.screening.rules import AttrFilter, mask

DAYS = 10_000  # release days span this many: one day passes 0.01%


class IndexBenchConfig(Config):
    n: int = Field(1_000_000, description="tiles in the index")
    dim: int = Field(128, description="vector size (the descriptor's)")
    queries: int = Field(1000, description="queries, searched as one batch")
    kind: str = Field("ivfpq", description="TileIndex kind")
    segments: int = Field(10, description="adds the tiles arrive in (library versions)")
    nprobes: list[int] = Field([32, 64, 128, 192, 256, 384], description="nprobe candidates for the unfiltered search")
    target_recall: float = Field(0.96, description="unfiltered recall@10 the chosen nprobe reaches")
    selectivities: list[float] = Field([1.0, 0.1, 0.01, 0.001, 0.0001], description="fractions of tiles the filters pass")
    crossover_fracs: list[float] = Field([0.03, 0.05, 0.07, 0.1, 0.15, 0.2, 0.3], description="selectivities of the sweep")
    crossover_batches: list[int] = Field([1000, 16], description="queries per search call in the sweep (empty: no sweep)")
    crossover_queries: int = Field(300, description="queries of the sweep")
    repeats: int = Field(5, description="each timing is the fastest of this many runs (the host is shared)")
    seed: int = 0


def clustered(n: int, dim: int, rng, n_centres: int) -> np.ndarray:
    centres = rng.normal(size=(n_centres, dim)).astype(np.float32)
    x = centres[rng.integers(0, n_centres, n)] + 1.0 * rng.normal(size=(n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def recall(ids: np.ndarray, truth: np.ndarray) -> float:
    """Mean share of each query's true top-k found; where no tile passes, 1 when nothing is returned."""
    return float(np.mean([len(set(a[a >= 0]) & set(b)) / len(b) if len(b) else float((a < 0).all())
                          for a, b in zip(ids, truth)]))


def per_1000(fn, q: np.ndarray, batch: int) -> float:
    """Seconds per 1,000 queries of fn(batch of queries), the queries searched `batch` at a time."""
    t = time.perf_counter()
    for i in range(0, len(q), batch):
        fn(q[i:i + batch])
    return (time.perf_counter() - t) / len(q) * 1000


def paired(filtered, unfiltered, q, batch: int, repeats: int) -> tuple[float, float]:
    """(filtered, unfiltered) seconds per 1,000 queries, each the fastest of `repeats` runs taken in
    turns: the host is shared, so the two see the same load."""
    f, u = [], []
    for _ in range(repeats):
        u.append(per_1000(unfiltered, q, batch))
        f.append(per_1000(filtered, q, batch))
    return min(f), min(u)


def tag(s: float) -> str:
    return f"{s * 100:g}pct".replace(".", "_")


def build(cfg: IndexBenchConfig):
    """(index, vectors in input order, their ids, release days, cut codes, queries, build seconds)."""
    rng = np.random.default_rng(cfg.seed)
    data = clustered(cfg.n + cfg.queries, cfg.dim, rng, max(10, cfg.n // 100))
    db, q = data[:cfg.n], data[cfg.n:]
    days, cuts = rng.integers(0, DAYS, cfg.n), rng.integers(0, 8, cfg.n)
    period = DAYS / cfg.segments
    seg = np.minimum(cfg.segments - 1, days // period).astype(int)
    seg = np.where((rng.random(cfg.n) < 1 / 3) & (seg < cfg.segments - 1), seg + 1, seg)  # registered late
    idx = TileIndex(cfg.dim, ann_threshold=cfg.n, kind=cfg.kind)  # trained once, on all of them, at the last add
    id_of = np.zeros(cfg.n, np.int64)
    t = time.perf_counter()
    for s in range(cfg.segments):
        rows = np.flatnonzero(seg == s)
        id_of[rows] = idx.add(db[rows], days[rows], cuts[rows])
    return idx, db, id_of, days, cuts, q, time.perf_counter() - t


def filters(s: float) -> dict[str, AttrFilter]:
    """The two filters passing about a fraction s of the tiles (release days centred in the span).
    cut_window: c of the 8 cut types (the fewest that leave the window at most 100%) and a window of s * 8 / c."""
    def window(frac):
        width = max(1, round(min(1.0, frac) * DAYS))
        lo = (DAYS - width) // 2
        return lo, lo + width - 1

    c = int(np.clip(np.ceil(8 * s - 1e-9), 1, 8))
    lo, hi = window(s)
    c_lo, c_hi = window(s * 8 / c)
    cuts = frozenset(range(c))
    return {"window": AttrFilter(t_lo=lo, t_hi=hi), "cut_window": AttrFilter(t_lo=c_lo, t_hi=c_hi, cuts=cuts)}


def main(argv=None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--sizes" in argv:  # the older spelling (configs/bench/quick.yaml): --sizes N is --set n=N
        i = argv.index("--sizes")
        argv[i:i + 2] = ["--set", f"n={argv[i + 1] if i + 1 < len(argv) else ''}"]
    cfg = parse_args(IndexBenchConfig, argv, description=__doc__.split("\n\n")[0])
    threads = faiss.omp_get_max_threads()
    load_before = os.getloadavg()[0]
    print(f"faiss {faiss.__version__}, {threads} threads, GPUs: {faiss.get_num_gpus()}, {os.cpu_count()} cores, "
          f"load average {load_before:.2f}")
    idx, db, id_of, days, cuts, q, build_s = build(cfg)
    k, R = 10, cfg.repeats

    def truth_of(f: AttrFilter | None) -> np.ndarray:
        rows = np.arange(cfg.n) if f is None else np.flatnonzero(mask(f, days, cuts))
        if len(rows) == 0:
            return np.zeros((len(q), 0), np.int64)
        _, pos = faiss.knn(q, db[rows], min(k, len(rows)), metric=faiss.METRIC_INNER_PRODUCT)
        return id_of[rows[pos]]

    flat = faiss.IndexFlatIP(cfg.dim)
    flat.add(db)
    exact_s = min(per_1000(lambda x: flat.search(x, k), q, len(q)) for _ in range(R))
    del flat
    truth = truth_of(None)
    sweep = {}
    nlist = _ivf(idx.index).nlist
    for nprobe in sorted(p for p in cfg.nprobes if p <= nlist) or [nlist]:
        idx.nprobe = nprobe
        sweep[nprobe] = recall(idx.search(q, k)[1], truth)
        if sweep[nprobe] >= cfg.target_recall:
            break
    print(f"\n{cfg.n:,} tiles, dim {cfg.dim}, {cfg.segments} adds (built in {build_s:.0f} s); {cfg.kind} nlist {nlist}, "
          f"nprobe {idx.nprobe} (unfiltered recall@10 by nprobe: { {p: round(r, 3) for p, r in sweep.items()} })")
    print(f"exact search: {exact_s:.3f} s per 1,000 queries")

    def unfiltered(x):
        return idx.search(x, k)

    unf_s = min(per_1000(unfiltered, q, len(q)) for _ in range(R))
    out = dict(n_tiles=cfg.n, dim=cfg.dim, queries=cfg.queries, threads=threads, segments=cfg.segments, kind=cfg.kind,
               nlist=nlist, nprobe=idx.nprobe, build_s=round(build_s, 1), exact_s_per_1000_queries=round(exact_s, 4),
               unfiltered_s_per_1000_queries=round(unf_s, 4), unfiltered_qps=round(1000 / unf_s, 1),
               unfiltered_recall_at_10=round(sweep[idx.nprobe], 4))
    head = f"{'filter':11s} {'passes':>8s}  {'path':5s} {'selector':8s} {'nprobe':>6s}  {'s/1000 q':>8s} {'q/s':>7s}  {'cost':>6s}  recall@10"
    print("\n" + head + "\n" + "-" * len(head))
    print(f"{'none':11s} {'100%':>8s}  {'ann':5s} {'-':8s} {idx.nprobe:6d}  {unf_s:8.3f} {1000 / unf_s:7.0f}  {1:5.2f}x  "
          f"{sweep[idx.nprobe]:.3f}")
    recalls, costs = [], []
    for s in cfg.selectivities:
        for name, f in filters(s).items():
            p = idx.plan(f, len(q))
            got = idx.search(q, k, f)[1]
            f_s, u_s = paired(lambda x: idx.search(x, k, f), unfiltered, q, len(q), R)
            r, cost = recall(got, truth_of(f)), f_s / u_s
            recalls.append(r)
            costs.append(cost)
            key = f"{name}_{tag(s)}"
            out.update({f"{key}_selectivity": round(p.n_pass / cfg.n, 6), f"{key}_path": p.path,
                        f"{key}_s_per_1000_queries": round(f_s, 4), f"{key}_qps": round(1000 / f_s, 1),
                        f"{key}_cost_vs_unfiltered": round(cost, 3), f"{key}_recall_at_10": round(r, 4)})
            print(f"{name:11s} {p.n_pass / cfg.n:8.2%}  {p.path:5s} {p.selector or '-':8s} {p.nprobe or '-':>6}  "
                  f"{f_s:8.3f} {1000 / f_s:7.0f}  {cost:5.2f}x  {r:.3f}")
    out.update(min_recall_at_10=round(min(recalls), 4), max_cost_vs_unfiltered=round(max(costs), 3))

    if cfg.crossover_batches:
        qc = q[:cfg.crossover_queries]
        print(f"\ncrossover: cut_window filters, {len(qc)} queries, each path forced (cost vs unfiltered at that batch, recall@10)")
        for m in cfg.crossover_batches:
            exact_won, rule_exact = [], []
            for s in cfg.crossover_fracs:
                f = filters(s)["cut_window"]
                truth_f = truth_of(f)[:len(qc)]
                cost, rec = {}, {}
                for path in ("exact", "ann"):
                    f_s, u_s = paired(lambda x: idx.search(x, k, f, path=path), unfiltered, qc, m, R)
                    cost[path], rec[path] = f_s / u_s, recall(idx.search(qc, k, f, path=path)[1], truth_f)
                p = idx.plan(f, m)
                if cost["exact"] <= cost["ann"]:
                    exact_won.append(s)
                if p.path == "exact":
                    rule_exact.append(s)
                print(f"  m={m:4d} passes {p.n_pass / cfg.n:6.2%}: exact {cost['exact']:5.2f}x ({rec['exact']:.3f}), "
                      f"ann nprobe {idx.plan(f, m, 'ann').nprobe} {cost['ann']:5.2f}x ({rec['ann']:.3f}); rule: {p.path}")
            out[f"crossover_m{m}_exact_cheaper_up_to_selectivity"] = max(exact_won, default=0.0)
            out[f"crossover_m{m}_rule_exact_up_to_selectivity"] = max(rule_exact, default=0.0)
    out["load_avg_1min_before"], out["load_avg_1min_after"] = round(load_before, 2), round(os.getloadavg()[0], 2)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
