"""The selection funnel: from the grid's per-mask accuracies to the target masks (the method's Table 2).

Stage 1  subsets: area bins whose mean gap (masked-recogniser accuracy - original-recogniser
         accuracy) exceeds `gap_threshold` (default 0.30, i.e. 30 points of accuracy). With
         `rule="absolute"` instead: the masks on which the masked recogniser scores above
         `abs_masked` (0.80) while the original scores below `abs_original` (0.50).
Stage 2  candidates: in each passing bin, the `top_k` masks by masked-recogniser accuracy. With
         `stage2="similar"` instead (the method's alternative second stage): the masks of the grid
         whose similarity to a mask of the target subsets (stage 1's masks; never itself) exceeds
         `similar_threshold` (0.80): `similarity="iou"` of the hidden regions (default) or
         `"agreement"`, the fraction of pixels both masks keep or both hide; at most `top_k` per
         bin, by masked accuracy, so stages 3 and 5 cost what the default rule costs.
Stage 3  inpainting attack: for each candidate, the masked recogniser's accuracy on the masked
         test images (before) and on those images after inpainting (after), same placements.
Stage 4  targets: candidates whose drop (before - after) exceeds `drop_threshold` (default 0.07).
Stage 5  against the attacker (when `run_funnel` gets an `attacker`): the stage-4 survivors, the
         finalists, go through the attack suite on the open-set protocol (docray.privacy.suite).
         A target keeps every attacker's TAR at FAR `attacker_far` (1e-2) on the masked images at
         or below `max_attacker_tar` (0.10), whatever the attack and reference, while the masked
         recogniser's TAR stays within `max_masked_loss` (0.10) of the original recogniser's on
         whole images.

`run_funnel` takes the attack as a function (candidates DataFrame -> DataFrame with mask_no,
acc_before, acc_after), and the attacker as one too (finalists -> the long attacker table of
`docray.privacy.suite`, with mask_no; the whole images' rows have mask_no -1), so the funnel itself
is plain pandas and tests feed it hand-made tables. An empty result names the stage that emptied it
and by how much it missed (stage 5: the bound that fails, for the best trade-off). `run_rules` runs
both stage-2 rules side by side (the chosen one first) and calls the attack and the attacker once
each, on the union of what the rules send them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Literal

import numpy as np
import pandas as pd
from pydantic import Field

from docray.config import Config
from docray.privacy.grid import bin_table
from docray.privacy.masks import BIN_EDGES, bin_label


class FunnelConfig(Config):
    rule: Literal["gap", "absolute"] = Field("gap", description="stage 1: 'gap' (bins by mean gap) or 'absolute' "
                                                                "(masks by abs_masked / abs_original)")
    abs_masked: float = Field(0.80, description="stage 1, absolute rule: the masked recogniser's accuracy above this")
    abs_original: float = Field(0.50, description="stage 1, absolute rule: the original recogniser's accuracy below this")
    gap_threshold: float = Field(0.30, description="stage 1: a bin passes when masked - original accuracy > this")
    top_k: int = Field(5, ge=1, description="stage 2: candidates kept per passing bin, by masked accuracy")
    stage2: Literal["top_k", "similar"] = Field("top_k", description="stage 2: 'top_k' (the top_k per passing bin) or "
                                                "'similar' (masks similar to the target subsets' masks)")
    similar_threshold: float = Field(0.80, description="stage 2, similar rule: similarity above this")
    similarity: Literal["iou", "agreement"] = Field("iou", description="stage 2, similar rule: 'iou' of the hidden "
                                                    "regions or 'agreement' (fraction of pixels on which both agree)")
    drop_threshold: float = Field(0.07, description="stage 4: a candidate is a target when its inpainting drop > this")
    attacker_far: float = Field(1e-2, description="stage 5: the FAR at which the TARs are compared")
    max_attacker_tar: float = Field(0.10, description="stage 5: every attacker's TAR on the masked images at most this")
    max_masked_loss: float = Field(0.10, description="stage 5: the masked recogniser's TAR at least the original's "
                                                     "(whole images) minus this")


@dataclass
class Stage:
    name: str
    n_in: int
    n_out: int
    note: str = ""


@dataclass
class FunnelResult:
    bins: pd.DataFrame  # Table 1 plus `passed`
    candidates: pd.DataFrame  # stage 2 rows, with acc_before / acc_after / drop / target after stage 3
    targets: pd.DataFrame  # the target masks (Table 2), best first
    stages: list[Stage] = field(default_factory=list)
    empty_reason: str | None = None  # set when no target mask came out
    attacks: pd.DataFrame | None = None  # stage 5's attacker table (long: a row per mask, recogniser, attack...)

    def summary(self) -> dict:
        return {"stages": [s.__dict__ for s in self.stages], "n_targets": len(self.targets),
                "empty_reason": self.empty_reason}


def select_bins(per_mask: pd.DataFrame, cfg: FunnelConfig, edges=BIN_EDGES) -> pd.DataFrame:
    """Stage 1: Table 1 with a `passed` column (bins with no masks never pass)."""
    bins = bin_table(per_mask, edges)
    bins["passed"] = (bins["n_masks"] > 0) & (bins["gap"] > cfg.gap_threshold)
    return bins


def stage_one(per_mask: pd.DataFrame, cfg: FunnelConfig, edges=BIN_EDGES) -> tuple[pd.DataFrame, pd.DataFrame, list, str | None]:
    """Stage 1 by cfg.rule: (Table 1 with `passed`, the masks that go on, [Stage], why it emptied or None)."""
    if cfg.rule == "gap":
        bins = select_bins(per_mask, cfg, edges)
        stage = Stage(f"bins with gap > {cfg.gap_threshold:g}", int((bins["n_masks"] > 0).sum()), int(bins["passed"].sum()))
        pool = per_mask[per_mask["bin"].isin(bins.loc[bins["passed"], "bin"])]
        why = None
        if not bins["passed"].any():
            filled = bins[bins["n_masks"] > 0]
            if len(filled):
                best = filled.loc[filled["gap"].idxmax()]
                why = (f"stage 1 emptied it: no bin's masked - original gap exceeds {cfg.gap_threshold:g}; the largest, "
                       f"{best['gap']:.3f} in bin {best['range']}, misses by {cfg.gap_threshold - best['gap']:.3f}")
            else:
                why = "stage 1 emptied it: no mask falls into any area bin"
    else:
        bins = bin_table(per_mask, edges)
        binned = per_mask[per_mask["bin"] >= 0]
        pool = binned[(binned["acc_masked"] > cfg.abs_masked) & (binned["acc_original"] < cfg.abs_original)]
        bins["passed"] = bins["bin"].isin(pool["bin"])
        stage = Stage(f"masks with masked > {cfg.abs_masked:g} and original < {cfg.abs_original:g}", len(binned), len(pool))
        why = None
        if pool.empty:
            if len(binned):  # the closest: the mask whose worse margin is the least bad
                margin = pd.concat([binned["acc_masked"] - cfg.abs_masked, cfg.abs_original - binned["acc_original"]], axis=1).min(1)
                best = binned.loc[margin.idxmax()]
                why = (f"stage 1 emptied it: no mask has masked accuracy > {cfg.abs_masked:g} with original < "
                       f"{cfg.abs_original:g}; the closest, mask {best['mask_id']} (masked {best['acc_masked']:.3f}, "
                       f"original {best['acc_original']:.3f}), misses by {-margin.max():.3f}")
            else:
                why = "stage 1 emptied it: no mask falls into any area bin"
    stage.note = why or ""
    return bins, pool, [stage], why


def top_candidates(per_mask: pd.DataFrame, bins: pd.DataFrame, k: int) -> pd.DataFrame:
    """Stage 2: the top-k masks by masked accuracy in each passing bin (ties: lower mask_no first)."""
    passed = bins.loc[bins["passed"], "bin"].tolist()
    sel = per_mask[per_mask["bin"].isin(passed)].sort_values(["bin", "acc_masked", "mask_no"], ascending=[True, False, True])
    return sel.groupby("bin", sort=True).head(k).reset_index(drop=True)


def mask_similarity(a: np.ndarray, b: np.ndarray, kind: str = "iou") -> np.ndarray:
    """Masks (m, h, w) and (n, h, w) in {0, 1} (1 kept) -> (m, n) similarities in [0, 1]: "iou" of the
    hidden regions (two masks that hide nothing: 1), or "agreement", the fraction of pixels both keep or
    both hide."""
    ha = (np.asarray(a).reshape(len(a), -1) < 0.5).astype(np.float32)  # (m, p) hidden
    hb = (np.asarray(b).reshape(len(b), -1) < 0.5).astype(np.float32)  # (n, p)
    if ha.shape[1] != hb.shape[1]:
        raise ValueError(f"masks of different sizes: {np.shape(a)[1:]} and {np.shape(b)[1:]}")
    inter = ha @ hb.T  # (m, n) pixels hidden by both
    sa, sb = ha.sum(1)[:, None], hb.sum(1)[None, :]
    if kind == "iou":
        union = sa + sb - inter
        return np.where(union > 0, inter / np.maximum(union, 1), 1.0)
    if kind == "agreement":
        return 1.0 - (sa + sb - 2 * inter) / ha.shape[1]  # disagreeing pixels: hidden by exactly one
    raise ValueError(f"unknown mask similarity {kind!r}; choose 'iou' or 'agreement'")


def similar_candidates(per_mask: pd.DataFrame, pool: pd.DataFrame, masks, cfg: FunnelConfig) -> tuple[pd.DataFrame, str | None]:
    """Stage 2, similar rule: (candidates with a `similarity` column, why it emptied or None). `masks`
    maps mask_no -> (h, w) mask (a dict, or an array indexed by mask_no)."""
    if masks is None:
        raise ValueError("stage2='similar' needs the masks (run_funnel(..., masks=...))")
    binned = per_mask[per_mask["bin"] >= 0]
    ref_nos, nos = pool["mask_no"].to_numpy(), binned["mask_no"].to_numpy()
    sim = mask_similarity(np.stack([masks[int(n)] for n in nos]), np.stack([masks[int(n)] for n in ref_nos]),
                          cfg.similarity)  # (all binned, target subsets' masks)
    sim[nos[:, None] == ref_nos[None, :]] = -1.0  # a mask is not similar to itself
    best = sim.max(1) if len(ref_nos) else np.full(len(nos), -1.0)
    scored = binned.assign(similarity=best)
    kept = scored[scored["similarity"] > cfg.similar_threshold]
    kept = kept.sort_values(["bin", "acc_masked", "mask_no"], ascending=[True, False, True])
    cands = kept.groupby("bin", sort=True).head(cfg.top_k).reset_index(drop=True)
    why = None
    if cands.empty:
        top = scored.loc[scored["similarity"].idxmax()] if len(scored) else None
        why = (f"stage 2 emptied it: no mask's {cfg.similarity} to another mask of the target subsets exceeds "
               f"{cfg.similar_threshold:g}" + ("" if top is None or top["similarity"] < 0 else
               f"; the highest, {top['similarity']:.3f} for mask {top['mask_id']}, misses by "
               f"{cfg.similar_threshold - top['similarity']:.3f}"))
    return cands, why


def stage_two(per_mask: pd.DataFrame, pool: pd.DataFrame, bins: pd.DataFrame, cfg: FunnelConfig,
              masks=None) -> tuple[pd.DataFrame, Stage, str | None]:
    """Stage 2 by cfg.stage2: (candidates, its Stage, why it emptied or None)."""
    if cfg.stage2 == "top_k":
        cands = top_candidates(pool, bins, cfg.top_k)
        return cands, Stage(f"top {cfg.top_k} per passing bin", len(pool), len(cands)), None
    cands, why = similar_candidates(per_mask, pool, masks, cfg)
    stage = Stage(f"masks with {cfg.similarity} > {cfg.similar_threshold:g} to a target subset's mask, top "
                  f"{cfg.top_k} per bin", int((per_mask["bin"] >= 0).sum()), len(cands), why or "")
    return cands, stage, why


def run_funnel(per_mask: pd.DataFrame, attack: Callable[[pd.DataFrame], pd.DataFrame], cfg: FunnelConfig | None = None,
               edges=BIN_EDGES, attacker: Callable[[pd.DataFrame], pd.DataFrame] | None = None,
               masks=None) -> FunnelResult:
    """Stages 1-4, and 5 with an `attacker` (see the module docstring). `attack` is called once, on
    the candidates, if any; `attacker` once, on the finalists (stage 4's survivors), if any. `masks`
    (mask_no -> (h, w) mask) only for stage2="similar"."""
    cfg = cfg or FunnelConfig()
    need = {"mask_no", "mask_id", "bin", "acc_original", "acc_masked"}
    if missing := need - set(per_mask.columns):
        raise ValueError(f"per-mask table lacks column(s) {sorted(missing)}")
    bins, pool, stages, why = stage_one(per_mask, cfg, edges)
    empty = pd.DataFrame(columns=list(per_mask.columns) + ["acc_before", "acc_after", "drop"])
    if why:
        return FunnelResult(bins, empty, empty, stages, why)
    cands, stage, why = stage_two(per_mask, pool, bins, cfg, masks)
    stages.append(stage)
    if why:
        return FunnelResult(bins, empty, empty, stages, why)
    attacked = attack(cands)
    if missing := {"mask_no", "acc_before", "acc_after"} - set(attacked.columns):
        raise ValueError(f"attack result lacks column(s) {sorted(missing)}")
    extra = [c for c in attacked.columns if c not in cands.columns or c == "mask_no"]
    cands = cands.merge(attacked[extra], on="mask_no", how="left", validate="one_to_one")
    cands["drop"] = cands["acc_before"] - cands["acc_after"]
    cands["target"] = cands["drop"] > cfg.drop_threshold
    stages.append(Stage("inpainting attack", len(cands), len(cands)))
    targets = cands[cands["target"]].sort_values(["acc_masked", "drop"], ascending=False).reset_index(drop=True)
    stages.append(Stage(f"drop > {cfg.drop_threshold:g}", len(cands), len(targets)))
    why = None
    if targets.empty:
        best = cands.loc[cands["drop"].idxmax()]
        why = (f"stage 4 emptied it: no candidate's inpainting drop exceeds {cfg.drop_threshold:g}; the largest, "
               f"{best['drop']:.3f} for mask {best['mask_id']} in bin {bin_label(int(best['bin']), edges)}, "
               f"misses by {cfg.drop_threshold - best['drop']:.3f}")
        stages[-1].note = why
        return FunnelResult(bins, cands, targets, stages, why)
    if attacker is None:
        return FunnelResult(bins, cands, targets, stages, why)
    table = attacker(targets)
    verdict = attacker_verdict(table, cfg)
    cands = cands.merge(verdict, on="mask_no", how="left", validate="one_to_one")
    finalists = targets.merge(verdict, on="mask_no", how="left", validate="one_to_one")
    targets = finalists[finalists["meets_masked"] & finalists["meets_attacker"]].reset_index(drop=True)
    stages.append(Stage(f"attackers <= {cfg.max_attacker_tar:g} and masked within {cfg.max_masked_loss:g} "
                        f"(TAR@FAR={cfg.attacker_far:g})", len(finalists), len(targets)))
    if targets.empty:
        why = stages[-1].note = "stage 5 emptied it: " + attacker_miss(finalists, cfg)
    return FunnelResult(bins, cands, targets, stages, why, table)


def attacker_verdict(table: pd.DataFrame, cfg: FunnelConfig) -> pd.DataFrame:
    """Stage 5 per finalist, from the attacker table: masked_tar (the masked recogniser, masked
    enrolment and probes), original_tar (the original recogniser on whole images, mask_no -1),
    worst_attacker_tar and the attack / reference that reached it (protection "mask" only: the
    blur and mosaic rows are baselines), meets_masked, meets_attacker."""
    col = f"tar@{cfg.attacker_far:g}"
    if missing := {"mask_no", "party", "recogniser", "protection", "attack", "reference", col} - set(table.columns):
        raise ValueError(f"attacker table lacks column(s) {sorted(missing)}")
    whole = table[(table["mask_no"] == -1) & (table["recogniser"] == "original") & (table["protection"] == "none")]
    if whole.empty:
        raise ValueError("attacker table has no row of the original recogniser on whole images (mask_no -1)")
    original = float(whole[col].iloc[0])
    rows = []
    for no, t in table[table["mask_no"] >= 0].groupby("mask_no"):
        masked = t[(t["party"] == "defender") & (t["recogniser"] == "masked") & (t["protection"] == "mask")
                   & (t["attack"] == "none")]
        att = t[(t["party"] == "attacker") & (t["protection"] == "mask")]
        if masked.empty or att.empty:
            raise ValueError(f"attacker table: mask_no {no} lacks the masked recogniser's row or the attackers' rows")
        worst = att.loc[att[col].idxmax()]
        rows.append({"mask_no": no, "masked_tar": float(masked[col].iloc[0]), "original_tar": original,
                     "worst_attacker_tar": float(worst[col]), "worst_attack": f"{worst['attack']} ({worst['reference']})"})
    v = pd.DataFrame(rows)
    v["meets_masked"] = v["masked_tar"] >= v["original_tar"] - cfg.max_masked_loss - 1e-12
    v["meets_attacker"] = v["worst_attacker_tar"] <= cfg.max_attacker_tar + 1e-12
    return v


def attacker_miss(finalists: pd.DataFrame, cfg: FunnelConfig) -> str:
    """Which bound of stage 5 fails, said for the best trade-off among the finalists."""
    far, floor = f"TAR@FAR={cfg.attacker_far:g}", finalists["original_tar"].iloc[0] - cfg.max_masked_loss
    safe = finalists[finalists["meets_attacker"]]
    if safe.empty:
        best = finalists.sort_values(["worst_attacker_tar", "masked_tar"], ascending=[True, False]).iloc[0]
        return (f"the attacker bound fails: no finalist keeps every attacker at or below {cfg.max_attacker_tar:g} {far}; "
                f"the lowest, {best['worst_attacker_tar']:.3f} for mask {best['mask_id']} (strongest attack: "
                f"{best['worst_attack']}), misses by {best['worst_attacker_tar'] - cfg.max_attacker_tar:.3f}"
                + ("" if best["meets_masked"] else f", and its masked recogniser ({best['masked_tar']:.3f}) is more "
                   f"than {cfg.max_masked_loss:g} below the original's {best['original_tar']:.3f}"))
    best = safe.sort_values("masked_tar", ascending=False).iloc[0]
    return (f"the masked-recogniser bound fails: of the {len(safe)} finalist(s) that keep every attacker at or below "
            f"{cfg.max_attacker_tar:g} {far}, the best masked recogniser, {best['masked_tar']:.3f} for mask "
            f"{best['mask_id']}, is below the original's {best['original_tar']:.3f} minus {cfg.max_masked_loss:g} "
            f"by {floor - best['masked_tar']:.3f}")


def run_rules(per_mask: pd.DataFrame, attack: Callable[[pd.DataFrame], pd.DataFrame], cfg: FunnelConfig | None = None,
              edges=BIN_EDGES, attacker: Callable[[pd.DataFrame], pd.DataFrame] | None = None,
              masks=None) -> dict[str, FunnelResult]:
    """The funnel under each stage-2 rule, {rule: result}, cfg.stage2's first. A mask's stage-3 and
    stage-5 figures do not depend on the rule that nominated it, so `attack` runs once, on the union
    of the rules' candidates, and `attacker` once, on the union of their finalists; each rule's run
    then reads its own rows. Without `masks` only cfg.stage2 runs."""
    cfg = cfg or FunnelConfig()
    rules = [cfg.stage2] + [r for r in ("top_k", "similar") if r != cfg.stage2 and masks is not None]
    cfgs = {r: cfg.model_copy(update={"stage2": r}) for r in rules}
    cands = []
    for r in rules:  # stages 1 and 2 are cheap: run them to learn what each rule would attack
        run_funnel(per_mask, lambda c: cands.append(c) or _no_attack(c), cfgs[r], edges, masks=masks)
    union = pd.concat(cands).drop_duplicates("mask_no") if cands else per_mask.iloc[:0]
    attacked = attack(union) if len(union) else None
    shared_attack = lambda c: attacked[attacked["mask_no"].isin(c["mask_no"])].reset_index(drop=True)
    table = None
    if attacker is not None and attacked is not None:
        hit = union.merge(attacked[["mask_no", "acc_before", "acc_after"]], on="mask_no")
        finalists = union[union["mask_no"].isin(hit.loc[hit["acc_before"] - hit["acc_after"] > cfg.drop_threshold,
                                                        "mask_no"])]
        table = attacker(finalists) if len(finalists) else None
    shared_attacker = None if table is None else (
        lambda f: table[(table["mask_no"] == -1) | table["mask_no"].isin(f["mask_no"])].reset_index(drop=True))
    return {r: run_funnel(per_mask, shared_attack, cfgs[r], edges, shared_attacker, masks) for r in rules}


def _no_attack(cands: pd.DataFrame) -> pd.DataFrame:
    """A stand-in attack for learning a rule's candidates: no drop."""
    return pd.DataFrame({"mask_no": cands["mask_no"], "acc_before": 0.0, "acc_after": 0.0})
