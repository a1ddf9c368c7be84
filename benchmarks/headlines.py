"""The README's headline figures: one row per method, read from the records `make bench` keeps.

    python -m benchmarks.headlines            # print the table (from benchmarks/RESULTS.json)
    python -m benchmarks.headlines --write    # and put it into README.md between its markers

Each row names the benchmark it comes from; a benchmark with no successful record reads "not
measured yet", and a record run on other models than the registry's latest at the time says so
in RESULTS.md. `tests/test_docs.py` checks that the README's table is the one this prints, so a
README figure cannot drift from benchmarks/RESULTS.md.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from benchmarks.run_all import load_records

ROOT = Path(__file__).resolve().parents[1]
RECORDS = ROOT / "benchmarks" / "RESULTS.json"
README = ROOT / "README.md"
BEGIN, END = "<!-- headlines: python -m benchmarks.headlines --write -->", "<!-- /headlines -->"


def _screening(f: dict) -> str:
    if "rerank_edges_micro_ap" in f:  # the default since the learned re-ranker (records before it: the descriptor)
        return (f"µAP {f['rerank_edges_micro_ap']:.3f} with the learned re-ranker and edge proposals (the default), "
                f"{f['cutout_micro_ap']:.3f} descriptor alone, {f['local_micro_ap']:.3f} local features alone; "
                f"benign false positives {f['rerank_edges_fpr_benign']:.1%}")
    return (f"µAP {f['cutout_micro_ap']:.3f} descriptor alone (the default before the re-ranker), "
            f"{f['either_local_edges_micro_ap']:.3f} "
            f"with edge proposals and verification (`decide: either`), {f['local_micro_ap']:.3f} local features alone; "
            f"benign false positives {f['cutout_fpr_benign']:.1%}")


def _regen(f: dict) -> str:
    h = f["fields"]
    return (f"{h['confidently_wrong_rate']:.2%} of {h['regenerated_fields']} regenerated fields read wrong, "
            f"{h['regenerated_share_of_all_fields']:.0%} of all fields regenerated; "
            f"gate: {_gate(f)}")


def _gate(f: dict) -> str:
    """Held-out documents through the gate, and the out-of-distribution images, by family where any passed."""
    gate = dict(f.get("gate") or {})
    docs = gate.pop("held-out documents (known types)", None)
    ood = f"{f['ood_passed']} of {sum(g['n'] for g in gate.values())} out-of-distribution images through" if gate \
        else f"{f['ood_passed']} out-of-distribution images through"
    leaks = [f"{g['passed']} of {g['n']} {k}" for k, g in gate.items() if g["passed"]]
    return (f"{docs['share']:.1%} of held-out documents through, " if docs else "") + ood + \
        (f" ({', '.join(leaks)})" if leaks else "")


def _recognition(f: dict) -> str:
    """The tasks where the unified model trails and leads one model per task most, in points."""
    gap = sorted(f["tasks"], key=lambda t: t["unified_minus_separate_points"])
    seeds = len(f.get("seeds", [0]))
    return (f"against one model per task{f' (mean of {seeds} seeds)' if seeds > 1 else ''}: worst "
            f"{gap[0]['task']} {gap[0]['unified_minus_separate_points']:+.1f} points, best {gap[-1]['task']} "
            f"{gap[-1]['unified_minus_separate_points']:+.1f}, with {f['param_ratio']:.2f}× their parameters; "
            f"all tasks of an image in {f['unified_all_tasks_ms']:.0f} ms")


def _privacy(f: dict) -> str:
    return (f"{f['candidates']} candidate masks, {f['finalists']} finalists, {f['targets']} meeting both bounds; the best "
            f"keeps every attacker at or below TAR@FAR=1e-2 {f['best_worst_attacker_tar']:.2f} (bound 0.10), its masked "
            f"recogniser {f['best_masked_tar']:.2f} (the original on whole faces {f['original_tar']:.2f})")


# (method, the benchmark's key in RESULTS.json, the figure as a sentence)
ROWS = [
    ("[regen compression](docs/regen.md)", "regen_vs_codecs", _regen),
    ("[unified recognition](docs/recognition.md)", "unified_vs_separate", _recognition),
    ("[cut-out screening](docs/screening.md), drawn posters", "screening_quality", _screening),
    ("[cut-out screening](docs/screening.md), real photographs", "screening_quality_photos", _screening),
    ("[mask privacy](docs/privacy.md)", "privacy_targets", _privacy),
]


def table(records: dict) -> str:
    """The Markdown table of ROWS from `records` (RESULTS.json: name -> record)."""
    lines = ["| method | headline figure (its table: `benchmarks/RESULTS.md`) | benchmark |", "|---|---|---|"]
    for method, key, figure in ROWS:
        r = records.get(key) or {}
        try:
            text = figure(r["figures"]) if r.get("ok") else "not measured yet"
        except (KeyError, TypeError):  # a record from before the figure existed
            text = "not in its record: rerun it"
        lines.append(f"| {method} | {text} | `{key}` |")
    return "\n".join(lines)


def with_table(readme: str, records: dict) -> str:
    """`readme` with the text between BEGIN and END replaced by the table."""
    if BEGIN not in readme or END not in readme:
        raise ValueError(f"README.md has no {BEGIN} ... {END} block")
    head, rest = readme.split(BEGIN, 1)
    return f"{head}{BEGIN}\n{table(records)}\n{END}{rest.split(END, 1)[1]}"


def load(path: Path = RECORDS) -> dict:
    """The records at `path` (RESULTS.json), as `make bench` keeps them; {} when there are none."""
    return load_records(path)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n".join(__doc__.split("\n")[1:]))
    p.add_argument("--write", action="store_true", help="put the table into README.md between its markers")
    p.add_argument("--records", default=str(RECORDS), help="the records file (default: benchmarks/RESULTS.json)")
    a = p.parse_args(argv)
    records = load(Path(a.records))
    print(table(records))
    if a.write:
        README.write_text(with_table(README.read_text(), records))
        print(f"written into {README}")
    print(json.dumps({"rows": len(ROWS), "measured": sum(bool((records.get(k) or {}).get("ok")) for _, k, _ in ROWS)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
