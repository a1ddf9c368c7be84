"""benchmarks.regen_vs_codecs: a smoke run of its whole path on an untrained tiny model."""
import json


def test_never_falsify_figures_count_the_extra_documents(capsys):
    from benchmarks.regen_vs_codecs import main

    main(["--set", "untrained=regen_tiny", "file_types=configs/regen/file_types_tiny.yaml", "n_docs=1",
          "honesty_docs=3", "gate_docs=0", "ood=0", "ocr=false", "budgets=[2500]"])
    figures = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert figures["n_docs"] == 1 and figures["honesty_docs"] == 3
    assert figures["fields"]["documents"] == 3 and figures["fields"]["fields"] > 3 * 3
    # an uncalibrated model regenerates nothing: every field of every document goes the codec path
    assert figures["fields"]["regenerated_fields"] == 0 and figures["fields"]["documents_regenerated"] == 0
    assert {r["budget_bytes"] for r in figures["rows"]} == {2500}
