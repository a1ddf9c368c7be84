"""The image repository: original, processed and compressed images, one-to-one, with attachments.

Metadata lives in SQL (SQLAlchemy 2): a SQLite file by default, Postgres by URL (argument, or the
`DOCRAY_DB_URL` environment variable; blobs likewise from `DOCRAY_BLOB_ROOT`, e.g. an s3:// URI)
(`postgresql+psycopg://user:pass@host/db`; a bare `postgresql://` gets the psycopg driver).
Bytes live in a `BlobStore` (local folder or S3). Default layout under `$DOCRAY_HOME`:

    repository/repository.db                                  SQLite metadata
    repository/blobs/original/<id[:2]>/<id>-<sha256>           original uploads (admin-only to read)
    repository/blobs/processed/<id[:2]>/<id>-<sha256>          regenerated images
    repository/blobs/compressed/<id[:2]>/<id>-<sha256>         per-type compressed images
    repository/blobs/attachments/<kind>/<id[:2]>/<id>-<sha256> portrait, document and seal crops

A blob belongs to one record (`<id>` is the record's id): equal bytes in two records are two
blobs, so deleting a person's record deletes exactly its bytes and nothing another record needs.
(Records written before this layout have content-addressed keys, `<what>/<sha[:2]>/<sha256>`,
that two records may share; deleting one removes such a blob only when no other record uses it.)

Tables:
    records      id (uuid hex), created_at, doc_type, meta JSON, split JSON,
                 original_key NOT NULL, processed_key, compressed_key, *_bytes sizes,
                 deleted_at (a deletion under way), original_state ('purging', 'purged'), original_purged_at
    attachments  id, record_id -> records.id, seq, kind ('portrait', 'seal', ...), key, size, meta JSON, purged_at
    audit        id, at (UTC), actor (API-key id, 'role:<role>', 'cli:<user>', 'retention'), role,
                 action ('read', 'delete', 'purge', 'enrol'), record_id, identity_id, what, route
    enrolments   id, identity_id, model, image_sha256, mask_id, dim, embedding (float32 bytes), created_at;
                 unique (identity_id, model, image_sha256): private recognition's gallery (below)

One-to-one: the three images are columns of one record row, so a record has exactly one original
and at most one processed and one compressed image; attachments point at their record.

Writes: blobs first, then ONE transaction for the rows. A crash or error before the commit leaves
no visible record, only unreferenced blobs; `gc()` deletes blobs that no record references once
they are older than a grace period (so it cannot race a concurrent `add` whose blobs are written
but not yet committed). Columns added since a database was created are added when it is opened.
A database server that goes away under `add` (a Postgres restart, a failover) is waited for, up to
`reconnect_s`: the transaction is sent again, and when the connection died after the COMMIT was sent
(the commit may have happened, its answer lost) the retry finds the row by its id and reports the
write done. So `add` returns only when the record is whole and visible, and raises only when it is
not there (or, past `reconnect_s` with the server still away after a COMMIT, with its outcome
unknown: the error says so; the record id names it).

Data protection (identity data):
- `delete(id)`: (1) one transaction marks the row deleted (`deleted_at`) and writes the audit
  entry: from this commit on every read answers NotFound and no write touches the record; (2) its
  blobs are removed (the keys its rows name and every key under its own prefixes, so an image an
  `update` replaced goes too); (3) one transaction deletes the record and attachment rows. A blob
  that cannot be removed stops at (2) with `DeletionIncomplete`: the record stays invisible, and
  `delete` again (or the next `purge`) finishes the job. A second delete of a finished one:
  NotFound.
- The gallery of private recognition (`/v1/privacy/enrol`): an identity is its enrolment rows, each
  one embedding of one masked image (never the image) made by one model. `enrol` adds one (the same
  image twice for an identity and model: `AlreadyEnrolled`, by the unique key, so two racing requests
  cannot both store it) with an 'enrol' audit entry; `gallery(model)` reads them back;
  `delete_identity(id)` deletes every enrolment of the identity with its 'delete' audit entry in ONE
  transaction (there are no blobs, so no step can be left half done); a second delete is NotFound.
- `purge(older_than)`: the retention period. Records older than it lose their original and the
  attachments that hold its pixels (every kind only admins read: the portrait, the document
  without it); processed and compressed images and the seals stay. Same order: mark
  (`original_state='purging'`, reads answer `Purged`, the audit entry), remove the blobs, mark
  'purged'; a run also finishes every purge and deletion an earlier run left under way.
- The audit table: every admin read of an original or of an attachment holding its pixels
  (written after the bytes are read and before they are returned: no entry, no bytes), every
  deletion and every purge. `audit_log()` reads it, newest first.

`split` records the portrait split (DESIGN "Regen compression" step 2): `position` (the portrait's
box `[x0, y0, x1, y1]` in the original), `fill` ('background' or 'blank'), `scale` (float); other
keys are kept as they are.

Regen compression's records keep in `meta` its `method` ("regen" or "codec") and `reason`, the
gate's decision, the `fields` (text, confidence, source) and the `provenance` stamp the processed
and compressed images also carry (their record id is drawn with `new_record_id()` before `add`).

Roles: 'user' reads processed and compressed images; only 'admin' reads originals. Attachments by
kind (`ATTACHMENT_READERS`): a user reads the compressed seal crops; the attachments that hold the
original's pixels (the portrait, the document without it) and any other kind are read by admins only.

Split mode: the record is stored without a compressed image; `put_compressed` sets it once (a
conditional UPDATE: two racing uploads cannot both win; the loser gets `AlreadyStored`).
"""
from __future__ import annotations

import hashlib
import os
import time
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any, Iterable

import numpy as np
from sqlalchemy import (JSON, BigInteger, DateTime, ForeignKey, Integer, LargeBinary, String, UniqueConstraint, and_,
                        create_engine, event, func, inspect, or_, select)
from sqlalchemy import delete as sql_delete
from sqlalchemy import update as sql_update
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.exc import DBAPIError, IntegrityError, InterfaceError, OperationalError
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship, selectinload, sessionmaker

from docray import paths
from docray.storage.blobs import BlobStore, NotFound

ROLES = ("user", "admin")
IMAGES = ("original", "processed", "compressed")
FILLS = ("background", "blank")
ATTACHMENT_READERS = {"seal": "user"}  # kind -> the least role that reads it; any other kind: admin
DEFAULT_GC_AGE_S = 3600.0  # orphan blobs younger than this may belong to an add still in flight
PURGING, PURGED = "purging", "purged"  # records.original_state; NULL: the original is stored
AUDIT_ACTIONS = ("read", "delete", "purge", "enrol")

_JSON = JSON().with_variant(JSONB(), "postgresql")


class AccessDenied(PermissionError):
    """The role may not read this image."""


class AlreadyStored(ValueError):
    """The record already has the image a one-time write would set."""


class OutcomeUnknown(RuntimeError):
    """The database went away after a COMMIT was sent and stayed away: the write may or may not be stored."""


class AlreadyEnrolled(AlreadyStored):
    """The identity already has an enrolment of this image (by the same model)."""


class Purged(NotFound):
    """The image was purged under the retention period (HTTP 410); the record's other images are kept."""


class DeletionIncomplete(RuntimeError):
    """Some blobs of a deletion or purge could not be removed. The record is already unreadable (its
    row is marked); `delete` again, or the next `purge`, finishes the job."""

    def __init__(self, record_id: str, failed: dict[str, str]):
        self.record_id, self.failed = record_id, failed
        first = next(iter(failed.items()))
        super().__init__(f"record {record_id}: {len(failed)} blob(s) could not be removed yet (e.g. {first[0]}: "
                         f"{first[1]}); the record is marked and unreadable; run the delete (or purge) again to finish")


def attachment_reader(kind: str) -> str:
    """The least role that reads attachments of `kind` (`ATTACHMENT_READERS`, else 'admin')."""
    return ATTACHMENT_READERS.get(kind, "admin")


def _may_read(role: str, kind: str) -> bool:
    return role == "admin" or attachment_reader(kind) == role


class Base(DeclarativeBase):
    pass


class Record(Base):
    __tablename__ = "records"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    doc_type: Mapped[str | None] = mapped_column(String(64), index=True)
    meta: Mapped[dict] = mapped_column(_JSON)
    split: Mapped[dict | None] = mapped_column(_JSON)
    original_key: Mapped[str] = mapped_column(String(255))  # kept after a purge: where the bytes were
    processed_key: Mapped[str | None] = mapped_column(String(255))
    compressed_key: Mapped[str | None] = mapped_column(String(255))
    original_bytes: Mapped[int] = mapped_column(BigInteger)
    processed_bytes: Mapped[int | None] = mapped_column(BigInteger)
    compressed_bytes: Mapped[int | None] = mapped_column(BigInteger)
    deleted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))  # a deletion under way
    original_state: Mapped[str | None] = mapped_column(String(16))  # None (stored), PURGING, PURGED
    original_purged_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    attachments: Mapped[list[Attachment]] = relationship(
        back_populates="record", cascade="all, delete-orphan", order_by="Attachment.seq"
    )


class Attachment(Base):
    __tablename__ = "attachments"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    record_id: Mapped[str] = mapped_column(ForeignKey("records.id", ondelete="CASCADE"), index=True)
    seq: Mapped[int] = mapped_column(Integer)  # order within the record
    kind: Mapped[str] = mapped_column(String(32))
    key: Mapped[str] = mapped_column(String(255))
    size: Mapped[int] = mapped_column(BigInteger)
    meta: Mapped[dict] = mapped_column(_JSON)
    purged_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))  # with the original, when it holds its pixels
    record: Mapped[Record] = relationship(back_populates="attachments")


class AuditEntry(Base):
    """Who read an original (or an attachment holding its pixels), deleted a record or purged an original."""
    __tablename__ = "audit"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    actor: Mapped[str] = mapped_column(String(64))  # API-key id ('key:<sha256[:12]>'), 'role:<role>', 'cli:<user>', 'retention'
    role: Mapped[str | None] = mapped_column(String(16))
    action: Mapped[str] = mapped_column(String(16))  # AUDIT_ACTIONS
    record_id: Mapped[str | None] = mapped_column(String(32), index=True)  # no foreign key: the entry outlives the record
    what: Mapped[str] = mapped_column(String(255))
    route: Mapped[str | None] = mapped_column(String(255))
    identity_id: Mapped[str | None] = mapped_column(String(128), index=True)  # an enrolled identity (gallery entries)


class Enrolment(Base):
    """One embedding of one masked image of an identity (private recognition's gallery; no image is kept)."""
    __tablename__ = "enrolments"
    __table_args__ = (UniqueConstraint("identity_id", "model", "image_sha256", name="uq_enrolment_image"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    identity_id: Mapped[str] = mapped_column(String(128), index=True)
    model: Mapped[str] = mapped_column(String(255))  # the masked recogniser that made it: registry:NAME@vNNNN or a folder
    image_sha256: Mapped[str] = mapped_column(String(64))  # of the decoded masked pixels: the same image is refused twice
    mask_id: Mapped[str] = mapped_column(String(255))
    dim: Mapped[int] = mapped_column(Integer)
    embedding: Mapped[bytes] = mapped_column(LargeBinary)  # float32 little-endian, L2-normalised, `dim` values
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


def new_record_id() -> str:
    """A fresh record id (uuid hex): drawn before storing when the images must name their record."""
    return uuid.uuid4().hex


def is_record_id(record_id) -> bool:
    return isinstance(record_id, str) and len(record_id) == 32 and all(c in "0123456789abcdef" for c in record_id)


def _check_record_id(record_id) -> str:
    if not is_record_id(record_id):
        raise ValueError(f"record_id must be 32 lowercase hex digits (new_record_id()), got {record_id!r:.60}")
    return record_id


def _check_role(role: str) -> str:
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}; roles: {list(ROLES)}")
    return role


def _check_bytes(data, what: str) -> bytes:
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"{what}: expected bytes, got {type(data).__name__}")
    if not data:
        raise ValueError(f"{what}: empty (0 bytes)")
    return bytes(data)


def _check_split(split: dict | None) -> dict | None:
    if split is None:
        return None
    if not isinstance(split, dict):
        raise TypeError(f"split must be a dict, got {type(split).__name__}")
    if "fill" in split and split["fill"] not in FILLS:
        raise ValueError(f"split fill {split['fill']!r} is not one of {list(FILLS)}")
    pos = split.get("position")
    if pos is not None and (len(pos) != 4 or not all(isinstance(v, (int, float)) for v in pos)):
        raise ValueError(f"split position must be [x0, y0, x1, y1], got {pos!r}")
    return dict(split)


def _check_attachments(items: Iterable) -> list[tuple[str, bytes, dict]]:
    out = []
    for i, item in enumerate(items):
        if not (isinstance(item, (tuple, list)) and len(item) == 3):
            raise TypeError(f"attachment {i}: expected (kind, bytes, meta), got {item!r:.80}")
        kind, data, meta = item
        if not (isinstance(kind, str) and kind.isidentifier() and kind.islower() and len(kind) <= 32):
            raise ValueError(f"attachment {i}: kind {kind!r} must be a short lowercase name ('portrait', 'seal')")
        out.append((kind, _check_bytes(data, f"attachment {i} ({kind})"), dict(meta or {})))
    return out


def _utc(t: datetime) -> datetime:
    return t if t.tzinfo else t.replace(tzinfo=timezone.utc)  # SQLite drops the zone


def _iso(t: datetime | None) -> str | None:
    return None if t is None else _utc(t).isoformat()


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _default_url() -> str:
    db = paths.sub("repository", "repository.db")
    if "://" in db:
        raise ValueError(f"DOCRAY_HOME is a URI ({paths.home()}): SQLite needs a local file; pass url= (Postgres)")
    os.makedirs(os.path.dirname(db), exist_ok=True)
    return f"sqlite:///{db}"


def _normalise_url(url: str) -> str:
    for bare in ("postgresql://", "postgres://"):
        if url.startswith(bare):
            return "postgresql+psycopg://" + url[len(bare):]
    return url


def _prefix(what: str, record_id: str) -> str:
    """The start of every key of `record_id`'s blobs of one kind (`what`: an image, or `attachments/<kind>`)."""
    return f"{what}/{record_id[:2]}/{record_id}-"


def blob_key(what: str, record_id: str, data: bytes) -> str:
    """`<what>/<id[:2]>/<id>-<sha256>`: the record's own blob (never shared with another record)."""
    return _prefix(what, record_id) + hashlib.sha256(data).hexdigest()


def _add_missing_columns(engine) -> None:
    """Columns added to the models since a database was created (`create_all` makes missing tables
    only): added, all nullable. Two processes racing here: the loser's ALTER fails, the column is there."""
    insp = inspect(engine)
    for table in (Record.__table__, Attachment.__table__, AuditEntry.__table__):
        have = {c["name"] for c in insp.get_columns(table.name)}
        for col in table.columns:
            if col.name in have:
                continue
            assert col.nullable, f"{table.name}.{col.name}: a column added later must be nullable"
            try:
                with engine.begin() as c:
                    c.exec_driver_sql(f"ALTER TABLE {table.name} ADD COLUMN {col.name} {col.type.compile(engine.dialect)}")
            except DBAPIError:
                if col.name not in {c["name"] for c in inspect(engine).get_columns(table.name)}:
                    raise


class ImageRepository:
    """Records of original/processed/compressed images and attachments; see the module docstring."""

    def __init__(self, url: str | None = None, blob_root: str | None = None, reconnect_s: float = 60.0):
        url = url or os.environ.get("DOCRAY_DB_URL")  # production: Postgres by URL
        self.url = _normalise_url(url) if url else _default_url()
        self.reconnect_s = reconnect_s  # how long `add` waits for a database server that went away
        self.blobs = BlobStore(blob_root or os.environ.get("DOCRAY_BLOB_ROOT") or paths.sub("repository", "blobs"))
        if self.url.startswith("sqlite"):
            self.engine = create_engine(self.url, connect_args={"timeout": 30})
            event.listen(self.engine, "connect", _sqlite_pragmas)
        else:
            self.engine = create_engine(self.url, pool_pre_ping=True)
        Base.metadata.create_all(self.engine)
        _add_missing_columns(self.engine)
        self._session = sessionmaker(self.engine, expire_on_commit=False)

    def __repr__(self) -> str:
        return f"ImageRepository({self.engine.url!r}, blobs={self.blobs.root!r})"

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> ImageRepository:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- writes --------------------------------------------------------------------------------

    def _put(self, data: bytes | None, what: str, record_id: str) -> str | None:
        return None if data is None else self.blobs.put(blob_key(what, record_id, data), data)

    def _put_attachments(self, items: list[tuple[str, bytes, dict]], record_id: str) -> list[tuple[str, str, int, dict]]:
        return [(kind, self._put(data, f"attachments/{kind}", record_id), len(data), meta) for kind, data, meta in items]

    def add(
        self,
        original: bytes,
        processed: bytes | None = None,
        compressed: bytes | None = None,
        attachments: Iterable[tuple[str, bytes, dict]] = (),
        doc_type: str | None = None,
        meta: dict | None = None,
        split: dict | None = None,
        record_id: str | None = None,
    ) -> str:
        """Store a record and its attachments; returns the record id (uuid hex). `record_id`: one drawn
        beforehand with `new_record_id()` (e.g. to embed it in the images' metadata); a taken id fails."""
        record_id = new_record_id() if record_id is None else _check_record_id(record_id)
        original = _check_bytes(original, "original")
        processed = None if processed is None else _check_bytes(processed, "processed")
        compressed = None if compressed is None else _check_bytes(compressed, "compressed")
        items, split = _check_attachments(attachments), _check_split(split)
        keys = {name: self._put(data, name, record_id) for name, data in zip(IMAGES, (original, processed, compressed))}
        att_rows = self._put_attachments(items, record_id)
        row = dict(
            id=record_id,
            created_at=_now(),
            doc_type=doc_type,
            meta=dict(meta or {}),
            split=split,
            original_key=keys["original"],
            processed_key=keys["processed"],
            compressed_key=keys["compressed"],
            original_bytes=len(original),
            processed_bytes=None if processed is None else len(processed),
            compressed_bytes=None if compressed is None else len(compressed),
        )
        self._insert(row, att_rows)
        return record_id

    def _insert(self, row: dict, att_rows: list) -> None:
        """The record's rows in one transaction; through a lost connection (module docstring: Writes)."""
        deadline, wait, sent = time.monotonic() + self.reconnect_s, 0.1, False
        while True:
            try:
                with self._session.begin() as s:  # one transaction: commit on exit, roll back on error
                    s.add(Record(**row))
                    self._link(s, row["id"], att_rows, first_seq=0)
                return
            except IntegrityError:
                if sent and self._committed(row):  # an earlier try's COMMIT went through; its answer was lost
                    return
                raise
            except (OperationalError, InterfaceError) as e:
                if self.url.startswith("sqlite") or not _lost_connection(e):
                    raise
                sent = sent or e.connection_invalidated  # the connection died mid-transaction: maybe at COMMIT
                if time.monotonic() + wait > deadline:
                    if sent:
                        raise OutcomeUnknown(f"record {row['id']}: the database went away during its COMMIT and did "
                                             f"not come back within {self.reconnect_s:.0f} s; whether it was stored "
                                             "is unknown (look it up by its id)") from e
                    raise
            time.sleep(wait)
            wait = min(2.0, wait * 2)

    def _committed(self, row: dict) -> bool:
        """Whether this very record (its id and its original's key) is stored."""
        with self._session() as s:
            return s.scalar(select(func.count()).select_from(Record).where(
                Record.id == row["id"], Record.original_key == row["original_key"], Record.deleted_at.is_(None))) == 1

    @staticmethod
    def _link(s, record_id: str, att_rows: list, first_seq: int) -> None:
        for seq, (kind, key, size, meta) in enumerate(att_rows, start=first_seq):
            s.add(Attachment(
                id=uuid.uuid4().hex, record_id=record_id, seq=seq, kind=kind, key=key, size=size, meta=meta
            ))

    def update(
        self,
        record_id: str,
        processed: bytes | None = None,
        compressed: bytes | None = None,
        attachments: Iterable[tuple[str, bytes, dict]] = (),
        doc_type: str | None = None,
        meta: dict | None = None,
        split: dict | None = None,
    ) -> None:
        """Set the given fields of a record in one transaction (None: unchanged; `meta` replaces,
        `attachments` are appended). The original never changes. Replaced blobs are left to `gc`."""
        processed = None if processed is None else _check_bytes(processed, "processed")
        compressed = None if compressed is None else _check_bytes(compressed, "compressed")
        items, split = _check_attachments(attachments), _check_split(split)
        self._get_record(record_id)  # KeyError before writing any blob
        p_key, c_key = self._put(processed, "processed", record_id), self._put(compressed, "compressed", record_id)
        att_rows = self._put_attachments(items, record_id)
        with self._session.begin() as s:
            rec = s.get(Record, record_id, with_for_update=True)
            if rec is None or rec.deleted_at is not None:  # deleted meanwhile: its blobs are left to gc
                raise NotFound(f"no record {record_id!r}")
            if processed is not None:
                rec.processed_key, rec.processed_bytes = p_key, len(processed)
            if compressed is not None:
                rec.compressed_key, rec.compressed_bytes = c_key, len(compressed)
            if doc_type is not None:
                rec.doc_type = doc_type
            if meta is not None:
                rec.meta = dict(meta)
            if split is not None:
                rec.split = split
            first = max((a.seq for a in rec.attachments), default=-1) + 1
            self._link(s, record_id, att_rows, first_seq=first)

    def put_compressed(self, record_id: str, compressed: bytes, meta: dict | None = None) -> None:
        """Set a record's compressed image once (split mode: the terminal's file), `meta` replacing the
        record's in the same statement; `AlreadyStored` when it has one, NotFound when there is no record."""
        compressed = _check_bytes(compressed, "compressed")
        self._get_record(record_id)  # NotFound before writing any blob
        key = self._put(compressed, "compressed", record_id)
        values = {"compressed_key": key, "compressed_bytes": len(compressed)}
        if meta is not None:
            values["meta"] = dict(meta)
        with self._session.begin() as s:  # conditional: of two racing uploads only one matches the row
            done = s.execute(sql_update(Record).where(Record.id == record_id, Record.deleted_at.is_(None),
                                                      Record.compressed_key.is_(None)).values(**values))
            if done.rowcount != 1:
                if s.scalar(select(Record.deleted_at).where(Record.id == record_id)) is not None or \
                        s.get(Record, record_id) is None:
                    raise NotFound(f"no record {record_id!r}")
                raise AlreadyStored(f"record {record_id} already has its compressed image")

    def gc(self, min_age_s: float = DEFAULT_GC_AGE_S) -> list[str]:
        """Delete blobs that no record references and that are older than `min_age_s`; returns their keys.
        A record being deleted and a purged original reference nothing."""
        with self._session() as s:
            used = set()
            live = Record.deleted_at.is_(None)
            for row in s.execute(select(Record.original_key).where(live, Record.original_state.is_(None))):
                used.add(row[0])
            for row in s.execute(select(Record.processed_key, Record.compressed_key).where(live)):
                used.update(k for k in row if k)
            used.update(s.scalars(select(Attachment.key).join(Record).where(live, Attachment.purged_at.is_(None))))
        removed = []
        for key in self.blobs.keys():
            if key in used:
                continue
            age = self.blobs.age(key)
            if min_age_s > 0 and (age is None or age < min_age_s):
                continue
            if self.blobs.delete(key):
                removed.append(key)
        return removed

    # -- data protection: delete, purge, audit ---------------------------------------------------

    def _audit(self, s, action: str, record_id: str | None, what: str, actor: str | None, role: str | None,
               route: str | None, identity_id: str | None = None) -> None:
        s.add(AuditEntry(at=_now(), actor=(actor or f"role:{role or 'admin'}")[:64], role=role, action=action,
                         record_id=record_id, what=what[:255], route=None if route is None else route[:255],
                         identity_id=identity_id))

    def _referenced(self, keys: set[str], other_than: str) -> set[str]:
        """Which of `keys` another live record still uses (only records of the content-addressed layout share keys)."""
        if not keys:
            return set()
        with self._session() as s:
            live = and_(Record.id != other_than, Record.deleted_at.is_(None))
            used = set(s.scalars(select(Record.original_key).where(live, Record.original_state.is_(None),
                                                                    Record.original_key.in_(keys))))
            for col in (Record.processed_key, Record.compressed_key):
                used.update(s.scalars(select(col).where(live, col.in_(keys))))
            used.update(s.scalars(select(Attachment.key).join(Record).where(live, Attachment.purged_at.is_(None),
                                                                           Attachment.key.in_(keys))))
        return used

    def _remove_blobs(self, record_id: str, keys: set[str]) -> int:
        """Remove `keys` but those another record uses; every failure is collected, then `DeletionIncomplete`."""
        own = {k for k in keys if f"/{record_id}-" in k}
        removed, failed = 0, {}
        for key in sorted(keys - self._referenced(keys - own, record_id)):
            try:
                removed += self.blobs.delete(key)
            except Exception as e:  # noqa: BLE001 -- any store error: the row stays marked, a rerun retries
                failed[key] = f"{type(e).__name__}: {e}"[:200]
        if failed:
            raise DeletionIncomplete(record_id, failed)
        return removed

    def delete(self, record_id: str, *, actor: str | None = None, role: str = "admin", route: str | None = None) -> dict:
        """Delete a record with every image and attachment it has, blobs and rows (the module docstring
        gives the order). Returns {"record_id", "deleted": True, "blobs": removed}; NotFound when there
        is no record (a finished delete included); `DeletionIncomplete` when a blob could not be removed
        (the record is already unreadable; calling `delete` again finishes it). Audited."""
        if not is_record_id(record_id):
            raise NotFound(f"no record {record_id!r:.80}")
        with self._session.begin() as s:  # (1) mark: from this commit on the record is gone for every reader
            rec = s.get(Record, record_id, with_for_update=True, options=[selectinload(Record.attachments)])
            if rec is None:
                raise NotFound(f"no record {record_id!r}")
            if rec.deleted_at is None:
                rec.deleted_at = _now()
                images = [w for w in IMAGES if getattr(rec, f"{w}_key") and not (w == "original" and rec.original_state)]
                self._audit(s, "delete", record_id, f"record: {', '.join(images) or 'no images'}; "
                            f"{len(rec.attachments)} attachment(s)", actor, role, route)
        return self._finish_delete(record_id)

    def _finish_delete(self, record_id: str) -> dict:
        """(2) remove the marked record's blobs, (3) its rows. Safe to run twice, or in two processes at once."""
        with self._session() as s:
            rec = s.get(Record, record_id, options=[selectinload(Record.attachments)])
            if rec is None or rec.deleted_at is None:
                return {"record_id": record_id, "deleted": True, "blobs": 0}  # another run finished it
            keys = {k for k in (rec.original_key, rec.processed_key, rec.compressed_key) if k}
            keys |= {a.key for a in rec.attachments}
            kinds = {a.kind for a in rec.attachments}
        for what in (*IMAGES, *(f"attachments/{k}" for k in sorted(kinds))):  # also blobs an update replaced
            keys.update(self.blobs.keys(_prefix(what, record_id)))
        removed = self._remove_blobs(record_id, keys)
        with self._session.begin() as s:
            s.execute(sql_delete(Attachment).where(Attachment.record_id == record_id))
            s.execute(sql_delete(Record).where(Record.id == record_id, Record.deleted_at.is_not(None)))
        return {"record_id": record_id, "deleted": True, "blobs": removed}

    def pending(self) -> dict[str, list[str]]:
        """Record ids whose deletion or purge an earlier run left under way (`purge` finishes them)."""
        with self._session() as s:
            return {"deletions": list(s.scalars(select(Record.id).where(Record.deleted_at.is_not(None)))),
                    "purges": list(s.scalars(select(Record.id).where(Record.deleted_at.is_(None),
                                                                     Record.original_state == PURGING)))}

    def purge(self, older_than: timedelta, *, dry_run: bool = False, actor: str = "retention", role: str | None = None,
              route: str | None = None, now: datetime | None = None, limit: int | None = None) -> dict:
        """The retention period: purge the originals of records created more than `older_than` ago, and
        the attachments holding their pixels (every kind only admins read); processed, compressed and
        seals stay. Finishes every deletion and purge left under way. `dry_run`: say what would go, change
        nothing. Returns {"cutoff", "dry_run", "purged": [{record_id, created_at, original_bytes,
        attachments}], "deleted": [ids], "pending": {id: error}}; a record whose blobs could not be
        removed is in `pending` and the next run finishes it. Audited (one entry per record)."""
        if not isinstance(older_than, timedelta) or older_than < timedelta(0):
            raise ValueError(f"older_than must be a timedelta >= 0, got {older_than!r}")
        now = _utc(now) if now is not None else _now()
        cutoff = now - older_than
        with self._session() as s:
            due = or_(and_(Record.original_state.is_(None), Record.created_at < cutoff), Record.original_state == PURGING)
            q = select(Record).options(selectinload(Record.attachments)).where(Record.deleted_at.is_(None), due)
            recs = list(s.scalars(q.order_by(Record.created_at, Record.id).limit(limit)))
        plan = [{"record_id": r.id, "created_at": _iso(r.created_at), "original_bytes": r.original_bytes,
                 "attachments": [{"n": a.seq, "kind": a.kind} for a in r.attachments if attachment_reader(a.kind) == "admin"]}
                for r in recs]
        out = {"cutoff": cutoff.isoformat(), "dry_run": dry_run, "purged": plan, "deleted": [], "pending": {}}
        if dry_run:
            out["deleted"] = self.pending()["deletions"]
            return out
        for rid in self.pending()["deletions"]:
            try:
                self._finish_delete(rid)
                out["deleted"].append(rid)
            except DeletionIncomplete as e:
                out["pending"][rid] = str(e)
        done = []
        for p in plan:
            try:
                if self._purge_one(p["record_id"], now, actor, role, route):
                    done.append(p)
            except DeletionIncomplete as e:
                out["pending"][p["record_id"]] = str(e)
        out["purged"] = done
        return out

    def _purge_one(self, record_id: str, now: datetime, actor: str, role: str | None, route: str | None) -> bool:
        with self._session.begin() as s:  # (1) mark: reads of the original answer Purged from this commit on
            rec = s.get(Record, record_id, with_for_update=True, options=[selectinload(Record.attachments)])
            if rec is None or rec.deleted_at is not None or rec.original_state == PURGED:
                return False  # deleted or purged by another run meanwhile
            atts = [a for a in rec.attachments if attachment_reader(a.kind) == "admin"]
            if rec.original_state is None:
                rec.original_state, rec.original_purged_at = PURGING, now
                for a in atts:
                    a.purged_at = now
                self._audit(s, "purge", record_id, "original" + "".join(f", attachment {a.seq} ({a.kind})" for a in atts),
                            actor, role, route)
            keys = {rec.original_key} | {a.key for a in atts}
        self._remove_blobs(record_id, keys)  # (2)
        with self._session.begin() as s:  # (3)
            s.execute(sql_update(Record).where(Record.id == record_id, Record.original_state == PURGING)
                      .values(original_state=PURGED))
        return True

    def audit_log(self, record_id: str | None = None, action: str | None = None, limit: int = 100,
                  offset: int = 0, identity_id: str | None = None) -> list[dict]:
        """Audit entries, newest first: id, at (UTC ISO), actor, role, action, record_id, identity_id,
        what, route."""
        if action is not None and action not in AUDIT_ACTIONS:
            raise ValueError(f"unknown audit action {action!r}; one of {list(AUDIT_ACTIONS)}")
        with self._session() as s:
            q = select(AuditEntry)
            if record_id is not None:
                q = q.where(AuditEntry.record_id == record_id)
            if identity_id is not None:
                q = q.where(AuditEntry.identity_id == identity_id)
            if action is not None:
                q = q.where(AuditEntry.action == action)
            q = q.order_by(AuditEntry.id.desc()).limit(limit).offset(offset)
            return [{"id": e.id, "at": _iso(e.at), "actor": e.actor, "role": e.role, "action": e.action,
                     "record_id": e.record_id, "identity_id": e.identity_id, "what": e.what, "route": e.route}
                    for e in s.scalars(q)]

    # -- the gallery of private recognition: enrolments, deleting an identity ------------------------

    def enrol(self, identity_id: str, embedding, image_sha256: str, mask_id: str, model: str, *,
              actor: str | None = None, role: str = "admin", route: str | None = None) -> dict:
        """Store one embedding (d,) of a masked image of `identity_id`, made by `model`, with its 'enrol'
        audit entry, in one transaction. Returns {"identity_id", "enrolment_id", "enrolments": how many the
        identity now has for `model`}. The same image (`image_sha256`) again: `AlreadyEnrolled`."""
        if not (isinstance(identity_id, str) and 0 < len(identity_id) <= 128):
            raise ValueError(f"identity_id must be 1-128 characters, got {identity_id!r:.60}")
        e = np.asarray(embedding, np.float32).reshape(-1)
        if not (e.size and np.isfinite(e).all()):
            raise ValueError(f"the embedding must be finite and non-empty, got shape {np.shape(embedding)}")
        row = Enrolment(id=uuid.uuid4().hex, identity_id=identity_id, model=model[:255], image_sha256=image_sha256,
                        mask_id=mask_id[:255], dim=int(e.size), embedding=e.astype("<f4").tobytes(), created_at=_now())
        try:
            with self._session.begin() as s:
                s.add(row)
                s.flush()  # the unique key answers here, before the audit entry
                self._audit(s, "enrol", None, f"enrolment {row.id} (mask {mask_id})", actor, role, route, identity_id)
        except IntegrityError:
            raise AlreadyEnrolled(f"identity {identity_id!r} already has this image enrolled (the same pixels, "
                                  f"model {model})") from None
        return {"identity_id": identity_id, "enrolment_id": row.id, "enrolments": self.enrolled(identity_id, model)}

    def enrolled(self, identity_id: str, model: str | None = None) -> int:
        """How many enrolments `identity_id` has (by `model`; None: by any)."""
        with self._session() as s:
            q = select(func.count()).select_from(Enrolment).where(Enrolment.identity_id == identity_id)
            return s.scalar(q if model is None else q.where(Enrolment.model == model))

    def gallery(self, model: str) -> tuple[list[str], np.ndarray]:
        """Every enrolment made by `model`: (identity ids (n,), embeddings float32 (n, d)), oldest first.
        Enrolments of one model share its dimension."""
        with self._session() as s:
            rows = s.execute(select(Enrolment.identity_id, Enrolment.dim, Enrolment.embedding)
                             .where(Enrolment.model == model).order_by(Enrolment.created_at, Enrolment.id)).all()
        if not rows:
            return [], np.zeros((0, 0), np.float32)
        return [r[0] for r in rows], np.stack([np.frombuffer(r[2], "<f4", count=r[1]) for r in rows]).astype(np.float32)

    def count_enrolments(self) -> int:
        with self._session() as s:
            return s.scalar(select(func.count()).select_from(Enrolment))

    def delete_identity(self, identity_id: str, *, actor: str | None = None, role: str = "admin",
                        route: str | None = None) -> dict:
        """Delete every enrolment of `identity_id` (every model's) with its 'delete' audit entry, in one
        transaction. Returns {"identity_id", "deleted": True, "enrolments": removed}; NotFound when it has
        none (a second delete included)."""
        with self._session.begin() as s:
            n = s.execute(sql_delete(Enrolment).where(Enrolment.identity_id == identity_id)).rowcount
            if not n:
                raise NotFound(f"no enrolled identity {identity_id!r:.140}")
            self._audit(s, "delete", None, f"identity: {n} enrolment(s)", actor, role, route, identity_id)
        return {"identity_id": identity_id, "deleted": True, "enrolments": n}

    def _audit_read(self, record_id: str, what: str, actor: str | None, role: str, route: str | None) -> None:
        with self._session.begin() as s:
            self._audit(s, "read", record_id, what, actor, role, route)

    # -- reads ---------------------------------------------------------------------------------

    def _get_record(self, record_id: str) -> Record:
        rec = None
        if isinstance(record_id, str):
            with self._session() as s:
                rec = s.get(Record, record_id, options=[selectinload(Record.attachments)])
        if rec is None or rec.deleted_at is not None:
            raise NotFound(f"no record {record_id!r:.80}")
        return rec

    def get(self, record_id: str, which: str, role: str, *, actor: str | None = None, route: str | None = None) -> bytes:
        """The bytes of one image of a record. Only 'admin' may read the 'original'; each such read is
        audited (`actor`: the caller's API-key id, default 'role:admin'; `route`: where it came from).
        A purged original: `Purged` (a NotFound)."""
        _check_role(role)
        if which not in IMAGES:
            raise ValueError(f"unknown image {which!r}; one of {list(IMAGES)}")
        if which == "original" and role != "admin":
            raise AccessDenied(f"role {role!r} may not read original images; only 'admin' may")
        rec = self._get_record(record_id)
        if which == "original" and rec.original_state is not None:
            raise _purged(rec)
        key = getattr(rec, f"{which}_key")
        if key is None:
            raise NotFound(f"record {record_id!r} has no {which} image")
        try:
            data = self.blobs.get(key)
        except NotFound:
            if which == "original" and self._get_record(record_id).original_state is not None:
                raise _purged(rec) from None  # purged while we read
            raise
        if which == "original":
            self._audit_read(record_id, "original", actor, role, route)  # no entry, no bytes
        return data

    def record(self, record_id: str) -> dict:
        """A record's metadata (no bytes): id, created_at, doc_type, meta, split, sizes, attachments."""
        return _as_dict(self._get_record(record_id))

    def attachments(self, record_id: str, role: str, *, actor: str | None = None, route: str | None = None) -> list[dict]:
        """The attachments `role` may read (purged ones left out), in insertion order: id, n, kind, size,
        meta and `data` (bytes). Reading those that hold the original's pixels is audited."""
        _check_role(role)
        rec = self._get_record(record_id)
        out = [{**_attachment_dict(a), "data": self.blobs.get(a.key)} for a in rec.attachments
               if _may_read(role, a.kind) and a.purged_at is None]
        private = [a for a in out if attachment_reader(a["kind"]) == "admin"]
        if private:
            self._audit_read(record_id, ", ".join(f"attachment {a['n']} ({a['kind']})" for a in private), actor, role, route)
        return out

    def attachment(self, record_id: str, n: int, role: str, *, actor: str | None = None, route: str | None = None) -> dict:
        """Attachment number `n` (its order in the record, from 0) with its `data`; AccessDenied when
        `role` may not read its kind, NotFound when there is none, Purged when it went with the original.
        Reading one that holds the original's pixels (an admin-only kind) is audited."""
        _check_role(role)
        rec = self._get_record(record_id)
        found = [a for a in rec.attachments if a.seq == n]
        if not found:
            raise NotFound(f"record {record_id!r} has no attachment {n} (it has {len(rec.attachments)})")
        a = found[0]
        if not _may_read(role, a.kind):
            raise AccessDenied(f"role {role!r} may not read {a.kind} attachments (pieces of the original); "
                               f"only {attachment_reader(a.kind)!r} may")
        if a.purged_at is not None:
            raise Purged(f"attachment {n} ({a.kind}) of record {record_id} held the original's pixels and was purged "
                         f"with it at {_iso(a.purged_at)} (retention period); the seals, processed and compressed "
                         "images are kept")
        data = self.blobs.get(a.key)
        if attachment_reader(a.kind) == "admin":
            self._audit_read(record_id, f"attachment {a.seq} ({a.kind})", actor, role, route)
        return {**_attachment_dict(a), "data": data}

    def list(self, limit: int = 100, offset: int = 0) -> list[dict]:
        """Records' metadata, oldest first (records being deleted left out)."""
        with self._session() as s:
            q = select(Record).options(selectinload(Record.attachments)).where(Record.deleted_at.is_(None))
            q = q.order_by(Record.created_at, Record.id).limit(limit).offset(offset)
            return [_as_dict(r) for r in s.scalars(q)]

    def count(self) -> int:
        with self._session() as s:
            return s.scalar(select(func.count()).select_from(Record).where(Record.deleted_at.is_(None)))


def _purged(rec: Record) -> Purged:
    return Purged(f"the original of record {rec.id} was purged at {_iso(rec.original_purged_at)} under the retention "
                  "period; its processed and compressed images are kept")


def _attachment_dict(a: Attachment) -> dict[str, Any]:
    return {"id": a.id, "n": a.seq, "kind": a.kind, "size": a.size, "meta": a.meta, "purged_at": _iso(a.purged_at)}


def _as_dict(r: Record) -> dict[str, Any]:
    return {
        "id": r.id,
        "created_at": _utc(r.created_at).isoformat(),
        "doc_type": r.doc_type,
        "meta": r.meta,
        "split": r.split,
        "sizes": {"original": r.original_bytes, "processed": r.processed_bytes, "compressed": r.compressed_bytes},
        "original_purged_at": _iso(r.original_purged_at),
        "attachments": [_attachment_dict(a) for a in r.attachments],
    }


def _lost_connection(e: DBAPIError) -> bool:
    """A database server away or restarting (its connection lost, refused, or cut by a shutdown), not
    a bad statement: the errors a retry of the same transaction can get past."""
    if e.connection_invalidated:
        return True
    sqlstate = getattr(e.orig, "sqlstate", None) or ""
    return sqlstate[:2] in ("08", "57") or (not sqlstate and "connection" in str(e.orig).lower())


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA foreign_keys=ON")  # SQLite ignores foreign keys unless asked
    cur.execute("PRAGMA journal_mode=WAL")  # readers do not block the writer
    cur.close()
