"""The unified recognition model: one ViT encoder, task queries, a decoder, a task-guided interpreter.

    model = build_model("unified_small", catalogue=load_catalogue().model_dump())
    model.set_query_text(embed_texts([t.query for t in cat.tasks]))     # once; frozen buffer
    out = model(images, task_ids, frames={"flash": f, "angles": a}, attr_cat=c, attr_num=n)

Shapes: images (b, 3, s, s) in [0, 1]; task_ids (b, t) catalogue indices, -1 = no task in that slot
(requests may ask different tasks); frames[kind] (b, f, 3, s, s); attr_cat (b, n_cat) long;
attr_num (b, n_num) float.

1. Task query builder: the frozen query-text vector (all-MiniLM-L6-v2, precomputed), the task's
   associated frames (flash or angle images through the same encoder, pooled to six view tokens
   each: CLS, mean patch token and 2x2 region means, each beside its difference to the main
   image's same view token, so multi-frame tasks compare; nothing for single-frame tasks) and
   user attributes (an embedding per categorical value, a linear embedding per number) are fused
   by a small transformer; its first output is the query.
2. Decoder: each query cross-attends to the image tokens (no self-attention between queries, so a
   task's answer does not depend on which other tasks were asked) -> task features (b, t, d).
3. Interpreter: the guidance unit turns a task feature into gate signals: routing logits over the
   four output units and a channel gate; the gate control unit sends each task's gated feature to
   the unit of the chosen type (`route="type"` uses the catalogue type: training; `route="gate"`
   the guidance unit's choice: inference). Output units:
     cls  MLP -> logits, sliced to the task's classes
     reg  MLP -> sigmoid, scaled to the task's range
     seg  pixel decoder (tokens upsampled x4, plus a shallow image stem) . per-class mask embeddings
          from the task feature -> (classes, s/2, s/2) logits
     det  one query per class (task feature + class embedding) cross-attends to the image tokens
          -> [presence logit, cx, cy, w, h]. Choice: per-class set prediction with a fixed
          class-to-query assignment (each class has at most one box in this world: portrait, seal,
          text block), so no Hungarian matching is needed.
4. Task classifier: multi-label logits over the catalogue from the CLS token (which tasks apply).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from docray.models import build_model, make_config, register_model

TYPES = ("cls", "reg", "seg", "det")  # gate order (docray.recognition.tasks.TASK_TYPES)
FRAME_KINDS = ("none", "flash", "angles")
N_VIEW_TOKENS = 6  # tokens per associated frame: CLS, mean patch token, 2x2 region means


@dataclass
class UnifiedConfig:
    catalogue: dict = field(default_factory=dict)  # the task catalogue (tasks.yaml as a dict); required
    encoder: str = "vit_encoder_small"  # a registered ViTEncoder factory
    encoder_overrides: dict = field(default_factory=dict)
    text_dim: int = 384  # all-MiniLM-L6-v2 output
    fusion_layers: int = 1  # the multimodal transformer of the query builder: small
    decoder_layers: int = 2  # cross-attention blocks of the task decoder
    heads: int = 4
    max_frames: int = 4  # associated frames per task query (extra frames are dropped)
    seg_dim: int = 32  # pixel-embedding width of the segmentation unit
    mlp_ratio: int = 2


def _mlp(d_in: int, d_hidden: int, d_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, d_hidden), nn.GELU(), nn.Linear(d_hidden, d_out))


class CrossBlock(nn.Module):
    """Pre-norm cross-attention + MLP: queries (b, t, d) attend to memory (b, n, d)."""

    def __init__(self, d: int, heads: int, mlp_ratio: int):
        super().__init__()
        self.nq, self.nm, self.n2 = nn.LayerNorm(d), nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, heads, batch_first=True)
        self.mlp = _mlp(d, d * mlp_ratio, d)

    def forward(self, q: torch.Tensor, mem: torch.Tensor) -> torch.Tensor:
        m = self.nm(mem)
        q = q + self.attn(self.nq(q), m, m, need_weights=False)[0]
        return q + self.mlp(self.n2(q))


class QueryBuilder(nn.Module):
    """(text vector, frame tokens, attribute tokens) -> one task query vector per (sample, task)."""

    def __init__(self, cfg: UnifiedConfig, d: int, n_tasks: int, cat_sizes: list[int], n_num: int):
        super().__init__()
        self.text = nn.Linear(cfg.text_dim, d)
        self.task_embed = nn.Embedding(n_tasks, d)  # a learned offset per task beside its text
        self.frame_proj = nn.Linear(2 * d, d)  # a frame view token and its difference to the image's -> one token
        self.view_pos = nn.Parameter(torch.zeros(N_VIEW_TOKENS, d))  # which view token: CLS, mean, 2x2 regions
        self.segment = nn.Embedding(3, d)  # 0 query text, 1 frame, 2 attribute
        self.cats = nn.ModuleList(nn.Embedding(n, d) for n in cat_sizes)
        self.num = nn.Linear(2 * n_num, d) if n_num else None  # values and "present" flags
        layer = nn.TransformerEncoderLayer(d, cfg.heads, d * cfg.mlp_ratio, dropout=0.0, batch_first=True,
                                           norm_first=True)
        self.fuse = nn.TransformerEncoder(layer, cfg.fusion_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d)

    def attr_tokens(self, attr_cat: torch.Tensor, attr_num: torch.Tensor) -> torch.Tensor:
        """(b, n_cat), (b, n_num) -> (b, n_attr_tokens, d)."""
        toks = [emb(attr_cat[:, i]) for i, emb in enumerate(self.cats)]
        if self.num is not None:
            toks.append(self.num(torch.cat([attr_num, (attr_num != 0).float()], -1)))
        return torch.stack(toks, 1) + self.segment.weight[2]

    def forward(self, text: torch.Tensor, task_ids: torch.Tensor, frames: torch.Tensor, frame_mask: torch.Tensor,
                attrs: torch.Tensor) -> torch.Tensor:
        """text (b, t, text_dim); frames (b, t, f, d); frame_mask (b, t, f) True = padding; attrs (b, a, d)."""
        b, t = task_ids.shape
        q = (self.text(text) + self.task_embed(task_ids.clamp(min=0)) + self.segment.weight[0]).unsqueeze(2)
        fr = frames + self.segment.weight[1]
        at = attrs.unsqueeze(1).expand(b, t, *attrs.shape[1:])
        seq = torch.cat([q, fr, at], 2).flatten(0, 1)  # (b*t, 1 + f + a, d)
        pad = torch.cat([torch.zeros(b, t, 1, dtype=torch.bool, device=q.device), frame_mask,
                         torch.zeros(b, t, at.shape[2], dtype=torch.bool, device=q.device)], 2).flatten(0, 1)
        return self.norm(self.fuse(seq, src_key_padding_mask=pad)[:, 0]).view(b, t, -1)  # (b, t, d)


class SegUnit(nn.Module):
    """Per-pixel masks: pixel embeddings (b, e, s/2, s/2) . class embeddings from the task feature."""

    def __init__(self, d: int, e: int, max_classes: int, grid: int):
        super().__init__()
        self.grid, self.e, self.k = grid, e, max_classes
        self.up = nn.Sequential(nn.ConvTranspose2d(d, 2 * e, 2, 2), nn.GELU(), nn.ConvTranspose2d(2 * e, e, 2, 2))
        self.stem = nn.Sequential(nn.Conv2d(3, e, 3, 2, 1), nn.GELU(), nn.Conv2d(e, e, 3, 1, 1), nn.GELU(),
                                  nn.Conv2d(e, e, 3, 1, 1))  # its own edges and strokes at s/2
        self.mix = nn.Conv2d(e, e, 3, 1, 1)
        self.cls = _mlp(d, d, max_classes * e)

    def forward(self, feat: torch.Tensor, tokens: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        """feat (p, d), tokens (p, 1 + g*g, d), images (p, 3, s, s) -> logits (p, max_classes, s/2, s/2)."""
        p, _, d = tokens.shape
        grid = tokens[:, 1:].transpose(1, 2).reshape(p, d, self.grid, self.grid)
        pix = self.up(grid)  # (p, e, 4g, 4g)
        stem = self.stem(images)
        if pix.shape[-1] != stem.shape[-1]:
            pix = F.interpolate(pix, size=stem.shape[-2:], mode="bilinear", align_corners=False)
        pix = self.mix(F.gelu(pix + stem))
        return torch.einsum("pke,pehw->pkhw", self.cls(feat).view(p, self.k, self.e), pix)


class DetUnit(nn.Module):
    """One query per class attends to the image tokens -> (p, max_classes, 5): logit, cx, cy, w, h."""

    def __init__(self, d: int, heads: int, max_classes: int, mlp_ratio: int):
        super().__init__()
        self.class_embed = nn.Parameter(torch.randn(max_classes, d) * 0.02)
        self.block = CrossBlock(d, heads, mlp_ratio)
        self.head = _mlp(d, d, 5)

    def forward(self, feat: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        q = feat.unsqueeze(1) + self.class_embed  # (p, k, d)
        out = self.head(self.block(q, tokens))
        return torch.cat([out[..., :1], out[..., 1:].sigmoid()], -1)


class UnifiedModel(nn.Module):
    def __init__(self, cfg: UnifiedConfig):
        super().__init__()
        from docray.recognition.tasks import load_catalogue

        self.cfg = cfg
        self.catalogue = cat = load_catalogue(cfg.catalogue)
        tasks = cat.tasks
        self.encoder = build_model(cfg.encoder, **cfg.encoder_overrides)
        d, self.image_size = self.encoder.dim, self.encoder.spec.image_size
        cats, nums = cat.attr_spec()
        self.register_buffer("query_text", torch.zeros(len(tasks), cfg.text_dim))  # set_query_text(); saved
        self.register_buffer("task_type", torch.tensor([TYPES.index(t.type) for t in tasks]), persistent=False)
        self.register_buffer("task_frames", torch.tensor([FRAME_KINDS.index(t.frames) for t in tasks]), persistent=False)
        self.register_buffer("task_nout", torch.tensor([t.n_out for t in tasks]), persistent=False)
        lo = [t.range[0] if t.type == "reg" else 0.0 for t in tasks]
        hi = [t.range[1] if t.type == "reg" else 1.0 for t in tasks]
        self.register_buffer("reg_lo", torch.tensor(lo), persistent=False)
        self.register_buffer("reg_hi", torch.tensor(hi), persistent=False)
        self.query = QueryBuilder(cfg, d, len(tasks), [len(v) for v in cats.values()], len(nums))
        self.decoder = nn.ModuleList(CrossBlock(d, cfg.heads, cfg.mlp_ratio) for _ in range(cfg.decoder_layers))
        self.guidance = nn.Linear(d, len(TYPES) + d)  # gate signals: routing logits + channel gate
        mx = {ty: max([t.n_out for t in tasks if t.type == ty], default=0) for ty in TYPES}
        self.units = nn.ModuleDict()
        if mx["cls"]:
            self.units["cls"] = _mlp(d, d, mx["cls"])
        if mx["reg"]:
            self.units["reg"] = _mlp(d, d, 1)
        if mx["seg"]:
            self.units["seg"] = SegUnit(d, cfg.seg_dim, mx["seg"], self.encoder.grid)
        if mx["det"]:
            self.units["det"] = DetUnit(d, cfg.heads, mx["det"], cfg.mlp_ratio)
        self.task_classifier = nn.Linear(d, len(tasks))

    def set_query_text(self, vectors) -> None:
        v = torch.as_tensor(vectors, dtype=torch.float32)
        if v.shape != self.query_text.shape:
            raise ValueError(f"query text vectors: expected {tuple(self.query_text.shape)}, got {tuple(v.shape)}")
        self.query_text.copy_(v)

    def _views(self, tokens: torch.Tensor) -> torch.Tensor:
        """Encoder output (n, 1 + g*g, d) -> (n, N_VIEW_TOKENS, d): CLS, mean patch, 2x2 region means."""
        n, _, d = tokens.shape
        grid = tokens[:, 1:].transpose(1, 2).reshape(n, d, self.encoder.grid, self.encoder.grid)
        regions = F.adaptive_avg_pool2d(grid, 2).flatten(2).transpose(1, 2)  # (n, 4, d)
        return torch.cat([tokens[:, :1], tokens[:, 1:].mean(1, keepdim=True), regions], 1)

    def _frame_tokens(self, task_ids, frames, image_tokens, b, device):
        """(b, t, max_frames * N_VIEW_TOKENS, d) frame tokens per task and their padding mask (True =
        none). Each frame gives view tokens (CLS, mean, 2x2 regions), each with its difference to the
        main image's same view token: multi-frame tasks compare the frames with the image."""
        d, t, fmax, r = self.encoder.dim, task_ids.shape[1], self.cfg.max_frames, N_VIEW_TOKENS
        kinds = self.task_frames[task_ids.clamp(min=0)].masked_fill(task_ids < 0, 0)  # (b, t)
        toks = torch.zeros(b, t, fmax * r, d, device=device)
        mask = torch.ones(b, t, fmax * r, dtype=torch.bool, device=device)
        v_img = self._views(image_tokens)[:, None] if bool((kinds > 0).any()) else None  # (b, 1, r, d)
        for k in kinds.unique().tolist():
            if k == 0:
                continue
            name = FRAME_KINDS[k]
            fr = (frames or {}).get(name)
            if fr is None:
                raise ValueError(f"tasks asked need '{name}' frames, none given")
            fr = fr[:, :fmax]  # (b, f, 3, s, s)
            f = fr.shape[1] * r
            v = self._views(self.encoder(fr.flatten(0, 1))).view(b, fr.shape[1], r, d)  # the same encoder
            tok = (self.query.frame_proj(torch.cat([v, v - v_img], -1)) + self.query.view_pos).view(b, f, d)
            sel = kinds == k  # (b, t)
            toks[:, :, :f] = torch.where(sel[..., None, None], tok[:, None].to(toks.dtype), toks[:, :, :f])
            mask[:, :, :f] = torch.where(sel[..., None], torch.zeros_like(mask[:, :, :f]), mask[:, :, :f])
        return toks, mask

    def forward(self, images, task_ids, frames=None, attr_cat=None, attr_num=None, route: str = "gate",
                tokens=None) -> dict:
        """`tokens`: the encoder's output for `images` when already computed (out["tokens"] of a first pass).
        -> {"tokens", "features" (b, t, d), "gate_logits" (b, t, 4), "route" (b, t), "task_logits" (b, n_tasks),
        per type: {"index": (p, 2) [sample, slot], "out": unit output}}."""
        b, device = images.shape[0], images.device
        if task_ids.ndim != 2 or task_ids.shape[0] != b:
            raise ValueError(f"task_ids must be (b, t) with b={b}, got {tuple(task_ids.shape)}")
        if int(task_ids.max()) >= len(self.catalogue.tasks):
            raise ValueError(f"task id {int(task_ids.max())} out of range (catalogue has {len(self.catalogue.tasks)})")
        n_cat, n_num = len(self.query.cats), (self.query.num.in_features // 2 if self.query.num else 0)
        attr_cat = attr_cat if attr_cat is not None else torch.zeros(b, n_cat, dtype=torch.long, device=device)
        attr_num = attr_num if attr_num is not None else torch.zeros(b, n_num, device=device)
        tokens = self.encoder(images) if tokens is None else tokens  # (b, 1 + n, d)
        ftoks, fmask = self._frame_tokens(task_ids, frames, tokens, b, device)
        q = self.query(self.query_text[task_ids.clamp(min=0)], task_ids, ftoks, fmask,
                       self.query.attr_tokens(attr_cat, attr_num))
        for blk in self.decoder:
            q = blk(q, tokens)  # (b, t, d) task features
        g = self.guidance(q)
        gate_logits, channel = g[..., : len(TYPES)], torch.sigmoid(g[..., len(TYPES):])
        if route == "type":
            chosen = self.task_type[task_ids.clamp(min=0)]
        elif route == "gate":
            chosen = gate_logits.argmax(-1)
        else:
            raise ValueError(f"route must be 'type' or 'gate', got {route!r}")
        feat = q * channel
        out = {"tokens": tokens, "features": q, "gate_logits": gate_logits, "route": chosen,
               "task_logits": self.task_classifier(tokens[:, 0])}
        for ti, ty in enumerate(TYPES):  # the gate control unit
            idx = ((chosen == ti) & (task_ids >= 0)).nonzero()  # (p, 2)
            if len(idx) == 0 or ty not in self.units:
                continue
            f = feat[idx[:, 0], idx[:, 1]]  # (p, d)
            tid = task_ids[idx[:, 0], idx[:, 1]]
            if ty == "cls":
                logits = self.units["cls"](f)
                keep = torch.arange(logits.shape[1], device=device)[None] < self.task_nout[tid][:, None]
                res = logits.masked_fill(~keep, float("-inf"))
            elif ty == "reg":
                lo, hi = self.reg_lo[tid], self.reg_hi[tid]
                res = lo + (hi - lo) * torch.sigmoid(self.units["reg"](f)[:, 0])
            elif ty == "seg":
                res = self.units["seg"](f, tokens[idx[:, 0]], images[idx[:, 0]])
            else:
                res = self.units["det"](f, tokens[idx[:, 0]])
            out[ty] = {"index": idx, "task": tid, "out": res}
        return out


def _build(defaults: dict, overrides: dict) -> UnifiedModel:
    cfg = make_config(UnifiedConfig, defaults, overrides, "unified-model")
    if not cfg.catalogue:
        from docray.recognition.tasks import load_catalogue

        cfg.catalogue = load_catalogue().model_dump()  # the packaged tasks.yaml
    return UnifiedModel(cfg)


@register_model
def unified_small(**overrides) -> UnifiedModel:
    """On `vit_encoder_small` (128-d): ~1.5M parameters with the packaged catalogue."""
    return _build({}, overrides)


@register_model
def unified_tiny(**overrides) -> UnifiedModel:
    return _build(dict(encoder="vit_encoder_tiny", decoder_layers=1, heads=2, seg_dim=8), overrides)


@register_model
def unified_base(**overrides) -> UnifiedModel:
    """On ViT-B/16 (GPU nodes)."""
    return _build(dict(encoder="vit_encoder_base", fusion_layers=2, decoder_layers=4, heads=8, seg_dim=64), overrides)
