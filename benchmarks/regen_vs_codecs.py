"""Regen compression against plain codecs at matched byte budgets, on held-out synthetic documents.

    python -m benchmarks.regen_vs_codecs --set model_dir=/path/to/regen-run/model
    python -m benchmarks.regen_vs_codecs --set untrained=regen_tiny file_types=configs/regen/file_types_tiny.yaml n_docs=1 gate_docs=8 ood=2   # smoke

For every held-out document (rows from `start`, never trained on) and every byte budget B:
- JPEG / WebP / AVIF (if Pillow has it): the capture itself, compressed by the same search as regen
  (largest quality that fits B; shrunk only if quality 1 does not fit);
- regen_<codec>: the pipeline (portrait split, type and content models, generation at the first
  threshold, portrait and seals pasted back), then the same search at B with that codec: regen
  against the codec it is compressed with, at the same bytes;
- regen_oracle_<codec>: the generator given the LABELLED type and content, i.e. regen with a
  perfect recogniser (the bound the content model's reading leaves).
Measures: field legibility = exact-match rate of the document's fields (3+ characters; 'F'/'M'
would match anywhere) read back (a) by OCR (rapidocr; a field counts when its text, spaces
removed, appears in the OCR output) and (b) by the content model (field by field); PSNR/SSIM of
each decoded image against what it stands for (codecs: the capture; regen: the clean render at
the first size threshold, or the capture for a document the gate sent the codec path). Then the
bytes each method needs for 95% OCR legibility (the smallest budget of the sweep that reaches it).

Never falsify (the regen outputs above are the hybrid images the service sends): over the held-out
documents' fields (the n_docs, or `honesty_docs` from the same start: 600+ regenerated fields
take more documents than the codec sweep needs), the confidently-wrong rate (regenerated fields
whose text is not the truth, over all regenerated fields; every field of a document regenerated as the wrong type counts wrong), the
share of fields kept as pixels, and how many misreadings the fallback caught. They do not depend
on the byte budget (the fields are decided before compression). Then the document gate on
`gate_docs` more held-out documents of known types (the share that passes) and on an
out-of-distribution set, per family: the seven generated non-document families of
`docray.regen.nondocs` from the "evaluation" seed stream (calibration draws from another; one of
them, other_type, documents of random templates), photo-like pictures of the synthetic world
(benign posters, faces: never calibrated on) and documents of a type the model does not know, drawn
from a template file no step of training or calibration draws (examples/doctypes/cn_resident_card.yaml). Thresholds
come from the model's calibration split, never from these figures.

Prints the tables, saves a side-by-side PNG, and ends with one JSON line.
"""
from __future__ import annotations

import io
import json
import os
import time

import cv2
import numpy as np
from PIL import Image, features
from pydantic import Field

from docray.config import Config, parse_args


class BenchConfig(Config):
    model_dir: str = Field("", description="regen model folder ('' -> the registry's latest 'regen')")
    untrained: str = Field("", description="a factory with random weights instead (smoke runs)")
    file_types: str = Field("", description="file-type library YAML ('' -> packaged; its first threshold = the model's size)")
    n_docs: int = Field(6, ge=1, description="held-out documents")
    honesty_docs: int = Field(0, ge=0, description="held-out documents (from `start`) the never-falsify figures count "
                              "(0: the n_docs; more: the n_docs and the following ones, through the pipeline only)")
    start: int = Field(100_000, description="first held-out row (training uses rows 0..n_train)")
    seed: int = 0
    original_size: tuple[int, int] = Field((384, 240), description="(w, h) of the captures")
    budgets: list[int] = Field([2500, 4000, 8000], description="byte budgets, ascending")
    gate_docs: int = Field(200, ge=0, description="held-out documents of known types the gate is checked on")
    ood: int = Field(40, ge=0, description="out-of-distribution images per family (7 families; 0: skip)")
    ocr: bool = Field(True, description="read fields back with rapidocr (slow on CPU: ~1-10 s per image)")
    ocr_height: int = Field(480, description="every image is scaled to this height before OCR")
    out: str = Field("", description="where the side-by-side PNG goes ('' -> DOCRAY_HOME/reports/regen_vs_codecs)")


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 99.0 if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Mean SSIM on the luma channel (Gaussian window 11, sigma 1.5; Wang et al. 2004 constants)."""
    x, y = (cv2.cvtColor(v, cv2.COLOR_RGB2GRAY).astype(np.float64) for v in (a, b))
    blur = lambda v: cv2.GaussianBlur(v, (11, 11), 1.5)
    mx, my = blur(x), blur(y)
    sxx, syy, sxy = blur(x * x) - mx * mx, blur(y * y) - my * my, blur(x * y) - mx * my
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    return float(np.mean(((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))))


def _norm(s: str) -> str:
    return "".join(s.upper().split())


def ocr_legibility(engine, img: Image.Image, fields: list[str], height: int) -> float:
    img = img.resize((round(img.width * height / img.height), height), Image.Resampling.BICUBIC)
    txt = _norm(" ".join(engine(np.asarray(img)).txts or ()))
    return float(np.mean([_norm(f) in txt for f in fields]))


def model_legibility(read: list[str], fields: list[str], labels: list[str]) -> float:
    """Field-by-field exact match of the content model's reading (only the 3+ character fields)."""
    return float(np.mean([r == l for r, l in zip(read, labels) if len(l) >= 3])) if fields else 0.0


def field_honesty(outs: list[dict], rows: list[dict]) -> dict:
    """Regenerated fields read wrong (the falsifications), fields kept as pixels, misreadings caught."""
    n = regen_docs = regenerated = wrong = pixels = caught = 0
    for out, row in zip(outs, rows):
        truth = {f["name"]: f["text"] for f in row["clean_fields"]}
        n += len(truth)
        if out["method"] != "regen":
            continue
        regen_docs += 1
        right_type = out["type"] == row["doc_type_name"]
        for f in out["fields"]:
            ok = right_type and truth.get(f["name"]) == f["text"]
            if f["source"] == "regenerated":
                regenerated, wrong = regenerated + 1, wrong + (not ok)
            else:
                pixels, caught = pixels + 1, caught + (not ok)
    return {"documents": len(rows), "documents_regenerated": regen_docs, "fields": n, "regenerated_fields": regenerated,
            "wrong_regenerated_fields": wrong, "confidently_wrong_rate": wrong / max(regenerated, 1),
            "pixel_fields": pixels, "pixels_share": pixels / max(n, 1), "misread_kept_as_pixels": caught,
            "regenerated_share_of_all_fields": regenerated / max(n, 1)}


def gate_check(rc, cfg: BenchConfig) -> dict:
    """The gate's decisions per image family: {family: {n, passed, share}}."""
    from pathlib import Path

    from docray.regen.nondocs import FAMILIES, non_documents
    from docray.imageio import decode_image
    from docray.synth import generate

    size = tuple(cfg.original_size)
    start = cfg.start + max(cfg.n_docs, cfg.honesty_docs)  # after the documents scored above
    sets = {}
    if cfg.gate_docs:
        docs = generate("documents", start, start + cfg.gate_docs, seed=cfg.seed, size=size, n_angles=0)
        sets["held-out documents (known types)"] = docs.column("image").to_pylist()
    if cfg.ood:
        for fam in FAMILIES:
            sets[f"non-document: {fam}"] = non_documents(cfg.ood, "evaluation", size, families=(fam,))
        sets["photo-like: posters"] = generate("targets", 0, cfg.ood, seed=cfg.seed + 11, target_rate=0.0).column("image").to_pylist()
        sets["photo-like: faces"] = generate("faces", 0, cfg.ood, seed=cfg.seed + 12).column("image").to_pylist()
        os.environ["DOCRAY_DOCTYPES"] = str(Path(__file__).resolve().parents[1] / "examples" / "doctypes")
        unknown = generate("documents", 0, cfg.ood, seed=cfg.seed + 13, size=size, n_angles=0, doc_types=("cn_resident_card",))
        sets["document of an unknown type"] = unknown.column("image").to_pylist()
    out = {}
    for name, images in sets.items():
        images = [decode_image(im) if isinstance(im, bytes) else im for im in images]
        passed = sum(sum(g["passed"] for g in rc.admit(images[i:i + 32])[0]) for i in range(0, len(images), 32))
        out[name] = {"n": len(images), "passed": int(passed), "share": passed / max(len(images), 1)}
    return out


def codecs() -> list[str]:
    return ["jpeg", "webp"] + (["avif"] if features.check("avif") else [])


def main(argv=None) -> None:
    import torch

    from docray import paths
    from docray.regen import layout
    from docray.regen.data import cond_input, to_image
    from docray.regen.file_types import Threshold
    from docray.regen.pipeline import RegenCompressor
    from docray.regen.quality import compress_to_threshold
    from docray.imageio import decode_image
    from docray.synth import generate

    cfg = parse_args(BenchConfig, argv, description=__doc__.split("\n\n")[0])
    rc = RegenCompressor.from_source(cfg.model_dir, cfg.untrained, cfg.file_types)
    W, H = rc.lib.first.width, rc.lib.first.height
    engine = None
    if cfg.ocr:
        from rapidocr import RapidOCR

        engine = RapidOCR(params={"Global.log_level": "critical"})
    n_rows = max(cfg.n_docs, cfg.honesty_docs)  # the first n_docs against the codecs, all for the never-falsify figures
    rows = generate("documents", cfg.start, cfg.start + n_rows, seed=cfg.seed, size=tuple(cfg.original_size), n_angles=0).to_pylist()
    flats = generate("documents", cfg.start, cfg.start + cfg.n_docs, seed=cfg.seed, size=(W, H), n_angles=0).to_pylist()
    methods = codecs() + [f"regen_{c}" for c in codecs()] + [f"regen_oracle_{c}" for c in codecs()]
    res = {(m, b): {"ocr": [], "model": [], "psnr": [], "ssim": [], "bytes": []} for m in methods for b in cfg.budgets}
    side, outs = None, []
    t0 = time.perf_counter()
    for d, (row, flat) in enumerate(zip(rows, flats)):
        labels = [f["text"] for f in row["clean_fields"]]
        fields = [t for t in labels if len(t) >= 3]
        capture, clean = decode_image(row["image"]), np.asarray(decode_image(flat["clean"]))
        out = rc.run(row["image"], mode="split")
        outs.append(out)
        regen = decode_image(out["processed"])
        cond, layer = cond_input(row["doc_type"], labels, (H, W))
        ids = rc.model.tokenizer.batch([layout.join_content(labels)], rc.cfg.max_len)
        with torch.no_grad():
            bg = rc.model.generate(torch.tensor([row["doc_type"]]), ids, cond[None])[0]
        quad = rc.locate([capture])[0]
        rest, face, split = rc.split(capture, row["doc_type_name"], quad)
        oracle, _ = rc.finish(Image.fromarray(layout.composite(layer, to_image(bg))), split,
                              rc.find_seals(capture, split), capture, quad, row["doc_type_name"])
        # what each output stands for: a regenerated document the clean render, one the gate sent the codec path its capture
        regen_ref = clean if out.get("method") == "regen" else np.asarray(capture)
        sources = {}
        for c in codecs():
            sources.update({c: (capture, np.asarray(capture)), f"regen_{c}": (regen, regen_ref), f"regen_oracle_{c}": (oracle, clean)})
        for b in cfg.budgets:
            decoded = {}
            for m, (img, ref) in sources.items():
                fmt = m.rsplit("_", 1)[-1]
                c = compress_to_threshold(img, 100, Threshold(width=img.width, height=img.height, bytes=b), fmt)
                dec = Image.open(io.BytesIO(c.data)).convert("RGB")
                decoded[m] = dec
                full = np.asarray(dec.resize((ref.shape[1], ref.shape[0]), Image.Resampling.BICUBIC))  # codec path: not the clean size
                r = res[(m, b)]
                r["bytes"].append(c.nbytes)
                r["psnr"].append(psnr(full, ref))
                r["ssim"].append(ssim(full, ref))
                read = layout.split_content(rc.read_contents([dec])[0], row["doc_type"])
                r["model"].append(model_legibility(read, fields, labels))
                if engine is not None:
                    r["ocr"].append(ocr_legibility(engine, dec, fields, cfg.ocr_height))
            if d == 0 and b == cfg.budgets[0]:
                side = [capture] + [decoded[m] for m in methods]
        print(f"document {d + 1}/{cfg.n_docs} ({time.perf_counter() - t0:.0f} s)", flush=True)

    for d in range(cfg.n_docs, n_rows):  # the never-falsify figures on more documents: the pipeline alone
        outs.append(rc.run(rows[d]["image"], mode="split"))
        if (d + 1) % 25 == 0 or d + 1 == n_rows:
            print(f"never-falsify document {d + 1}/{n_rows} ({time.perf_counter() - t0:.0f} s)", flush=True)
    honesty = field_honesty(outs, rows)
    gate = gate_check(rc, cfg) if cfg.gate_docs or cfg.ood else {}
    mean = lambda v: float(np.mean(v)) if v else float("nan")
    table = []
    for m in methods:
        for b in cfg.budgets:
            r = res[(m, b)]
            table.append({"method": m, "budget_bytes": b, "mean_bytes": mean(r["bytes"]), "ocr_legibility": mean(r["ocr"]),
                          "model_legibility": mean(r["model"]), "psnr_db": mean(r["psnr"]), "ssim": mean(r["ssim"])})
    print(f"\n{'method':<18}{'budget':>8}{'bytes':>8}{'OCR legib.':>12}{'model legib.':>14}{'PSNR dB':>9}{'SSIM':>7}")
    for t in table:
        print(f"{t['method']:<18}{t['budget_bytes']:>8}{t['mean_bytes']:>8.0f}{t['ocr_legibility']:>12.2f}"
              f"{t['model_legibility']:>14.2f}{t['psnr_db']:>9.2f}{t['ssim']:>7.3f}")
    need = {}
    for m in methods:
        ok = [t["budget_bytes"] for t in table if t["method"] == m and t["ocr_legibility"] >= 0.95]
        need[m] = min(ok) if ok else None
    print("bytes for 95% OCR legibility: " + ", ".join(f"{m}={v if v else 'not reached'}" for m, v in need.items()))
    print(f"\nfields of {honesty['documents']} documents ({honesty['documents_regenerated']} regenerated, the others "
          f"went the codec path): {honesty['fields']} fields, {honesty['regenerated_fields']} regenerated, "
          f"{honesty['pixel_fields']} kept as pixels ({honesty['pixels_share']:.1%})")
    print(f"confidently wrong: {honesty['wrong_regenerated_fields']} of {honesty['regenerated_fields']} regenerated "
          f"fields ({honesty['confidently_wrong_rate']:.2%}); misreadings the fallback kept as pixels: "
          f"{honesty['misread_kept_as_pixels']}")
    if gate:
        print(f"\n{'gate on':<34}{'images':>8}{'passed':>8}{'share':>8}")
        for name, g in gate.items():
            print(f"{name:<34}{g['n']:>8}{g['passed']:>8}{g['share']:>8.3f}")
    out = cfg.out or paths.sub("reports", "regen_vs_codecs")
    os.makedirs(out, exist_ok=True)
    png = os.path.join(out, "side_by_side.png")
    if side:
        h = cfg.original_size[1]
        tiles = [np.asarray(im.convert("RGB").resize((round(im.width * h / im.height), h))) for im in side]
        Image.fromarray(np.concatenate(tiles, axis=1)).save(png)
        print(f"side by side (original | {' | '.join(methods)} at {cfg.budgets[0]} bytes): {png}")
    print(json.dumps({"n_docs": cfg.n_docs, "honesty_docs": len(rows), "budgets_bytes": cfg.budgets, "rows": table,
                      "bytes_for_95pct_ocr_legibility": need, "fields": honesty, "gate": gate,
                      "ood_passed": sum(g["passed"] for k, g in gate.items() if k != "held-out documents (known types)"),
                      "side_by_side_png": png,
                      "elapsed_s": round(time.perf_counter() - t0, 1)}))


if __name__ == "__main__":
    main()
