"""Where cut-out screening loses a posted tile (issue 20): the matcher's stages, per posting and cut type.

    python -m benchmarks.screening_funnel                                 # 400 + 400 queries, the registered descriptor
    python -m benchmarks.screening_funnel --queries 40 --library-pictures 20 --pictures 30   # a quick look

Synthetic sensitive and benign pictures (targets rows from --start, after every row training,
calibration and the re-ranker's fitting use) are posted the four ways calibration posts them
(`docray.screening.calibrate.posted_queries`: alone, in a post, pasted into a photo-like
background, pasted into a texture; cut types in turn), against a throw-away library of the
sensitive pictures' tiles and `--library-pictures` more (the served library's lure). Each query is
screened as the default `ScreenConfig` does (its regions, the descriptor's nearest tiles, the
re-ranker when the descriptor has one), and each positive query is followed stage by stage:

- `shortlist@k`: a tile of the query's own picture is among some region's k nearest tiles (k: the
  re-ranker's, then --wide); `right tile@k`: that tile covers mostly the posted part (IoU >= 0.5,
  the re-ranker's notion of a true pair);
- `ranked first`: the upload's best pair, after re-ranking, is a tile of its picture;
- `matched`: ... and its score reaches the matcher's threshold (the re-ranker's calibrated one).

A stage's drop from the one before says what to work on: proposals and the descriptor lose what
never reaches a shortlist; the re-ranker loses what is shortlisted but not ranked first; the
threshold loses what is ranked first but not matched. The benign queries give the false-positive
rate at the same threshold. Prints a table, then (last line) JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections import defaultdict

import numpy as np

from docray.screening.calibrate import posted_queries
from docray.screening.embed import Embedder
from docray.screening.matching import Screener, ScreenConfig, ExtensionRule
from docray.screening.postings import POSTINGS
from docray.screening.proposals import iou
from docray.screening.templates import DEFAULT_TEMPLATES, grid, tile_boxes

START = 400_000  # synthetic targets rows: past training, calibration (300k), the re-ranker (310k), its library (320k)
STAGES = ("shortlist@k", "right tile@k", "shortlist@wide", "right tile@wide", "ranked first", "matched")


def pictures(kind_dir: str, n: int, start: int, seed: int) -> str:
    """A Parquet folder of `n` synthetic targets rows from `start`, made here once (no Ray)."""
    from data_jobs.synth_corpus import generate_local

    out = os.path.join(kind_dir, f"targets-{start}-{n}-{seed}")
    if not os.path.exists(os.path.join(out, "_SUCCESS")):
        generate_local("targets", n, out, seed=seed, start=start)
        open(os.path.join(out, "_SUCCESS"), "w").close()
    return out


def shortlist_k(screener: Screener) -> int:
    """The candidates of a region the matcher decides among: the re-ranker's k, or the descriptor's best."""
    return screener.reranker.k if screener.reranker is not None else 1


def follow(screener: Screener, lib, embed, q, wide: int) -> tuple[dict, float]:
    """(stage -> reached, for a positive query; the upload's best score) of one query."""
    regions = screener.regions([q.upload])
    if not regions:
        return dict.fromkeys(STAGES, False), -1.0
    vectors = embed([r.crop for r in regions])
    sims, ids = lib.index.search(vectors, max(wide, screener.cfg.k))
    found = np.unique(ids[ids >= 0])
    rows = {int(i): r for i, r in zip(found, lib.rows(found))}

    def own(i: int, right: bool) -> bool:
        r = rows.get(int(i))
        if r is None or q.target is None or r["target_id"] != q.target:
            return False
        return not right or iou(tile_boxes(*q.size, *grid(r["cut_type"]))[r["position"]], q.tile.box) >= 0.5

    k = shortlist_k(screener)
    reached = {f"{name}@{where}": any(own(i, name == "right tile") for i in ids[:, :n].ravel())
               for name in ("shortlist", "right tile") for where, n in (("k", k), ("wide", wide))}
    if screener.reranker is not None:
        scores, _, best_ids = screener.rerank(regions, {0: q.upload.size}, vectors, sims, ids)
    else:
        scores, best_ids = screener.region_scores(regions, vectors, sims)[:, :1], ids[:, :1]
    r = int(np.argmax(scores[:, 0]))
    score = float(scores[r, 0])
    reached["ranked first"] = best_ids[r, 0] >= 0 and own(best_ids[r, 0], False)
    reached["matched"] = reached["ranked first"] and score >= screener.threshold
    return reached, score


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--descriptor", default="registry:descriptor", help="a source Embedder.load reads")
    ap.add_argument("--queries", type=int, default=400, help="positive queries, and as many benign ones")
    ap.add_argument("--pictures", type=int, default=200, help="synthetic pictures the queries come from (a third benign)")
    ap.add_argument("--library-pictures", type=int, default=300, help="more sensitive pictures whose tiles join the library")
    ap.add_argument("--start", type=int, default=START, help="their first synthetic row")
    ap.add_argument("--wide", type=int, default=50, help="the wide shortlist: nearest tiles a region")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--data", default=os.path.join(tempfile.gettempdir(), "docray-funnel"),
                    help="where the synthetic pictures are written (kept for the next run)")
    args = ap.parse_args(argv)
    embed = Embedder.load(args.descriptor)
    pics = pictures(args.data, args.pictures, args.start, args.seed)
    extra = pictures(args.data, args.library_pictures, args.start + args.pictures, args.seed) if args.library_pictures else ""
    cfg = ScreenConfig().model_copy(update={"learn": False, "text_finder": "none", "rule": ExtensionRule(enabled=False)})
    counts: dict[tuple[str, str], dict[str, int]] = defaultdict(lambda: defaultdict(int))
    benign, screener, t0 = [], None, time.perf_counter()
    for lib, q in posted_queries(pics, embed, args.queries, args.seed, POSTINGS, extra):
        screener = screener or Screener(lib, embed, cfg)
        reached, score = follow(screener, lib, embed, q, args.wide)
        if q.target is None:
            benign.append(score >= screener.threshold)
            continue
        for key in (("posting", q.posting), ("cut", q.tile.cut_type), ("all", "all")):
            counts[key]["queries"] += 1
            for s in STAGES:
                counts[key][s] += bool(reached[s])
    seconds = time.perf_counter() - t0
    k = shortlist_k(screener)
    print(f"{args.queries} positive and {len(benign)} benign queries; descriptor {args.descriptor}, re-ranker "
          f"{screener.reranking}, proposals {screener.cfg.proposals}, threshold {screener.threshold:.4f} "
          f"({screener.threshold_source}); k = {k}, wide = {args.wide}; {1000 * seconds / (args.queries + len(benign)):.0f} ms a query")
    print(f"{'group':8s} {'subset':15s} {'n':>4s} " + " ".join(f"{s:>15s}" for s in STAGES))
    order = [("all", "all")] + [("posting", p) for p in POSTINGS] + [("cut", t) for t in DEFAULT_TEMPLATES]
    summary = {"queries": args.queries, "benign": len(benign), "k": k, "wide": args.wide,
               "threshold": round(float(screener.threshold), 4), "fpr_benign": round(float(np.mean(benign)), 4),
               "ms_per_query": round(1000 * seconds / (args.queries + len(benign)), 1)}
    for key in order:
        c = counts.get(key)
        if not c:
            continue
        shares = {s: c[s] / c["queries"] for s in STAGES}
        print(f"{key[0]:8s} {key[1]:15s} {c['queries']:4d} " + " ".join(f"{shares[s]:15.3f}" for s in STAGES))
        name = key[1] if key[0] != "cut" else f"cut_{key[1]}"
        summary.update({f"{name}_{s.replace(' ', '_').replace('@', '_at_')}": round(v, 3) for s, v in shares.items()})
    print(f"benign false positives at the threshold: {int(np.sum(benign))} of {len(benign)}")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
