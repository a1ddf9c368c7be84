"""Open-set verification through the target masks: the threshold, the gallery match, the serving policy.

    python -m docray.privacy.verification --set identities.train=64 identities.eval=64   # calibrate
    docray privacy calibrate --set identities.train=32 samples=20                      # the same

The service verifies people it never trained on (docs/privacy.md, "Serving"), so its threshold is
set on people nobody trained on: the `eval` role of the open-set protocol (`docray.privacy.openset`;
`identities.train` must be the identities the masked recogniser learnt, which the split skips).
Each eval image is masked with a target mask in rotation (image i with mask i mod m), as clients
rotate them, and embedded by the masked recogniser. `calibrate` splits those identities in two
halves: the threshold is the one at FAR `far` (1e-2) on every pair of the first half
(`openset.tar_at_far`); the second half, held out, measures the FAR and TAR that threshold gives on
people it was not picked on. The result is written beside the targets as `calibration.json`, with the
masked recogniser's pinned reference and the mask ids: the service uses it only for that model and
those masks.

A probe matches an identity when the cosine similarity of its embedding to the identity's template
(the normalised mean of its enrolled embeddings, as `openset.rank1` builds it) exceeds the threshold
(`match`, `top_k`).

`serving_policy` decides whether verification serves: the target masks must carry the funnel's
stage-5 verdict (`docray.privacy.funnel.attacker_verdict`: every attacker's TAR at FAR 1e-2 at most
`max_attacker_tar`, the masked recogniser within `max_masked_loss` of the original) and meet it, and
the threshold must be calibrated for the served model and masks. Otherwise it names what failed and
refuses, unless the development override is set.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone

import numpy as np
import pandas as pd
import torch
from pydantic import Field

from docray.config import Config, parse_args
from docray.privacy.funnel import FunnelConfig, attacker_miss
from docray.privacy.openset import embed, pair_scores, tar_at_far
from docray.storage.blobs import exists, read_file, write_file

VERDICT = ("masked_tar", "original_tar", "worst_attacker_tar")  # the stage-5 columns a served target carries
CALIBRATION = "calibration.json"


# -- the threshold -----------------------------------------------------------------------------------

def calibrate(embeddings: np.ndarray, labels: np.ndarray, far: float = 1e-2, seed: int = 0) -> dict:
    """The threshold at FAR `far` on the pairs of one half of the identities, checked on the other.

    embeddings (n, d) L2-normalised, labels (n,). Identities are shuffled by `seed` and halved; returns
    threshold, far, tar (on the calibration half), heldout_far, heldout_tar, and the identity and pair
    counts of each half."""
    labels = np.asarray(labels)
    ids = np.unique(labels)
    if len(ids) < 4:
        raise ValueError(f"calibration needs at least 4 identities (two per half), got {len(ids)}")
    ids = ids[np.random.default_rng(seed).permutation(len(ids))]
    halves = {"calibration": ids[: len(ids) // 2], "heldout": ids[len(ids) // 2:]}
    scores = {}
    for name, part in halves.items():
        rows = np.flatnonzero(np.isin(labels, part))
        scores[name] = pair_scores(embeddings[rows], embeddings[rows], labels[rows])
    tar, threshold = tar_at_far(*scores["calibration"], far)
    gen, imp = scores["heldout"]
    if len(gen) == 0 or len(imp) == 0:
        raise ValueError("the held-out half has no genuine or no impostor pair (identities need two images each)")
    return {"threshold": threshold, "far": far, "tar": tar, "heldout_far": float(np.mean(imp > threshold)),
            "heldout_tar": float(np.mean(gen > threshold)),
            "identities": {k: len(v) for k, v in halves.items()},
            "pairs": {k: {"genuine": len(g), "impostor": len(i)} for k, (g, i) in scores.items()}}


def rotate_masks(images: np.ndarray, masks: list[np.ndarray]) -> torch.Tensor:
    """uint8 (n, s, s, 3) images, each overlaid with masks[i mod m] ((s, s) in {0, 1}) -> (n, 3, s, s) in [0, 1]."""
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div_(255)
    m = torch.from_numpy(np.stack(masks).astype(np.float32))  # (m, s, s)
    return x * m[torch.arange(len(x)) % len(m)][:, None]


def calibrate_masks(model: torch.nn.Module, images: np.ndarray, labels: np.ndarray, masks: dict[str, np.ndarray],
                    far: float = 1e-2, seed: int = 0) -> dict:
    """`calibrate` on the masked recogniser's embeddings of `images` masked in rotation; adds mask_ids."""
    if not masks:
        raise ValueError("no target masks to calibrate on")
    emb = embed(model, rotate_masks(images, list(masks.values())))
    return {**calibrate(emb, labels, far, seed), "mask_ids": list(masks)}


def load_calibration(path: str) -> dict | None:
    """The calibration file (a local path or a URI), or None when there is none."""
    path = os.path.expanduser(path)
    return json.loads(read_file(path)) if exists(path) else None


# -- the gallery match -------------------------------------------------------------------------------

def templates(ids: list[str], embeddings: np.ndarray) -> tuple[list[str], np.ndarray]:
    """(identity ids (k,), normalised mean embedding per identity (k, d)), identities in first-seen order."""
    order = list(dict.fromkeys(ids))
    if not order:
        return [], np.zeros((0, embeddings.shape[1] if embeddings.ndim == 2 else 0), np.float32)
    index = {i: n for n, i in enumerate(order)}
    t = np.zeros((len(order), embeddings.shape[1]), np.float64)
    np.add.at(t, np.array([index[i] for i in ids]), embeddings)
    t /= np.maximum(np.linalg.norm(t, axis=1, keepdims=True), 1e-12)
    return order, t.astype(np.float32)


def top_k(probe: np.ndarray, ids: list[str], embeddings: np.ndarray, k: int, threshold: float) -> list[dict]:
    """The k best identities for one probe embedding (d,): [{identity_id, score, match}], best first."""
    names, t = templates(ids, embeddings)
    if not names:
        return []
    scores = t @ (probe / max(float(np.linalg.norm(probe)), 1e-12))
    best = np.argsort(-scores, kind="stable")[:k]
    return [{"identity_id": names[i], "score": round(float(scores[i]), 6), "match": bool(scores[i] > threshold)}
            for i in best]


def match(probe: np.ndarray, embeddings: np.ndarray, threshold: float) -> dict:
    """One identity's enrolled embeddings (n, d) against a probe (d,): {match, score, threshold}."""
    (_, t) = templates(["x"] * len(embeddings), embeddings)
    score = float(t[0] @ (probe / max(float(np.linalg.norm(probe)), 1e-12)))
    return {"match": score > threshold, "score": round(score, 6), "threshold": threshold}


# -- the serving policy ------------------------------------------------------------------------------

@dataclass
class Policy:
    """What the service may do: the served mask ids, the threshold, and why it refuses (None: it serves)."""
    masks: list[str] = field(default_factory=list)
    threshold: float | None = None
    threshold_source: str = ""
    refusal: str | None = None  # every failed condition; under the override, what it overrides
    dev_override: bool = False

    @property
    def serving(self) -> bool:
        return bool(self.masks) and self.threshold is not None and (self.refusal is None or self.dev_override)

    def info(self) -> dict:
        return {"serving": self.serving, "refusal": self.refusal, "dev_override": self.dev_override,
                "threshold": self.threshold, "threshold_source": self.threshold_source, "target_masks": len(self.masks)}


def serving_policy(targets: pd.DataFrame | None, calibration: dict | None, model: str, *, dev_override: bool = False,
                   dev_threshold: float = 0.5, missing: str = "", bounds: FunnelConfig | None = None) -> Policy:
    """See the module docstring. `targets`: targets.parquet (None: there is none, `missing` says why);
    `model`: the served masked recogniser's pinned reference; `bounds`: the stage-5 bounds (default the
    issue's: 0.10 and 0.10 at FAR 1e-2)."""
    bounds = bounds or FunnelConfig()
    if targets is None or targets.empty:
        return Policy(refusal=missing or "there are no target masks", dev_override=dev_override)
    problems = []
    ids = targets["mask_id"].astype(str).tolist()
    if missing_cols := [c for c in VERDICT if c not in targets.columns]:
        problems.append(f"the target masks carry no attacker verdict (no {', '.join(missing_cols)}): the funnel's "
                        f"stage 5 did not run on them, so it is not shown that every attacker's TAR@FAR="
                        f"{bounds.attacker_far:g} stays at or below {bounds.max_attacker_tar:g} while the masked "
                        f"recogniser's stays within {bounds.max_masked_loss:g} of the original's")
        served = ids
    else:
        v = targets.assign(
            worst_attack=targets.get("worst_attack", pd.Series(["?"] * len(targets), index=targets.index)),
            meets_masked=targets["masked_tar"] >= targets["original_tar"] - bounds.max_masked_loss - 1e-12,
            meets_attacker=targets["worst_attacker_tar"] <= bounds.max_attacker_tar + 1e-12)
        ok = v[v["meets_masked"] & v["meets_attacker"]]
        served = ok["mask_id"].astype(str).tolist() or ids
        if ok.empty:
            problems.append("no target mask meets the bounds: " + attacker_miss(v, bounds))
    cal_problem = _calibration_problem(calibration, model, served)
    if cal_problem:
        problems.append(cal_problem)
        threshold, source = (dev_threshold, "dev_threshold (not calibrated)") if dev_override else (None, "")
    else:
        threshold = float(calibration["threshold"])
        source = (f"{CALIBRATION}: FAR {calibration['far']:g} on the eval identities (held-out FAR "
                  f"{calibration['heldout_far']:.4f})")
    return Policy(served, threshold, source, "; ".join(problems) or None, dev_override)


def _calibration_problem(calibration: dict | None, model: str, served: list[str]) -> str | None:
    if calibration is None:
        return f"no verification threshold is calibrated ({CALIBRATION} beside the targets; docray privacy calibrate)"
    if calibration.get("model") != model:
        return (f"the threshold was calibrated for {calibration.get('model')!r}, the service runs {model!r} "
                "(docray privacy calibrate again)")
    if lacking := sorted(set(served) - set(calibration.get("mask_ids", []))):
        return f"the threshold was calibrated without target mask(s) {', '.join(lacking[:5])} (docray privacy calibrate again)"
    return None


# -- the calibration job -----------------------------------------------------------------------------

class CalibrationIdentities(Config):
    train: int = Field(64, ge=1, description="identities the masked recogniser trained on (skipped: train_privacy's "
                                             "n_identities for the synthetic faces)")
    eval: int = Field(64, ge=4, description="identities the threshold is set and checked on (nobody trained on them)")


class CalibrationConfig(Config):
    masked: str = Field("registry:mask_recognizer_masked", description="the served masked recogniser (pinned here)")
    targets: str = Field("", description="targets.parquet ('' -> DOCRAY_HOME/reports/privacy/grid/targets.parquet)")
    out: str = Field("", description=f"where {CALIBRATION} goes ('' -> beside the targets)")
    source: str = Field("synth", description="'synth', an ImageFolder of identities (LFW layout) or a faces dataset")
    identities: CalibrationIdentities = CalibrationIdentities()
    samples: int = Field(20, ge=2, description="synthetic faces: images per identity")
    seed: int = 0
    split_seed: int | None = Field(None, description="as in docray.privacy.suite: None deals identities in sorted order")
    image_size: int = Field(64, description="the served image size (serve_apps.privacy image_size)")
    far: float = Field(1e-2, gt=0, lt=1, description="the false-accept rate the threshold is set at")
    halves_seed: int = Field(0, description="how the eval identities are halved into calibration and held-out")


def pinned_ref(masked: str) -> str:
    """A registry reference with its version made explicit (the newest now); a folder as given."""
    from docray.storage.registry import ModelRegistry, parse_ref, ref

    found = parse_ref(masked)
    return masked if found is None else ref(found[0], ModelRegistry().pin(*found))


def run(cfg: CalibrationConfig, log=print) -> dict:
    """Calibrate the served model's threshold on the target masks; writes and returns calibration.json."""
    from docray import paths
    from docray.privacy.masks import decode_mask
    from docray.privacy.models import load_model
    from docray.privacy.openset import load_openset
    from docray.privacy.recognize import load_targets

    targets_path = os.path.expanduser(cfg.targets or paths.sub("reports", "privacy", "grid", "targets.parquet"))
    targets = load_targets(targets_path)
    masks = {str(r.mask_id): decode_mask(r.mask, size=cfg.image_size) for r in targets.itertuples()}
    model_ref = pinned_ref(cfg.masked)
    counts = {"train": cfg.identities.train, "eval": cfg.identities.eval, "attacker": 1}
    data = load_openset(cfg.source, counts, samples=cfg.samples, seed=cfg.seed, size=cfg.image_size,
                        split_seed=cfg.split_seed)
    ev = data["eval"]
    log(f"calibrating {model_ref} on {len(data.identities['eval'])} eval identities ({len(ev)} images), "
        f"{len(masks)} target masks in rotation, FAR {cfg.far:g}")
    out = calibrate_masks(load_model(model_ref), ev.images, ev.labels, masks, cfg.far, cfg.halves_seed)
    out.update(model=model_ref, targets=targets_path, source=cfg.source, eval_identities=[int(i) for i in data.identities["eval"]],
               at=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    path = os.path.join(os.path.expanduser(cfg.out) if cfg.out else os.path.dirname(targets_path), CALIBRATION)
    write_file(path, json.dumps(out, indent=1).encode())  # atomic on disk, one PUT on a store: never half a file
    log(f"threshold {out['threshold']:.4f} (TAR {out['tar']:.3f}); held out: FAR {out['heldout_far']:.4f}, "
        f"TAR {out['heldout_tar']:.3f} -> {path}")
    return out


def main(argv=None) -> None:
    run(parse_args(CalibrationConfig, argv, description=__doc__.split("\n\n")[0]))


if __name__ == "__main__":
    main()
