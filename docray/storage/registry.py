"""Model registry: versioned folders of weights, config and metrics.

Layout (root defaults to `$DOCRAY_HOME/models`, a local path or an fsspec URI):

    <root>/<name>/v0001/model.safetensors   the state dict (safetensors)
                        config.json         what builds the model (sorted keys)
                        metrics.json        evaluation figures ({} when none)
                        card.json           the model card: when it was saved, the weights' sha256,
                                            plus what the caller hands in (trainers:
                                            `train_jobs.common.model_card`)
                        <extra files>       anything else the caller hands in (tokeniser, labels...)
    <root>/<name>/v0002/...
    <root>/<name>/.tmp-<random>/            a save in progress (never listed)

A save writes everything into a hidden temp folder, then renames it to the next free version:
on local disk that rename is atomic, so a crash never leaves a half version visible, and two
concurrent saves get distinct versions (renaming onto an existing non-empty folder fails; the
loser takes the next number). On an object store there is no folder rename: files are copied with
`config.json` last, and only a folder holding both `model.safetensors` and `config.json` counts
as a version. Two saves of one name on an object store (two nodes) get distinct versions when a
database orders them (`DOCRAY_DB_URL`, or `db_url=`: Postgres in production): each claims its number
by a row of the table `model_versions`, unique on (root, name, version), before it writes; without
one the next free folder is taken, which two concurrent saves may both take.

`card(name, version)` reads a version's card: card.json with its config and metrics beside it
(the whole record of how the version was made, for `docray models show`). `pin(name, version)`
turns `latest` into the version it is now, so everything deployed from one config loads the same one.
Version names count per registry (v0001 here is not v0001 on another machine); `digest(name,
version)`, the sha256 of the weights, tells versions apart across registries.

A model is named in configs as `registry:NAME` (its newest version) or `registry:NAME@vNNNN`;
`parse_ref` reads both (and `registry:NAME:vNNNN`, the spelling of libraries built before), `ref`
writes them.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import secrets
import shutil
import threading
import time

import safetensors.torch
import torch
from torch import nn

from docray import paths
from docray.storage.blobs import NotFound, atomic_write, filesystem, is_local

WEIGHTS, CONFIG, METRICS, CARD = "model.safetensors", "config.json", "metrics.json", "card.json"
_VERSION = re.compile(r"^v(\d{4,})$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")


def _check_name(name: str, what: str = "model name") -> str:
    if not isinstance(name, str) or not _NAME.match(name) or ".." in name:
        raise ValueError(f"{what} {name!r}: use letters, digits, '_', '-', '.' (not leading, no '..')")
    return name


PREFIX = "registry:"


def parse_ref(ref: str) -> tuple[str, str] | None:
    """`registry:NAME[@VERSION]` -> (NAME, VERSION or 'latest'); None for anything else (a folder,
    `build:<factory>`). `registry:NAME:VERSION` reads the same (older screening libraries wrote it)."""
    if not isinstance(ref, str) or not ref.startswith(PREFIX):
        return None
    body = ref[len(PREFIX):]
    name, sep, version = body.partition("@")
    if not sep:
        name, _, version = body.partition(":")
    return _check_name(name), version or "latest"


def ref(name: str, version: str = "latest") -> str:
    """The config reference of a model: `registry:NAME` for its newest version, else `registry:NAME@VERSION`."""
    return PREFIX + _check_name(name) + ("" if version == "latest" else f"@{version}")


def _tensors(state: dict | nn.Module) -> dict[str, torch.Tensor]:
    """A CPU copy of a state dict that safetensors accepts (contiguous, no shared storage)."""
    if isinstance(state, nn.Module):
        state = state.state_dict()
    out = {}
    for k, v in state.items():
        if not isinstance(v, torch.Tensor):
            raise TypeError(f"state dict entry {k!r} is a {type(v).__name__}, not a tensor")
        out[k] = v.detach().to("cpu", copy=True).contiguous()
    return out


def _json(obj, what: str) -> bytes:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        obj = dataclasses.asdict(obj)
    if not isinstance(obj, dict):
        raise TypeError(f"{what} must be a dict (or a dataclass), got {type(obj).__name__}")
    try:
        return json.dumps(obj, indent=2, sort_keys=True).encode()
    except (TypeError, ValueError) as e:
        raise TypeError(f"{what} is not JSON-serialisable: {e}") from None


_claims: dict = {}  # database URL -> (engine, table), one per process
_claims_lock = threading.Lock()


def _claims_table(url: str):
    """(engine, the `model_versions` table) of a database URL, the table made on first use."""
    from sqlalchemy import Column, Integer, MetaData, String, Table, UniqueConstraint, create_engine, inspect
    from sqlalchemy.exc import DBAPIError

    with _claims_lock:
        if url not in _claims:
            table = Table("model_versions", MetaData(), Column("root", String(1024), nullable=False),
                          Column("name", String(255), nullable=False), Column("version", Integer, nullable=False),
                          UniqueConstraint("root", "name", "version", name="uq_model_version"))
            engine = create_engine(url, **({"connect_args": {"timeout": 30}} if url.startswith("sqlite") else
                                           {"pool_pre_ping": True}))
            try:
                table.metadata.create_all(engine)
            except DBAPIError:  # another process made it at the same moment
                if not inspect(engine).has_table(table.name):
                    raise
            _claims[url] = (engine, table)
        return _claims[url]


class ModelRegistry:
    """Versioned model folders under `root` (default `$DOCRAY_HOME/models`); `db_url` (default
    `DOCRAY_DB_URL`) orders the versions of saves to an object store (see the module docstring)."""

    def __init__(self, root: str | None = None, db_url: str | None = None):
        self.root = (root or paths.sub("models")).rstrip("/")
        self.fs, self._base = filesystem(self.root)
        self._base = self._base.rstrip("/")
        self.local = is_local(self.fs)
        url = db_url or os.environ.get("DOCRAY_DB_URL")
        self.db_url = url and re.sub(r"^postgres(ql)?://", "postgresql+psycopg://", url)

    def __repr__(self) -> str:
        return f"ModelRegistry({self.root!r})"

    # -- listing -------------------------------------------------------------------------------

    def _dirs(self, path: str) -> list[str]:
        """Names of the sub-folders of `path` ([] when it does not exist)."""
        try:
            entries = self.fs.ls(path, detail=True)
        except FileNotFoundError:
            return []
        return [e["name"].rstrip("/").rsplit("/", 1)[-1] for e in entries if e["type"] == "directory"]

    def _complete(self, folder: str) -> bool:
        return self.fs.isfile(f"{folder}/{WEIGHTS}") and self.fs.isfile(f"{folder}/{CONFIG}")

    def versions(self, name: str) -> list[str]:
        """Complete versions of `name`, oldest first (`[]` for an unknown name)."""
        _check_name(name)
        found = [d for d in self._dirs(f"{self._base}/{name}") if _VERSION.match(d)]
        found = [d for d in found if self._complete(f"{self._base}/{name}/{d}")]
        return sorted(found, key=lambda d: int(d[1:]))

    def names(self) -> list[str]:
        """Models with at least one complete version."""
        return sorted(n for n in self._dirs(self._base) if _NAME.match(n) and self.versions(n))

    def latest(self, name: str) -> str:
        """The newest complete version of `name`; `KeyError` when it has none."""
        found = self.versions(name)
        if not found:
            raise NotFound(f"no model named {name!r} in {self.root}; models: {self.names()}")
        return found[-1]

    def resolve(self, name: str, version: str | int = "latest") -> str:
        """The version `version` names (`latest`, `vNNNN` or its number); `NotFound` when there is none."""
        if version == "latest":
            return self.latest(name)
        if isinstance(version, int):
            version = f"v{version:04d}"
        found = self.versions(name)
        if not found:
            raise NotFound(f"no model named {name!r} in {self.root}; models: {self.names()}")
        if version not in found:
            raise NotFound(f"model {name!r} has no version {version!r}; versions: {found}")
        return version

    def path(self, name: str, version: str | int = "latest") -> str:
        """The version's folder, as a local path or a URI."""
        return f"{self.root}/{name}/{self.resolve(name, version)}"

    # -- save / load ---------------------------------------------------------------------------

    def save(
        self,
        name: str,
        state_dict_or_module: dict | nn.Module,
        config: dict,
        metrics: dict | None = None,
        extra_files: dict[str, bytes] | None = None,
        card: dict | None = None,
    ) -> str:
        """Save a new version of `name`; returns it (`v0001`, `v0002`, ...). `card`: how it was made
        (written as card.json with `saved_at`, UTC, and `weights_sha256`)."""
        _check_name(name)
        files = {}
        for fname, data in (extra_files or {}).items():
            _check_name(fname, "extra file name")
            if fname in (WEIGHTS, CONFIG, METRICS, CARD):
                raise ValueError(f"extra file {fname!r} would overwrite the registry's own file")
            if not isinstance(data, (bytes, bytearray)):
                raise TypeError(f"extra file {fname!r}: expected bytes, got {type(data).__name__}")
            files[fname] = bytes(data)
        weights = safetensors.torch.save(_tensors(state_dict_or_module))  # the arguments checked first
        card = {**(card or {}), "saved_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "weights_sha256": hashlib.sha256(weights).hexdigest()}
        files.update({WEIGHTS: weights, CONFIG: _json(config, "config"), METRICS: _json(metrics or {}, "metrics"),
                      CARD: _json(card, "card")})
        return self._save_local(name, files) if self.local else self._save_remote(name, files)

    def _next_number(self, name: str) -> int:
        nums = [int(m.group(1)) for d in self._dirs(f"{self._base}/{name}") if (m := _VERSION.match(d))]
        return max(nums, default=0) + 1

    def _save_local(self, name: str, files: dict[str, bytes]) -> str:
        parent = os.path.join(self._base, name)
        os.makedirs(parent, exist_ok=True)
        tmp = os.path.join(parent, f".tmp-{secrets.token_hex(6)}")
        os.mkdir(tmp)
        try:
            for fname, data in files.items():
                atomic_write(os.path.join(tmp, fname), data)
            for _ in range(100):  # a concurrent save may take our number: take the next one
                version = f"v{self._next_number(name):04d}"
                try:
                    os.rename(tmp, os.path.join(parent, version))  # atomic; fails onto a non-empty folder
                    return version
                except OSError:
                    if not os.path.isdir(os.path.join(parent, version)):
                        raise
            raise RuntimeError(f"could not allocate a version for {name!r} in {parent}")
        finally:
            shutil.rmtree(tmp, ignore_errors=True)  # gone already after a successful rename

    def _claim(self, name: str) -> int:
        """The number of a new remote version of `name`: the next free folder, claimed in the database
        (a unique row: of two concurrent claims of one number the second fails and takes the next)."""
        number = self._next_number(name)
        if not self.db_url:
            return number
        from sqlalchemy import func, select
        from sqlalchemy.exc import IntegrityError

        engine, t = _claims_table(self.db_url)
        mine = (t.c.root == self.root) & (t.c.name == name)
        with engine.connect() as c:
            number = max(number, (c.execute(select(func.max(t.c.version)).where(mine)).scalar() or 0) + 1)
        for _ in range(100):
            try:
                with engine.begin() as c:
                    c.execute(t.insert().values(root=self.root, name=name, version=number))
                return number
            except IntegrityError:
                number += 1
        raise RuntimeError(f"could not claim a version of {name!r} in {self.root}")

    def _save_remote(self, name: str, files: dict[str, bytes]) -> str:
        version = f"v{self._claim(name):04d}"
        dest = f"{self._base}/{name}/{version}"
        self.fs.makedirs(dest, exist_ok=True)
        for fname in sorted(files, key=lambda f: f == CONFIG):  # config.json last: marks completion
            self.fs.pipe_file(f"{dest}/{fname}", files[fname])
        return version

    def load(
        self, name: str, version: str | int = "latest", device: str = "cpu"
    ) -> tuple[dict[str, torch.Tensor], dict, dict]:
        """`(state_dict, config, metrics)` of a version (default: the latest)."""
        folder = f"{self._base}/{name}/{self.resolve(name, version)}"
        if self.local:
            state = safetensors.torch.load_file(f"{folder}/{WEIGHTS}", device=device)
        else:
            raw = safetensors.torch.load(self.fs.cat_file(f"{folder}/{WEIGHTS}"))
            state = {k: v.to(device) for k, v in raw.items()}
        config = json.loads(self.fs.cat_file(f"{folder}/{CONFIG}"))
        metrics = json.loads(self.fs.cat_file(f"{folder}/{METRICS}")) if self.fs.isfile(f"{folder}/{METRICS}") else {}
        return state, config, metrics

    def read_file(self, name: str, filename: str, version: str | int = "latest") -> bytes:
        """One file of a version (an extra file, or config/metrics raw)."""
        folder = f"{self._base}/{name}/{self.resolve(name, version)}"
        _check_name(filename, "file name")
        try:
            return self.fs.cat_file(f"{folder}/{filename}")
        except FileNotFoundError:
            raise NotFound(f"model {name!r} {version!r} has no file {filename!r}") from None

    def card(self, name: str, version: str | int = "latest") -> dict:
        """The version's card: `name`, `version`, card.json's fields (none for a version saved before
        cards), `config` and `metrics`."""
        version = self.resolve(name, version)
        folder = f"{self._base}/{name}/{version}"

        def read(fname: str) -> dict:
            return json.loads(self.fs.cat_file(f"{folder}/{fname}")) if self.fs.isfile(f"{folder}/{fname}") else {}

        return {"name": name, "version": version, **read(CARD), "config": read(CONFIG), "metrics": read(METRICS)}

    def digest(self, name: str, version: str | int = "latest") -> str:
        """The sha256 of the version's weights: its card's, else (a version saved before cards kept
        it) computed from the file."""
        version = self.resolve(name, version)
        folder = f"{self._base}/{name}/{version}"
        card = json.loads(self.fs.cat_file(f"{folder}/{CARD}")) if self.fs.isfile(f"{folder}/{CARD}") else {}
        if card.get("weights_sha256"):
            return card["weights_sha256"]
        h = hashlib.sha256()
        with self.fs.open(f"{folder}/{WEIGHTS}", "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        return h.hexdigest()

    def pin(self, name: str, version: str | int = "latest") -> str:
        """`resolve(name, version)`, except that a name with no version at all is left as given (so a
        Serve app builds without models; its replicas then report the missing model). A version the
        registered name lacks is a `NotFound` here."""
        if version == "latest" and not self.versions(name):
            return "latest"
        return self.resolve(name, version)
