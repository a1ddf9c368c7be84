"""Typed configs: defaults < YAML < overrides; unknown keys and wrong types are errors."""
import pytest
import yaml
from pydantic import Field

from docray.config import Config, ConfigError, load_config, parse_args, save_config


class Model(Config):
    width: int = Field(32, description="hidden width")
    act: str = "gelu"


class Job(Config):
    epochs: int = Field(10, ge=1, description="passes over the data")
    lr: float = 1e-3
    model: Model = Model()
    tags: list[str] = []


def test_defaults_file_overrides_precedence(tmp_path):
    f = tmp_path / "job.yaml"
    f.write_text("epochs: 3\nmodel:\n  width: 48\n")
    cfg = load_config(Job, f, ["model.width=64", "tags=[a, b]"])
    assert (cfg.epochs, cfg.model.width, cfg.model.act, cfg.tags) == (3, 64, "gelu", ["a", "b"])
    assert load_config(Job).epochs == 10


@pytest.mark.parametrize("overrides,match", [
    (["epoch=2"], "unknown key 'epoch' .*did you mean 'epochs'"),
    (["model.widht=3"], "unknown key 'model.widht'"),
    (["epochs=abc"], "epochs: "),
    (["epochs=0"], "epochs: "),
    (["epochs"], "expected key=value"),
])
def test_bad_overrides(overrides, match):
    with pytest.raises(ConfigError, match=match):
        load_config(Job, overrides=overrides)


def test_unknown_key_in_file_and_bad_file(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("epochs: 2\nmodle: {width: 3}\n")
    with pytest.raises(ConfigError, match="unknown key 'modle'"):
        load_config(Job, f)
    f.write_text("- a list\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(Job, f)
    with pytest.raises(ConfigError, match="not found"):
        load_config(Job, tmp_path / "missing.yaml")
    f.write_text("epochs: [2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(Job, f)


def test_an_override_that_is_not_yaml_is_its_text():
    assert load_config(Model, overrides=["act=..."]).act == "..."
    assert load_config(Model, overrides=["act=a: b: c"]).act == "a: b: c"
    with pytest.raises(ConfigError, match="width"):
        load_config(Model, overrides=["width=[1"])  # the text '[1' is still no int


def test_assignment_is_validated():
    cfg = Job()
    with pytest.raises(Exception):
        cfg.epochs = "many"


def test_saved_config_reloads_to_the_same(tmp_path):
    cfg = load_config(Job, overrides=["lr=0.5", "model.act=relu"])
    path = save_config(cfg, tmp_path / "out")
    assert yaml.safe_load(path.read_text())["model"]["act"] == "relu"
    assert load_config(Job, path) == cfg


def test_parse_args_help_lists_fields(capsys):
    with pytest.raises(SystemExit) as e:
        parse_args(Job, ["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "model.width (int, default 32): hidden width" in out and "--set" in out
    with pytest.raises(SystemExit) as e:
        parse_args(Job, ["--set", "nope=1"])
    assert e.value.code == 2 and "unknown key 'nope'" in capsys.readouterr().err
    assert parse_args(Job, ["--set", "epochs=4"]).epochs == 4


def test_tiny_sizes_fit_their_configs_and_apply_last(monkeypatch):
    """DOCRAY_TINY=1: each entry of docray/tiny.yaml names a config class whose fields take its values
    (a renamed field fails here), and they win over the command line."""
    import importlib

    from docray.config import _tiny_sizes, tiny_overrides
    from train_jobs.train_regen import RegenTrainConfig

    monkeypatch.setenv("DOCRAY_TINY", "1")
    for key in _tiny_sizes():
        module, name = key.split(":")
        cls = getattr(importlib.import_module(module), name)
        required = [k for k, f in cls.model_fields.items() if f.is_required()]
        load_config(cls, None, [f"{k}=x" for k in required])
    cfg = load_config(RegenTrainConfig, None, ["max_epochs=30", "lr=0.01"])
    assert cfg.max_epochs == tiny_overrides(RegenTrainConfig)["max_epochs"] == 1 and cfg.lr == 0.01
    monkeypatch.setenv("DOCRAY_TINY", "0")
    assert load_config(RegenTrainConfig, None, ["max_epochs=30"]).max_epochs == 30
