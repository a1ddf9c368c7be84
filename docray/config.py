"""Typed configs for every job and app: defaults in code, a YAML file, command-line overrides.

    class TrainConfig(Config):
        epochs: int = Field(10, description="passes over the training set")
        model: ModelConfig = ModelConfig()

    cfg = load_config(TrainConfig, "train.yaml", ["epochs=2", "model.width=64"])
    save_config(cfg, out_dir)          # writes out_dir/config.yaml, the resolved config

Precedence: code defaults < YAML file < overrides (`key.sub=value`, the value parsed as YAML).
Unknown keys are an error (with the closest known key suggested), as are values of the wrong type.
Jobs get all of this, plus a `--help` that lists every field, from `parse_args(ConfigCls)`.

`DOCRAY_TINY=1` in the environment makes every job tiny: the config class's overrides in
`docray/tiny.yaml` (smoke-test sizes: a few rows, one short epoch, the `*_tiny` models) are applied
last, over the file and the command line. It is for checking that commands run (the docs' commands
are tested this way), never for results.
"""
from __future__ import annotations

import argparse
import difflib
import functools
import json
import os
import sys
from pathlib import Path
from typing import Any, Sequence, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

C = TypeVar("C", bound="Config")


class ConfigError(ValueError):
    """A config file or override that does not fit its config class."""


TINY_ENV = "DOCRAY_TINY"


def tiny() -> bool:
    """Whether `DOCRAY_TINY` asks every job to run at its smoke-test size."""
    return os.environ.get(TINY_ENV, "").strip().lower() not in ("", "0", "false", "no")


@functools.cache
def _tiny_sizes() -> dict:
    return yaml.safe_load((Path(__file__).parent / "tiny.yaml").read_text())


def tiny_overrides(cls: type) -> dict:
    """The smoke-test overrides of config class `cls` (docray/tiny.yaml; {} if it has none)."""
    module = cls.__module__
    if module == "__main__":  # `python -m train_jobs.x`: the module's real name
        module = getattr(sys.modules["__main__"].__spec__, "name", module)
    return _tiny_sizes().get(f"{module}:{cls.__qualname__}") or {}


class Config(BaseModel):
    """Base of every docray config: unknown keys are errors; assignments are validated too."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())


def _set_nested(data: dict, dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    for key in parents:
        data = data.setdefault(key, {})
        if not isinstance(data, dict):
            raise ConfigError(f"override {dotted!r}: {key!r} is not a section")
    data[leaf] = value


def _fields(cls: type[BaseModel], prefix: str = "") -> list[str]:
    names = []
    for name, field in cls.model_fields.items():
        names.append(prefix + name)
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            names += _fields(ann, prefix + name + ".")
    return names


def _explain(cls: type[BaseModel], err: ValidationError) -> str:
    known = _fields(cls)
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"])
        if e["type"] == "extra_forbidden":
            near = difflib.get_close_matches(key, known, n=1)
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            lines.append(f"unknown key {key!r}{hint}")
        else:
            lines.append(f"{key}: {e['msg']} (got {e.get('input')!r})")
    return f"invalid {cls.__name__}: " + "; ".join(lines)


def _value(raw: str) -> Any:
    """An override's value as YAML reads it (`2`, `true`, `[a, b]`), or the text itself where it is not
    YAML on its own (`...`, `a: b: c`): a path or a name is never an error."""
    try:
        return yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        return raw


def _merge(data: dict, over: dict) -> dict:
    """`data` with `over` laid on top, section by section."""
    out = dict(data)
    for key, value in over.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def load_config(cls: type[C], path: str | Path | None = None, overrides: Sequence[str] = ()) -> C:
    """Build `cls` from code defaults, then the YAML file at `path`, then `key=value` overrides."""
    data: dict = {}
    if path is not None:
        path = Path(path)
        if not path.exists():
            raise ConfigError(f"config file not found: {path}")
        try:
            loaded = yaml.safe_load(path.read_text())
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML: {e}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level, got {type(loaded).__name__}")
        data = loaded or {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r}: expected key=value")
        _set_nested(data, key.strip(), _value(raw))
    if tiny():
        data = _merge(data, tiny_overrides(cls))
    try:
        return cls.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_explain(cls, e)) from None


def save_config(cfg: Config, out_dir: str | Path, name: str = "config.yaml") -> Path | str:
    """Write the resolved config beside a job's outputs (a local folder or a URI, e.g. under an
    s3:// DOCRAY_HOME); returns the file written: a Path locally, the URI on object storage."""
    from docray import paths
    from docray.storage.blobs import write_file

    plain = json.loads(cfg.model_dump_json())  # JSON-safe (paths, tuples) before YAML
    path = write_file(paths.join(str(out_dir), name),
                      (f"# resolved {type(cfg).__name__}\n" + yaml.safe_dump(plain, sort_keys=False)).encode())
    return path if paths.is_uri(path) else Path(path)


def describe(cls: type[BaseModel], prefix: str = "", defaults: BaseModel | None = None) -> list[str]:
    """One line per field: `key (type, default ...): description`, nested sections flattened (a section's
    defaults are the parent's default instance of it, e.g. `n: Counts = Counts(documents=300)`)."""
    lines = []
    for name, field in cls.model_fields.items():
        ann = field.annotation
        default = getattr(defaults, name) if defaults is not None else field.get_default(call_default_factory=True)
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            lines += describe(ann, prefix + name + ".", default if isinstance(default, ann) else None)
            continue
        tname = getattr(ann, "__name__", str(ann).replace("typing.", ""))
        desc = f": {field.description}" if field.description else ""
        lines.append(f"  {prefix + name} ({tname}, default {default!r}){desc}")
    return lines


def parse_args(cls: type[C], argv: Sequence[str] | None = None, description: str | None = None) -> C:
    """The standard command line of a job or app: `--config FILE` and `--set key=value ...`."""
    parser = argparse.ArgumentParser(
        description=description,
        epilog="config keys (set in --config YAML or with --set key=value):\n" + "\n".join(describe(cls))
        + (f"\n\n{TINY_ENV}=1 (smoke tests, not results) sets last: {json.dumps(tiny_overrides(cls))}"
           if tiny_overrides(cls) else ""),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", metavar="FILE", help="YAML file with config values (unknown keys are an error)")
    parser.add_argument("--set", metavar="KEY=VALUE", nargs="*", default=[], dest="overrides",
                        help="overrides applied after the file, e.g. --set epochs=2 model.width=64")
    args = parser.parse_args(argv)
    try:
        return load_config(cls, args.config, args.overrides)
    except ConfigError as e:
        parser.error(str(e))
