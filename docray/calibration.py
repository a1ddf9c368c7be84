"""Decision thresholds calibrated on held-out data: one operating point chooser for every method.

    op = operating_point(pos_scores, neg_scores, max_fpr=0.005)
    op.threshold, op.tpr, op.fpr                      # the lowest threshold whose FPR <= max_fpr

    docray calibrate screening PICTURES [--max-fpr 0.005]    # a user's held-out pictures (targets contract)

A score at or above the threshold is a positive decision (a match, a known document, the same
person). The threshold is the lowest one whose false-positive rate on the negatives stays at or
under `max_fpr`: the most recall the budget of false alarms allows. With few negatives the FPR
cannot be resolved below 1/n_neg; the result says so (`resolved: false`) instead of claiming it.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import click
import numpy as np


@dataclass
class OperatingPoint:
    threshold: float
    tpr: float  # share of the positives at or above the threshold
    fpr: float  # share of the negatives at or above the threshold
    max_fpr: float
    n_pos: int
    n_neg: int
    resolved: bool  # whether n_neg is large enough to measure an FPR of max_fpr (n_neg * max_fpr >= 1)

    def line(self) -> str:
        note = "" if self.resolved else f" (only {self.n_neg} negatives: FPR not resolved below {1 / max(self.n_neg, 1):.4f})"
        return (f"threshold {self.threshold:.4f}: TPR {self.tpr:.3f} on {self.n_pos} positives, "
                f"FPR {self.fpr:.4f} on {self.n_neg} negatives (target <= {self.max_fpr}){note}")


def operating_point(pos_scores, neg_scores, max_fpr: float) -> OperatingPoint:
    """The lowest threshold with FPR <= `max_fpr` on `neg_scores`, and the TPR it gives on `pos_scores`."""
    pos, neg = np.asarray(pos_scores, np.float64), np.asarray(neg_scores, np.float64)
    if not 0 <= max_fpr < 1:
        raise ValueError(f"max_fpr must be in [0, 1), got {max_fpr}")
    if len(pos) == 0 or len(neg) == 0:
        raise ValueError(f"need positives and negatives to calibrate, got {len(pos)} and {len(neg)}")
    allowed = int(np.floor(max_fpr * len(neg)))  # negatives that may score at or above the threshold
    ranked = np.sort(neg)[::-1]
    # strictly above the (allowed+1)-th highest negative: at most `allowed` negatives pass
    threshold = float(np.nextafter(ranked[allowed], np.inf))
    return OperatingPoint(threshold=threshold, tpr=float((pos >= threshold).mean()), fpr=float((neg >= threshold).mean()),
                          max_fpr=max_fpr, n_pos=len(pos), n_neg=len(neg), resolved=len(neg) * max_fpr >= 1)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def calibrate() -> None:
    """Calibrate a method's decision threshold on your held-out data; prints the operating point."""


@calibrate.command("screening")
@click.argument("pictures")
@click.option("--descriptor", default="registry:descriptor", show_default=True,
              help="descriptor to score with: registry:NAME[:VERSION] or a saved model folder")
@click.option("--max-fpr", type=float, default=0.005, show_default=True, help="false-positive budget on benign pictures")
@click.option("--queries", type=int, default=200, show_default=True, help="edited tiles per class (targets, benign)")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="print the operating point as JSON")
def screening(pictures, descriptor, max_fpr, queries, seed, as_json) -> None:
    """Cut-out screening's match threshold from PICTURES (a Parquet dataset of the `targets` contract,
    local or s3://, with `is_target`): the sensitive pictures form a library; edited tiles of them are
    the positives, edited tiles of the benign pictures the negatives (`docs/datasets.md`).

    Example: docray calibrate screening ~/data/pictures/val --max-fpr 0.005
    """
    from docray.screening.calibrate import screening_scores

    pos, neg = screening_scores(pictures, descriptor, queries=queries, seed=seed)
    op = operating_point(pos, neg, max_fpr)
    if as_json:
        click.echo(json.dumps({"method": "screening", **asdict(op)}))
    else:
        click.echo(f"screening: {op.line()}")
        click.echo(f"use it: --set threshold={op.threshold:.4f} (ScreenConfig.threshold; configs/serve/screening.yaml)")
