"""The open-set protocol: recognisers are judged on people they never trained on.

Identities (not images) are split three ways, disjointly (`split_identities`):
    train     the defender's: its original and masked recognisers (and its inpainter) learn these
    eval      enrolled and probed: nobody trains on them
    attacker  the attacker's own people: its recogniser and inpainter learn these (the threat model,
              docs/privacy.md: public data of other people, never the defender's)
`load_openset(source)` reads the synthetic faces, an ImageFolder of identities (LFW layout:
root/<identity>/<image>) or a faces Parquet dataset the same way, and returns one `Identities` per
role. Within `eval`, the first `n_enrol` images of each identity (row order: sample order for the
synthetic faces, file order in a folder) are its gallery, the rest are probes (`enrol_probe`).

The measures, from L2-normalised embeddings (`embed`: the recogniser's `embed`, e.g. 512-d):
    verification    cosine similarity of every pair of eval images (i < j): genuine when both show
                    one identity, impostor otherwise (`pair_scores`); TAR at FAR = 1e-3 and 1e-2
                    (`tar_at_far`), the threshold set on the impostor scores
    identification  rank-1 of each probe against the gallery's identity templates (`rank1`)
A query side and a reference side may differ (`evaluate(query, reference, protocol)`): an attacker
matches reconstructed probes against whole reference photos, the service masked against masked.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
from torch import nn

from docray.privacy.data import Identities, face_pixels, faces_from_image_folder, to_tensor

ROLES = ("train", "eval", "attacker")
FARS = (1e-3, 1e-2)
MIN_GENUINE, MIN_IMPOSTOR = 2_000, 100_000  # the support the protocol asks of a verification figure


def split_identities(labels, counts: dict[str, int], min_images: int = 2, seed: int | None = None) -> dict[str, np.ndarray]:
    """Disjoint identity sets {role: sorted identity values}, `counts[role]` identities each.

    Only identities with at least `min_images` images take part (a person needs two photos to be
    enrolled and probed, or to be learnt). They are taken in sorted order (seed None: the synthetic
    faces' train role is identities 0..n-1, what `train_jobs.train_privacy --set n_identities=n`
    trains on) or in an order shuffled by `seed`, and dealt out in blocks in the order of ROLES."""
    if unknown := set(counts) - set(ROLES):
        raise ValueError(f"unknown identity role(s) {sorted(unknown)}; roles are {ROLES}")
    if any(int(counts.get(r, 0)) < 1 for r in ROLES):
        raise ValueError(f"every role needs at least one identity, got {dict(counts)}")
    values, n_images = np.unique(np.asarray(labels), return_counts=True)
    eligible = values[n_images >= min_images]
    if seed is not None:
        eligible = eligible[np.random.default_rng(seed).permutation(len(eligible))]
    need = sum(int(counts[r]) for r in ROLES)
    if need > len(eligible):
        raise ValueError(f"asked for {need} identities ({dict(counts)}) but only {len(eligible)} have at least "
                         f"{min_images} images")
    out, start = {}, 0
    for r in ROLES:
        out[r] = np.sort(eligible[start:start + int(counts[r])])
        start += int(counts[r])
    return out


def check_disjoint(identities: dict[str, np.ndarray]) -> None:
    """Raise ValueError naming two roles that share an identity."""
    roles = list(identities)
    for i, a in enumerate(roles):
        for b in roles[i + 1:]:
            shared = np.intersect1d(identities[a], identities[b])
            if len(shared):
                raise ValueError(f"roles {a!r} and {b!r} share {len(shared)} identities (e.g. {shared[:5].tolist()})")


@dataclass
class OpenSet:
    roles: dict[str, Identities]  # role -> its images, in source row order
    identities: dict[str, np.ndarray]  # role -> its identity values (disjoint)

    def __getitem__(self, role: str) -> Identities:
        return self.roles[role]


def _faces_table(source: str, n_identities: int, samples: int, seed: int, size: int) -> pa.Table:
    """A table with columns image (bytes) and identity, rows in source order."""
    if source == "synth":
        from docray.synth import generate

        return generate("faces", 0, n_identities * samples, seed=seed, size=size, n_identities=n_identities)
    path = Path(source).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"identity source {source!r}: not 'synth' and no such path")
    if path.is_dir() and not any(path.glob("*.parquet")):
        return faces_from_image_folder(str(path))  # root/<identity>/<image>: identity = folder index
    from docray.storage.datasets import read_table

    table = read_table(str(path))
    col = "identity" if "identity" in table.column_names else "label_id"
    if col not in table.column_names or "image" not in table.column_names:
        raise ValueError(f"{source}: needs columns 'image' and 'identity' (or 'label_id'), has {table.column_names}")
    return table.select(["image", col]).rename_columns(["image", "identity"])


def load_openset(source: str = "synth", counts: dict[str, int] | None = None, *, samples: int = 20, seed: int = 0,
                 size: int = 64, min_images: int = 2, split_seed: int | None = None) -> OpenSet:
    """The three roles' images from `source` ("synth", an ImageFolder of identities, or a faces
    Parquet dataset; see the module docstring). `counts` as in `split_identities` (default 64 each);
    samples/seed apply to "synth" (sum(counts) identities x samples images). Only the chosen
    identities' images are decoded (to uint8 size x size RGB)."""
    counts = dict(counts or {r: 64 for r in ROLES})
    table = _faces_table(source, sum(int(v) for v in counts.values()), samples, seed, size)
    labels = np.asarray(table.column("identity").to_pylist(), np.int64)
    ids = split_identities(labels, counts, min_images, split_seed)
    roles = {}
    for r in ROLES:
        rows = np.flatnonzero(np.isin(labels, ids[r]))
        blobs = table.column("image").take(pa.array(rows)).to_pylist()
        roles[r] = Identities(face_pixels(blobs, size), labels[rows])
    return OpenSet(roles, ids)


def enrol_probe(labels: np.ndarray, n_enrol: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Row indices (gallery, probes): the first `n_enrol` rows of each identity are enrolled."""
    labels = np.asarray(labels)
    seen: dict[int, int] = {}
    gallery = np.zeros(len(labels), bool)
    for i, lab in enumerate(labels.tolist()):
        gallery[i] = seen.get(lab, 0) < n_enrol
        seen[lab] = seen.get(lab, 0) + 1
    if (probes := np.flatnonzero(~gallery)).size == 0:
        raise ValueError(f"no probe left: every identity has at most {n_enrol} image(s)")
    return np.flatnonzero(gallery), probes


@torch.inference_mode()
def embed(model: nn.Module, x: torch.Tensor | np.ndarray, chunk: int = 64) -> np.ndarray:
    """Images (n, 3, h, w) floats in [0, 1] (or uint8 (n, h, w, 3)) -> L2-normalised float32 (n, d)."""
    if isinstance(x, np.ndarray):
        x = to_tensor(x)
    device = next(model.parameters()).device
    out = [model.embed(x[i:i + chunk].to(device)).float().cpu() for i in range(0, len(x), chunk)]
    e = torch.cat(out).numpy() if out else np.zeros((0, 1), np.float32)
    return e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)


def pair_scores(query: np.ndarray, reference: np.ndarray, labels: np.ndarray, max_impostor: int | None = None,
                seed: int = 0, block: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Cosine scores of the pairs (i < j) query[i] . reference[j]: (genuine, impostor) float32 arrays.

    Rows are processed in blocks (memory ~ block x n). With `max_impostor`, impostor pairs are kept
    at random (fixed by `seed`) with the probability that leaves about that many; genuine pairs are
    all kept."""
    labels = np.asarray(labels)
    n = len(labels)
    if query.shape != reference.shape or len(query) != n:
        raise ValueError(f"query {query.shape}, reference {reference.shape} and {n} labels do not match")
    same_total = int(sum(c * (c - 1) // 2 for c in np.unique(labels, return_counts=True)[1]))
    keep_p = 1.0 if not max_impostor else min(1.0, max_impostor / max(n * (n - 1) // 2 - same_total, 1))
    rng = np.random.default_rng(seed)
    genuine, impostor = [], []
    cols = np.arange(n)
    for s in range(0, n, block):
        rows = cols[s:s + block]
        sims = query[rows] @ reference.T  # (b, n)
        upper = cols[None, :] > rows[:, None]
        same = labels[rows][:, None] == labels[None, :]
        genuine.append(sims[upper & same])
        imp = sims[upper & ~same]
        impostor.append(imp if keep_p >= 1 else imp[rng.random(imp.size) < keep_p])
    return np.concatenate(genuine).astype(np.float32), np.concatenate(impostor).astype(np.float32)


def tar_at_far(genuine: np.ndarray, impostor: np.ndarray, far: float) -> tuple[float, float]:
    """(TAR, threshold) at false-accept rate `far`: the threshold is the impostor score with
    floor(far x n_impostor) impostors above it, so at most that fraction is accepted (score > t)."""
    if len(impostor) == 0 or len(genuine) == 0:
        raise ValueError(f"need genuine and impostor scores, got {len(genuine)} and {len(impostor)}")
    k = int(np.floor(far * len(impostor) + 1e-9))
    t = float(np.sort(impostor)[::-1][min(k, len(impostor) - 1)])
    return float(np.mean(genuine > t)), t


def rank1(gallery: np.ndarray, gallery_labels: np.ndarray, probes: np.ndarray, probe_labels: np.ndarray) -> float:
    """Fraction of probes whose nearest identity template (the normalised mean of its gallery
    embeddings) is their own. Every probe's identity must be enrolled."""
    ids, inverse = np.unique(np.asarray(gallery_labels), return_inverse=True)
    if missing := set(np.asarray(probe_labels).tolist()) - set(ids.tolist()):
        raise ValueError(f"{len(missing)} probe identities are not enrolled (e.g. {sorted(missing)[:5]})")
    templates = np.zeros((len(ids), gallery.shape[1]), np.float64)
    np.add.at(templates, inverse, gallery)
    templates /= np.maximum(np.linalg.norm(templates, axis=1, keepdims=True), 1e-12)
    best = (probes @ templates.T).argmax(1)  # (n_probes,)
    return float(np.mean(ids[best] == np.asarray(probe_labels)))


@dataclass
class Protocol:
    """The eval role's labels and its gallery / probe rows; `evaluate` gives the figures."""
    labels: np.ndarray
    gallery: np.ndarray
    probes: np.ndarray
    fars: tuple = FARS
    max_impostor: int | None = 2_000_000

    @classmethod
    def of(cls, labels: np.ndarray, n_enrol: int = 1, **kw) -> "Protocol":
        return cls(np.asarray(labels), *enrol_probe(labels, n_enrol), **kw)

    def evaluate(self, query: np.ndarray, reference: np.ndarray | None = None) -> dict[str, float]:
        """Figures for query embeddings against reference ones (default: the same): tar@FAR and
        thr@FAR for each FAR, rank1 (probes from query, gallery from reference), the pair counts and
        `support_ok` (at least MIN_GENUINE genuine and MIN_IMPOSTOR impostor pairs)."""
        reference = query if reference is None else reference
        gen, imp = pair_scores(query, reference, self.labels, self.max_impostor)
        out: dict[str, float] = {}
        for far in self.fars:
            out[f"tar@{far:g}"], out[f"thr@{far:g}"] = tar_at_far(gen, imp, far)
        out["rank1"] = rank1(reference[self.gallery], self.labels[self.gallery], query[self.probes],
                             self.labels[self.probes])
        out.update(n_genuine=len(gen), n_impostor=len(imp), support_ok=len(gen) >= MIN_GENUINE and len(imp) >= MIN_IMPOSTOR)
        return out
