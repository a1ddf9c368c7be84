"""The cut-out library's versions, ordered by a database: who publishes version N+1.

A library (`docray.screening.library`) is files under a root, a local folder or an `s3://` URI:
shards, index folders and manifests, none of them ever rewritten. What makes version N+1 exist is
one row of the table `library_versions`:

    library_versions  id, root (the library's absolute path or URI), version, manifest JSON,
                      created_at, writer ('host:pid'); unique (root, version)

Publishing is an INSERT of (root, N+1, its manifest) after every file it names is written. Two
writers that both start from version N race on that INSERT: the unique key lets exactly one win
(SQLite and Postgres alike); the loser gets `VersionTaken`, deletes its files, loads the newest
version and redoes its append on top of it (`Library.append`). The newest version of a root is
`max(version)` of its rows; a library built before this table (or written without a database)
has no rows, and its `manifest.json` says which version it is at.

What a row holds, and compaction. Each row holds its version's WHOLE manifest (shard lists, index
folder), so a reader's reload is one row read. A manifest names one tile shard (and one features
shard) per version since the last compaction, so without anything else the rows would grow by one
shard a version and the table by O(N^2). `Library.compact` bounds both: it merges every shard into
one tile shard and one features shard, published as a new version by the same INSERT race as an
append, and then deletes the rows (`prune`) and manifest copies of versions older than the newest
`keep_versions`, and the shard files only they named. After a compaction the table holds
`keep_versions` rows (plus one per append since), each naming a few shards; a reload reads one row
and a few shards. Why not rows of deltas (the shards a version added): a reader would then replay a
chain of rows back to a full snapshot, and bounding that chain needs the same snapshot-and-prune
step; whole manifests plus pruning keep the read path as it was, and rows written before this
(whole manifests) are simply the old rows.

Pruning rows must not let a stale writer win: with version k's row deleted, a writer still on a
version before k could INSERT k without a unique-key conflict. `publish` therefore checks, inside
its INSERT's transaction, that no row of a higher version exists (the newest row is never pruned,
so a pruned version always has a newer row), and rolls back as `VersionTaken` otherwise.

Why optimistic concurrency and not a lease row with an expiry: an append's costly part (de-
duplication against the library, the index add, uploading shards and the index) runs while
holding nothing, so a slow or dead writer never stops another writer or any reader, and there is
no expiry to tune against clock skew or a writer paused by a garbage collection; the one atomic
step is a unique-key INSERT that every SQL database does. The price is that a loser redoes its
work, which is cheap where writes are rare next to reads (targets added by hand, tiles learned by
the second match) and bounded (`Library.append`'s `max_tries`).

Which database: `db_url` (argument or the Serve/job config), else `DOCRAY_DB_URL` (Postgres in
production, the repository's database: `docray.storage.repository`), else, for a library in a local
folder, the SQLite file `<root>/versions.db` (it moves with the folder; created by the first
write). A library in object storage has no such default: reading it without a database follows
its `manifest.json`, writing it needs one (every node must reach the same database). Every writer
of one library must use the same database: a `manifest.json` ahead of the database's newest row
means another one wrote it, and writing is refused with an error that says so.
"""
from __future__ import annotations

import json
import os
import socket
import threading
from datetime import datetime, timezone

from sqlalchemy import JSON, DateTime, Integer, String, UniqueConstraint, create_engine, func, inspect, select
from sqlalchemy import update as sql_update
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.pool import NullPool

from docray import paths
from docray.storage import blobs
from docray.storage.repository import _normalise_url

DB_FILE = "versions.db"  # the default SQLite file inside a local library's folder


class VersionTaken(RuntimeError):
    """Another writer published this version first: load the newest version and append again."""


class Base(DeclarativeBase):
    pass


class LibraryVersion(Base):
    __tablename__ = "library_versions"
    __table_args__ = (UniqueConstraint("root", "version", name="uq_library_version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    root: Mapped[str] = mapped_column(String(1024))
    version: Mapped[int] = mapped_column(Integer)
    manifest: Mapped[dict] = mapped_column(JSON().with_variant(JSONB(), "postgresql"))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    writer: Mapped[str] = mapped_column(String(255))


_engines: dict[str, object] = {}
_engines_lock = threading.Lock()


def _engine(url: str, create: bool = False):
    """One engine per URL for the process, its table made on first use (and again with `create`: a
    SQLite file made anew at a path seen before). SQLite without a pool: a connection per use, so no
    file stays open after a library folder is gone."""
    with _engines_lock:
        engine = _engines.get(url)
        if engine is None:
            if url.startswith("sqlite"):  # the rollback journal, not WAL: a read leaves no -wal/-shm file beside it
                engine = create_engine(url, connect_args={"timeout": 30}, poolclass=NullPool)
            else:
                engine = create_engine(url, pool_pre_ping=True)
            create = True
        if create:
            try:
                Base.metadata.create_all(engine)
            except DBAPIError:  # two processes made the table at once: the loser's CREATE fails, the table is there
                if not inspect(engine).has_table(LibraryVersion.__tablename__):
                    raise
        _engines[url] = engine
        return engine


def normalise_root(root) -> str:
    """The key of a library in the table: an absolute local path, or the URI without a trailing '/'."""
    root = paths.absolute(str(root))
    return root.rstrip("/") if paths.is_uri(root) else root


class VersionStore:
    """The versions of one library root: the newest, its manifest, publishing the next."""

    def __init__(self, root, db_url: str | None = None):
        self.root = normalise_root(root)
        url = db_url or os.environ.get("DOCRAY_DB_URL")
        if url:
            self.url = _normalise_url(url)
        elif paths.is_uri(self.root):
            self.url = None  # read-only: manifest.json (see `publish`)
        else:
            self.url = f"sqlite:///{paths.join(self.root, DB_FILE)}"

    def __repr__(self) -> str:
        return f"VersionStore({self.root!r}, {self.url!r})"

    def _db(self, write: bool = False):
        """The engine, or None when there is nothing to read (no database; a local default not made yet)."""
        if self.url is None:
            return None
        if self.url.startswith("sqlite:///"):
            file = self.url[len("sqlite:///"):]
            if not os.path.exists(file):
                if not write:
                    return None
                os.makedirs(os.path.dirname(file), exist_ok=True)
                return _engine(self.url, create=True)
        return _engine(self.url)

    # -- reading ------------------------------------------------------------------------------
    def db_version(self) -> int:
        """The newest version the database holds for this root (0: no row)."""
        engine = self._db()
        if engine is None:
            return 0
        with engine.connect() as c:
            return int(c.execute(select(func.max(LibraryVersion.version)).where(LibraryVersion.root == self.root)).scalar() or 0)

    def manifest_file(self) -> dict | None:
        """`<root>/manifest.json` (a copy of a recent version; the only record of a library built without
        a database), or None."""
        try:
            return json.loads(blobs.read_file(paths.join(self.root, "manifest.json")))
        except FileNotFoundError:
            return None

    def newest(self) -> int:
        """The newest version: the database's, else (no row for this root) `manifest.json`'s; 0 when neither."""
        v = self.db_version()
        if v:
            return v
        m = self.manifest_file()
        return int(m["version"]) if m else 0

    def manifest(self, version: int | None = None) -> dict | None:
        """The manifest of `version` (None: the newest); None when there is no library."""
        engine = self._db()
        if engine is not None:
            with engine.connect() as c:
                q = select(LibraryVersion.manifest).where(LibraryVersion.root == self.root)
                q = q.where(LibraryVersion.version == version) if version else q.order_by(LibraryVersion.version.desc())
                row = c.execute(q.limit(1)).first()
            if row is not None:
                return dict(row[0])
        m = self.manifest_file()
        if m is not None and version and int(m["version"]) != version:
            try:
                return json.loads(blobs.read_file(paths.join(self.root, "manifests", f"v{version:04d}.json")))
            except FileNotFoundError:
                return None
        return m

    # -- writing ------------------------------------------------------------------------------
    def check_writable(self) -> None:
        """Raise unless this store can publish: a database, the same one every earlier writer used."""
        if self.url is None:
            raise ValueError(f"the library at {self.root} is in object storage: writing it needs a database that "
                             "every writer reaches (set DOCRAY_DB_URL, e.g. postgresql://..., or pass db_url)")
        db, m = self.db_version(), self.manifest_file()
        if db and m is not None and int(m["version"]) > db:
            raise RuntimeError(f"{self.root}: manifest.json is at version {m['version']} but the database "
                               f"{self.url.split('@')[-1]} only knows {db}: another database ordered its writes; "
                               "point every writer of this library at the same database (DOCRAY_DB_URL)")

    def publish(self, manifest: dict) -> None:
        """INSERT the row of `manifest['version']`; `VersionTaken` when another writer published it first."""
        self.check_writable()
        row = dict(root=self.root, version=int(manifest["version"]), manifest=manifest,
                   created_at=datetime.now(timezone.utc), writer=f"{socket.gethostname()}:{os.getpid()}")
        taken = VersionTaken(f"{self.root}: version {manifest['version']} was published by another writer")
        try:
            with self._db(write=True).begin() as c:
                c.execute(LibraryVersion.__table__.insert().values(**row))
                # a newer row: this writer is stale and its version's row was pruned (see the module docstring)
                if c.execute(select(func.max(LibraryVersion.version))
                             .where(LibraryVersion.root == self.root)).scalar() > row["version"]:
                    raise taken  # rolls the INSERT back
        except IntegrityError:
            raise taken from None

    def manifests(self, first: int = 1, last: int | None = None) -> dict[int, dict]:
        """The manifests of the database's versions `first`..`last` (None: the newest), by version."""
        engine = self._db()
        if engine is None:
            return {}
        q = select(LibraryVersion.version, LibraryVersion.manifest).where(
            LibraryVersion.root == self.root, LibraryVersion.version >= first)
        if last is not None:
            q = q.where(LibraryVersion.version <= last)
        with engine.connect() as c:
            return {int(v): dict(m) for v, m in c.execute(q)}

    def prune(self, last: int) -> int:
        """Delete the rows of versions up to `last` (compaction; never the newest); returns the rows deleted."""
        engine = self._db()
        if engine is None:
            return 0
        last = min(last, self.db_version() - 1)
        with engine.begin() as c:
            return c.execute(LibraryVersion.__table__.delete().where(
                LibraryVersion.root == self.root, LibraryVersion.version <= last)).rowcount

    def versions(self) -> list[int]:
        """Every version the database holds for this root, ascending (for checks and tests)."""
        engine = self._db()
        if engine is None:
            return []
        with engine.connect() as c:
            q = select(LibraryVersion.version).where(LibraryVersion.root == self.root).order_by(LibraryVersion.version)
            return [int(v) for v in c.execute(q).scalars()]

    def rename(self, new_root) -> int:
        """Re-key this root's rows to `new_root` (the library's files were moved there); returns the rows moved."""
        engine = self._db()
        if engine is None:
            return 0
        with engine.begin() as c:
            return c.execute(sql_update(LibraryVersion).where(LibraryVersion.root == self.root)
                             .values(root=normalise_root(new_root))).rowcount
