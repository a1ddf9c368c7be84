"""The mask-privacy report: Markdown with PNG plots from a grid run folder (data_jobs.privacy_grid).

    write_report("~/.docray/reports/privacy/grid")   # -> report.md, bins.png, masks.png, targets.png

Plots: per-bin accuracies of both recognisers (Table 1), every mask's accuracies against its
hidden area, and each target mask over a sample face (the masked face a client would send).
With the funnel's stage 5 (attacks.parquet in the run: the attacker table of the finalists,
docray.privacy.suite), also: the finalists' verdicts, the trade-off of the strongest attacker's TAR
against the masked recogniser's (tradeoff.png), TAR against hidden area for each recogniser and
attack (tar_area.png), and an attacker table per finalist. When the run has both stage-2 rules
(funnel.json `rules`), a table puts them side by side; with strips.parquet, a sample strip per mask
(strip_<mask_no>.png: for a few probe faces, a row each of the original, the masked image, each
attack's reconstruction, blur and mosaic). The run's throughput and peak memory head the report.
"""
from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import yaml

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


TAR_COLUMNS = ["party", "recogniser", "protection", "attack", "reference", "tar@0.001", "tar@0.01", "rank1"]


def _row_name(r) -> str:
    if r["party"] == "defender":
        return f"defender {r['recogniser']}" + ("" if r["attack"] == "none" else f" + {r['attack']}")
    return f"attacker: {r['protection']}" + ("" if r["attack"] == "none" else f" + {r['attack']}") + f" vs {r['reference']}"


def plot_tar_area(attacks: pd.DataFrame, path: str, far: float = 1e-2) -> None:
    """TAR at `far` against the finalists' hidden area, one line per recogniser / attack / reference."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    per = attacks[attacks["mask_no"] >= 0].assign(name=lambda d: d.apply(_row_name, axis=1)).sort_values("hole_ratio")
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    for name, t in per.groupby("name", sort=False):
        ax.plot(t["hole_ratio"], t[f"tar@{far:g}"], marker="o", ms=3, lw=1, label=name,
                ls="-" if name.startswith("defender") else "--")
    ax.set_xlabel("hidden area of the mask")
    ax.set_ylabel(f"TAR at FAR = {far:g}")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title("each recogniser and attack against hidden area (finalists)", fontsize=10)
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_tradeoff(finalists: pd.DataFrame, path: str, max_attacker: float, floor: float) -> None:
    """Each finalist: the strongest attacker's TAR against the masked recogniser's, with the bounds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4))
    ok = finalists["meets_masked"] & finalists["meets_attacker"]
    ax.scatter(finalists.loc[~ok, "worst_attacker_tar"], finalists.loc[~ok, "masked_tar"], s=14, label="finalist")
    ax.scatter(finalists.loc[ok, "worst_attacker_tar"], finalists.loc[ok, "masked_tar"], s=24, c="g", label="target")
    ax.axvline(max_attacker, c="r", lw=0.8, ls="--", label="attacker bound")
    ax.axhline(floor, c="k", lw=0.8, ls=":", label="masked-recogniser bound")
    ax.set_xlabel("strongest attacker's TAR")
    ax.set_ylabel("masked recogniser's TAR")
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.02, 1.02)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def attacker_sections(run_dir: str, out: str, cands: pd.DataFrame, cfg: dict) -> list[str]:
    """The report's stage-5 part (see the module docstring); [] when the run has no attacks.parquet."""
    path = os.path.join(run_dir, "attacks.parquet")
    if not os.path.exists(path) or "worst_attacker_tar" not in cands.columns:
        return []
    attacks = pd.read_parquet(path)
    finalists = cands[cands["worst_attacker_tar"].notna()].copy()
    for c in ("meets_masked", "meets_attacker"):
        finalists[c] = finalists[c].astype(bool)
    max_attacker, loss = cfg.get("max_attacker_tar", 0.10), cfg.get("max_masked_loss", 0.10)
    floor = float(finalists["original_tar"].iloc[0]) - loss if len(finalists) else 0.0
    md = ["", "## Stage 5: the attack suite on the finalists", "",
          f"Open-set protocol (docs/privacy.md): a target keeps every attacker's TAR at or below {max_attacker:g} and the "
          f"masked recogniser's within {loss:g} of the original's on whole images.", ""]
    whole = attacks[attacks["mask_no"] == -1]
    md += ["Whole images:", "", markdown_table(whole, TAR_COLUMNS), ""]
    md.append(markdown_table(finalists, ["mask_id", "range", "hole_ratio", "masked_tar", "original_tar",
                                         "worst_attacker_tar", "worst_attack", "meets_masked", "meets_attacker"]))
    if len(finalists):
        plot_tradeoff(finalists, os.path.join(out, "tradeoff.png"), max_attacker, floor)
        plot_tar_area(attacks, os.path.join(out, "tar_area.png"))
        md += ["", "![trade-off](tradeoff.png)", "", "![TAR against hidden area](tar_area.png)", "",
               "## Attacker table per finalist", ""]
        for no, t in attacks[attacks["mask_no"] >= 0].groupby("mask_no", sort=False):
            md += [f"### {t['mask_id'].iloc[0]} (hidden {t['hole_ratio'].iloc[0]:.3f})", "",
                   markdown_table(t, TAR_COLUMNS), ""]
    return md


def plot_strip(strip: pd.DataFrame, path: str, title: str) -> None:
    """One mask's sample strip (rows: mask_no, panel, face, image PNG): a row per face, a column per panel."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = list(dict.fromkeys(strip["panel"]))
    faces = sorted(set(strip["face"]))
    fig, axes = plt.subplots(len(faces), len(panels), figsize=(1.3 * len(panels), 1.4 * len(faces) + 0.4), squeeze=False)
    cells = {(r["face"], r["panel"]): r["image"] for _, r in strip.iterrows()}
    for i, face in enumerate(faces):
        for j, panel in enumerate(panels):
            ax = axes[i, j]
            ax.imshow(np.asarray(decode_image(cells[(face, panel)])))
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(panel.replace("_", " "), fontsize=7)
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def strip_sections(run_dir: str, out: str) -> list[str]:
    """The sample strips (strip_<mask_no>.png beside report.md); [] when the run has no strips.parquet."""
    path = os.path.join(run_dir, "strips.parquet")
    if not os.path.exists(path):
        return []
    strips = pd.read_parquet(path)
    if strips.empty:
        return []
    md = ["", "## Sample strips", "",
          "For a few probe faces of people nobody trained on, one row each: the original, the masked image (what "
          "leaks), each attack's reconstruction from it, and the blur and mosaic baselines of the same region.", ""]
    for no, t in strips.groupby("mask_no", sort=False):
        name = f"strip_{int(no)}.png"
        label = f"mask {t['mask_id'].iloc[0]}"
        plot_strip(t, os.path.join(out, name), label)
        md += [f"[{label}]({name})", "", f"![{label}]({name})", ""]
    return md


def rules_section(summary: dict) -> list[str]:
    """The two stage-2 rules side by side (funnel.json `rules`); [] for a run without them."""
    rules = summary.get("rules") or {}
    if len(rules) < 2:
        return []
    md = ["", "## Stage 2: the default rule and the alternative", "",
          f"Targets are served from `{summary.get('stage2', 'top_k')}`. `top_k`: the best masks of each passing bin "
          "by masked accuracy; `similar`: the masks similar to a mask of the target subsets (the method's "
          "alternative second stage). Stages 3 and 5 ran once on the union of their masks.", "",
          "| rule | stages (in -> out) | targets | target masks | why empty |", "|---|---|---|---|---|"]
    for rule, r in rules.items():
        chain = " / ".join(f"{s['n_in']}->{s['n_out']}" for s in r["stages"])
        ids = ", ".join(map(str, r.get("targets", [])[:8])) + (" ..." if len(r.get("targets", [])) > 8 else "")
        md.append(f"| {rule} | {chain} | {r['n_targets']} | {ids} | {r.get('empty_reason') or ''} |")
    return md


def throughput_line(summary: dict) -> list[str]:
    """The run's masks/s and peak memory (funnel.json `throughput`)."""
    t = summary.get("throughput")
    if not t:
        return []
    parts = [f"grid {t['masks_per_s']:.2f} masks/s ({t['pairs_per_s']:.0f} pairs/s, actors' peak RSS "
             f"{t.get('grid_peak_actor_rss_mb') or float('nan'):.0f} MB)"]
    if "stage3_s" in t:
        parts.append(f"inpainting attack {t['stage3_masks'] / t['stage3_s']:.2f} masks/s")
    if "stage5_eval_s" in t:
        parts.append(f"attack suite {t['stage5_finalists_per_s']:.3f} masks/s on {t['stage5_finalists']} finalists "
                     f"({t['stage5_actors']} actors, peak RSS {t['stage5_peak_actor_rss_mb']:.0f} MB; the attacker "
                     f"trained in {t['stage5_attacker_train_s']:.0f} s)")
    parts.append(f"whole run {t['total_s']:.0f} s, driver peak RSS {t['driver_peak_rss_mb']:.0f} MB")
    return ["Throughput: " + "; ".join(parts) + ".", ""]


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
    ranges = {b: r for b, r in zip(bins["bin"], bins["range"]) if b >= 0}  # -1: the no-mask row
    cands = cands.assign(range=[ranges.get(b, "out") for b in cands["bin"]])
    cfg_text = open(os.path.join(run_dir, "config.yaml")).read() if os.path.exists(os.path.join(run_dir, "config.yaml")) else ""
    face = np.asarray(decode_image(open(os.path.join(run_dir, "sample_face.png"), "rb").read()))
    plot_bins(bins, os.path.join(out, "bins.png"))
    plot_masks(per_mask, os.path.join(out, "masks.png"))
    md = ["# Mask privacy report", "",
          f"Grid: {summary['n_masks']} masks x {summary['n_test_images']} test images x {summary['runs']} runs "
          f"= {summary['pairs']:,} pairs, {summary['grid_s']:.0f} s ({summary['pairs_per_s']:.0f} pairs/s).", "",
          *throughput_line(summary),
          "## Table 1: accuracy per hidden-area bin", "", "![bins](bins.png)", "",
          markdown_table(bins, ["range", "n_masks", "acc_original", "acc_masked", "gap", "passed"]), "",
          "![every mask](masks.png)", "", "## The funnel", ""]
    md += [f"- {s['name']}: {s['n_in']} -> {s['n_out']}" + (f" ({s['note']})" if s.get("note") else "")
           for s in summary["stages"]]
    md += rules_section(summary)
    md += ["", "## Table 2: candidates and the inpainting attack", "",
           "acc_before / acc_after: masked-recogniser accuracy on the masked images before / after inpainting; "
           "acc_original_inpainted: the original recogniser on the inpainted images (the attacker's view).", ""]
    md.append(markdown_table(cands, ["mask_id", "range", "bin", "hole_ratio", "acc_original", "acc_masked", "acc_before",
                                     "acc_after", "drop", "acc_original_inpainted", "target", "similarity",
                                     "rule_top_k", "rule_similar"]) if len(cands) else "(no candidates)")
    if "worst_attacker_tar" in cands.columns:
        cfg = (yaml.safe_load(cfg_text) or {}).get("funnel", {}) if cfg_text else {}
        md += attacker_sections(run_dir, out, cands, cfg)
    md += strip_sections(run_dir, out)
    md += ["", "## Target masks", ""]
    if len(targets):
        plot_targets(targets, face, os.path.join(out, "targets.png"))
        md += [f"{len(targets)} target mask(s), best first:", "", "![targets](targets.png)", "",
               markdown_table(targets, ["mask_id", "bin", "hole_ratio", "acc_masked", "acc_original", "drop", "masked_tar",
                                        "worst_attacker_tar", "worst_attack"])]
    else:
        md.append(f"No target mask: {summary.get('empty_reason')}")
    if cfg_text:
        md += ["", "## Config", "", "```yaml", cfg_text.strip(), "```"]
    path = os.path.join(out, "report.md")
    with open(path, "w") as f:
        f.write("\n".join(md) + "\n")
    return path
