"""The mask-privacy report: Markdown with PNG plots from a grid run folder (data_jobs.privacy_grid).

    write_report("~/.docray/reports/privacy/grid")   # -> report.md, bins.png, masks.png, targets.png

Plots: per-bin accuracies of both recognisers (Table 1), every mask's accuracies against its
hidden area, and each target mask over a sample face (the masked face a client would send).
"""
from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd

from docray.imageio import decode_image
from docray.privacy.masks import decode_mask


def _fmt(v) -> str:
    return f"{v:.3f}" if isinstance(v, (float, np.floating)) else str(v)


def markdown_table(df: pd.DataFrame, columns: list[str]) -> str:
    cols = [c for c in columns if c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_fmt(r[c]) for c in cols) + " |" for _, r in df.iterrows()]
    return "\n".join(lines)


def plot_bins(bins: pd.DataFrame, path: str, gap_threshold: float | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = np.arange(len(bins))
    fig, ax = plt.subplots(figsize=(7, 3.6))
    ax.bar(x - 0.2, bins["acc_original"], 0.4, label="original recogniser")
    ax.bar(x + 0.2, bins["acc_masked"], 0.4, label="masked recogniser")
    for i, (_, r) in enumerate(bins.iterrows()):
        ax.text(i, max(r["acc_original"], r["acc_masked"]) + 0.02, f"gap {r['gap']:+.2f}", ha="center", fontsize=8)
    ax.set_xticks(x, bins["range"])
    ax.set_xlabel("hidden area")
    ax.set_ylabel("accuracy (mean over masks and runs)")
    ax.set_ylim(0, 1.12)
    title = "Table 1: accuracy per area bin"
    ax.set_title(title + (f" (stage-1 gap threshold {gap_threshold:g})" if gap_threshold is not None else ""), fontsize=10)
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_masks(per_mask: pd.DataFrame, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.scatter(per_mask["hole_ratio"], per_mask["acc_original"], s=10, label="original recogniser")
    ax.scatter(per_mask["hole_ratio"], per_mask["acc_masked"], s=10, label="masked recogniser")
    ax.set_xlabel("hidden area of the mask")
    ax.set_ylabel("accuracy")
    ax.set_title("every mask of the grid", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_targets(targets: pd.DataFrame, face: np.ndarray, path: str, max_n: int = 12) -> None:
    """Each target mask over the sample face (hidden pixels black), titled with id and accuracies."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = targets.head(max_n)
    n = len(rows) + 1
    fig, axes = plt.subplots(1, n, figsize=(1.9 * n, 2.8), squeeze=False)
    axes[0, 0].imshow(face)
    axes[0, 0].set_title("sample face", fontsize=7)
    for ax, (_, r) in zip(axes[0, 1:], rows.iterrows()):
        mask = decode_mask(r["mask"], size=face.shape[0])
        ax.imshow((face * mask[..., None]).astype(np.uint8))
        ax.set_title(f"{r['mask_id']}\nmasked {r['acc_masked']:.2f} orig {r['acc_original']:.2f}\n"
                     f"inpaint drop {r['drop']:.2f}", fontsize=6)
    for ax in axes[0]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(run_dir: str, out: str | None = None) -> str:
    """Write report.md (+ PNGs) for the grid run in `run_dir` into `out` (default: run_dir)."""
    run_dir = os.path.expanduser(run_dir)
    out = os.path.expanduser(out or run_dir)
    if not os.path.exists(os.path.join(run_dir, "per_mask.parquet")):
        raise FileNotFoundError(f"{run_dir}: no per_mask.parquet (run data_jobs.privacy_grid first)")
    os.makedirs(out, exist_ok=True)
    per_mask = pd.read_parquet(os.path.join(run_dir, "per_mask.parquet"))
    bins = pd.read_csv(os.path.join(run_dir, "bins.csv"))
    cands = pd.read_parquet(os.path.join(run_dir, "candidates.parquet"))
    targets = pd.read_parquet(os.path.join(run_dir, "targets.parquet"))
    summary = json.load(open(os.path.join(run_dir, "funnel.json")))
    ranges = dict(zip(bins["bin"], bins["range"]))
    cands = cands.assign(range=[ranges.get(b, "out") for b in cands["bin"]])
    cfg_text = open(os.path.join(run_dir, "config.yaml")).read() if os.path.exists(os.path.join(run_dir, "config.yaml")) else ""
    face = np.asarray(decode_image(open(os.path.join(run_dir, "sample_face.png"), "rb").read()))
    plot_bins(bins, os.path.join(out, "bins.png"))
    plot_masks(per_mask, os.path.join(out, "masks.png"))
    md = ["# Mask privacy report", "",
          f"Grid: {summary['n_masks']} masks x {summary['n_test_images']} test images x {summary['runs']} runs "
          f"= {summary['pairs']:,} pairs, {summary['grid_s']:.0f} s ({summary['pairs_per_s']:.0f} pairs/s).", "",
          "## Table 1: accuracy per hidden-area bin", "", "![bins](bins.png)", "",
          markdown_table(bins, ["range", "n_masks", "acc_original", "acc_masked", "gap", "passed"]), "",
          "![every mask](masks.png)", "", "## The funnel", ""]
    md += [f"- {s['name']}: {s['n_in']} -> {s['n_out']}" + (f" ({s['note']})" if s.get("note") else "")
           for s in summary["stages"]]
    md += ["", "## Table 2: candidates and the inpainting attack", "",
           "acc_before / acc_after: masked-recogniser accuracy on the masked images before / after inpainting; "
           "acc_original_inpainted: the original recogniser on the inpainted images (the attacker's view).", ""]
    md.append(markdown_table(cands, ["mask_id", "range", "bin", "hole_ratio", "acc_original", "acc_masked", "acc_before",
                                     "acc_after", "drop", "acc_original_inpainted", "target"]) if len(cands) else "(no candidates)")
    md += ["", "## Target masks", ""]
    if len(targets):
        plot_targets(targets, face, os.path.join(out, "targets.png"))
        md += [f"{len(targets)} target mask(s), best first:", "", "![targets](targets.png)", "",
               markdown_table(targets, ["mask_id", "bin", "hole_ratio", "acc_masked", "acc_original", "drop"])]
    else:
        md.append(f"No target mask: {summary.get('empty_reason')}")
    if cfg_text:
        md += ["", "## Config", "", "```yaml", cfg_text.strip(), "```"]
    path = os.path.join(out, "report.md")
    with open(path, "w") as f:
        f.write("\n".join(md) + "\n")
    return path
