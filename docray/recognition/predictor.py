"""Load a trained unified model and answer tasks: the batch predictor shared by Serve and Ray Data.

    p = RecognitionPredictor()                                  # latest "recognition-unified" in the registry
    p.recognize([img], tasks=[["doc_type", "layout_detection"]])  # -> [{task: result}]
    p.recognize([img], frames=[{"flash": [flash_img]}])          # tasks from the predicted document type
    ds.map_batches(RecognitionPredictor, fn_constructor_kwargs={...}, batch_size=16)   # __call__(batch)

Task selection when a request names no tasks (`select`): "doc_type" runs the doc_type task, then
the catalogue's `by_doc_type` mapping; "classifier" takes the task classifier's tasks (logit > 0);
"all" asks every task. Selected tasks whose frames were not supplied are skipped (and listed);
explicitly requested ones raise `MissingFrames`. Results, per task:
  cls {"type", "label", "score", "scores"}   reg {"type", "value"}
  seg {"type", "classes", "mask_png"} (PNG bytes, pixel = class index, the input image's size)
  det {"type", "boxes": [{"label", "score", "box": [x0, y0, x1, y1]}]} (input image pixels)
"""
from __future__ import annotations

import json

import numpy as np
import torch
from PIL import Image

from docray.imageio import decode_image, encode_png
from docray.recognition.data import load_rgb, stack_frames, to_float
from docray.recognition.engine import decode_outputs
from docray.recognition.tasks import Catalogue, UnknownTask  # noqa: F401  (re-exported for the API)

SELECT_MODES = ("doc_type", "classifier", "all")


class MissingFrames(ValueError):
    """A requested task needs frames (flash / angles) the request did not carry."""


def load_unified(name: str = "recognition-unified", version: str = "latest", folder: str | None = None,
                 device: str = "cpu"):
    """A unified model from the registry (or a `save_pretrained` folder), in eval mode."""
    from docray.models import build_model, from_pretrained

    if folder:
        model = from_pretrained(folder, map_location=device)
    else:
        from docray.storage.registry import ModelRegistry

        state, config, _ = ModelRegistry().load(name, version, device=device)
        model = build_model(config["name"], **config["overrides"])
        model.load_state_dict(state)
    return model.to(device).eval()


class RecognitionPredictor:
    def __init__(self, model: str = "recognition-unified", version: str = "latest", folder: str | None = None,
                 device: str | None = None, tasks: list[str] | None = None, select: str = "doc_type",
                 det_threshold: float = 0.5):
        if select not in SELECT_MODES:
            raise ValueError(f"select must be one of {SELECT_MODES}, got {select!r}")
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model = load_unified(model, version, folder, self.device)
        self.cat: Catalogue = self.model.catalogue
        self.size = self.model.image_size
        self.tasks = self.cat.check_names(tasks) if tasks else None
        self.select, self.det_threshold = select, det_threshold

    # -- selection -----------------------------------------------------------------------------------

    def _select(self, out0: dict, b: int) -> list[str]:
        if self.select == "all":
            return self.cat.names()
        if self.select == "classifier":
            logits = out0["task_logits"][b]
            return [n for n, v in zip(self.cat.names(), logits.tolist()) if v > 0]
        dec = decode_outputs(out0, self.cat)
        label = dec[(b, self.cat.index("doc_type"))]["label"]
        return self.cat.for_doc_type(self.cat.get("doc_type").classes[label])

    # -- the model call ------------------------------------------------------------------------------

    @torch.inference_mode()
    def recognize(self, images: list, frames: list[dict] | None = None, tasks: list[list[str] | None] | None = None,
                  user_attrs: list[dict | None] | None = None) -> list[dict]:
        """images: PIL images or bytes; frames: per image {kind: [images]}; tasks: per image names or None."""
        n = len(images)
        frames = frames or [{} for _ in range(n)]
        tasks = tasks or [self.tasks] * n
        user_attrs = user_attrs or [None] * n
        pil = [im if isinstance(im, Image.Image) else decode_image(im) for im in images]
        x = to_float(torch.from_numpy(np.stack([load_rgb(im, self.size) for im in pil]))).to(self.device)
        enc = [self.cat.encode_attrs(a) for a in user_attrs]
        attr_cat = torch.tensor([e[0] for e in enc], dtype=torch.long, device=self.device).view(n, -1)
        attr_num = torch.tensor([e[1] for e in enc], dtype=torch.float32, device=self.device).view(n, -1)
        out0 = None
        if any(t is None for t in tasks):  # automatic selection needs a first look (encoder tokens are reused)
            first = [self.cat.index("doc_type")] if self.select == "doc_type" else [0]
            out0 = self.model(x, torch.tensor([first] * n, device=self.device), attr_cat=attr_cat, attr_num=attr_num)
        asked, skipped = [], []
        for b in range(n):
            explicit = tasks[b] is not None
            names = self.cat.check_names(tasks[b]) if explicit else self._select(out0, b)
            keep = []
            for name in names:
                kind = self.cat.get(name).frames
                if kind != "none" and not frames[b].get(kind):
                    if explicit:
                        raise MissingFrames(f"task {name!r} needs '{kind}' frames; send them as frames[] "
                                            f"(frame_kinds: {kind})")
                    skipped.append((b, name))
                    continue
                keep.append(name)
            asked.append(keep)
        t = max((len(a) for a in asked), default=0)
        results = [{} for _ in range(n)]
        if t:
            ids = torch.full((n, t), -1, dtype=torch.long, device=self.device)
            for b, names in enumerate(asked):
                ids[b, : len(names)] = torch.tensor([self.cat.index(nm) for nm in names], dtype=torch.long)
            fr = self._frames(frames, asked)
            out = self.model(x, ids, fr, attr_cat, attr_num, route="gate",
                             tokens=out0["tokens"] if out0 is not None else None)
            dec = decode_outputs(out, self.cat)
            for b, names in enumerate(asked):
                for name in names:
                    results[b][name] = self._result(name, dec.get((b, self.cat.index(name))), pil[b].size)
        for b, name in skipped:
            results[b].setdefault("_skipped", []).append({"task": name, "reason": f"needs '{self.cat.get(name).frames}' frames"})
        return results

    def _frames(self, frames: list[dict], asked: list[list[str]]) -> dict:
        kinds = {self.cat.get(nm).frames for names in asked for nm in names} - {"none"}
        out = {}
        for k in kinds:  # rows that did not ask this kind repeat their last frame, or are zeros
            arr = stack_frames([f.get(k, []) for f in frames], self.size, f"frame ({k})")
            out[k] = to_float(torch.from_numpy(arr)).to(self.device)
        return out

    def _result(self, name: str, pred: dict | None, size: tuple[int, int]) -> dict:
        task = self.cat.get(name)
        want = {"cls": "label", "reg": "value", "seg": "mask", "det": "det"}[task.type]
        if pred is None or want not in pred:  # the gate sent it to a unit of another type
            return {"type": task.type, "error": "gate routed the task to another output unit"}
        if task.type == "cls":
            probs = pred["probs"]
            return {"type": "cls", "label": task.classes[pred["label"]], "score": float(probs.max()),
                    "scores": {c: float(p) for c, p in zip(task.classes, probs)}}
        if task.type == "reg":
            return {"type": "reg", "value": pred["value"]}
        if task.type == "seg":
            mask = Image.fromarray(pred["mask"]).resize(size, Image.NEAREST)
            return {"type": "seg", "classes": task.classes, "mask_png": encode_png(mask)}
        w, h = size
        boxes = []
        for c, (score, cx, cy, bw, bh) in enumerate(pred["det"].tolist()):
            if score >= self.det_threshold:
                box = [round((cx - bw / 2) * w, 1), round((cy - bh / 2) * h, 1), round((cx + bw / 2) * w, 1),
                       round((cy + bh / 2) * h, 1)]
                boxes.append({"label": task.classes[c], "score": round(score, 4), "box": box})
        return {"type": "det", "boxes": boxes}

    # -- Ray Data ------------------------------------------------------------------------------------

    def __call__(self, batch: dict) -> dict:
        """batch["image"] bytes (+ optional "flash" bytes, "angles" list of bytes) -> result columns.

        Adds `results` (JSON per row; masks omitted) and flat columns per task asked:
        `<task>_label`/`<task>_score` (cls), `<task>_value` (reg), `<task>_mask_png` (seg),
        `<task>_boxes` (det, JSON)."""
        images = list(batch["image"])
        n = len(images)
        frames = [{} for _ in range(n)]
        for k in ("flash", "angles"):
            if k in batch:
                for b, v in enumerate(batch[k]):
                    if v is not None and len(v):
                        frames[b][k] = [v] if k == "flash" else list(v)
        results = self.recognize(images, frames)
        names = [nm for nm in self.cat.names() if any(nm in r for r in results)]
        out = {k: v for k, v in batch.items() if k not in ("image", "flash", "angles")}
        out["results"] = np.array([json.dumps({k: {a: b for a, b in v.items() if a != "mask_png"} if isinstance(v, dict)
                                               else v for k, v in r.items()}) for r in results], dtype=object)
        for nm in names:
            ty = self.cat.get(nm).type
            rs = [r.get(nm) or {} for r in results]
            if ty == "cls":
                out[f"{nm}_label"] = np.array([r.get("label") for r in rs], dtype=object)
                out[f"{nm}_score"] = np.array([r.get("score", np.nan) for r in rs], dtype=np.float64)
            elif ty == "reg":
                out[f"{nm}_value"] = np.array([r.get("value", np.nan) for r in rs], dtype=np.float64)
            elif ty == "seg":
                out[f"{nm}_mask_png"] = np.array([r.get("mask_png") for r in rs], dtype=object)
            else:
                out[f"{nm}_boxes"] = np.array([json.dumps(r.get("boxes", [])) for r in rs], dtype=object)
        return out

