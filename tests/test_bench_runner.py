"""`make bench` (benchmarks/run_all.py): each benchmark's table and JSON figures land in the results
file beside the machine and the model versions; a failing benchmark is recorded and fails the run."""
import json
from pathlib import Path

import pytest

from benchmarks import run_all


def test_results_file_holds_tables_figures_machine_and_models(tmp_path, home):
    profile = tmp_path / "p.yaml"
    profile.write_text(json.dumps({"benchmarks": [
        {"name": "synth_throughput", "args": ["--n", "2", "--kinds", "masks"]},
        {"name": "index_search", "args": ["--sizes", "not-a-number"]}]}))
    out = tmp_path / "RESULTS.md"
    assert run_all.main(["--profile", str(profile), "--out", str(out)]) == 1  # one failed
    md = out.read_text()
    assert "| cpu_cores |" in md and "| commit |" in md and "| recognition-unified | none |" in md
    ok, failed = md.split("## synth_throughput")[1], md.split("## index_search")[1]
    figures = json.loads(ok.split("```json\n")[1].split("\n```")[0])
    assert figures and "masks" in ok  # its table and its last-line JSON
    assert "FAILED" in failed and "End of its output" in failed
    assert "| [synth_throughput](#synth-throughput) | yes |" in md and "| [index_search](#index-search) | FAILED |" in md


def test_shipped_profiles_name_real_benchmarks(tmp_path):
    for name in ("quick", "standard"):
        profile = run_all.load_config(run_all.BenchProfile, run_all.PROFILES / f"{name}.yaml")
        for b in profile.benchmarks:
            assert (run_all.ROOT / "benchmarks" / f"{b.name}.py").is_file(), b.name


def test_one_benchmark_twice_needs_a_key_for_each_run(tmp_path, home):
    profile = tmp_path / "p.yaml"
    runs = [{"name": "synth_throughput", "args": ["--n", "2", "--kinds", "masks"]}] * 2
    profile.write_text(json.dumps({"benchmarks": runs}))
    with pytest.raises(SystemExit):  # two sections, two JSON entries of one name: refused
        run_all.main(["--profile", str(profile), "--out", str(tmp_path / "R.md")])
    profile.write_text(json.dumps({"benchmarks": [runs[0], {**runs[1], "key": "synth_masks_again"}]}))
    assert run_all.main(["--profile", str(profile), "--out", str(tmp_path / "R.md"), "--only", "synth_masks_again"]) == 0
    md = (tmp_path / "R.md").read_text()
    assert "## synth_masks_again" in md and "`python -m benchmarks.synth_throughput --n 2" in md
    assert "## synth_throughput" not in md


def test_parts_merge_and_resume_skips_what_ran_on_the_same_models(tmp_path, home, capsys):
    profile = tmp_path / "p.yaml"
    a = {"name": "synth_throughput", "args": ["--n", "2", "--kinds", "masks"]}
    profile.write_text(json.dumps({"benchmarks": [a, {**a, "key": "again"}]}))
    out = tmp_path / "R.md"
    assert run_all.main(["--profile", str(profile), "--out", str(out), "--only", "again"]) == 0
    assert "| synth_throughput | not run yet |" in out.read_text()  # the profile's other part, listed, not dropped
    assert run_all.main(["--profile", str(profile), "--out", str(out), "--only", "synth_throughput"]) == 0
    md, kept = out.read_text(), json.loads(out.with_suffix(".json").read_text())
    assert "## synth_throughput" in md and "## again" in md  # the second part kept the first
    assert list(kept) == ["synth_throughput", "again"] and kept["again"]["models"]["regen"] == "none"
    assert "not run yet" not in md
    first = kept["again"]["finished"]

    capsys.readouterr()
    assert run_all.main(["--profile", str(profile), "--out", str(out), "--resume"]) == 0
    said = capsys.readouterr().out
    assert "again: done" in said and "synth_throughput: done" in said and '"benchmarks": {}' in said
    assert json.loads(out.with_suffix(".json").read_text())["again"]["finished"] == first

    kept["again"]["models"]["regen"] = "v0001"  # ran against another model: --resume runs it again
    out.with_suffix(".json").write_text(json.dumps(kept))
    assert run_all.main(["--profile", str(profile), "--out", str(out), "--resume"]) == 0
    assert "other models than the latest" not in out.read_text()
    assert json.loads(out.with_suffix(".json").read_text())["again"]["models"]["regen"] == "none"


def test_a_section_run_on_older_models_says_so(tmp_path):
    record = {"name": "x", "module": "x", "args": [], "ok": True, "seconds": 60, "table": "t", "figures": {"a": 1},
              "error": "", "finished": "2026-01-01 00:00 UTC", "machine": {"commit": "abc"}, "models": {"regen": "v0001"}}
    run_all.write_results(tmp_path / "R.md", "p", {"commit": "def"}, {"regen": "v0002"}, [record])
    md = (tmp_path / "R.md").read_text()
    assert "other models than the latest: regen v0001" in md and "| abc |" in md


def test_results_give_each_build_step_its_wall_time(tmp_path, home):
    from docray import paths

    folder = Path(paths.sub("builds", "standard"))
    folder.mkdir(parents=True)
    for name, seconds in (("train_regen", 2400), ("pretrain_recognition", 180)):
        (folder / f"{name}.json").write_text(json.dumps({"seconds": seconds, "finished": "2026-11-27T21:00:00Z",
                                                         "versions": {"regen": "v0003"} if name == "train_regen" else {},
                                                         **({"throughput": "regen 9.5 samples/s (T4)"}
                                                            if name == "train_regen" else {})}))
    rows = run_all.build_steps("standard")
    assert [r["step"] for r in rows] == ["pretrain_recognition", "train_regen"]  # the profile's order
    run_all.write_results(tmp_path / "R.md", "standard", {}, {}, [], rows)
    md = (tmp_path / "R.md").read_text()
    assert "43 minutes in all" in md
    assert "| train_regen | 40.0 | 2026-11-27T21:00:00Z | regen v0003 | regen 9.5 samples/s (T4) |" in md
    assert "| pretrain_recognition | 3.0 | 2026-11-27T21:00:00Z | - | - |" in md  # a stamp from before throughput
    assert run_all.build_steps("no-such-profile") == []


def test_records_from_another_home_keep_their_models_and_build_steps(tmp_path):
    """`--only` on a fresh machine keeps the other records: the header still gives the build steps
    behind them (the newest of each step) and the models each record ran against; a model this
    registry lacks does not mark a section as run on older models."""
    row = lambda step, finished, models: {"step": step, "seconds": 600, "finished": finished, "models": models}
    base = {"module": "x", "args": [], "ok": True, "seconds": 60, "table": "t", "figures": {"a": 1}, "error": "",
            "finished": "2026-01-01 00:00 UTC", "machine": {"commit": "abc"}}
    there = {**base, "name": "there", "models": {"regen": "v0004", "descriptor": "v0001"},
             "build": [row("train_screening", "2026-01-01T00:00:00Z", "descriptor v0001"),
                       row("train_regen", "2026-01-01T01:00:00Z", "regen v0004")]}
    here = {**base, "name": "here", "models": {"regen": "v0001", "descriptor": "none"},
            "build": [row("train_regen", "2026-02-01T00:00:00Z", "regen v0001")]}
    run_all.write_results(tmp_path / "R.md", "p", {}, {"regen": "v0001", "descriptor": "none"}, [there, here],
                          [row("train_regen", "2026-02-01T00:00:00Z", "regen v0001")])
    md = (tmp_path / "R.md").read_text()
    assert "| train_screening | 10.0 | 2026-01-01T00:00:00Z | descriptor v0001 |" in md
    assert "| train_regen | 10.0 | 2026-02-01T00:00:00Z | regen v0001 |" in md and "regen v0004 |" not in md
    assert "| regen | v0001 | v0004 (1); v0001 (1) |" in md and "| descriptor | none | v0001 (1); none (1) |" in md
    there_section = md.split("## there")[1].split("## here")[0]
    assert "other models than the latest: regen v0004." in there_section  # not descriptor: none here


def test_one_version_name_in_two_registries_is_told_apart_by_its_digest(tmp_path):
    """Version names count per registry: a record that ran against another registry's v0001 (other
    weights) is marked as run on other models; one with the same weights, or one kept before
    digests, is not."""
    base = {"module": "x", "args": [], "ok": True, "seconds": 60, "table": "t", "figures": {"a": 1}, "error": "",
            "finished": "2026-01-01 00:00 UTC", "machine": {"commit": "abc"}, "models": {"regen": "v0001"}}
    records = [{**base, "name": "elsewhere", "model_digests": {"regen": "aaaaaaaaaaaa"}},
               {**base, "name": "here", "model_digests": {"regen": "bbbbbbbbbbbb"}}, {**base, "name": "before"}]
    run_all.write_results(tmp_path / "R.md", "p", {}, {"regen": "v0001"}, records, (), {"regen": "bbbbbbbbbbbb"})
    md = (tmp_path / "R.md").read_text()
    assert "| regen | v0001 bbbbbbbbbbbb | v0001 aaaaaaaaaaaa (1); v0001 bbbbbbbbbbbb (1); v0001 (1) |" in md
    sections = {name: md.split(f"## {name}")[1].split("## ")[0] for name in ("elsewhere", "here", "before")}
    assert "other models than the latest: regen v0001 aaaaaaaaaaaa." in sections["elsewhere"]
    assert "other models" not in sections["here"] and "other models" not in sections["before"]
    bench = run_all.Bench(name="x")
    assert run_all.is_current(records[1], bench, {"regen": "v0001"}, {"regen": "bbbbbbbbbbbb"})
    assert not run_all.is_current(records[0], bench, {"regen": "v0001"}, {"regen": "bbbbbbbbbbbb"})
