"""Mask privacy's verdict: the mask grid's finalists against the attack suite, best first.

    python -m benchmarks.privacy_targets                          # DOCRAY_HOME/reports/privacy/grid
    python -m benchmarks.privacy_targets --run runs/privacy-quick

Reads what `data_jobs.privacy_grid` (the `privacy_grid` step of `make models`) wrote: funnel.json and
finalists.parquet. One row per finalist: TAR at FAR 1e-2 of the masked recogniser (masked enrolment
and probes), of the original recogniser on whole images, and of the strongest attacker (which
attack), and whether the mask meets both bounds of docs/privacy.md. Best first: the masks meeting
both by masked TAR, then those meeting the attacker bound, then the rest by worst attacker TAR.
When no mask meets both, the funnel's own sentence says which bound fails. Last line: JSON.
"""
from __future__ import annotations

import argparse
import io
import json
import sys

import pandas as pd


def ranked(finalists: pd.DataFrame) -> pd.DataFrame:
    """Finalists best first (see the module docstring)."""
    f = finalists.assign(both=finalists["meets_masked"] & finalists["meets_attacker"])
    f["_key"] = f["worst_attacker_tar"].where(~f["meets_attacker"], -f["masked_tar"])
    return f.sort_values(["both", "meets_attacker", "_key"], ascending=[False, False, True]).drop(columns="_key")


def main(argv=None) -> dict:
    from docray import paths
    from docray.storage.blobs import exists, read_file

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n".join(__doc__.split("\n")[1:]))
    p.add_argument("--run", default="", help="the grid's output folder or URI (default: DOCRAY_HOME/reports/privacy/grid)")
    a = p.parse_args(argv)
    run = a.run or paths.sub("reports", "privacy", "grid")
    if not exists(paths.join(run, "funnel.json")):
        sys.exit(f"no mask grid at {run}: run `make models` (its privacy_grid step) or data_jobs.privacy_grid first")
    summary = json.loads(read_file(paths.join(run, "funnel.json")))
    if not exists(paths.join(run, "finalists.parquet")):
        sys.exit(f"{run}: no finalists.parquet (the grid ran without its attack suite, attack.enabled=false)")
    fin = ranked(pd.read_parquet(io.BytesIO(read_file(paths.join(run, "finalists.parquet")))))

    print(f"mask grid {run}: {summary['n_masks']} candidate masks x {summary['n_test_images']} test faces x "
          f"{summary['runs']} runs; {len(fin)} finalists through the attack suite (TAR at FAR 1e-2)")
    print(f"{'mask':>6} {'bin':>4} {'masked':>7} {'original':>9} {'worst attacker':>15}  {'attack':28s} both bounds")
    for _, r in fin.iterrows():
        print(f"{int(r['mask_no']):>6} {int(r['bin']):>4} {r['masked_tar']:7.3f} {r['original_tar']:9.3f} "
              f"{r['worst_attacker_tar']:15.3f}  {str(r['worst_attack'])[:28]:28s} {'yes' if r['both'] else 'no'}")
    if summary.get("empty_reason"):
        print(f"no target mask: {summary['empty_reason']}")
    best = fin.iloc[0] if len(fin) else None
    figures = {"candidates": summary["n_masks"], "finalists": len(fin), "targets": int(fin["both"].sum()) if len(fin) else 0,
               "original_tar": None if best is None else round(float(best["original_tar"]), 4),
               "best_masked_tar": None if best is None else round(float(best["masked_tar"]), 4),
               "best_worst_attacker_tar": None if best is None else round(float(best["worst_attacker_tar"]), 4),
               "best_mask_no": None if best is None else int(best["mask_no"]), "empty_reason": summary.get("empty_reason")}
    print(json.dumps(figures))
    return figures


if __name__ == "__main__":
    main()
