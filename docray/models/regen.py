"""Regen compression models: content (image -> field text), type (image -> document type) and
generation (type + content -> the processed image), in one module so they train jointly.

    m = build_model("regen_tiny")
    losses = m(pixels, content_ids, types, target, cond, corner_px, quad, lines, line_ids)
    quads = m.predict_corners(corner_px)                     # (b, 4, 2): corners as fractions of w, h
    texts = m.read_lines(lines)                              # one field value per line crop
    types = m.predict_type(pixels).argmax(-1)
    images = m.generate(types, content_ids, cond, steps=4)   # (b, 3, H, W) in [-1, 1]

- Content, read field by field (`docray.regen.fields`): a corner head (a small CNN, soft-argmax
  over four heatmaps) finds the document's corners in the capture; each field's value box is
  warped out of the capture into a line crop; a transformers `VisionEncoderDecoderModel` (a small
  ViT encoder, a small BERT decoder with cross-attention, from scratch; a character tokenizer whose
  characters are the config's `chars`: printable ASCII by default, or those of the training texts,
  `CharTokenizer.from_texts(texts).chars`, Chinese included) reads each line, caption style. The content
  is the values joined by '|'. Its loss: the lines' token cross-entropy + `ctc_weight` x a CTC loss
  on the encoder's columns (joint CTC-attention) + `corner_weight` x the corners' L1 error
  (fractions of the image size).
- Type: a small CNN, image -> one of the document types.
- Generation: a diffusers `UNet2DConditionModel`, trained from scratch to predict the clean image
  (x0, `prediction_type="sample"`) from noise. Conditioned on (a) the type and the content, embedded
  as a token sequence and read by cross-attention, and (b) the deterministic rendering of the
  content's layout and glyphs (`docray.regen.layout.render_layer`) concatenated as 5 extra
  input channels (RGBA layer + document region). Legibility comes from (b): the model learns the
  background, pattern and colours around the glyphs, and the pipeline composites the glyph layer
  over its output. The UNet works at gen_size / gen_down (smooth content) and its output is
  upsampled to gen_size. Serving samples with DDIM in a few steps.
Inputs: `pixels` (b, 3, h, w) in [0, 1] at `content_size` (the type model's view); `corner_px` the same
at `corner_size`, `quad` (b, 8) its labelled corners (x, y fractions); `lines` (n, 3, h, w) in [0, 1]
at `line_size`, `line_ids` (n, field_len) their labelled values; `target` (b, 3, H, W) in [-1, 1] and
`cond` (b, 5, H, W) in [-1, 1] at `gen_size` (the first size threshold, (H, W)).
"""
from __future__ import annotations

import math
import string
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

import docray  # noqa: F401  (the torchvision shim, before transformers/diffusers)
from diffusers import DDIMScheduler, DDPMScheduler, UNet2DConditionModel
from transformers import BertConfig, ViTConfig, VisionEncoderDecoderConfig, VisionEncoderDecoderModel

from docray.models import make_config, register_model

PAD, BOS, EOS = 0, 1, 2
CHARS = string.printable[:95]  # ' '..'~' minus nothing: digits, letters, punctuation, space
UNKNOWN = "?"  # what a character outside the vocabulary reads as
COND_CHANNELS = 5  # RGBA glyph layer + document region mask
READ_SCORES = ("decoder_mean_logp", "decoder_min_logp", "ctc_logp_per_char", "ctc_agrees")  # `read_scored`


class CharTokenizer:
    """Characters <-> ids (0 pad, 1 bos, 2 eos, 3.. characters; unknown -> '?'). Any Unicode characters:

        tok = CharTokenizer.from_texts(field_texts)     # printable ASCII + every other character seen
        build_model("regen_small", chars=tok.chars)     # the model config keeps them: a saved model
                                                        # reads back the same vocabulary
    """

    def __init__(self, chars: str = CHARS):
        if len(set(chars)) != len(chars) or UNKNOWN not in chars:
            raise ValueError(f"a tokenizer's chars must be distinct and include {UNKNOWN!r}, got {chars[:40]!r}...")
        self.chars = chars
        self.index = {c: i + 3 for i, c in enumerate(chars)}
        self.vocab_size = len(chars) + 3

    @classmethod
    def from_texts(cls, texts, base: str = CHARS) -> "CharTokenizer":
        """`base` (ids unchanged: by default the ASCII set every earlier model used), then every other
        character of `texts` in code-point order (control characters left out), and '?'."""
        seen = set(base)
        extra = sorted({c for t in texts for c in t if c not in seen and c.isprintable()})
        return cls(base + "".join(extra) + ("" if UNKNOWN in base or UNKNOWN in extra else UNKNOWN))

    def encode(self, text: str, max_len: int) -> list[int]:
        """[bos, chars..., eos] padded with 0 to max_len (truncated to fit)."""
        ids = [self.index.get(c, self.index[UNKNOWN]) for c in text][: max_len - 2]
        ids = [BOS, *ids, EOS]
        return ids + [PAD] * (max_len - len(ids))

    def decode(self, ids) -> str:
        out = []
        for i in (int(v) for v in ids):
            if i == EOS:
                break
            if i >= 3:
                out.append(self.chars[i - 3])
        return "".join(out)

    def batch(self, texts: list[str], max_len: int) -> torch.Tensor:
        return torch.tensor([self.encode(t, max_len) for t in texts], dtype=torch.long)


@dataclass
class RegenConfig:
    n_types: int = 6  # document types: the doc-type registry's first n_types (docray.doctypes; 6 built-ins)
    chars: str = ""  # the reader's characters ('' = printable ASCII, CHARS): CharTokenizer.from_texts(texts).chars
    max_len: int = 160  # content tokens incl. bos/eos (the generator's condition): ~140 characters at most
    content_size: tuple = (96, 160)  # (h, w) of the type model's input
    corner_size: tuple = (120, 192)  # (h, w) of the corner head's input
    corner_width: int = 24
    corner_rest: tuple = (0.1, 0.075, 0.9, 0.925)  # (x0, y0, x1, y1), fractions: where the training
    # captures' documents lie on average (train_regen sets it from the data; this: the synthetic
    # captures'). Serving warps its first corners there and asks the corner head again
    # (RegenCompressor.locate): median error 3.2 -> 1.5 px on held-out synthetic photos
    corner_weight: float = 10.0  # corners' L1 (fractions of the image) in the content loss
    ctc_weight: float = 0.5  # CTC on the encoder's columns, beside the decoder's cross-entropy
    line_size: tuple = (24, 320)  # (h, w) of a field's line crop, the reader's input: ~1 px per capture px
    field_len: int = 48  # tokens of one field value incl. bos/eos
    line_patch: tuple = (24, 4)  # (h, w) of one ViT token of a line: the line's whole height x 4 px, so the
    # encoder's 80 columns give CTC two per ~8 px glyph (8 px patches gave one, and CTC could not align)
    enc_dim: int = 128  # sized to train on a CPU laptop; widen on GPUs
    enc_depth: int = 4
    enc_heads: int = 4
    dec_dim: int = 128
    dec_depth: int = 2
    dec_heads: int = 4
    type_width: int = 24  # CNN width of the type model
    gen_size: tuple = (160, 256)  # (H, W): the first size threshold
    gen_down: int = 4  # the UNet works at gen_size / gen_down (40x64), upsampled to gen_size: the
    # background and colours are smooth; the sharp detail (glyphs) is composited at full size.
    # 4 trains on CPU cores in minutes; use 1 or 2 on a GPU.
    gen_channels: tuple = (32, 64, 64)  # UNet widths; cross-attention only at the last level
    cross_dim: int = 64  # width of the type+content token sequence the UNet attends to
    train_timesteps: int = 1000
    sample_steps: int = 4  # DDIM steps at serving time


class TypeNet(nn.Module):
    """A small CNN: (b, 3, h, w) in [0, 1] -> (b, n_types) logits."""

    def __init__(self, n_types: int, width: int):
        super().__init__()
        layers, c = [], 3
        for i in range(4):
            out = width * 2 ** min(i, 2)
            layers += [nn.Conv2d(c, out, 3, stride=2, padding=1), nn.BatchNorm2d(out), nn.ReLU(inplace=True)]
            c = out
        self.features = nn.Sequential(*layers)  # (b, c, h/16, w/16)
        self.head = nn.Linear(c, n_types)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """(b, 3, h, w) in [0, 1] -> (b, c): the pooled features the head reads (the gate's Mahalanobis space)."""
        return self.features(x * 2 - 1).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(x))


class ConvStem(nn.Sequential):
    @property
    def weight(self) -> torch.Tensor:  # transformers' ViTModel reads `projection.weight.dtype`
        return self[-1].weight


def conv_stem(c_in: int, dim: int, patch_hw: tuple[int, int]) -> ConvStem:
    """The ViT's patch projection as a small CNN (early convolutions, Xiao et al. 2021; the CRNN's
    feature extractor): (b, c_in, ph * k, pw * m) -> (b, dim, k, m). 3x3 convolutions halve both
    sides until the width is down by pw (a power of 2), then the height alone, then one convolution
    spans what height is left. Glyph strokes are found by local filters before the transformer."""
    ph, pw = patch_hw
    n = int(math.log2(pw))
    if 2 ** n != pw or ph % pw:
        raise ValueError(f"the convolutional stem needs a power-of-2 patch width dividing its height, got {patch_hw}")
    layers, c, h = [], c_in, ph

    def conv(out, stride):
        nonlocal c
        layers.extend([nn.Conv2d(c, out, 3, stride, 1), nn.BatchNorm2d(out), nn.ReLU(inplace=True)])
        c = out

    for i in range(n):  # down by 2 in both sides, widening to dim / 2
        conv(dim // 2 ** (n - i), 2)
        h //= 2
        if i:
            conv(c, 1)
    while h > 3 and h % 2 == 0:  # the height alone
        conv(dim, (2, 1))
        h //= 2
    return ConvStem(*layers, nn.Conv2d(c, dim, (h, 1)))  # the rest of the height -> one row of tokens


class CornerNet(nn.Module):
    """(b, 3, h, w) in [0, 1] -> the document's corners (b, 4, 2) as (x, y) fractions of the image
    (top-left, top-right, bottom-right, bottom-left): a soft-argmax over four heatmaps at 1/4 scale,
    after dilated convolutions that see the whole image (a corner is told apart by context)."""

    def __init__(self, width: int):
        super().__init__()

        def block(i, o, stride=1, dil=1):
            return [nn.Conv2d(i, o, 3, stride, padding=dil, dilation=dil), nn.BatchNorm2d(o), nn.ReLU(inplace=True)]

        c = width
        self.features = nn.Sequential(*block(3, c, 2), *block(c, c), *block(c, 2 * c, 2), *block(2 * c, 2 * c),
                                      *block(2 * c, 2 * c, dil=2), *block(2 * c, 2 * c, dil=4),
                                      *block(2 * c, 2 * c, dil=8), *block(2 * c, 2 * c, dil=16))
        self.head = nn.Conv2d(2 * c + 2, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.features(x * 2 - 1)
        b, _, h, w = f.shape
        ys = (torch.arange(h, device=f.device, dtype=f.dtype) + 0.5) / h
        xs = (torch.arange(w, device=f.device, dtype=f.dtype) + 0.5) / w
        grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"))  # (2, h, w): x, y
        heat = self.head(torch.cat([f, grid[None].expand(b, -1, -1, -1)], 1)).flatten(2).softmax(-1)  # (b, 4, h*w)
        return heat @ grid.flatten(1).T  # (b, 4, 2): expected (x, y)


class RegenModels(nn.Module):
    def __init__(self, cfg: RegenConfig):
        super().__init__()
        self.cfg, self.tokenizer = cfg, CharTokenizer(cfg.chars or CHARS)
        v = self.tokenizer.vocab_size
        enc = ViTConfig(image_size=list(cfg.line_size), patch_size=list(cfg.line_patch), hidden_size=cfg.enc_dim,
                        num_hidden_layers=cfg.enc_depth, num_attention_heads=cfg.enc_heads,
                        intermediate_size=4 * cfg.enc_dim, num_channels=3)
        dec = BertConfig(vocab_size=v, hidden_size=cfg.dec_dim, num_hidden_layers=cfg.dec_depth,
                         num_attention_heads=cfg.dec_heads, intermediate_size=4 * cfg.dec_dim,
                         max_position_embeddings=cfg.field_len + 8, is_decoder=True, add_cross_attention=True,
                         pad_token_id=PAD)
        vcfg = VisionEncoderDecoderConfig.from_encoder_decoder_configs(enc, dec)
        vcfg.decoder_start_token_id, vcfg.pad_token_id, vcfg.eos_token_id = BOS, PAD, EOS
        self.content = VisionEncoderDecoderModel(config=vcfg)
        # a convolutional stem instead of the linear patch projection (early convolutions, Xiao et al.
        # 2021): the same patch grid, but glyph strokes found by local filters first
        self.content.encoder.embeddings.patch_embeddings.projection = conv_stem(3, cfg.enc_dim, tuple(cfg.line_patch))
        self.ctc_head = nn.Linear(cfg.enc_dim, v)  # per encoder column: a character or blank (= PAD)
        self.corners = CornerNet(cfg.corner_width)
        self.type_model = TypeNet(cfg.n_types, cfg.type_width)
        n = len(cfg.gen_channels)
        self.unet = UNet2DConditionModel(
            sample_size=[v // cfg.gen_down for v in cfg.gen_size], in_channels=3 + COND_CHANNELS, out_channels=3,
            down_block_types=("DownBlock2D",) * (n - 1) + ("CrossAttnDownBlock2D",),
            up_block_types=("CrossAttnUpBlock2D",) + ("UpBlock2D",) * (n - 1),
            block_out_channels=tuple(cfg.gen_channels), layers_per_block=1, cross_attention_dim=cfg.cross_dim,
            attention_head_dim=8, norm_num_groups=8, mid_block_type=None,
        )
        self.type_embed = nn.Embedding(cfg.n_types, cfg.cross_dim)
        self.char_embed = nn.Embedding(v, cfg.cross_dim, padding_idx=PAD)
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.max_len, cfg.cross_dim))
        nn.init.normal_(self.pos_embed, std=0.02)
        self.noise = DDPMScheduler(num_train_timesteps=cfg.train_timesteps, beta_schedule="squaredcos_cap_v2",
                                   prediction_type="sample", clip_sample=True)

    # -- the three losses ----------------------------------------------------------------------
    def condition(self, types: torch.Tensor, content_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Type + content as a token sequence (b, 1 + L, cross_dim) and its attention mask (b, 1 + L)."""
        tok = self.char_embed(content_ids) + self.pos_embed[:, : content_ids.shape[1]]
        seq = torch.cat([self.type_embed(types)[:, None], tok], dim=1)
        mask = torch.cat([torch.ones_like(content_ids[:, :1]), (content_ids != PAD).long()], dim=1)
        return seq, mask

    def low(self, x: torch.Tensor) -> torch.Tensor:
        """(b, c, H, W) at gen_size -> the UNet's working size (area average)."""
        return F.avg_pool2d(x, self.cfg.gen_down) if self.cfg.gen_down > 1 else x

    def denoise(self, noisy, t, cond, types, content_ids) -> torch.Tensor:
        """Predicted clean image at the working size; `noisy` and `cond` at the working size."""
        seq, mask = self.condition(types, content_ids)
        return self.unet(torch.cat([noisy, cond], 1), t, encoder_hidden_states=seq,
                         encoder_attention_mask=mask).sample  # (b, 3, H, W): predicted x0

    def forward(self, pixels=None, content_ids=None, types=None, target=None, cond=None, corner_px=None, quad=None,
                lines=None, line_ids=None, outliers=None) -> dict[str, torch.Tensor]:
        """Loss 1 content (the field lines' token cross-entropy + ctc_weight x their CTC +
        corner_weight x the corners' L1), loss 2 type (cross-entropy), loss 3 generation (MSE of the
        predicted clean image to the original's clean render; the generator is conditioned on the
        LABELLED type and content, as the method says). Also returns the content loss's parts,
        'lines', 'ctc' and 'corners'. Given only `lines` and `line_ids`: the reader's loss alone
        (a reader step; 'content' is then lines + ctc_weight x ctc). Given only `pixels` and `types`:
        the type loss alone (a type step); with `outliers` (images of no known type) also 'outlier',
        their cross-entropy to the uniform distribution over the types (outlier exposure, Hendrycks et
        al. 2019: the gate's confidence and energy then fall on what is not a known document)."""
        if lines is None:
            if outliers is None:
                return {"type": F.cross_entropy(self.type_model(pixels), types)}
            logits = self.type_model(torch.cat([pixels, outliers]))  # one batch: BatchNorm sees both
            return {"type": F.cross_entropy(logits[: len(pixels)], types),
                    "outlier": -logits[len(pixels):].float().log_softmax(-1).mean()}
        labels = line_ids[:, 1:].masked_fill(line_ids[:, 1:] == PAD, -100)
        out = self.content(pixel_values=lines, decoder_input_ids=line_ids[:, :-1], labels=labels)
        ctc = self.ctc_loss(out.encoder_last_hidden_state, line_ids)
        read = out.loss + self.cfg.ctc_weight * ctc
        if pixels is None:
            return {"content": read, "lines": out.loss.detach(), "ctc": ctc.detach()}
        corners = F.l1_loss(self.corners(corner_px), quad.view(-1, 4, 2))
        type_loss = F.cross_entropy(self.type_model(pixels), types)
        target, cond = self.low(target), self.low(cond)
        noise = torch.randn_like(target)
        t = torch.randint(0, self.cfg.train_timesteps, (target.shape[0],), device=target.device)
        pred = self.denoise(self.noise.add_noise(target, noise, t), t, cond, types, content_ids)
        return {"content": read + self.cfg.corner_weight * corners, "type": type_loss,
                "generation": F.mse_loss(pred, target), "lines": out.loss.detach(), "ctc": ctc.detach(),
                "corners": corners.detach()}

    def ctc_log_probs(self, enc: torch.Tensor) -> torch.Tensor:
        """The CTC head over the encoder's columns: (n, 1 + tokens, d) -> (columns, n, vocab) log-probs."""
        h, w = (v // p for v, p in zip(self.cfg.line_size, self.cfg.line_patch))
        cols = enc[:, 1:].reshape(len(enc), h, w, -1).mean(1)  # drop [CLS]; average each column
        return self.ctc_head(cols).float().log_softmax(-1).transpose(0, 1)

    def ctc_loss(self, enc: torch.Tensor, line_ids: torch.Tensor, reduction: str = "mean",
                 zero_infinity: bool = True) -> torch.Tensor:
        """CTC of the line's characters over the encoder's patch columns (joint CTC-attention, as in
        speech recognition: it makes the encoder place characters, so the decoder's cross-attention
        finds them; without it the decoder learned a language model that never looked). Lines too
        long for the columns (MRZ runs of '<') are left to the decoder (zero_infinity)."""
        logp = self.ctc_log_probs(enc)
        chars = line_ids[:, 1:]
        lengths = ((chars != PAD) & (chars != EOS)).sum(1)
        targets = chars.masked_fill(chars == EOS, PAD)
        return F.ctc_loss(logp, targets, torch.full_like(lengths, len(logp)), lengths, blank=PAD,
                          reduction=reduction, zero_infinity=zero_infinity)

    # -- inference -----------------------------------------------------------------------------
    @torch.no_grad()
    def predict_corners(self, corner_px: torch.Tensor) -> torch.Tensor:
        """(b, 3, h, w) in [0, 1] -> (b, 4, 2) corners as (x, y) fractions of the image."""
        return self.corners(corner_px)

    @torch.no_grad()
    def read_lines(self, lines: torch.Tensor, decode: str = "joint") -> list[str]:
        """Line crops (n, 3, h, w) in [0, 1] -> one value each. `decode`: "attention" (the decoder's
        greedy caption), "ctc" (best path of the CTC head), or "joint" (of those two readings, the
        one with the lower decoder + ctc_weight x CTC negative log-likelihood: joint CTC-attention
        rescoring, as in speech recognition; each catches the other's slips)."""
        return self.readings(lines, decode)[decode]

    @torch.no_grad()
    def read_scored(self, lines: torch.Tensor) -> tuple[list[str], torch.Tensor]:
        """The joint readings and, per line, what its confidence is calibrated from (`READ_SCORES`):
        the decoder's mean and least token log-probability of the reading, the CTC head's
        log-probability of it per character, and whether the decoder and CTC readings agree."""
        texts = self.readings(lines, "joint", scores=True)
        return texts["joint"], texts["scores"]

    @torch.no_grad()
    def readings(self, lines: torch.Tensor, decode: str = "joint", scores: bool = False) -> dict[str, list[str]]:
        """The readings `decode` needs, by name, from one pass of the encoder ("joint" needs all three);
        with `scores` ("joint" only) also 'scores': (n, len(READ_SCORES)), see `read_scored`."""
        if decode not in ("attention", "ctc", "joint"):
            raise ValueError(f"decode must be 'attention', 'ctc' or 'joint', got {decode!r}")
        if len(lines) == 0:
            return {"attention": [], "ctc": [], "joint": [], **({"scores": torch.zeros(0, len(READ_SCORES))} if scores else {})}
        enc = self.content.encoder(pixel_values=lines)
        texts = {}
        if decode != "ctc":
            ids = self.content.generate(encoder_outputs=enc, max_length=self.cfg.field_len, do_sample=False,
                                        num_beams=1, decoder_start_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD)
            texts["attention"] = [self.tokenizer.decode(row[1:]) for row in ids]
        if decode != "attention":
            best = self.ctc_log_probs(enc.last_hidden_state).argmax(-1).T  # (n, columns)
            keep = torch.ones_like(best, dtype=torch.bool)
            keep[:, 1:] = best[:, 1:] != best[:, :-1]  # collapse repeats, then drop blanks
            texts["ctc"] = [self.tokenizer.decode(row[k & (row != PAD)]) for row, k in zip(best, keep)]
        if decode != "joint":
            return texts
        cands = texts["attention"] + texts["ctc"]
        ids = self.tokenizer.batch(cands, self.cfg.field_len).to(lines.device)
        enc2 = enc.last_hidden_state.repeat(2, 1, 1)
        logits = self.content.decoder(input_ids=ids[:, :-1], encoder_hidden_states=enc2).logits
        tok_nll = F.cross_entropy(logits.float().transpose(1, 2), ids[:, 1:], ignore_index=PAD, reduction="none")
        nll = tok_nll.sum(1)
        ctc = self.ctc_loss(enc2, ids, reduction="none", zero_infinity=False)  # a reading CTC cannot place: inf
        score = (nll + self.cfg.ctc_weight * ctc).view(2, -1)
        pick = torch.arange(len(lines), device=score.device) + len(lines) * score.argmin(0)
        texts["joint"] = [cands[int(i)] for i in pick]
        if scores:
            n_tok = (ids[:, 1:] != PAD).sum(1).clamp(min=1).float()  # the characters and eos
            worst = tok_nll.masked_fill(ids[:, 1:] == PAD, 0).max(1).values
            agree = torch.tensor([a == c for a, c in zip(texts["attention"], texts["ctc"])], dtype=torch.float32)
            texts["scores"] = torch.stack([-nll[pick] / n_tok[pick], -worst[pick],
                                           (-ctc[pick] / n_tok[pick]).clamp(min=-50.0), agree.to(nll.device)], 1).cpu()
        return texts

    @torch.no_grad()
    def predict_type(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.type_model(pixels).softmax(-1)

    @torch.no_grad()
    def type_outputs(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits (b, n_types), pooled features (b, c)) of the type model: what the document gate scores."""
        f = self.type_model.embed(pixels)
        return self.type_model.head(f), f

    @torch.no_grad()
    def generate(self, types, content_ids, cond, steps: int | None = None, seed: int = 0) -> torch.Tensor:
        """DDIM sampling in `steps` steps at the working size, upsampled -> (b, 3, H, W) in [-1, 1]."""
        sched = DDIMScheduler.from_config(self.noise.config)
        sched.set_timesteps(steps or self.cfg.sample_steps)
        cond = self.low(cond)
        g = torch.Generator(device="cpu").manual_seed(seed)
        x = torch.randn((cond.shape[0], 3, *cond.shape[2:]), generator=g).to(cond.device)
        seq, mask = self.condition(types, content_ids)
        for t in sched.timesteps:
            tt = torch.full((x.shape[0],), int(t), device=x.device, dtype=torch.long)
            pred = self.unet(torch.cat([x, cond], 1), tt, encoder_hidden_states=seq, encoder_attention_mask=mask).sample
            x = sched.step(pred, t, x).prev_sample
        if self.cfg.gen_down > 1:
            x = F.interpolate(x, size=tuple(self.cfg.gen_size), mode="bilinear", align_corners=False)
        return x.clamp(-1, 1)


def _build(defaults: dict, overrides: dict) -> RegenModels:
    cfg = make_config(RegenConfig, defaults, overrides, "regen")
    return RegenModels(cfg)


@register_model
def regen_small(**overrides) -> RegenModels:
    """The real size: 96x160 type input, 120x192 corners, 24x320 field lines, 160x256 generation (the
    packaged first threshold)."""
    return _build({}, overrides)


@register_model
def regen_tiny(**overrides) -> RegenModels:
    """For tests and smoke runs: tiny widths, 32x48 type and corner input, 16x64 lines, 64x96 generation."""
    return _build(dict(max_len=48, content_size=(32, 48), corner_size=(32, 48), corner_width=8, line_size=(16, 64),
                       line_patch=(16, 4), field_len=24, enc_dim=32, enc_depth=1, enc_heads=2, dec_dim=32,
                       dec_depth=1, dec_heads=2, type_width=8, gen_size=(64, 96), gen_down=2, gen_channels=(16, 32),
                       cross_dim=32, train_timesteps=100, sample_steps=2), overrides)
