"""The regen compression pipeline: recognise -> generate -> paste -> compress -> store.

    rc = RegenCompressor.load("~/.docray/models/regen/v0001")      # or RegenCompressor(model=...)
    out = rc.run(png_bytes, mode="server", repo=ImageRepository())  # dict: record_id, type, ...

Steps (DESIGN "Regen compression"):
1. check the original against the first threshold (first < original);
2. portrait: a photographed face (Haar cascade) or, for synthetic documents, the portrait slot of
   the type the type model sees on the whole image; split off with background or blank fill;
3. seals: red/blue outlines found by OpenCV (those inside the portrait are ignored), cropped as
   attachments;
4. type and content models on the document without the portrait (the content read field by field:
   the document's corners, then each value box of the type's template as a line crop);
5. generation at the first size threshold, conditioned on type + content (and their glyph layer,
   composited over the output, see `layout`); seals optionally composited back (darken blend);
6. the portrait pasted back, scaled by the pixel ratio processed / document-without-portrait;
7. per-type compression to the second threshold (server mode), or none (split mode: the terminal
   compresses with the file-type library);
8. the record stored one-to-one: original, processed, compressed, attachments, split.
`RegenCompressor` is also the batch predictor of `data_jobs/recompress_archive.py`
(`__call__(batch) -> batch`) and what the Serve deployments wrap, step by step.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from docray.compression import fields, layout, portrait as portraits, seals as sealmod
from docray.compression.data import cond_input, content_input, line_input, to_image
from docray.compression.file_types import FileTypeLibrary, load_file_types
from docray.compression.quality import compress_for_type
from docray.doctypes import registry
from docray.imageio import decode_image, encode_png

MODES = ("server", "split")


def _png(img: Image.Image) -> bytes:
    return encode_png(img, compress_level=6)


class RegenCompressor:
    def __init__(self, model, file_types: FileTypeLibrary | None = None, fill: str = "background",
                 steps: int | None = None, composite_seals: bool = True, device: str | None = None):
        if fill not in portraits.FILLS:
            raise ValueError(f"fill must be one of {portraits.FILLS}, got {fill!r}")
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model = model.to(self.device).eval()
        self.cfg = model.cfg
        self.lib = file_types or load_file_types()
        first = (self.lib.first.height, self.lib.first.width)
        if tuple(self.cfg.gen_size) != first:
            raise ValueError(f"the generation model outputs {self.cfg.gen_size} (h, w) but the first size "
                             f"threshold is {first}: train or pick a model for this file-type library")
        # the type model's classes are the registry's first n_types (built-ins first, then user types by name)
        self.doc_types = registry().names[: self.cfg.n_types]
        if len(self.doc_types) < self.cfg.n_types:
            raise ValueError(f"the model was trained on {self.cfg.n_types} document types but only "
                             f"{len(self.doc_types)} are registered {list(self.doc_types)}: register the user "
                             "types it was trained with (template files in $DOCRAY_DOCTYPES or $DOCRAY_HOME/doctypes)")
        for t in self.doc_types:  # every type gets its entry or the default, else a KeyError now
            self.lib.get(t)
        self.fill, self.steps, self.composite_seals = fill, steps, composite_seals
        self.repo = None  # set to an ImageRepository to store what __call__ compresses

    @classmethod
    def load(cls, folder: str | Path, **kw) -> "RegenCompressor":
        from docray.models import from_pretrained

        return cls(from_pretrained(Path(folder).expanduser()), **kw)

    @classmethod
    def from_source(cls, model_dir: str = "", untrained: str = "", file_types: str = "", seed: int = 0,
                    **kw) -> "RegenCompressor":
        """A trained folder (`model_dir`), else random weights of factory `untrained` (tests, demos),
        else the model registry's latest 'regen'; `file_types`: a YAML path ('' -> packaged)."""
        from docray.models import build_model, from_pretrained

        lib = load_file_types(file_types or None)
        if untrained:
            torch.manual_seed(seed)
            model = build_model(untrained)
        elif model_dir:
            model = from_pretrained(Path(model_dir).expanduser())
        else:  # the registry keeps a plain state dict (tied weights stored twice) and the build spec
            from docray.storage.registry import ModelRegistry

            state, spec, _ = ModelRegistry().load("regen")
            model = build_model(spec["name"], **spec.get("overrides", {}))
            try:
                model.load_state_dict(state)
            except RuntimeError as e:  # saved by an earlier architecture (before field-by-field reading)
                raise ValueError(f"the registry's latest 'regen' does not fit the current {spec['name']!r} "
                                 f"architecture; retrain it (python -m train_jobs.train_regen): {e}") from None
        return cls(model, file_types=lib, **kw)

    # -- stages (each also a Serve deployment's body) ------------------------------------------
    def _pixels(self, images: list[Image.Image], size_hw=None) -> torch.Tensor:
        size_hw = size_hw or self.cfg.content_size
        return torch.stack([content_input(im, size_hw) for im in images]).to(self.device)

    def predict_types(self, images: list[Image.Image]) -> list[tuple[str, float]]:
        probs = self.model.predict_type(self._pixels(images)).cpu()
        return [(self.doc_types[int(p.argmax())], float(p.max())) for p in probs]

    def locate(self, images: list[Image.Image]) -> np.ndarray:
        """(b, 4, 2): each document's corners in its image's px (the content model's corner head)."""
        quads = self.model.predict_corners(self._pixels(images, self.cfg.corner_size)).cpu().numpy().astype(np.float64)
        return quads * np.array([[[im.width, im.height]] for im in images], np.float64)

    def read_contents(self, images: list[Image.Image], doc_types: list[str] | None = None) -> list[str]:
        """The content, field by field: corners -> each value box of the type's template cut out as a
        line -> the reader. `doc_types` default to what the type model sees."""
        if doc_types is None:
            doc_types = [t for t, _ in self.predict_types(images)]
        crops = [fields.crop_lines(np.asarray(im.convert("RGB")), q, t, self.cfg.line_size)
                 for im, q, t in zip(images, self.locate(images), doc_types)]
        values = self.model.read_lines(line_input(np.concatenate(crops)).to(self.device))
        ends = np.cumsum([len(c) for c in crops])
        return [layout.join_content(values[e - len(c):e]) for c, e in zip(crops, ends)]

    def generate(self, doc_types: list[str], contents: list[str]) -> list[Image.Image]:
        """Processed images (first size threshold) for (type, content) pairs, glyph layer composited."""
        tok, h_w = self.model.tokenizer, tuple(self.cfg.gen_size)
        conds, layers = zip(*(cond_input(t, layout.split_content(c, t), h_w) for t, c in zip(doc_types, contents)))
        types = torch.tensor([layout.type_index(t) for t in doc_types], device=self.device)
        ids = tok.batch(list(contents), self.cfg.max_len).to(self.device)
        out = self.model.generate(types, ids, torch.stack(conds).to(self.device), steps=self.steps)
        return [Image.fromarray(layout.composite(layer, to_image(x))) for layer, x in zip(layers, out)]

    def portrait_box(self, img: Image.Image, hint_type: str | None) -> list[int] | None:
        """A photographed face, else the portrait slot of `hint_type` (the type seen on the whole image)."""
        return portraits.find_portrait(img, layout.slot_box(hint_type, img.size) if hint_type else None)

    def split_at(self, img: Image.Image, box: list[int] | None):
        """(document without portrait, portrait or None, split record or None)."""
        if box is None:
            return img, None, None
        face, rest, split = portraits.split_portrait(img, box, self.fill)
        return rest, face, split

    def split(self, img: Image.Image):
        return self.split_at(img, self.portrait_box(img, self.predict_types([img])[0][0]))

    def find_seals(self, img: Image.Image, split: dict | None) -> list[sealmod.Seal]:
        found = sealmod.detect_seals(img)
        if split is not None:  # ink inside the portrait (a blue shirt) is not a seal
            px0, py0, px1, py1 = split["position"]
            found = [s for s in found if not (s.box[0] >= px0 and s.box[1] >= py0 and s.box[2] <= px1 and s.box[3] <= py1)]
        return found

    def finish(self, processed: Image.Image, rest: Image.Image, face, split, seals, original: Image.Image):
        """Seals and portrait back onto the processed image; returns (image, split with scale)."""
        scale = (processed.width / rest.width, processed.height / rest.height)
        if self.composite_seals:
            arr = np.array(processed)
            for s in seals:
                b = portraits.clip(portraits.map_box(s.box, scale), *processed.size)
                if b[2] > b[0] and b[3] > b[1]:
                    crop = np.asarray(original.crop(tuple(s.box)).resize((b[2] - b[0], b[3] - b[1])))
                    arr[b[1]:b[3], b[0]:b[2]] = np.minimum(arr[b[1]:b[3], b[0]:b[2]], crop)  # darken: ink only
            processed = Image.fromarray(arr)
        if face is not None:
            s = scale[0] if abs(scale[0] - scale[1]) < 1e-3 else scale
            processed, split = portraits.paste_portrait(processed, face, split, s)
        return processed, split

    # -- the whole flow ------------------------------------------------------------------------
    def assemble(self, data: bytes, img: Image.Image, doc_type: str, score: float, content: str,
                 processed: Image.Image, face, split, seals) -> dict:
        """The result dict (processed PNG, attachments as (kind, bytes, meta) in `_attachments`)."""
        attachments = [("seal", _png(sealmod.crop_seal(img, s)), s.as_dict()) for s in seals]
        if face is not None:
            attachments.insert(0, ("portrait", _png(face), {"box": split["position"], "fill": split["fill"]}))
        out = {"type": doc_type, "type_score": round(float(score), 4), "content": content,
               "fields": dict(zip(layout.field_names(doc_type), layout.split_content(content, doc_type))),
               "processed": _png(processed), "compressed": None, "quality": None, "split": split,
               "seals": [s.as_dict() for s in seals], "_attachments": attachments,
               "attachments": [{"kind": k, "bytes": len(b), **m} for k, b, m in attachments]}
        out["sizes"] = {"original": len(data), "processed": len(out["processed"]), "compressed": None}
        return out

    @staticmethod
    def store(repo, data: bytes, out: dict, mode: str, meta: dict | None = None) -> str:
        """One record: original, processed, compressed (server mode) and attachments, one-to-one."""
        return repo.add(data, processed=out["processed"], compressed=out["compressed"], attachments=out["_attachments"],
                        doc_type=out["type"], split=out["split"],
                        meta={"content": out["content"], "mode": mode, "type_score": out["type_score"],
                              "quality": out["quality"], **(meta or {})})

    def run(self, data: bytes, mode: str = "server", repo=None, meta: dict | None = None) -> dict:
        """One upload through every step; stores a record when `repo` is given."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        img = decode_image(data)
        self.lib.check_original(img.width, img.height, len(data))
        rest, face, split = self.split(img)
        seals = self.find_seals(img, split)
        doc_type, score = self.predict_types([rest])[0]
        content = self.read_contents([rest], [doc_type])[0]
        processed = self.generate([doc_type], [content])[0]
        processed, split = self.finish(processed, rest, face, split, seals, img)
        out = self.assemble(data, img, doc_type, score, content, processed, face, split, seals)
        if mode == "server":
            c = compress_for_type(processed, self.lib.get(doc_type))
            out.update(compressed=c.data, quality=c.quality, format=c.format)
            out["sizes"]["compressed"] = len(c.data)
        if repo is not None:
            out["record_id"] = self.store(repo, data, out, mode, meta)
        return out

    # -- batch predictor (Ray Data) ------------------------------------------------------------
    def __call__(self, batch: dict) -> dict:
        """{'image': bytes[]} -> adds type, content, compressed, quality, bytes_in, bytes_out, error
        (a row that cannot be compressed, e.g. not an image or below the first threshold, gets its
        error and no output); records go to `self.repo` when one is set."""
        cols = {k: [] for k in ("type", "content", "compressed", "quality", "bytes_in", "bytes_out", "record_id", "error")}
        for b in batch["image"]:
            data = bytes(b)
            try:
                o = self.run(data, mode="server", repo=self.repo)
                row = {"type": o["type"], "content": o["content"], "compressed": o["compressed"], "quality": o["quality"],
                       "bytes_out": len(o["compressed"]), "record_id": o.get("record_id"), "error": None}
            except (ValueError, KeyError) as e:  # ImageDecodeError and ThresholdError are ValueErrors
                row = dict.fromkeys(cols, None) | {"error": f"{type(e).__name__}: {e}"}
            row["bytes_in"] = len(data)
            for k in cols:
                cols[k].append(row[k])
        return {**{k: v for k, v in batch.items() if k != "image"}, **cols}


class ArchivePredictor(RegenCompressor):
    """The Ray Data callable class: `ds.map_batches(ArchivePredictor, fn_constructor_kwargs=...)`."""

    def __init__(self, model_dir: str = "", untrained: str = "", file_types: str = "", store: bool = False,
                 repository_url: str = "", blob_root: str = "", fill: str = "background"):
        src = RegenCompressor.from_source(model_dir, untrained, file_types, fill=fill)
        super().__init__(src.model, file_types=src.lib, fill=fill)
        if store:
            from docray.storage.repository import ImageRepository

            self.repo = ImageRepository(repository_url or None, blob_root or None)
