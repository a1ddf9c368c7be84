"""The tile vector index: faiss, inner product on L2-normalised vectors (= cosine similarity).

    idx = TileIndex(dim=128)
    idx.add(vectors, release_times, cut_codes)        # ids are row numbers 0..n-1, in add order
    sims, ids = idx.search(queries, k=10, filt=AttrFilter(t_lo=5, t_hi=5, cuts=frozenset({6})))
    idx.save(folder); idx = TileIndex.load(folder)

Kind, by size (`benchmarks/index_search.py` measured the choice):
- exact `IndexFlatIP` while the library has fewer than `ann_threshold` tiles;
- above it (trained once when the threshold is crossed; later adds go to their nearest list with no
  rebuild; nlist ~ 4 sqrt(n)), by default `ivfpq`: IVF lists holding 4-bit fast-scan PQ codes (SIMD
  lookup tables), searched with `nprobe` lists, whose `k_factor * k` best candidates are re-ranked
  exactly against the stored vectors. At 10^6 tiles on two cores (nlist 4096, nprobe 256, k_factor 8)
  it answered 26-37x the queries per second of exact search at recall@10 0.964, where IVF-Flat (`kind=
  "ivf"`) managed 2.7x at the same recall. HNSW (`kind="hnsw"`) is kept as an option: at 10^5 it
  built 2x slower than IVF and searched 7x slower at equal recall. Tune `nprobe` to the library's size
  (the benchmark sweeps it).
- on a GPU host (`faiss.get_num_gpus() > 0`) IVF-Flat searches run on a GPU copy of the index.

Attribute-restricted search: when few tiles pass the filter (at most `exact_below`, or at most as
many as one IVF search scans anyway), an exact search over just those (their vectors reconstructed
from the index); otherwise a faiss ID selector (a bitmap from the attribute arrays) on the one index,
probing frac^-1/4 times more lists (see `_params`). Chosen by measurement against per-attribute
shards (`benchmarks/index_search.py --time-shards`, 10^6 tiles): a +-30-day window cost 1.17-1.33x
an unfiltered search at recall@10 0.961 with the selector, and 1.87x at recall@10 0.956 on one index
per month (whose shards must probe 4x the share of their lists to keep recall); a cut-type filter
cost 1.57-1.61x at recall@10 0.952. On GPU, where faiss selectors are not supported, the search
over-fetches and filters afterwards.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import faiss
import numpy as np

from docray.screening.rules import AttrFilter, mask


def _ivf(index):
    """The IVF index inside `index` (itself, or the base of an exact re-rank), else None."""
    if isinstance(index, faiss.IndexIVF):
        return index
    return faiss.extract_index_ivf(index) if isinstance(index, faiss.IndexRefine) else None


def _f32(x) -> np.ndarray:
    x = np.ascontiguousarray(np.asarray(x, np.float32))
    if x.ndim != 2:
        raise ValueError(f"expected a 2-D array of vectors, got shape {x.shape}")
    return x


KINDS = ("ivf", "ivfpq", "hnsw", "flat")


class TileIndex:
    def __init__(self, dim: int, *, ann_threshold: int = 20_000, kind: str = "ivfpq", nprobe: int = 16,
                 hnsw_m: int = 32, ef_search: int = 64, exact_below: int = 2048, k_factor: int = 8,
                 use_gpu: bool | None = None):
        if kind not in KINDS:
            raise ValueError(f"index kind must be one of {KINDS}, got {kind!r}")
        self.dim, self.ann_threshold, self.kind = int(dim), int(ann_threshold), kind
        self.nprobe, self.hnsw_m, self.ef_search, self.exact_below = nprobe, hnsw_m, ef_search, exact_below
        self.k_factor = k_factor  # ivfpq: candidates re-ranked exactly per result
        self.use_gpu = (faiss.get_num_gpus() > 0) if use_gpu is None else use_gpu
        self.index = faiss.IndexFlatIP(self.dim)
        self.times = np.zeros(0, np.int64)
        self.cuts = np.zeros(0, np.int64)
        self._gpu = None  # GPU copy, made lazily

    # -- building -----------------------------------------------------------------------------
    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    @property
    def current_kind(self) -> str:
        for cls, name in ((faiss.IndexFlat, "flat"), (faiss.IndexRefine, "ivfpq"), (faiss.IndexIVF, "ivf")):
            if isinstance(self.index, cls):
                return name
        return "hnsw"

    def add(self, vectors, release_times, cut_codes) -> np.ndarray:
        """Append vectors (n, dim) and their attributes; returns their ids. Never rebuilds, except
        once: the first add that takes a flat index past `ann_threshold` trains the ANN index."""
        v = _f32(vectors)
        if v.shape[1] != self.dim:
            raise ValueError(f"vectors have dim {v.shape[1]}, the index has {self.dim}")
        t, c = np.asarray(release_times, np.int64).ravel(), np.asarray(cut_codes, np.int64).ravel()
        if not (len(t) == len(c) == len(v)):
            raise ValueError(f"{len(v)} vectors but {len(t)} release times and {len(c)} cut codes")
        start = self.ntotal
        self.times, self.cuts = np.concatenate([self.times, t]), np.concatenate([self.cuts, c])
        if self.current_kind == "flat" and self.kind != "flat" and start + len(v) >= self.ann_threshold:
            old = self.index.reconstruct_n(0, start) if start else np.zeros((0, self.dim), np.float32)
            self.index = self._make_ann(np.concatenate([old, v]))
        else:
            self.index.add(v)
        self._gpu = None
        return np.arange(start, start + len(v))

    def _make_ann(self, v: np.ndarray):
        n = len(v)
        if self.kind == "hnsw":
            index = faiss.IndexHNSWFlat(self.dim, self.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = 64
            index.add(v)
            return index
        nlist = int(min(65536, n // 40, max(16, 2 ** round(math.log2(4 * math.sqrt(n))))))
        if self.kind == "ivfpq" and not self.use_gpu:  # 4-bit PQ codes, SIMD lookups, then an exact re-rank
            # (on a GPU host: IVF-Flat, which faiss searches on the GPU)
            index = faiss.index_factory(self.dim, f"IVF{nlist},PQ{self.dim // 2}x4fs,RFlat", faiss.METRIC_INNER_PRODUCT)
        else:
            index = faiss.IndexIVFFlat(faiss.IndexFlatIP(self.dim), self.dim, nlist, faiss.METRIC_INNER_PRODUCT)
        rng = np.random.default_rng(0)
        sample = v[rng.choice(n, min(n, 64 * nlist), replace=False)] if n > 64 * nlist else v
        index.train(sample)
        index.add(v)
        if isinstance(index, faiss.IndexIVF):
            index.make_direct_map()  # reconstruct_batch for the exact search of small candidate sets
        return index

    # -- searching ----------------------------------------------------------------------------
    def _scanned(self) -> int:
        """About how many vectors one unfiltered search scans."""
        ivf = _ivf(self.index)
        if ivf is not None:
            return int(self.ntotal * min(1.0, self.nprobe / ivf.nlist))
        return self.ntotal if isinstance(self.index, faiss.IndexFlat) else 0

    def _params(self, sel=None, frac: float = 1.0):
        # a filter passing a fraction `frac` leaves fewer candidates per probed list: probe frac^-1/4
        # times more lists (at most 2x) to keep recall. Measured at 10^6 tiles (nprobe 256, recall@10
        # 0.964 unfiltered): a cut-type filter (frac 1/8) reached recall@10 0.932 with no widening,
        # 0.948 at 1.5x, 0.958 at 2x, 0.971 at 2.83x (= frac^-1/2, which cost 2.5x an unfiltered search)
        widen = min(2.0, frac ** -0.25)
        ivf = _ivf(self.index)
        if ivf is not None:
            p = faiss.SearchParametersIVF(sel=sel, nprobe=min(ivf.nlist, int(math.ceil(self.nprobe * widen))))
            return p if ivf is self.index else faiss.IndexRefineSearchParameters(k_factor=self.k_factor, base_index_params=p)
        if isinstance(self.index, faiss.IndexHNSW):
            return faiss.SearchParametersHNSW(sel=sel, efSearch=int(self.ef_search * widen))
        return faiss.SearchParameters(sel=sel) if sel is not None else None

    def search(self, queries, k: int = 10, filt: AttrFilter | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (similarities, ids), each (m, k); ids -1 (similarity -inf) where fewer than k exist."""
        q = _f32(queries)
        if q.shape[1] != self.dim:
            raise ValueError(f"queries have dim {q.shape[1]}, the index has {self.dim}")
        if self.ntotal == 0:
            return np.full((len(q), k), -np.inf, np.float32), np.full((len(q), k), -1, np.int64)
        allowed = None if (filt is None or filt.is_all) else mask(filt, self.times, self.cuts)
        if allowed is not None:
            cand = np.flatnonzero(allowed)
            if len(cand) <= max(self.exact_below, self._scanned()):  # few: exact, cheaper than a probe
                return self._search_subset(q, k, cand)
            frac = len(cand) / self.ntotal
        if self.use_gpu and not isinstance(self.index, faiss.IndexRefine):  # fast-scan PQ stays on the CPU
            return self._search_gpu(q, k, allowed)
        sel = None
        if allowed is not None:
            bits = np.packbits(allowed, bitorder="little")  # faiss bitmap: bit i of byte i>>3
            sel = faiss.IDSelectorBitmap(len(allowed), faiss.swig_ptr(bits))
        sims, ids = self.index.search(q, k, params=self._params(sel, 1.0 if allowed is None else frac))
        sims[ids < 0] = -np.inf
        return sims, ids

    def _search_subset(self, q, k, cand: np.ndarray):
        sims = np.full((len(q), k), -np.inf, np.float32)
        ids = np.full((len(q), k), -1, np.int64)
        if len(cand) == 0:
            return sims, ids
        kk = min(k, len(cand))
        s, pos = faiss.knn(q, self.index.reconstruct_batch(cand), kk, metric=faiss.METRIC_INNER_PRODUCT)
        sims[:, :kk], ids[:, :kk] = s, cand[pos]
        return sims, ids

    def _search_gpu(self, q, k, allowed):
        if self._gpu is None:
            if isinstance(self.index, faiss.IndexIVF) and self.nprobe:
                self.index.nprobe = self.nprobe
            self._gpu = faiss.index_cpu_to_all_gpus(self.index) if not isinstance(self.index, faiss.IndexHNSW) else self.index
        frac = 1.0 if allowed is None else max(allowed.mean(), 1e-6)
        kk = int(min(self.ntotal, 2048, math.ceil(4 * k / frac)))  # over-fetch, then filter
        sims, ids = self._gpu.search(q, kk)
        if allowed is not None:
            ok = (ids >= 0) & allowed[np.clip(ids, 0, None)]
            sims, ids = np.where(ok, sims, -np.inf), np.where(ok, ids, -1)
            order = np.argsort(-sims, axis=1, kind="stable")
            sims, ids = np.take_along_axis(sims, order, 1), np.take_along_axis(ids, order, 1)
        sims, ids = sims[:, :k], ids[:, :k]
        if sims.shape[1] < k:
            pad = k - sims.shape[1]
            sims = np.pad(sims, ((0, 0), (0, pad)), constant_values=-np.inf)
            ids = np.pad(ids, ((0, 0), (0, pad)), constant_values=-1)
        sims[ids < 0] = -np.inf
        return sims.astype(np.float32), ids.astype(np.int64)

    # -- persistence --------------------------------------------------------------------------
    def save(self, folder: str | Path) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        faiss.write_index(self.index, str(folder / "index.faiss"))
        np.savez(folder / "attrs.npz", times=self.times, cuts=self.cuts)
        meta = dict(dim=self.dim, ann_threshold=self.ann_threshold, kind=self.kind, nprobe=self.nprobe,
                    hnsw_m=self.hnsw_m, ef_search=self.ef_search, exact_below=self.exact_below, k_factor=self.k_factor,
                    ntotal=self.ntotal)
        (folder / "index.json").write_text(json.dumps(meta, indent=2))
        return folder

    @classmethod
    def load(cls, folder: str | Path, use_gpu: bool | None = None) -> "TileIndex":
        folder = Path(folder)
        meta = json.loads((folder / "index.json").read_text())
        meta.pop("ntotal")
        idx = cls(**meta, use_gpu=use_gpu)
        idx.index = faiss.read_index(str(folder / "index.faiss"))
        attrs = np.load(folder / "attrs.npz")
        idx.times, idx.cuts = attrs["times"], attrs["cuts"]
        if isinstance(idx.index, faiss.IndexIVF):
            idx.index.make_direct_map()
        if not (len(idx.times) == len(idx.cuts) == idx.ntotal):
            raise ValueError(f"{folder}: index holds {idx.ntotal} vectors but {len(idx.times)} attribute rows")
        return idx
