"""benchmarks/screening_funnel: it follows a posted tile through the matcher's stages (shortlists, the
re-ranked first place, the threshold), and its stages only ever narrow."""
from __future__ import annotations

import json

from docray.screening.calibrate import Query
from docray.screening.matching import Screener, ScreenConfig
from docray.screening.rerank import Reranker
from docray.screening.rules import ExtensionRule
from docray.screening.templates import Tile, grid, tile_boxes
from tests.test_screening_rerank import Aligned, RandomEmbed, moved, random_library
from tests.test_screening_verify import picture


def test_follow_says_which_stage_holds_the_posted_tile(tmp_path):
    from benchmarks.screening_funnel import STAGES, follow

    lib, embed = random_library(tmp_path), RandomEmbed()
    last = len(lib) - 1
    row = lib.rows([last])[0]
    box = tile_boxes(192, 192, *grid(row["cut_type"]))[row["position"]]
    tile = Tile(row["cut_type"], row["position"], box, lib.tile_image(last))
    cfg = ScreenConfig(learn=False, rule=ExtensionRule(enabled=False), proposals="layout")
    s = Screener(lib, embed, cfg, reranker=Reranker(Aligned(), k=len(lib), threshold=0.7))
    posted = Query(moved(tile.image), "t1", tile, (192, 192), "alone")
    reached, score = follow(s, lib, embed, posted, wide=len(lib))
    assert all(reached[st] for st in STAGES) and score >= 0.7  # the re-ranker puts t1's tile first, above 0.7
    wrong = Query(posted.upload, "t2", tile, (192, 192), "alone")  # told it shows t2: shortlisted, never first
    reached, _ = follow(s, lib, embed, wrong, wide=len(lib))
    assert reached["shortlist@k"] and not reached["ranked first"] and not reached["matched"]
    benign = Query(moved(picture(3, (64, 64))), None, tile, (192, 192), "alone")
    reached, score = follow(s, lib, embed, benign, wide=len(lib))
    assert not any(reached.values()) and score < 0.7
    strict = Screener(lib, embed, cfg, reranker=Reranker(Aligned(), k=len(lib), threshold=1.01))
    reached, _ = follow(strict, lib, embed, posted, wide=len(lib))
    assert reached["ranked first"] and not reached["matched"]  # first, but under the threshold


def test_the_funnel_runs_end_to_end_and_only_narrows(tmp_path, capsys):
    from benchmarks import screening_funnel

    screening_funnel.main(["--descriptor", "build:descriptor_tiny", "--queries", "4", "--pictures", "6",
                           "--library-pictures", "3", "--wide", "10", "--data", str(tmp_path)])
    out = capsys.readouterr().out
    figures = json.loads(out.strip().splitlines()[-1])
    assert figures["queries"] == 4 and figures["benign"] == 4 and figures["k"] == 1  # no re-ranker: the descriptor's best
    assert 0 <= figures["fpr_benign"] <= 1 and "uncalibrated" in out
    a = {s: figures[f"all_{s}"] for s in ("shortlist_at_k", "shortlist_at_wide", "ranked_first", "matched")}
    assert a["matched"] <= a["ranked_first"] <= a["shortlist_at_k"] <= a["shortlist_at_wide"]
    assert sum(figures[f"{p}_shortlist_at_k"] >= 0 for p in ("alone", "post", "pasted_photo", "pasted_texture")) == 4
