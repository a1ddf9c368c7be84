"""The regen compression pipeline: gate -> recognise -> generate -> check -> paste -> compress -> store.

    rc = RegenCompressor.load("~/.docray/models/regen/v0001")      # or RegenCompressor(model=...)
    out = rc.run(png_bytes, mode="server", repo=ImageRepository())  # dict: method, record_id, type, fields, ...

Steps (DESIGN "Regen compression"; issue 17: regen never falsifies a document):
1. check the original against the first threshold (first < original);
2. the document gate (`docray.regen.gate`): the type model's calibrated confidence and an
   out-of-distribution score on the whole capture. Not a known document, an unsure type, or a model
   never calibrated (no calibration.json beside its weights) -> the codec path: the original,
   fitted inside the first threshold, compressed with the file-type library's `default` entry
   (the same byte guarantees); the answer says `method: "codec"` and its `reason`;
3. corners and portrait: the content model's corner head finds the document's four corners in the
   capture; the gate type's portrait slot is mapped through them (a photographed face, Haar cascade,
   for a type without a slot; `portrait.locate_portrait`) and split off with background or blank
   fill, leaving the document without the portrait;
4. seals: red/blue outlines found by OpenCV (those inside the portrait are ignored), cropped as
   attachments, each compressed in its type's format (`quality.compress_attachment`);
5. the content model reads the document without the portrait field by field (each value box of the
   type's template through the same corners, as a line crop), each field with a calibrated confidence
   (from the reader's scores and, where calibrated so, whether a second reader agrees: `crossread`);
6. generation at the first size threshold, conditioned on type + the confident fields' content
   (and their glyph layer, composited over the output, see `layout`); the capture straightened
   through the corners onto the processed frame gives back the seals (darken blend where their
   boxes map) and the portrait (pasted into the slot of the processed frame);
7. round trip: the content model re-reads the processed image (and, where it reads a field
   otherwise, the second reader); a regenerated field neither reads back is not trusted. Every
   field below the confidence threshold or failing the round trip keeps the ORIGINAL's pixels
   inside its box (a hybrid image); `fields` lists per field its text, confidence and `source`
   ("regenerated" | "pixels"), a regenerated one also who read it back (`round_trip`);
8. provenance (`provenance`): the record id is drawn first, then every regenerated image carries a
   stamp in its own metadata (PNG tEXt, JPEG COM, WebP/AVIF EXIF) naming docray, the record and
   "regenerated" (or "regenerated-hybrid"); the answer and the record carry it too;
9. the processed PNG checked against the first threshold, size and bytes (`quality.fit_first`:
   lossless, else a palette); per-type compression to the second threshold (server mode), or none
   (split mode: the terminal compresses with the file-type library and uploads the file,
   `accept_compressed`: its type's format, within its second threshold, stamped with this record,
   like the processed image; stored once);
10. the record stored one-to-one: original, processed, compressed, split, and the attachments in
   this order: the portrait and the document without it (PNG, the original's pixels: admin only),
   then the seals (compressed: users may read them; `docray.storage.repository.ATTACHMENT_READERS`).
`RegenCompressor` is also the batch predictor of `data_jobs/regen_archive.py`
(`__call__(batch) -> batch`) and what the Serve deployments wrap, step by step.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image
from scipy.special import softmax

from docray.regen import crossread, fields, gate as gatemod, layout, portrait as portraits, provenance, seals as sealmod
from docray.regen.data import cond_input, content_input, line_input, to_image
from docray.regen.file_types import FileType, FileTypeLibrary, ThresholdError, WrongFormat, load_file_types
from docray.regen.quality import compress_attachment, compress_for_type, fit_first, fit_size
from docray.doctypes import registry
from docray.imageio import decode_image, encode_png, sniff_format

MODES = ("server", "split")
UNCALIBRATED = ("the regen model was never calibrated (no calibration.json beside its weights): its confidence "
                "means nothing, so nothing is regenerated; calibrate it (docray calibrate regen MODEL)")
UNCALIBRATED_FIELD_THRESHOLD = 0.99  # ungated and uncalibrated: the least sure character's raw probability
PUBLIC = ("record_id", "method", "reason", "gate", "type", "type_score", "content", "fields", "provenance", "split",
          "seals", "attachments", "sizes", "quality")  # what the HTTP answer shows (and the image, by mode)
LIKENESS = 40.0  # accept_compressed: the most mean grey difference of 32x20 thumbnails (upload vs processed)


class UploadRefused(ValueError):
    """A terminal's compressed file that is not stored: HTTP `status` and a stable `code` (as ImageDecodeError)."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code = status, code


def _png(img: Image.Image) -> bytes:
    return encode_png(img, compress_level=6)


def regen_content(fs: list[dict]) -> str:
    """The content the generator draws: the values of the fields to regenerate, the others empty."""
    return layout.join_content([f["text"] if f["source"] == "regenerated" else "" for f in fs])


class RegenCompressor:
    def __init__(self, model, file_types: FileTypeLibrary | None = None, fill: str = "background",
                 steps: int | None = None, composite_seals: bool = True, device: str | None = None,
                 calibration: gatemod.Calibration | None = None, ungated: bool = False, refine_corners: bool = True):
        """`calibration`: the gate and field confidence fitted for this model (None: every upload takes
        the codec path); `ungated`: regenerate even without a calibration (tests, demos; the answer's
        gate says so); `refine_corners`: ask the corner head twice (`locate`)."""
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
        dim = self.model.type_model.head.in_features
        if calibration is not None and len(calibration.precision) != dim:
            raise ValueError(f"the calibration has {len(calibration.precision)}-d type features, this model "
                             f"{dim}: it belongs to another model; recalibrate (docray calibrate regen)")
        self.calibration, self.ungated, self.refine_corners = calibration, ungated, refine_corners
        self.fill, self.steps, self.composite_seals = fill, steps, composite_seals
        self.repo = None  # set to an ImageRepository to store what __call__ compresses

    @classmethod
    def load(cls, folder: str | Path, **kw) -> "RegenCompressor":
        from docray.models import from_pretrained

        folder = Path(folder).expanduser()
        return cls(from_pretrained(folder), calibration=gatemod.Calibration.load(folder), **kw)

    @classmethod
    def from_source(cls, model_dir: str = "", untrained: str = "", file_types: str = "", seed: int = 0,
                    version: str = "latest", **kw) -> "RegenCompressor":
        """A trained folder (`model_dir`), else random weights of factory `untrained` (tests, demos),
        else the model registry's 'regen' at `version` (vNNNN or latest); `file_types`: a YAML path ('' -> packaged). The
        calibration is the folder's (or the registry version's) calibration.json, if any."""
        from docray.models import build_model, from_pretrained

        lib = load_file_types(file_types or None)
        calibration = None
        if untrained:
            torch.manual_seed(seed)
            model = build_model(untrained)
        elif model_dir:
            model = from_pretrained(Path(model_dir).expanduser())
            calibration = gatemod.Calibration.load(model_dir)
        else:  # the registry keeps a plain state dict (tied weights stored twice) and the build spec
            from docray.storage.blobs import NotFound
            from docray.storage.registry import ModelRegistry

            reg = ModelRegistry()
            version = reg.resolve("regen", version)
            state, spec, _ = reg.load("regen", version)
            model = build_model(spec["name"], **spec.get("overrides", {}))
            try:
                model.load_state_dict(state)
            except RuntimeError as e:  # saved by an earlier architecture (before field-by-field reading)
                raise ValueError(f"the registry's 'regen' {version} does not fit the current {spec['name']!r} "
                                 f"architecture; retrain it (python -m train_jobs.train_regen): {e}") from None
            try:
                calibration = gatemod.Calibration.from_json(reg.read_file("regen", gatemod.FILE, version))
            except NotFound:
                pass
        return cls(model, file_types=lib, calibration=calibration, **kw)

    def calibrate(self, docs: list[tuple], non_docs: list, **kw) -> dict:
        """Fit the gate and the field confidence (`gate.calibrate`) and use them; returns the report."""
        self.calibration, report = gatemod.calibrate(self, docs, non_docs, **kw)
        return report

    # -- stages (each also a Serve deployment's body) ------------------------------------------
    def _pixels(self, images: list[Image.Image], size_hw=None) -> torch.Tensor:
        size_hw = size_hw or self.cfg.content_size
        return torch.stack([content_input(im, size_hw) for im in images]).to(self.device)

    def type_outputs(self, images: list[Image.Image]) -> tuple[np.ndarray, np.ndarray]:
        """(logits (b, n_types), pooled features (b, d)) of the type model on whole images."""
        logits, feats = self.model.type_outputs(self._pixels(images))
        return logits.float().cpu().numpy().astype(np.float64), feats.float().cpu().numpy().astype(np.float64)

    def gate(self, images: list[Image.Image]) -> list[dict]:
        """The document gate per image: {"passed", "type", "confidence", "calibrated", "reason", ...}."""
        logits, feats = self.type_outputs(images)
        if self.calibration is not None:
            return self.calibration.gate(logits, feats, self.doc_types)
        reason = "gate off (ungated): an uncalibrated model regenerates anyway" if self.ungated else UNCALIBRATED
        return [{"passed": self.ungated, "type": self.doc_types[int(p.argmax())], "confidence": round(float(p.max()), 4),
                 "calibrated": False, "reason": reason} for p in softmax(logits, axis=-1)]

    def admit(self, images: list[Image.Image]) -> tuple[list[dict], list]:
        """The whole gate, as `run` takes it: the type gate, then, for those that pass, their corners
        and the layout check. Returns (decisions, corners: None where the type gate refused)."""
        gates, quads = self.gate(images), [None] * len(images)
        on = [i for i, g in enumerate(gates) if g["passed"]]
        if on:
            checked, found = self.check_layout([images[i] for i in on], [gates[i] for i in on], self.locate([images[i] for i in on]))
            for i, g, q in zip(on, checked, found):
                gates[i], quads[i] = g, q
        return gates, quads

    def check_layout(self, images: list[Image.Image], gates: list[dict], quads) -> tuple[list[dict], list]:
        """The gate's last test, once each document's corners `quads` are known: a capture that passed
        must show its type's captions where the template has them, else it does not pass. The corners
        are first aligned on those captions (`gate.align_layout`), and the aligned corners' score must
        reach the calibrated `layout_threshold`; below it, where the calibration has a
        `search_threshold`, the corners are searched for (`gate.search_layout`) and the searched
        score must reach that higher threshold (only a capture whose OOD score reaches
        `search_ood_threshold` is searched). Before the search, where the calibration has a
        `retype_threshold`, the other types' templates are aligned: one whose score reaches it is the
        document's type (the type model misread it; `retyped_from` names what it read, and its
        `confidence` is None: the type is the layout's). Returns (decisions, corners: aligned,
        retyped or searched, where checked). Off without a layout threshold."""
        cal = self.calibration
        t = None if cal is None else cal.layout_threshold
        st = None if cal is None else cal.search_threshold
        rt = None if cal is None else cal.retype_threshold
        sot = None if cal is None else cal.search_ood_threshold
        out, corners = [], []
        for im, g, q0 in zip(images, gates, quads):
            q = q0
            if t is not None and g["passed"]:
                q, s = gatemod.align_layout(im, g["type"], q0)
                g = {**g, "layout_score": round(s, 4), "layout_threshold": round(t, 4)}
                why = None if s >= t else f"layout score {s:.3f} < {t:.3f}"
                if why and rt is not None:
                    u, q2, s2 = max(((u, *gatemod.align_layout(im, u, q0)) for u in self.doc_types if u != g["type"]),
                                    key=lambda c: c[2])
                    if s2 >= rt:
                        g.update(type=u, confidence=None, retyped_from=g["type"], layout_score=round(s2, 4),
                                 retype_threshold=round(rt, 4))
                        q, why = q2, None
                score = g.get("ood_score")  # None on a passed capture only where infinite: surer than any threshold
                if why and st is not None and sot is not None and score is not None and score < sot:
                    why += f"; too unsure a document to search its corners ({g['ood']} {score:.3g} < {sot:.3g})"
                elif why and st is not None:
                    found, s2 = gatemod.search_layout(im, g["type"], q)
                    g.update(layout_search_score=round(s2, 4), search_threshold=round(st, 4))
                    q, why = (found, None) if s2 >= st else (q, f"{why}; searched corners {s2:.3f} < {st:.3f}")
                if why:
                    g.update(passed=False, reason=f"not the layout of a {g['type']}: its captions are not where the "
                                                  f"template has them ({why})")
            out.append(g)
            corners.append(q)
        return out, corners

    def predict_types(self, images: list[Image.Image]) -> list[tuple[str, float]]:
        """(type, confidence: calibrated when the model is) per image."""
        return [(d["type"], d["confidence"]) for d in self.gate(images)]

    def locate(self, images: list[Image.Image]) -> np.ndarray:
        """(b, 4, 2): each document's corners in its image's px. The content model's corner head is
        asked twice: its first corners are warped to where a straight-on capture's document lies
        (`corner_rest`), the head reads the warped image, and its corners there are mapped back (a
        refinement: the head is surest on the views it saw most; one pass more did not help)."""
        first = self._corners(images)
        if not self.refine_corners:
            return first
        x0, y0, x1, y1 = self.cfg.corner_rest
        out, warps, again = first.copy(), {}, []
        for i, (im, q) in enumerate(zip(images, first)):
            rest = np.float32([[x0, y0], [x1, y0], [x1, y1], [x0, y1]]) * np.float32([im.width, im.height])
            h = cv2.getPerspectiveTransform(q.astype(np.float32), rest)
            if cv2.contourArea(q.astype(np.float32)) < 0.01 * im.width * im.height or abs(np.linalg.det(h)) < 1e-9:
                continue  # no document-like quad to straighten: the first corners stand
            warps[i] = h
            again.append(Image.fromarray(cv2.warpPerspective(np.asarray(im.convert("RGB")), h, im.size,
                                                             borderMode=cv2.BORDER_REPLICATE)))
        for (i, h), q in zip(warps.items(), self._corners(again) if again else []):
            out[i] = fields.map_points(np.linalg.inv(h), q)
        return out

    def _corners(self, images: list[Image.Image]) -> np.ndarray:
        """(b, 4, 2): the corner head's corners, in each image's px."""
        quads = self.model.predict_corners(self._pixels(images, self.cfg.corner_size)).cpu().numpy().astype(np.float64)
        return quads * np.array([[[im.width, im.height]] for im in images], np.float64)

    @property
    def field_threshold(self) -> float:
        return self.calibration.field_threshold if self.calibration is not None else UNCALIBRATED_FIELD_THRESHOLD

    @property
    def cross_read(self) -> bool:
        """Whether the field confidence takes a second reader's agreement (`crossread`): where the
        calibration was fitted with it."""
        return self.calibration is not None and self.calibration.cross_read

    def field_confidence(self, scores: np.ndarray) -> np.ndarray:
        """Calibrated P(read right) per field from the reader's scores; uncalibrated: the raw
        probability of the reading's least sure character."""
        if self.calibration is not None:
            return self.calibration.field_confidence(scores)
        return np.exp(np.asarray(scores)[:, 1]) if len(scores) else np.zeros(0)

    def read_fields(self, images: list[Image.Image], doc_types: list[str] | None = None, quads=None,
                    cross_read: bool | None = None) -> list[dict]:
        """The content, field by field: corners -> each value box of the type's template cut out as a
        line -> the reader. Per image {"type", "quad" (4, 2), "fields": [{"name", "text",
        "confidence"}], "scores": the reader's READ_SCORES, then whether a second reader agrees
        (`crossread`) where `cross_read` (None: where the calibration was fitted with it)};
        `doc_types` default to the gate's, `quads` (the corners, (b, 4, 2)) to the corner head's on `images`."""
        if doc_types is None:
            doc_types = [t for t, _ in self.predict_types(images)]
        quads = self.locate(images) if quads is None else np.asarray(quads, np.float64).reshape(len(images), 4, 2)
        rgb = [np.asarray(im.convert("RGB")) for im in images]
        crops = [fields.crop_lines(a, q, t, self.cfg.line_size) for a, q, t in zip(rgb, quads, doc_types)]
        texts, scores = self.model.read_scored(line_input(np.concatenate(crops)).to(self.device))
        scores = scores.numpy().astype(np.float64)
        if self.cross_read if cross_read is None else cross_read:
            e = np.cumsum([0] + [len(c) for c in crops])
            agrees = [crossread.cross_read(a, q, t, texts[e[k]:e[k + 1]]) for k, (a, q, t) in enumerate(zip(rgb, quads, doc_types))]
            scores = np.concatenate([scores, np.concatenate(agrees)[:, None]], axis=1)
        # a reading without the second reader's agreement that the calibration was fitted with (as
        # while recalibrating without it) has no calibrated confidence
        fitted = self.calibration is None or scores.shape[1] >= len(self.calibration.field_mean)
        conf, out, e = self.field_confidence(scores) if fitted else [None] * len(scores), [], 0
        for t, q, c in zip(doc_types, quads, crops):
            fs = [{"name": n, "text": texts[e + j], "confidence": None if conf[e + j] is None else round(float(conf[e + j]), 4)}
                  for j, n in enumerate(layout.field_names(t))]
            out.append({"type": t, "quad": q, "fields": fs, "scores": scores[e:e + len(c)]})
            e += len(c)
        return out

    def read_contents(self, images: list[Image.Image], doc_types: list[str] | None = None) -> list[str]:
        """The content strings (values joined by '|') of `read_fields`."""
        return [layout.join_content([f["text"] for f in r["fields"]]) for r in self.read_fields(images, doc_types)]

    def plan_fields(self, reading: dict, gate: dict | None = None) -> list[dict]:
        """The reading's fields, each with `source`: "regenerated", or "pixels" below the confidence
        threshold, and every one "pixels" where the gate's corners came from the layout search
        (`gate.search_layout`): on the standard build's benchmark the first document it let through
        had its sex read F for M at confidence 0.97 through them."""
        th, out = self.field_threshold, []
        searched = gate is not None and gate.get("layout_search_score") is not None
        retyped = gate is not None and gate.get("retyped_from") is not None
        for f in reading["fields"]:
            f = {**f, "source": "regenerated"}
            if searched:
                f.update(source="pixels", reason="the document's corners were found by the layout search, not read "
                                                 "by the corner head: no field is retyped through them")
            elif retyped:
                f.update(source="pixels", reason=f"the document's type is its layout's, not the type model's (it "
                                                 f"read {gate['retyped_from']}): no field is retyped")
            elif f["confidence"] < th:
                f.update(source="pixels", reason=f"confidence {f['confidence']:.4f} below {th:.4f}")
            out.append(f)
        return out

    def generate(self, doc_types: list[str], contents: list[str]) -> list[Image.Image]:
        """Processed images (first size threshold) for (type, content) pairs, glyph layer composited."""
        tok, h_w = self.model.tokenizer, tuple(self.cfg.gen_size)
        conds, layers = zip(*(cond_input(t, layout.split_content(c, t), h_w) for t, c in zip(doc_types, contents)))
        types = torch.tensor([layout.type_index(t) for t in doc_types], device=self.device)
        ids = tok.batch(list(contents), self.cfg.max_len).to(self.device)
        out = self.model.generate(types, ids, torch.stack(conds).to(self.device), steps=self.steps)
        return [Image.fromarray(layout.composite(layer, to_image(x))) for layer, x in zip(layers, out)]

    def split_at(self, img: Image.Image, where: dict | None):
        """(document without portrait, portrait or None, split record or None); `where`:
        `portrait.locate_portrait`'s answer."""
        if where is None:
            return img, None, None
        face, rest, split = portraits.split_portrait(img, where["box"], self.fill, where["polygon"])
        return rest, face, {**split, "found_by": where["found_by"]}

    def split(self, img: Image.Image, doc_type: str, quad):
        """`split_at` where `portrait.locate_portrait` finds the portrait of `doc_type` through `quad`."""
        return self.split_at(img, portraits.locate_portrait(img, quad, doc_type))

    def find_seals(self, img: Image.Image, split: dict | None) -> list[sealmod.Seal]:
        found = sealmod.detect_seals(img)
        if split is not None:  # ink inside the portrait (a blue shirt) is not a seal
            px0, py0, px1, py1 = split["position"]
            found = [s for s in found if not (s.box[0] >= px0 and s.box[1] >= py0 and s.box[2] <= px1 and s.box[3] <= py1)]
        return found

    def finish(self, processed: Image.Image, split: dict | None, seals, original: Image.Image, quad, doc_type: str):
        """Seals and portrait back onto the processed image through the document's corners `quad`: the
        capture straightened onto the processed frame gives each seal's ink (darken blend where its box
        maps) and the portrait, pasted into the type's slot of the frame (a face: where its box maps).
        Returns (image, split with `scale`: processed document px per captured document px, `pasted_at`)."""
        size = processed.size
        flat = fields.original_in_frame(np.asarray(original.convert("RGB")), quad, doc_type, size)
        to_frame = np.linalg.inv(fields.frame_to_image(quad, doc_type, size))

        def in_frame(box):  # a box of the capture -> the box around it in the processed frame
            return portraits.clip(fields.bounding_box(fields.map_points(to_frame, fields.box_corners(box))), *size)

        if self.composite_seals:
            arr = np.array(processed.convert("RGB"))
            for s in seals:
                x0, y0, x1, y1 = in_frame(s.box)
                arr[y0:y1, x0:x1] = np.minimum(arr[y0:y1, x0:x1], flat[y0:y1, x0:x1])  # darken: ink only
            processed = Image.fromarray(arr)
        if split is not None:
            slot = layout.slot_box(doc_type, size) if split.get("found_by") == "slot" else None
            quad_area = abs(cv2.contourArea(np.asarray(quad, np.float32).reshape(4, 1, 2)))
            x0, y0, x1, y1 = layout.doc_box(doc_type, size)
            scale = float(np.sqrt((x1 - x0) * (y1 - y0) / max(quad_area, 1.0)))
            processed, split = portraits.paste_through_corners(processed, flat, split, slot or in_frame(split["position"]),
                                                               scale)
        return processed, split

    def round_trip(self, processed: Image.Image, doc_type: str, fs: list[dict]) -> list[dict]:
        """The content model re-reads the processed image (a flat frame: its corners are known); where
        it reads a regenerated field otherwise than at first, the second reader (`crossread`, where the
        calibration was fitted with it) re-reads the field, case and spaces aside; a field neither
        reads back is marked "pixels". Each regenerated field says who read it back (`round_trip`).

        Why the second reader: the glyphs are drawn from the reading's text, so what the round trip
        must catch is a field the image does not show (cut off, inked over), and either reader
        reading the text back shows it does. On a design split (rows 204000-204200, 200 captures, the
        standard build's regen v0001, apart from calibration and benchmarks) the reader alone sent
        92 of the 930 fields planned as regenerated back to pixels, every one read right at first
        (mostly its first character: 9 read 3, N read X); with the second reader 15 went back, 61.7%
        of all 1,483 fields were regenerated instead of 56.5%, and the same 3 misread ones either way."""
        arr, quad = np.asarray(processed.convert("RGB")), fields.frame_quad(doc_type, processed.size)
        again = self.model.read_lines(line_input(fields.crop_lines(arr, quad, doc_type, self.cfg.line_size)).to(self.device))
        doubt = [k for k, (f, r) in enumerate(zip(fs, again)) if f["source"] == "regenerated" and r != f["text"]]
        second = dict(zip(doubt, crossread.read_values(arr, quad, doc_type, doubt))) if doubt and self.cross_read else {}
        out = []
        for k, (f, r) in enumerate(zip(fs, again)):
            if f["source"] != "regenerated":
                out.append(f)
            elif k not in doubt:
                out.append({**f, "round_trip": "reader"})
            elif k in second and crossread.same(second[k], f["text"]):
                out.append({**f, "round_trip": "second reader"})
            else:
                seen = f"{r!r}" + (f" (the second reader: {second[k]!r})" if k in second else "")
                out.append({**f, "source": "pixels", "reason": f"round trip: the regenerated image reads {seen}"})
        return out

    def keep_pixels(self, processed: Image.Image, original: Image.Image, quad, doc_type: str,
                    fs: list[dict]) -> Image.Image:
        """The fields marked "pixels" get the original's pixels (warped through the document's corners)
        inside their value box, widened to any glyphs drawn there: a hybrid image."""
        size, keep = processed.size, [k for k, f in enumerate(fs) if f["source"] == "pixels"]
        if not keep:
            return processed
        orig = fields.original_in_frame(np.asarray(original.convert("RGB")), quad, doc_type, size)
        out, boxes = np.array(processed.convert("RGB")), fields.frame_boxes(doc_type, size)
        for k in keep:
            b, g = boxes[k], layout.value_extent(doc_type, k, fs[k]["text"], size)
            x0, y0, x1, y1 = portraits.clip([min(b[0], g[0]) - 1, min(b[1], g[1]) - 1, max(b[2], g[2]) + 1,
                                             max(b[3], g[3]) + 1], *size)
            out[y0:y1, x0:x1] = orig[y0:y1, x0:x1]
        return Image.fromarray(out)

    def hybrid(self, processed: Image.Image, original: Image.Image, quad, doc_type: str, fs: list[dict]):
        """Round trip, then the original's pixels for every untrusted field: (image, fields)."""
        fs = self.round_trip(processed, doc_type, fs)
        return self.keep_pixels(processed, original, quad, doc_type, fs), fs

    # -- the whole flow ------------------------------------------------------------------------
    @staticmethod
    def _result(data: bytes, gate: dict, image: Image.Image, **kw) -> dict:
        out = {"method": "regen", "reason": None, "gate": gate, "type": None, "type_score": None, "content": None,
               "fields": [], "_image": image, "processed": None, "compressed": None, "quality": None, "split": None,
               "seals": [], "_attachments": [], "attachments": [], "provenance": None,
               "sizes": {"original": len(data), "processed": None, "compressed": None}}
        out.update(kw)
        return out

    def assemble(self, data: bytes, img: Image.Image, gate: dict, fs: list[dict], processed: Image.Image, face, split,
                 seals, rest: Image.Image | None = None) -> dict:
        """The regen result (the processed image in `_image`, attachments as (kind, bytes, meta) in
        `_attachments`: the portrait and `rest`, the document without it, as PNG; the seals compressed
        in the type's format); `deliver` stamps, compresses and stores it. The answer lists each
        attachment with its number `n` (`GET /v1/repository/{id}/attachments/{n}`) and who may read it."""
        from docray.storage.repository import attachment_reader

        ft = self.lib.get(gate["type"])
        attachments = [("seal", compress_attachment(sealmod.crop_seal(img, s), ft).data, {**s.as_dict(), "format": ft.format})
                       for s in seals]
        if face is not None:
            where = {"box": split["position"], "fill": split["fill"], "found_by": split.get("found_by")}
            attachments[:0] = [("portrait", _png(face), where)] + (
                [("document", _png(rest), {**where, "without": "portrait"})] if rest is not None else [])
        listed = [{"n": n, "kind": k, "bytes": len(b), "readable_by": attachment_reader(k), **m}
                  for n, (k, b, m) in enumerate(attachments)]
        return self._result(data, gate, processed, type=gate["type"], type_score=gate["confidence"],
                            content=layout.join_content([f["text"] for f in fs]), fields=fs, split=split,
                            seals=[s.as_dict() for s in seals], _attachments=attachments, attachments=listed)

    def codec_file_type(self) -> FileType:
        """The codec path's entry: the library's `default`, else its strictest type (`FileTypeLibrary.codec_entry`)."""
        return self.lib.codec_entry()

    def codec(self, data: bytes, img: Image.Image, gate: dict) -> dict:
        """The codec path: nothing regenerated; the original fitted inside the first threshold."""
        w, h = fit_size(img.width, img.height, self.lib.first.width, self.lib.first.height)
        fitted = img.convert("RGB").resize((w, h), Image.Resampling.LANCZOS)
        return self._result(data, gate, fitted, method="codec", reason=gate["reason"])

    def deliver(self, out: dict, data: bytes, mode: str, repo=None, meta: dict | None = None) -> dict:
        """The record id first (when storing), so the provenance stamped into a regenerated image names
        it; then the processed PNG within the first threshold (size and bytes, stamp included; a
        ThresholdError when it cannot fit), server-mode compression (stamp included in the byte limit)
        and the record."""
        from docray.storage.repository import new_record_id

        rid = new_record_id() if repo is not None else None
        stamp = provenance.stamp(rid, out["fields"]) if out["method"] == "regen" else None
        image = out.pop("_image")
        out["provenance"] = stamp
        out["processed"], out["processed_encoding"] = fit_first(image, self.lib, stamp)
        out["sizes"]["processed"] = len(out["processed"])
        if mode == "server":
            ft = self.lib.get(out["type"]) if out["method"] == "regen" else self.codec_file_type()
            c = compress_for_type(image, ft, stamp)
            out.update(compressed=c.data, quality=c.quality, format=c.format)
            out["sizes"]["compressed"] = len(c.data)
        if repo is not None:
            out["record_id"] = self.store(repo, data, out, mode, meta, record_id=rid)
        return out

    @staticmethod
    def store(repo, data: bytes, out: dict, mode: str, meta: dict | None = None, record_id: str | None = None) -> str:
        """One record: original, processed, compressed (server mode) and attachments, one-to-one."""
        keep = ("content", "type_score", "quality", "method", "reason", "gate", "fields", "provenance", "processed_encoding")
        return repo.add(data, processed=out["processed"], compressed=out["compressed"], attachments=out["_attachments"],
                        doc_type=out["type"], split=out["split"], record_id=record_id,
                        meta={"mode": mode, **{k: out[k] for k in keep}, **(meta or {})})

    @staticmethod
    def response(out: dict, mode: str) -> dict:
        """The HTTP answer: PUBLIC keys and the image of the mode (`compressed` or `processed`) with its format."""
        key = "compressed" if mode == "server" else "processed"
        body = {k: out.get(k) for k in (*PUBLIC, key)}
        body["format"] = out.get("format", "png") if mode == "server" else "png"
        return body

    def run(self, data: bytes, mode: str = "server", repo=None, meta: dict | None = None) -> dict:
        """One upload through every step; stores a record when `repo` is given."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        img = decode_image(data)
        self.lib.check_original(img.width, img.height, len(data))
        [g], [quad] = self.admit([img])  # quad: the document's corners; the portrait, fields and paste go through them
        if not g["passed"]:
            return self.deliver(self.codec(data, img, g), data, mode, repo, meta)
        doc_type = g["type"]
        rest, face, split = self.split(img, doc_type, quad)
        seals = self.find_seals(img, split)
        reading = self.read_fields([rest], [doc_type], [quad])[0]
        fs = self.plan_fields(reading, g)
        processed = self.generate([doc_type], [regen_content(fs)])[0]
        processed, split = self.finish(processed, split, seals, img, quad, doc_type)
        processed, fs = self.hybrid(processed, img, reading["quad"], doc_type, fs)
        out = self.assemble(data, img, g, fs, processed, face, split, seals, rest)
        return self.deliver(out, data, mode, repo, meta)

    # -- split mode: the terminal's file -------------------------------------------------------
    def accept_compressed(self, repo, record_id: str, data: bytes) -> dict:
        """Store a terminal's compressed file (split mode) in its record, one-to-one. Refused
        (`UploadRefused`, nothing stored): a record not made in split mode or already holding its
        compressed image (409); another format than its file type's (415 wrong_format); over its
        second threshold, size or bytes (422 over_second_threshold); a regenerated record's file without
        the provenance stamp naming the record (422 no_provenance); a file that does not look like the
        record's processed image (422 not_this_image). The file type: the record's type's entry, the
        codec entry for a record of the codec path. A missing record: NotFound (a KeyError)."""
        from docray.regen.provenance import read_provenance
        from docray.storage.repository import AlreadyStored

        rec = repo.record(record_id)
        meta = rec["meta"]
        if meta.get("mode") != "split":
            raise UploadRefused(409, "not_split", f"record {record_id} was compressed on the server "
                                f"(mode {meta.get('mode')!r}); only a split-mode record takes the terminal's file")
        if rec["sizes"]["compressed"] is not None:
            raise UploadRefused(409, "already_compressed", f"record {record_id} already has its compressed image")
        regen = meta.get("method") == "regen"
        ft = self.lib.get(rec["doc_type"]) if regen else self.lib.codec_entry()
        img = decode_image(data)
        try:
            ft.check_compressed(sniff_format(data), img.width, img.height, len(data))
        except WrongFormat as e:
            raise UploadRefused(415, "wrong_format", f"record {record_id} ({rec['doc_type'] or 'codec path'}): {e}") from None
        except ThresholdError as e:
            raise UploadRefused(422, "over_second_threshold", f"record {record_id} ({rec['doc_type'] or 'codec path'}): "
                                f"{e}") from None
        if regen and (read_provenance(data) or {}).get("record_id") != record_id:
            raise UploadRefused(422, "no_provenance", f"record {record_id} was regenerated: its compressed file must "
                                "carry the provenance stamp naming it (compress the processed image as received: "
                                "docray.client.compress_on_terminal keeps it)")
        diff = likeness(img, decode_image(repo.get(record_id, "processed", "user")))
        if diff > LIKENESS:
            raise UploadRefused(422, "not_this_image", f"the file does not look like record {record_id}'s processed "
                                f"image (mean grey difference {diff:.0f} > {LIKENESS:.0f})")
        try:
            repo.put_compressed(record_id, data, meta={**meta, "compressed_by": "terminal", "format": ft.format})
        except AlreadyStored as e:  # another upload won the race
            raise UploadRefused(409, "already_compressed", str(e)) from None
        return {"record_id": record_id, "type": rec["doc_type"], "format": ft.format,
                "sizes": {**rec["sizes"], "compressed": len(data)}}

    # -- batch predictor (Ray Data) ------------------------------------------------------------
    def __call__(self, batch: dict) -> dict:
        """{'image': bytes[]} -> adds method, type, content, compressed, quality, bytes_in, bytes_out,
        error (a row that cannot be compressed, e.g. not an image or below the first threshold, gets
        its error and no output); records go to `self.repo` when one is set."""
        cols = {k: [] for k in ("method", "type", "content", "compressed", "quality", "bytes_in", "bytes_out",
                                "record_id", "error")}
        for b in batch["image"]:
            data = bytes(b)
            try:
                o = self.run(data, mode="server", repo=self.repo)
                row = {"method": o["method"], "type": o["type"], "content": o["content"], "compressed": o["compressed"],
                       "quality": o["quality"], "bytes_out": len(o["compressed"]), "record_id": o.get("record_id"),
                       "error": None}
            except (ValueError, KeyError) as e:  # ImageDecodeError and ThresholdError are ValueErrors
                row = dict.fromkeys(cols, None) | {"error": f"{type(e).__name__}: {e}"}
            row["bytes_in"] = len(data)
            for k in cols:
                cols[k].append(row[k])
        return {**{k: v for k, v in batch.items() if k != "image"}, **cols}


def likeness(a: Image.Image, b: Image.Image, size: tuple[int, int] = (32, 20)) -> float:
    """Mean absolute grey difference (0-255) of two images' thumbnails: small for one image and its compression."""
    ta, tb = (np.asarray(im.convert("L").resize(size, Image.Resampling.BOX), np.float64) for im in (a, b))
    return float(np.abs(ta - tb).mean())


class ArchivePredictor(RegenCompressor):
    """The Ray Data callable class: `ds.map_batches(ArchivePredictor, fn_constructor_kwargs=...)`."""

    def __init__(self, model_dir: str = "", untrained: str = "", file_types: str = "", store: bool = False,
                 repository_url: str = "", blob_root: str = "", fill: str = "background"):
        src = RegenCompressor.from_source(model_dir, untrained, file_types, fill=fill)
        super().__init__(src.model, file_types=src.lib, fill=fill, calibration=src.calibration)
        if store:
            from docray.storage.repository import ImageRepository

            self.repo = ImageRepository(repository_url or None, blob_root or None)
