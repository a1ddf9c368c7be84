"""A second, independent reader for regen's field confidence.

    agrees = cross_read(capture_rgb, quad, "identity_card", texts)   # (n_fields,) 1.0 where it reads the same

regen's reader is one small model: its confidently wrong fields are steady misreadings (1998 read
1938 from every corner offset) that its own scores, re-readings and per-field formats do not expose
(see `docray.regen.gate`). A reader trained elsewhere, on other data, misreads other characters: where
PP-OCR's text recogniser (rapidocr, whose ONNX weights ship inside the package, so nothing is
downloaded) reads a field's value box from the capture as regen's reader did, case and spaces aside,
the reading is far more likely right. That agreement is the field confidence's fifth score
(`CROSS_READ_SCORE`), fitted with the reader's own four at calibration.

Measured with the standard build's regen v0001 on a design split (rows 202000-202600, apart from
calibration and benchmarks; 4,319 fields of the documents the gate passes, 78.2% read right): the
recogniser reads 57% of the fields right on its own and agrees with regen's reader on 54%, of which
4 are wrong (two values both read as their first character on a cut-off crop, two single misread
characters both readers share). Model, threshold and judgement fitted on disjoint thirds, three
shuffles, at the 0.5% bound: 53% of the fields regenerated with the reader's scores alone
(1-3 wrong), 61-65% with the agreement added (3-4 wrong). Exact agreement (case kept) regenerated
57%; the similarity of the two readings (instead of, or beside, agreement) 50-60%. The recogniser
costs ~16 ms per field on a CPU core (its own ONNX Runtime session on the CPU, on a GPU host too).
"""
from __future__ import annotations

import threading
from functools import lru_cache

import numpy as np

CROSS_READ_SCORE = "second_reader_agrees"
HEIGHT = 48  # px of the recogniser's input lines (PP-OCR rec: 3 x 48 x W)
_lock = threading.Lock()  # one ONNX session per process, shared by a Serve replica's threads


@lru_cache(maxsize=1)
def _engine():
    from rapidocr import RapidOCR

    return RapidOCR(params={"Global.use_det": False, "Global.use_cls": False, "Global.log_level": "warning"})


def normalise(text: str) -> str:
    """What agreement compares: upper case, no spaces (PP-OCR reads "Pl" as "PI", spaces loosely)."""
    return "".join(text.upper().split())


def read(lines: list[np.ndarray]) -> list[str]:
    """PP-OCR's reading of each RGB line image (h, w, 3), any width."""
    engine = _engine()
    out = []
    with _lock:
        for line in lines:
            txts = engine(np.ascontiguousarray(line[:, :, ::-1])).txts  # PP-OCR reads BGR
            out.append(txts[0] if txts else "")
    return out


def same(second: str, text: str) -> bool:
    """Whether the second reader's `second` says `text`, case and spaces aside."""
    return normalise(second) == normalise(text)


def read_values(img: np.ndarray, quad, doc_type, which=None) -> list[str]:
    """The second reader's reading of each value box of the RGB image `img` (h, w, 3) through the
    document's corners `quad` (of the fields `which`, indices in template order; None: all)."""
    from docray.regen.fields import crop_values

    return read(crop_values(img, quad, doc_type, HEIGHT, which))


def cross_read(capture_rgb: np.ndarray, quad, doc_type, texts: list[str]) -> np.ndarray:
    """(n_fields,) float: 1.0 where the second reader reads the field's value box (through the
    document's corners `quad`) as `texts` says, case and spaces aside; else 0.0."""
    return np.array([float(same(a, b)) for a, b in zip(read_values(capture_rgb, quad, doc_type), texts)], np.float64)
