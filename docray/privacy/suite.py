"""The attack suite on the open-set protocol: per mask, who still recognises the people behind it.

    python -m docray.privacy.suite --set identities.train=8 identities.eval=8 identities.attacker=8 \
        samples=12 image_size=32 recognizer=recognizer_tiny inpainter=inpaint_unet_tiny epochs=2 \
        inpaint_epochs=1 attacker.epochs=2 attacker.inpaint_epochs=1 n_masks=2      # tiny: seconds
    docray privacy attacks --set n_masks=6                                         # the same, as a command

Within the threat model (docs/privacy.md): the identities are split three ways
(`docray.privacy.openset`); the defender's recognisers (original; masked, trained on its mask bank)
and its inpainter learn the `train` role, the attacker's ordinary recogniser and its own inpainter
learn the `attacker` role (its masks: a public set of its own, never the defender's), and both are
judged on the `eval` role, which nobody trained on. Defender models may instead come from the
registry (`defender.original=registry:mask_recognizer_original`, ...): they must have been trained
on the `train` role's identities only, as `train_jobs.train_privacy --set n_identities=N` does for
the synthetic faces' first N (the `train` role of `identities.train=N`).

Per mask of the evaluated set (`masks`: a folder of PNGs, a masks dataset, or synthetic ones), the
attacker table (`AttackEvaluator.mask_rows`) has one row per (recogniser, protection, attack,
reference) with TAR at FAR = 1e-3 and 1e-2 and rank-1 (`openset.Protocol.evaluate`):
    defender  masked    mask    none          same    the service: masked enrolment, masked probes
    defender  masked    mask    defender_inpainter  same  the method's drop after inpainting (diagnostic)
    defender  original  mask    none          same    the ordinary recogniser on masked images (diagnostic)
    attacker  attacker  mask    <each attack> whole | same   the masked image itself and each reconstruction
    attacker  attacker  blur | mosaic  none   whole | same   the baselines, the same region blurred / mosaicked
Reference `whole`: the attacker matches against whole photos of the people (gallery and the pair's
second image); `same`: against other leaked images treated the same way. `whole_rows` gives the
unmasked references: each recogniser on whole images.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Callable, Literal

import numpy as np
import pandas as pd
import torch
from pydantic import Field, field_validator
from torch import nn

from docray.config import Config, parse_args, save_config
from docray.privacy.attacks import ATTACKS, PROTECTIONS, Attack, build_attacks, leaked_mask, protect
from docray.privacy.data import Identities, to_tensor
from docray.privacy.openset import FARS, ROLES, OpenSet, Protocol, check_disjoint, embed, load_openset

REFERENCES = ("whole", "same")


def _one_of(allowed: tuple):
    def check(values: list[str]) -> list[str]:
        if bad := [v for v in values if v not in allowed]:
            raise ValueError(f"unknown {bad}; choose from {allowed}")
        return values
    return check


class IdentityCounts(Config):
    train: int = Field(64, ge=1, description="the defender's identities (its recognisers and inpainter learn these)")
    eval: int = Field(64, ge=1, description="enrolled and probed identities: nobody trains on them")
    attacker: int = Field(64, ge=1, description="the attacker's own identities (its recogniser and inpainter)")


class DefenderConfig(Config):
    original: str = Field("", description="the defender's original recogniser: a registry reference or folder; '' -> "
                                          "trained here on the train role")
    masked: str = Field("", description="the defender's masked recogniser; '' -> trained here on the train role")
    inpainter: str = Field("", description="the defender's inpainter (the method's drop, a diagnostic); '' -> trained "
                                           "here; 'none' -> left out")
    mask_bank: int = Field(600, ge=6, description="synthetic training masks of the masked recogniser and inpainter")
    mask_seed: int = Field(100, description="their seed (train_jobs.train_privacy's default)")


OVERRIDES_HELP = ("overrides of the recogniser factory, e.g. {head: cosine, margin: 0.2}: a CosFace head "
                  "(docray.models.recognizer)")


class AttackerConfig(Config):
    recognizer: str = Field("recognizer_small", description="the attacker's ordinary recogniser (registered factory)")
    recognizer_overrides: dict = Field(default_factory=dict, description=OVERRIDES_HELP)
    inpainter: str = Field("inpaint_unet_small", description="the attacker's own inpainter (registered factory)")
    epochs: int = Field(10, ge=1)
    inpaint_epochs: int = Field(10, ge=1)
    mask_bank: int = Field(600, ge=6, description="the attacker's public training masks (synthetic)")
    mask_seed: int = Field(900, description="their seed: never the defender's bank, nor the evaluated masks")
    attacks: list[str] = Field(list(ATTACKS), description=f"attacks on the masked images, of {ATTACKS}")
    radius: float = Field(3.0, gt=0, description="OpenCV inpainting radius, pixels")
    mask_from: Literal["image", "given"] = Field("image", description="'image': the attacks read the hole off the leaked image (its black "
                                                "pixels), as the threat model allows; 'given': they get the true mask")
    _attacks = field_validator("attacks")(_one_of(ATTACKS))


class AttackSuiteConfig(Config):
    source: str = Field("synth", description="'synth', an ImageFolder of identities (LFW layout) or a faces dataset")
    identities: IdentityCounts = IdentityCounts()
    samples: int = Field(20, ge=2, description="synthetic faces: images per identity")
    seed: int = 0
    split_seed: int | None = Field(None, description="None: identities dealt out in sorted order; else shuffled first")
    min_images: int = Field(2, ge=2, description="identities with fewer images are left out")
    image_size: int = 64
    n_enrol: int = Field(1, ge=1, description="gallery images per eval identity (the first ones); the rest probe")
    recognizer: str = Field("recognizer_small", description="the defender's recognisers, when trained here")
    recognizer_overrides: dict = Field(default_factory=dict, description=OVERRIDES_HELP)
    inpainter: str = Field("inpaint_unet_small", description="the defender's inpainter, when trained here")
    epochs: int = Field(10, ge=1, description="every recogniser trained here (the attacker's: attacker.epochs)")
    inpaint_epochs: int = Field(10, ge=1)
    batch_size: int = Field(64, ge=2)
    lr: float = 2e-3
    defender: DefenderConfig = DefenderConfig()
    attacker: AttackerConfig = AttackerConfig()
    masks: str = Field("", description="masks to evaluate: a folder of PNGs or a masks dataset; '' -> synthetic")
    invert: bool = Field(False, description="the mask folder stores holes as white (NVIDIA's set)")
    n_masks: int = Field(6, ge=1, description="synthetic masks to evaluate (one per area bin in turn)")
    mask_seed: int = Field(7, description="their seed")
    protections: list[str] = Field(list(PROTECTIONS), description=f"of {PROTECTIONS}: the mask and the baselines")
    references: list[str] = Field(list(REFERENCES), description="what the attacker matches against: whole photos, "
                                                                "or other images treated the same way")
    blur_sigma: float = Field(0.0625, gt=0, description="blur baseline: Gaussian sigma, fraction of the image side")
    mosaic_block: float = Field(0.125, gt=0, description="mosaic baseline: cell side, fraction of the image side")
    max_impostor: int = Field(2_000_000, ge=1000, description="impostor pairs kept at most (a fixed random subset)")
    out: str = Field("", description="folder for attacks.csv, summary.json and config.yaml ('' -> print only)")
    _protections = field_validator("protections")(_one_of(PROTECTIONS))
    _references = field_validator("references")(_one_of(REFERENCES))


def _bank(n: int, seed: int, size: int) -> np.ndarray:
    from docray.privacy.masks import mask_stack, synthetic_masks

    return mask_stack(synthetic_masks(n, seed=seed, size=size))


def _classes(ids: Identities) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(images (n, 3, h, w), class ids (n,), number of classes) of a role."""
    values, y = np.unique(ids.labels, return_inverse=True)
    return to_tensor(ids.images), torch.from_numpy(y.astype(np.int64)), len(values)


def train_defender(data: OpenSet, cfg: AttackSuiteConfig, log=print) -> dict[str, nn.Module]:
    """{"original", "masked"[, "inpaint"]}: loaded from cfg.defender's references, or trained here on
    the train role (the masked recogniser and the inpainter on the defender's own mask bank)."""
    from docray.models import build_model
    from docray.privacy.models import load_model
    from docray.privacy.training import fit

    x, y, n = _classes(data["train"])
    bank = _bank(cfg.defender.mask_bank, cfg.defender.mask_seed, cfg.image_size)
    common = dict(batch_size=cfg.batch_size, lr=cfg.lr, seed=cfg.seed)
    out = {}
    for kind in ("original", "masked", "inpaint"):
        ref = getattr(cfg.defender, "inpainter" if kind == "inpaint" else kind)
        if ref == "none" and kind == "inpaint":
            continue
        if ref:
            out[kind] = load_model(ref)
            continue
        log(f"defender: training the {kind} model on {n} identities ({len(x)} images)")
        if kind == "inpaint":
            out[kind] = fit(build_model(cfg.inpainter, image_size=cfg.image_size), kind, x, bank=bank,
                            epochs=cfg.inpaint_epochs, **common)
        else:
            rec = build_model(cfg.recognizer, num_classes=n, **cfg.recognizer_overrides)
            out[kind] = fit(rec, kind, x, y, bank, epochs=cfg.epochs, **common)
    return out


@dataclass
class Attacker:
    recognizer: nn.Module  # an ordinary recogniser of the attacker's identities
    inpainter: nn.Module | None  # its own inpainter
    identities: np.ndarray  # who it trained on


def train_attacker(data: OpenSet, cfg: AttackSuiteConfig, log=print) -> Attacker:
    """The attacker's recogniser (whole images) and inpainter (its own mask bank), on the attacker
    role only; refuses identities shared with the defender's or the eval role."""
    from docray.models import build_model
    from docray.privacy.training import fit

    check_disjoint(data.identities)
    a = cfg.attacker
    x, y, n = _classes(data["attacker"])
    log(f"attacker: training its recogniser and inpainter on {n} identities of its own ({len(x)} images)")
    common = dict(batch_size=cfg.batch_size, lr=cfg.lr, seed=cfg.seed + 1)
    rec = fit(build_model(a.recognizer, num_classes=n, **a.recognizer_overrides), "original", x, y, epochs=a.epochs,
              **common)
    inp = None
    if "learned" in a.attacks:
        bank = _bank(a.mask_bank, a.mask_seed, cfg.image_size)
        inp = fit(build_model(a.inpainter, image_size=cfg.image_size), "inpaint", x, bank=bank,
                  epochs=a.inpaint_epochs, **common)
    return Attacker(rec, inp, np.asarray(data.identities["attacker"]))


@dataclass
class AttackEvaluator:
    """The eval role, the protocol, the defender's models and the attacker: rows of the attacker table."""
    images: torch.Tensor  # (n, 3, h, w) eval images in [0, 1]
    protocol: Protocol
    defender: dict[str, nn.Module]
    attacker: Attacker
    attacks: dict[str, Attack]
    protections: tuple = PROTECTIONS
    references: tuple = REFERENCES
    blur_sigma: float = 0.0625
    mosaic_block: float = 0.125
    mask_from: str = "image"
    chunk: int = 64  # images per inpainter call (memory)
    _whole: dict = field(default_factory=dict)

    @classmethod
    def build(cls, eval_ids: Identities, defender: dict[str, nn.Module], attacker: Attacker, cfg: AttackSuiteConfig):
        return cls(to_tensor(eval_ids.images), Protocol.of(eval_ids.labels, cfg.n_enrol, max_impostor=cfg.max_impostor),
                   defender, attacker, build_attacks(cfg.attacker.attacks, attacker.inpainter, cfg.attacker.radius),
                   tuple(cfg.protections), tuple(cfg.references), cfg.blur_sigma, cfg.mosaic_block,
                   cfg.attacker.mask_from)

    def whole(self, who: str) -> np.ndarray:
        """Embeddings of the whole eval images by "original" (the defender's) or "attacker" (cached)."""
        if who not in self._whole:
            model = self.attacker.recognizer if who == "attacker" else self.defender[who]
            self._whole[who] = embed(model, self.images)
        return self._whole[who]

    def _row(self, party, recogniser, protection, attack, reference, query, ref) -> dict:
        return {"party": party, "recogniser": recogniser, "protection": protection, "attack": attack,
                "reference": reference, **self.protocol.evaluate(query, ref)}

    def whole_rows(self) -> list[dict]:
        """Each recogniser on the whole eval images (no protection): the ceilings."""
        rows = [self._row("defender", "original", "none", "none", "whole", self.whole("original"), None)]
        if "masked" in self.defender:
            e = embed(self.defender["masked"], self.images)
            rows.append(self._row("defender", "masked", "none", "none", "whole", e, None))
        rows.append(self._row("attacker", "attacker", "none", "none", "whole", self.whole("attacker"), None))
        return rows

    @torch.inference_mode()
    def mask_rows(self, mask: np.ndarray) -> list[dict]:
        """The attacker table of one mask (h, w) in {0, 1}, the same placement on every eval image."""
        m = torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32))[None, None]  # (1, 1, h, w)
        masked = protect("mask", self.images, m)
        rows = []
        if "masked" in self.defender:
            rec = self.defender["masked"]
            rows.append(self._row("defender", "masked", "mask", "none", "same", embed(rec, masked), None))
            if "inpaint" in self.defender:  # in chunks: a U-Net's activations over every eval image at once take GBs
                inp, mk, c = self.defender["inpaint"], m.expand(len(masked), -1, -1, -1), self.chunk
                filled = torch.cat([inp(masked[i:i + c], mk[i:i + c]) for i in range(0, len(masked), c)])
                rows.append(self._row("defender", "masked", "mask", "defender_inpainter", "same", embed(rec, filled), None))
        rows.append(self._row("defender", "original", "mask", "none", "same", embed(self.defender["original"], masked), None))
        rec = self.attacker.recognizer
        for protection in self.protections:
            if protection == "mask":
                hole = leaked_mask(masked) if self.mask_from == "image" else m
                seen = {name: attack(masked, hole) for name, attack in self.attacks.items()}
            else:
                seen = {"none": protect(protection, self.images, m, self.blur_sigma, self.mosaic_block)}
            for attack, images in seen.items():
                e = embed(rec, images)
                for reference in self.references:
                    ref = self.whole("attacker") if reference == "whole" else None
                    rows.append(self._row("attacker", "attacker", protection, attack, reference, e, ref))
        return rows

    def probe_rows(self, k: int) -> np.ndarray:
        """Rows of the first probe image of each of the first k eval identities (the sample strips' faces)."""
        probes = self.protocol.probes
        _, first = np.unique(self.protocol.labels[probes], return_index=True)
        return probes[np.sort(first)[:k]]

    @torch.inference_mode()
    def strip(self, mask: np.ndarray, rows) -> list[tuple[str, torch.Tensor]]:
        """The sample strip of one mask (h, w) for eval images `rows`: [(panel, (k, 3, h, w) in [0, 1])],
        the original, the masked image (what leaks), each attack's reconstruction from it (what the
        attacker's recogniser reads; the hole read as in mask_rows), then each baseline protection."""
        m = torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32))[None, None]  # (1, 1, h, w)
        x = self.images[torch.as_tensor(np.asarray(rows), dtype=torch.long)]
        masked = protect("mask", x, m)
        hole = leaked_mask(masked) if self.mask_from == "image" else m
        panels = [("original", x), ("masked", masked)]
        panels += [(name, attack(masked, hole)) for name, attack in self.attacks.items() if name != "none"]
        panels += [(p, protect(p, x, m, self.blur_sigma, self.mosaic_block)) for p in self.protections if p != "mask"]
        return panels

    def funnel_attacker(self, masks) -> Callable[[pd.DataFrame], pd.DataFrame]:
        """Stage 5 of the funnel (`docray.privacy.funnel.run_funnel(..., attacker=...)`): finalists
        (rows with mask_no) -> their attacker table with mask_no, plus the whole images' rows (mask_no -1).
        `masks` is the grid's masks table (mask_no, mask_id, mask, hole_ratio)."""
        from docray.privacy.masks import decode_mask

        by_no = masks.to_pandas().set_index("mask_no")
        size = self.images.shape[-1]

        def attacker(finalists: pd.DataFrame) -> pd.DataFrame:
            rows = [{"mask_no": -1, "mask_id": "", "hole_ratio": 0.0, **r} for r in self.whole_rows()]
            for no in finalists["mask_no"]:
                m = by_no.loc[no]
                rows += [{"mask_no": int(no), "mask_id": m["mask_id"], "hole_ratio": float(m["hole_ratio"]), **r}
                         for r in self.mask_rows(decode_mask(m["mask"], size))]
            return pd.DataFrame(rows)

        return attacker


def eval_masks(cfg: AttackSuiteConfig):
    """The evaluated masks as a masks table (mask_no, mask_id, mask, hole_ratio, bin)."""
    from docray.privacy.masks import load_mask_folder, masks_table, synthetic_masks

    if not cfg.masks:
        return synthetic_masks(cfg.n_masks, seed=cfg.mask_seed, size=cfg.image_size)
    path = os.path.expanduser(cfg.masks)
    if os.path.isdir(path) and not any(f.endswith(".parquet") for f in os.listdir(path)):
        return load_mask_folder(path, cfg.image_size, cfg.invert)
    from docray.privacy.masks import decode_mask
    from docray.storage.datasets import read_table

    t = read_table(path)
    masks = [decode_mask(b, cfg.image_size, cfg.invert) for b in t.column("mask").to_pylist()]
    return masks_table(masks, [str(i) for i in t.column("id").to_pylist()])


def run_suite(cfg: AttackSuiteConfig, log=print) -> pd.DataFrame:
    """Load the open set, train (or load) the defender and the attacker, evaluate every mask:
    the attacker table, one row per (mask, recogniser, protection, attack, reference); the whole
    images' rows have mask_id ''. Writes attacks.csv / summary.json / config.yaml when cfg.out."""
    from docray.privacy.masks import decode_mask

    data = load_openset(cfg.source, cfg.identities.model_dump(), samples=cfg.samples, seed=cfg.seed,
                        size=cfg.image_size, min_images=cfg.min_images, split_seed=cfg.split_seed)
    log("identities: " + ", ".join(f"{r} {len(data.identities[r])} ({len(data[r])} images)" for r in ROLES))
    evaluator = AttackEvaluator.build(data["eval"], train_defender(data, cfg, log), train_attacker(data, cfg, log), cfg)
    rows = [{"mask_id": "", "hole_ratio": 0.0, **r} for r in evaluator.whole_rows()]
    masks = eval_masks(cfg)
    for mask_id, png, ratio in zip(*(masks.column(c).to_pylist() for c in ("mask_id", "mask", "hole_ratio"))):
        log(f"mask {mask_id} (hidden {ratio:.3f})")
        rows += [{"mask_id": mask_id, "hole_ratio": ratio, **r} for r in evaluator.mask_rows(decode_mask(png, cfg.image_size))]
    table = pd.DataFrame(rows)
    if cfg.out:
        os.makedirs(cfg.out, exist_ok=True)
        save_config(cfg, cfg.out)
        table.to_csv(os.path.join(cfg.out, "attacks.csv"), index=False)
        summary = {"identities": {r: [int(i) for i in data.identities[r]] for r in ROLES},
                   "n_eval_images": len(data["eval"]), "n_masks": masks.num_rows,
                   "worst_attacker_tar@0.01": worst_attacker(table).to_dict()}
        with open(os.path.join(cfg.out, "summary.json"), "w") as f:
            json.dump(summary, f, indent=1)
    return table


def worst_attacker(table: pd.DataFrame, far: float = 1e-2) -> pd.Series:
    """Per mask, the highest attacker TAR at `far` over every protection-by-mask attack and reference."""
    a = table[(table["party"] == "attacker") & (table["protection"] == "mask")]
    return a.groupby("mask_id")[f"tar@{far:g}"].max()


def format_table(table: pd.DataFrame) -> str:
    """The attacker table as text: one block per mask (the whole images first)."""
    cols = ["party", "recogniser", "protection", "attack", "reference", *[f"tar@{f:g}" for f in FARS], "rank1",
            "n_genuine", "n_impostor"]
    parts = []
    for mask_id, rows in table.groupby("mask_id", sort=False):
        head = "whole images" if not mask_id else f"mask {mask_id} (hidden {rows['hole_ratio'].iloc[0]:.3f})"
        parts.append(head + "\n" + rows[cols].to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    if not table["support_ok"].all():
        parts.append("note: fewer than 2,000 genuine or 100,000 impostor pairs: TAR at FAR=1e-3 rests on few impostors")
    return "\n\n".join(parts)


def main(argv=None) -> None:
    cfg = parse_args(AttackSuiteConfig, argv, description=__doc__.split("\n\n")[0])
    print(format_table(run_suite(cfg)), flush=True)


if __name__ == "__main__":
    main()
