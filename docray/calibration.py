"""Decision thresholds calibrated on held-out data: one operating point chooser for every method.

    op = operating_point(pos_scores, neg_scores, max_fpr=0.005)
    op.threshold, op.tpr, op.fpr                      # the lowest threshold whose FPR <= max_fpr
    op, record = calibrate_screening(PICTURES, "registry:descriptor@v0003")   # record: its calibration.json

    docray calibrate screening PICTURES [--max-fpr 0.005] [--write]   # a user's held-out pictures (targets contract)
    rr, op = fit_reranker(FIT_PICTURES, CAL_PICTURES, embedder)         # screening's re-ranker, its threshold
    docray calibrate rerank FIT_PICTURES CALIBRATE_PICTURES [--write]  # screening's learned re-ranker, fitted + calibrated
    docray calibrate regen [MODEL] [--documents PARQUET]               # regen's document gate and field confidence

A score at or above the threshold is a positive decision (a match, a known document, the same
person). The threshold is the lowest one whose false-positive rate on the negatives stays at or
under `max_fpr`: the most recall the budget of false alarms allows. With few negatives the FPR
cannot be resolved below 1/n_neg; the result says so (`resolved: false`) instead of claiming it.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import click
import numpy as np

if TYPE_CHECKING:
    from docray.screening.matching import ScreenConfig


@dataclass
class OperatingPoint:
    threshold: float
    tpr: float  # share of the positives at or above the threshold
    fpr: float  # share of the negatives at or above the threshold
    max_fpr: float
    n_pos: int
    n_neg: int
    resolved: bool  # whether n_neg is large enough to measure an FPR of max_fpr (n_neg * max_fpr >= 1)

    def line(self) -> str:
        note = "" if self.resolved else f" (only {self.n_neg} negatives: FPR not resolved below {1 / max(self.n_neg, 1):.4f})"
        return (f"threshold {self.threshold:.4f}: TPR {self.tpr:.3f} on {self.n_pos} positives, "
                f"FPR {self.fpr:.4f} on {self.n_neg} negatives (target <= {self.max_fpr}){note}")


def operating_point(pos_scores, neg_scores, max_fpr: float) -> OperatingPoint:
    """The lowest threshold with FPR <= `max_fpr` on `neg_scores`, and the TPR it gives on `pos_scores`."""
    pos, neg = np.asarray(pos_scores, np.float64), np.asarray(neg_scores, np.float64)
    if not 0 <= max_fpr < 1:
        raise ValueError(f"max_fpr must be in [0, 1), got {max_fpr}")
    if len(pos) == 0 or len(neg) == 0:
        raise ValueError(f"need positives and negatives to calibrate, got {len(pos)} and {len(neg)}")
    allowed = int(np.floor(max_fpr * len(neg)))  # negatives that may score at or above the threshold
    ranked = np.sort(neg)[::-1]
    # strictly above the (allowed+1)-th highest negative: at most `allowed` negatives pass
    threshold = float(np.nextafter(ranked[allowed], np.inf))
    return OperatingPoint(threshold=threshold, tpr=float((pos >= threshold).mean()), fpr=float((neg >= threshold).mean()),
                          max_fpr=max_fpr, n_pos=len(pos), n_neg=len(neg), resolved=len(neg) * max_fpr >= 1)


def calibrate_screening(pictures: str, descriptor, max_fpr: float = 0.005, queries: int = 200, seed: int = 0,
                        postings: tuple[str, ...] | None = None, library_pictures: str = "") -> tuple[OperatingPoint, dict]:
    """Screening's operating point for `descriptor` (a source, or an `Embedder`) on `pictures`
    (`docray.screening.calibrate.screening_scores`; `postings` None: all, in equal shares; `library_pictures`:
    more pictures for the calibration library) and its calibration.json record: threshold, max_fpr, tpr, fpr,
    n_pos, n_neg, resolved, postings, the pictures' source, library_pictures, queries, seed, created_at (UTC)."""
    from docray.screening.calibrate import screening_scores
    from docray.screening.postings import POSTINGS

    postings = tuple(postings or POSTINGS)
    pos, neg = screening_scores(pictures, descriptor, queries=queries, seed=seed, postings=postings,
                                library_pictures=library_pictures)
    op = operating_point(pos, neg, max_fpr)
    record = {"method": "screening", **asdict(op), "postings": list(postings), "pictures": str(pictures),
              "library_pictures": str(library_pictures), "queries": queries, "seed": seed,
              "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    return op, record


def fit_reranker(fit_pictures: str, calibrate_pictures: str, embed, cfg: ScreenConfig | None = None,
                 queries: int = 400, calibrate_queries: int = 200, max_fpr: float = 0.005, seed: int = 0, k: int = 3,
                 library_pictures: str = ""):
    """(a re-ranker for `embed` fitted on `queries` posted queries per class of `fit_pictures`, its threshold
    calibrated at `max_fpr` on `calibrate_queries` of `calibrate_pictures` (other pictures: the operating
    point is measured on what it never fitted), that OperatingPoint). `cfg`: how regions are found (default
    ScreenConfig(proposals="edges"): the layout's and edge rectangles, so it learns both kinds).
    `library_pictures`: more pictures whose tiles join the library when fitting and calibrating (`posted_queries`)."""
    from docray.screening.calibrate import rerank_examples, screening_scores
    from docray.screening.matching import ScreenConfig
    from docray.screening.rerank import Reranker

    cfg = cfg or ScreenConfig(proposals="edges")
    X, y = rerank_examples(fit_pictures, embed, cfg, queries, seed, k, library_pictures=library_pictures)
    rr = Reranker.fit(X, y, k, seed, fit_pictures=str(fit_pictures), queries=queries, proposals=cfg.proposals,
                      library_pictures=str(library_pictures))
    pos, neg = screening_scores(calibrate_pictures, embed, calibrate_queries, seed + 1,
                                cfg=cfg.model_copy(update={"rerank": True}), reranker=rr,
                                library_pictures=library_pictures)
    op = operating_point(pos, neg, max_fpr)
    rr.threshold = op.threshold
    rr.record.update(calibrate_pictures=str(calibrate_pictures), calibrate_queries=calibrate_queries,
                     tpr=op.tpr, fpr=op.fpr, max_fpr=max_fpr, resolved=op.resolved,
                     created_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    return rr, op


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def calibrate() -> None:
    """Calibrate a method's decision threshold on your held-out data; prints the operating point (with
    --write, screening keeps it beside the descriptor; regen always writes its calibration)."""


@calibrate.command("screening")
@click.argument("pictures")
@click.option("--descriptor", default="registry:descriptor", show_default=True,
              help="descriptor to score with: registry:NAME[@VERSION] (no version: the latest) or a saved model "
                   "folder, local or s3://")
@click.option("--max-fpr", type=float, default=0.005, show_default=True, help="false-positive budget on benign pictures")
@click.option("--queries", type=int, default=200, show_default=True, help="edited tiles per class (targets, benign)")
@click.option("--postings", default="", help="how queries are posted, comma-separated, in equal shares ('' -> all: "
              "alone, post, pasted_photo, pasted_texture; docray.screening.postings)")
@click.option("--library-pictures", default="", help="more pictures (a Parquet dataset with id and image, not "
              "PICTURES'; only its sensitive ones when it has is_target) whose tiles join the calibration library, "
              "about as many as the served library holds: its many tiles lure benign uploads as the served one's do")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--write", is_flag=True, help="write the operating point as calibration.json beside the descriptor's "
              "weights: serving then matches at this threshold (ScreenConfig.threshold unset)")
@click.option("--json", "as_json", is_flag=True, help="print the operating point as JSON")
def screening(pictures, descriptor, max_fpr, queries, postings, library_pictures, seed, write, as_json) -> None:
    """Cut-out screening's match threshold for a descriptor, from PICTURES (a Parquet dataset of the
    `targets` contract, local or s3://, with `is_target`): the sensitive pictures form a library;
    edited tiles of them, posted as uploads come (alone, in a post, pasted into a background), are the
    positives, benign pictures' tiles posted the same ways the negatives (`docs/datasets.md`). With
    --write, the operating point travels with the descriptor (calibration.json beside its weights).

    Example: docray calibrate screening ~/data/pictures/val --max-fpr 0.005 --write
    """
    from docray.screening.calibrate import write_calibration
    from docray.storage.registry import ModelRegistry, parse_ref, ref

    if write and descriptor.startswith("build:"):
        raise click.BadParameter("random weights have nowhere to keep a calibration: a registry:NAME or a folder",
                                 param_hint="--descriptor")
    found = parse_ref(descriptor)
    if found is not None:  # pinned: the version scored is the version written
        descriptor = ref(found[0], ModelRegistry().resolve(*found))
    op, record = calibrate_screening(pictures, descriptor, max_fpr, queries=queries, seed=seed,
                                     postings=tuple(p for p in postings.split(",") if p),
                                     library_pictures=library_pictures)
    record["descriptor"] = descriptor
    written = write_calibration(descriptor, record) if write else None
    if as_json:
        click.echo(json.dumps({**record, "written": written}))
        return
    click.echo(f"screening ({descriptor}; postings {', '.join(record['postings'])}): {op.line()}")
    if written:
        click.echo(f"written: {written} (serving matches at {op.threshold:.4f} unless ScreenConfig.threshold is set)")
    else:
        click.echo(f"keep it with the descriptor: add --write (calibration.json beside its weights); "
                   f"or override: --set threshold={op.threshold:.4f} (ScreenConfig.threshold)")


@calibrate.command("rerank")
@click.argument("fit_pictures")
@click.argument("calibrate_pictures")
@click.option("--descriptor", default="registry:descriptor", show_default=True,
              help="the descriptor the re-ranker serves: registry:NAME[@VERSION] or a saved model folder")
@click.option("--queries", type=int, default=400, show_default=True, help="fitting queries per class (targets, benign)")
@click.option("--calibrate-queries", type=int, default=200, show_default=True, help="calibration queries per class")
@click.option("--max-fpr", type=float, default=0.005, show_default=True, help="false-positive budget on benign pictures")
@click.option("--proposals", type=click.Choice(["layout", "edges"]), default="edges", show_default=True,
              help="regions the fitting queries are screened with (edges: the layout's and edge rectangles)")
@click.option("--library-pictures", default="", help="more pictures (a Parquet dataset with id and image, not "
              "PICTURES'; only its sensitive ones when it has is_target) whose tiles join the calibration library, "
              "about as many as the served library holds: its many tiles lure benign uploads as the served one's do")
@click.option("--k", type=click.IntRange(1, 50), default=3, show_default=True,
              help="candidates of each region it re-scores (the descriptor's nearest tiles; each one an alignment)")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--write", is_flag=True, help="write it as rerank.pkl beside the descriptor's weights: "
              "ScreenConfig.rerank then uses it")
def rerank(fit_pictures, calibrate_pictures, descriptor, queries, calibrate_queries, max_fpr, proposals,
           library_pictures, k, seed, write) -> None:
    """Fit screening's learned re-ranker for a descriptor on FIT_PICTURES and calibrate its threshold on
    CALIBRATE_PICTURES (both Parquet datasets of the `targets` contract with is_target; other pictures, so
    the operating point is measured on pairs it never fitted). docray.screening.rerank says what it looks at.

    Example: docray calibrate rerank ~/data/pictures/train ~/data/pictures/val --write
    """
    from docray.screening.calibrate import write_reranker
    from docray.screening.embed import Embedder
    from docray.screening.matching import ScreenConfig
    from docray.storage.registry import ModelRegistry, parse_ref, ref

    if write and descriptor.startswith("build:"):
        raise click.BadParameter("random weights have nowhere to keep a re-ranker: a registry:NAME or a folder",
                                 param_hint="--descriptor")
    found = parse_ref(descriptor)
    if found is not None:  # pinned: the version fitted for is the version written
        descriptor = ref(found[0], ModelRegistry().resolve(*found))
    rr, op = fit_reranker(fit_pictures, calibrate_pictures, Embedder.load(descriptor), ScreenConfig(proposals=proposals),
                          queries, calibrate_queries, max_fpr, seed, k, library_pictures=library_pictures)
    click.echo(f"re-ranker for {descriptor}: {rr.record['pairs']} pairs ({rr.record['true_pairs']} true); {op.line()}")
    if write:
        click.echo(f"written: {write_reranker(descriptor, rr)} (ScreenConfig.rerank: true uses it)")
    else:
        click.echo("keep it with the descriptor: add --write (rerank.pkl beside its weights)")


@calibrate.command("regen")
@click.argument("model", default="registry:regen")
@click.option("--documents", default="", help="calibration documents: a Parquet dataset of the documents contract "
              "(image, doc_type_name, clean_fields; clean optional), local or s3://; '' -> synthetic rows from --start")
@click.option("--n-docs", type=int, default=1500, show_default=True, help="synthetic calibration documents (the "
              "wrong rate's upper bound needs thousands of fields: about 7 a document)")
@click.option("--start", type=int, default=200_000, show_default=True,  # gate.CALIBRATION_ROWS
              help="first synthetic row (training draws rows 0..n_train, benchmarks 100000..)")
@click.option("--size", default="384x240", show_default=True, help="synthetic captures' WxH (train_regen's original_size)")
@click.option("--non-docs", type=int, default=500, show_default=True, help="generated non-documents (calibration split)")
@click.option("--file-types", default="", help="file-type library YAML ('' -> packaged; its first threshold = the model's size)")
@click.option("--max-wrong", type=float, default=0.0035, show_default=True,  # gate.MAX_WRONG
              help="wrong fields allowed among regenerated ones (the rate's upper bound; 0.35% keeps a batch of ~1,000 "
                   "under 0.5% nine times in ten)")
@click.option("--bound", type=float, default=0.95, show_default=True, help="judge the wrong rate by its one-sided "
              "Clopper-Pearson upper bound at this confidence level (0: the rate seen)")
@click.option("--doc-tpr", type=float, default=0.995, show_default=True,  # gate.DOC_TPR
              help="share of documents the OOD threshold keeps at least")
@click.option("--search-others", type=int, default=60, show_default=True,  # gate.SEARCH_OTHERS
              help="documents searched against the other types' templates to set the corner search's threshold "
                   "(~5 s each; 0: no corner search)")
@click.option("--cross-read/--no-cross-read", default=True, show_default=True,
              help="a second reader's agreement (PP-OCR's recogniser, docray.regen.crossread) joins the field "
                   "confidence (~16 ms a field)")
@click.option("--json", "as_json", is_flag=True, help="print the report as JSON")
def regen(model, documents, n_docs, start, size, non_docs, file_types, max_wrong, bound, doc_tpr, search_others,
          cross_read, as_json) -> None:
    """Regen compression's document gate (type model, out-of-distribution score, layout check) and
    per-field confidence for MODEL (registry:regen, the
    registry's latest version, or a saved model folder), fitted on calibration documents and generated
    non-documents; written as calibration.json beside the weights. train_regen calibrates what it
    trains; this refits (other documents, other settings). A model never calibrated regenerates nothing.

    Example: docray calibrate regen registry:regen --n-docs 1500 --non-docs 500
    """
    from docray.regen import gate
    from docray.regen.file_types import load_file_types
    from docray.regen.nondocs import family_names, non_documents
    from docray.regen.pipeline import RegenCompressor

    w, h = (int(v) for v in size.lower().split("x"))
    lib = load_file_types(file_types or None)
    if model == "registry:regen":  # the registry's latest version (what serving loads)
        from docray.storage.registry import ModelRegistry

        reg = ModelRegistry()
        folder, rc = reg.path("regen"), RegenCompressor.from_source(file_types=file_types)
    elif model.startswith("registry:"):
        raise click.BadParameter("registry:regen (its latest version) or a model folder", param_hint="MODEL")
    else:
        folder, rc = model, RegenCompressor.load(model, file_types=lib)
    if documents:
        from docray.storage.datasets import read_table

        rows = read_table(documents, columns=None).to_pylist()
    else:
        from docray.synth import generate

        rows = generate("documents", start, start + n_docs, seed=0, size=(w, h), n_angles=0).to_pylist()
    negs = non_documents(non_docs, "calibration", (w, h))
    report = rc.calibrate(gate.documents(rows), negs, families=family_names(non_docs),
                          doc_tpr=doc_tpr, max_wrong=max_wrong, bound=bound, search_others=search_others,
                          cross_read=cross_read)
    data = rc.calibration.to_json()
    if model == "registry:regen":
        reg.fs.pipe_file(f"{folder}/{gate.FILE}", data.encode())
    else:
        rc.calibration.save(folder)
    if as_json:
        click.echo(json.dumps({"method": "regen", "model": str(folder), **report}))
        return
    click.echo(f"regen calibration of {folder} on {report['n_documents']} documents, {report['n_non_documents']} non-documents")
    click.echo(f"  OOD score AUROC on a held-out half: {report['ood_auroc_heldout_half']} -> {report['ood_chosen']}")
    click.echo(f"  temperature {report['temperature']}; type ECE {report['type_ece_raw']} -> {report['type_ece_calibrated']}")
    click.echo(f"  gate: {report['documents_passing']:.1%} of documents pass, {report['non_documents_passing']} "
               f"non-documents pass {report['non_documents_passing_by_family']}")
    click.echo(f"  layout check: threshold {report['layout_threshold']} (layout score 1st/10th/50th percentile of the "
               f"documents passing the type gate: {report['layout_score_quantiles']})")
    click.echo(f"  corner search: threshold {report['search_threshold']} (above {report['search_wrong_layouts']} "
               f"searched captures of another layout, highest {report['search_wrong_layouts_max']}); "
               f"{report['documents_passing_by_search']} documents pass by it")
    click.echo(f"  retype: threshold {report['retype_threshold']} (above {report['retype_wrong_layouts']} aligned "
               f"captures of another layout, highest {report['retype_wrong_layouts_max']}); "
               f"{report['documents_passing_by_retype']} documents the type model misread pass as their layout's type")
    click.echo(f"  fields: {report['n_fields']} read, {report['fields_read_right']} right; threshold "
               f"{report['field_threshold']}: {report['fields_regenerated_share']} regenerated, "
               f"{report['regenerated_fields_wrong']} of those wrong "
               f"(upper bound {report['regenerated_fields_wrong_bound']})")
    if report["cross_read"]:
        click.echo(f"  second reader: agrees on {report['second_reader_agrees']} of the fields; the reader's scores "
                   f"alone would regenerate {report['fields_regenerated_share_reader_alone']}")
    click.echo(f"written: {folder}/{gate.FILE}")
