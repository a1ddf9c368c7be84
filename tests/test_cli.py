"""The `docray` command: --help everywhere, info, errors as messages, not tracebacks."""
import json

import click
import pytest
from click.testing import CliRunner

from cluster.cli import main


@pytest.fixture
def runner():
    return CliRunner()


def _commands(group, prefix=()):
    ctx = click.Context(group)
    for name in group.list_commands(ctx):
        cmd = group.get_command(ctx, name)
        yield prefix + (name,)
        if isinstance(cmd, click.Group):
            yield from _commands(cmd, prefix + (name,))


def test_every_command_has_help(runner):
    paths = [()] + list(_commands(main))
    assert ("info",) in paths and ("synth",) in paths
    for job in [("submit",), ("models", "build"), ("recognition", "pretrain"), ("recognition", "train"),
                ("recognition", "archive"), ("recognition", "quickstart"), ("screening", "train"), ("screening", "build"),
                ("screening", "rescan"), ("privacy", "train"), ("privacy", "grid"), ("regen", "train"),
                ("regen", "archive")]:  # the entry layer's
        assert job in paths, job
    for lib in [("doctor",), ("recognition", "image"), ("screening", "query"), ("screening", "info"), ("data", "import"),
                ("calibrate", "screening"), ("privacy", "report"), ("api", "health")]:  # the library's
        assert lib in paths, lib
    for path in paths:  # the job commands pass --help on to their module, whose help lists its config keys
        res = runner.invoke(main, [*path, "--help"])
        assert res.exit_code == 0, (path, res.output)
        assert "usage:" in res.output.lower() and len(res.output) > 80


def test_info_json(runner, home):
    res = runner.invoke(main, ["info", "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert data["docray_home"] == str(home.resolve())
    assert data["devices"]["cpu_count"] >= 1 and data["devices"]["gpu_count"] >= 0
    assert data["versions"]["torch"].startswith("2.13.0")
    assert "embedded" in data["ray_address"] or data["ray_address"]


def test_info_table(runner, home, monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "ray://example:10001")
    res = runner.invoke(main, ["info"])
    assert res.exit_code == 0
    assert "ray://example:10001" in res.output and str(home.resolve()) in res.output and "gpus" in res.output


def test_synth_writes_shards_and_sheet(runner, tmp_path):
    out = tmp_path / "masks"
    res = runner.invoke(main, ["synth", "masks", "--n", "12", "--out", str(out), "--rows-per-shard", "5", "--no-ray"])
    assert res.exit_code == 0, res.output
    import pyarrow.parquet as pq

    files = sorted(out.glob("*.parquet"))
    assert len(files) == 3 and sum(pq.read_metadata(f).num_rows for f in files) == 12
    assert (out / "contact_sheet.png").stat().st_size > 1000


def test_synth_bad_option_is_a_message(runner, tmp_path):
    res = runner.invoke(main, ["synth", "masks", "--n", "2", "--out", str(tmp_path / "x"), "--opt", "colour=3", "--no-ray"])
    assert res.exit_code != 0 and "Error" in res.output and "Traceback" not in res.output
    res = runner.invoke(main, ["synth", "pictures", "--n", "2"])
    assert res.exit_code == 2 and "is not one of" in res.output


def test_library_cli_stays_below_the_entry_layer():
    """The entry layer adds its job commands to copies of the library's groups, never to the library's own."""
    from docray.privacy.cli import privacy
    from docray.recognition.cli import recognition
    from docray.screening.cli import screening

    assert set(recognition.commands) == {"image"} and set(screening.commands) == {"query", "info", "compact"}
    assert set(privacy.commands) == {"report", "tables", "sheet", "attacks", "calibrate"}
    res = CliRunner().invoke(main, ["recognition", "--help"])
    assert res.exit_code == 0 and "pretrain" in res.output and "image" in res.output
