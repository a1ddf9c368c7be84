"""The image repository: original, processed and compressed images, one-to-one, with attachments.

Metadata lives in SQL (SQLAlchemy 2): a SQLite file by default, Postgres by URL (argument, or the
`DOCRAY_DB_URL` environment variable; blobs likewise from `DOCRAY_BLOB_ROOT`, e.g. an s3:// URI)
(`postgresql+psycopg://user:pass@host/db`; a bare `postgresql://` gets the psycopg driver).
Bytes live in a `BlobStore` (local folder or S3). Default layout under `$DOCRAY_HOME`:

    repository/repository.db                       SQLite metadata
    repository/blobs/original/<sha[:2]>/<sha256>    original uploads (admin-only to read)
    repository/blobs/processed/...                  regenerated images
    repository/blobs/compressed/...                 per-type compressed images
    repository/blobs/attachments/<kind>/...         portrait and seal crops

Tables:
    records      id (uuid hex), created_at, doc_type, meta JSON, split JSON,
                 original_key NOT NULL, processed_key, compressed_key, *_bytes sizes
    attachments  id, record_id -> records.id, seq, kind ('portrait', 'seal', ...), key, size, meta JSON

One-to-one: the three images are columns of one record row, so a record has exactly one original
and at most one processed and one compressed image; attachments point at their record.

Writes: blobs first (content-addressed: equal bytes share a blob), then ONE transaction for the
rows. A crash or error before the commit leaves no visible record, only unreferenced blobs;
`gc()` deletes blobs that no record references once they are older than a grace period (so it
cannot race a concurrent `add` whose blobs are written but not yet committed).

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

import os
import uuid
from datetime import datetime, timezone
from typing import Any, Iterable

from sqlalchemy import JSON, BigInteger, DateTime, ForeignKey, Integer, String, create_engine, event, func, select
from sqlalchemy import update as sql_update
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship, selectinload, sessionmaker

from docray import paths
from docray.storage.blobs import BlobStore, NotFound

ROLES = ("user", "admin")
IMAGES = ("original", "processed", "compressed")
FILLS = ("background", "blank")
ATTACHMENT_READERS = {"seal": "user"}  # kind -> the least role that reads it; any other kind: admin
DEFAULT_GC_AGE_S = 3600.0  # orphan blobs younger than this may belong to an add still in flight

_JSON = JSON().with_variant(JSONB(), "postgresql")


class AccessDenied(PermissionError):
    """The role may not read this image."""


class AlreadyStored(ValueError):
    """The record already has the image a one-time write would set."""


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
    original_key: Mapped[str] = mapped_column(String(255))
    processed_key: Mapped[str | None] = mapped_column(String(255))
    compressed_key: Mapped[str | None] = mapped_column(String(255))
    original_bytes: Mapped[int] = mapped_column(BigInteger)
    processed_bytes: Mapped[int | None] = mapped_column(BigInteger)
    compressed_bytes: Mapped[int | None] = mapped_column(BigInteger)
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
    record: Mapped[Record] = relationship(back_populates="attachments")


def new_record_id() -> str:
    """A fresh record id (uuid hex): drawn before storing when the images must name their record."""
    return uuid.uuid4().hex


def _check_record_id(record_id) -> str:
    if not (isinstance(record_id, str) and len(record_id) == 32 and all(c in "0123456789abcdef" for c in record_id)):
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


class ImageRepository:
    """Records of original/processed/compressed images and attachments; see the module docstring."""

    def __init__(self, url: str | None = None, blob_root: str | None = None):
        url = url or os.environ.get("DOCRAY_DB_URL")  # production: Postgres by URL
        self.url = _normalise_url(url) if url else _default_url()
        self.blobs = BlobStore(blob_root or os.environ.get("DOCRAY_BLOB_ROOT") or paths.sub("repository", "blobs"))
        if self.url.startswith("sqlite"):
            self.engine = create_engine(self.url, connect_args={"timeout": 30})
            event.listen(self.engine, "connect", _sqlite_pragmas)
        else:
            self.engine = create_engine(self.url, pool_pre_ping=True)
        Base.metadata.create_all(self.engine)
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

    def _put(self, data: bytes | None, prefix: str) -> str | None:
        return None if data is None else self.blobs.put_content(data, prefix)

    def _put_attachments(self, items: list[tuple[str, bytes, dict]]) -> list[tuple[str, str, int, dict]]:
        put = self.blobs.put_content
        return [(kind, put(data, f"attachments/{kind}"), len(data), meta) for kind, data, meta in items]

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
        keys = {name: self._put(data, name) for name, data in zip(IMAGES, (original, processed, compressed))}
        att_rows = self._put_attachments(items)
        rec = Record(
            id=record_id,
            created_at=datetime.now(timezone.utc),
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
        with self._session.begin() as s:  # one transaction: commit on exit, roll back on error
            s.add(rec)
            self._link(s, rec.id, att_rows, first_seq=0)
        return rec.id

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
        p_key, c_key = self._put(processed, "processed"), self._put(compressed, "compressed")
        att_rows = self._put_attachments(items)
        with self._session.begin() as s:
            rec = s.get(Record, record_id, with_for_update=True)
            if rec is None:
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
        key = self._put(compressed, "compressed")
        values = {"compressed_key": key, "compressed_bytes": len(compressed)}
        if meta is not None:
            values["meta"] = dict(meta)
        with self._session.begin() as s:  # conditional: of two racing uploads only one matches the row
            done = s.execute(sql_update(Record).where(Record.id == record_id, Record.compressed_key.is_(None)).values(**values))
            if done.rowcount != 1:
                raise AlreadyStored(f"record {record_id} already has its compressed image")

    def gc(self, min_age_s: float = DEFAULT_GC_AGE_S) -> list[str]:
        """Delete blobs that no record references and that are older than `min_age_s`; returns their keys."""
        with self._session() as s:
            used = set()
            for row in s.execute(select(Record.original_key, Record.processed_key, Record.compressed_key)):
                used.update(k for k in row if k)
            used.update(s.scalars(select(Attachment.key)))
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

    # -- reads ---------------------------------------------------------------------------------

    def _get_record(self, record_id: str) -> Record:
        rec = None
        if isinstance(record_id, str):
            with self._session() as s:
                rec = s.get(Record, record_id, options=[selectinload(Record.attachments)])
        if rec is None:
            raise NotFound(f"no record {record_id!r}")
        return rec

    def get(self, record_id: str, which: str, role: str) -> bytes:
        """The bytes of one image of a record. Only 'admin' may read the 'original'."""
        _check_role(role)
        if which not in IMAGES:
            raise ValueError(f"unknown image {which!r}; one of {list(IMAGES)}")
        if which == "original" and role != "admin":
            raise AccessDenied(f"role {role!r} may not read original images; only 'admin' may")
        key = getattr(self._get_record(record_id), f"{which}_key")
        if key is None:
            raise NotFound(f"record {record_id!r} has no {which} image")
        return self.blobs.get(key)

    def record(self, record_id: str) -> dict:
        """A record's metadata (no bytes): id, created_at, doc_type, meta, split, sizes, attachments."""
        return _as_dict(self._get_record(record_id))

    def attachments(self, record_id: str, role: str) -> list[dict]:
        """The attachments `role` may read, in insertion order: id, n, kind, size, meta and `data` (bytes)."""
        _check_role(role)
        rec = self._get_record(record_id)
        return [{**_attachment_dict(a), "data": self.blobs.get(a.key)} for a in rec.attachments if _may_read(role, a.kind)]

    def attachment(self, record_id: str, n: int, role: str) -> dict:
        """Attachment number `n` (its order in the record, from 0) with its `data`; AccessDenied when
        `role` may not read its kind, NotFound when there is none."""
        _check_role(role)
        rec = self._get_record(record_id)
        found = [a for a in rec.attachments if a.seq == n]
        if not found:
            raise NotFound(f"record {record_id!r} has no attachment {n} (it has {len(rec.attachments)})")
        a = found[0]
        if not _may_read(role, a.kind):
            raise AccessDenied(f"role {role!r} may not read {a.kind} attachments (pieces of the original); "
                               f"only {attachment_reader(a.kind)!r} may")
        return {**_attachment_dict(a), "data": self.blobs.get(a.key)}

    def list(self, limit: int = 100, offset: int = 0) -> list[dict]:
        """Records' metadata, oldest first."""
        with self._session() as s:
            q = select(Record).options(selectinload(Record.attachments))
            q = q.order_by(Record.created_at, Record.id).limit(limit).offset(offset)
            return [_as_dict(r) for r in s.scalars(q)]

    def count(self) -> int:
        with self._session() as s:
            return s.scalar(select(func.count()).select_from(Record))


def _attachment_dict(a: Attachment) -> dict[str, Any]:
    return {"id": a.id, "n": a.seq, "kind": a.kind, "size": a.size, "meta": a.meta}


def _as_dict(r: Record) -> dict[str, Any]:
    return {
        "id": r.id,
        "created_at": _utc(r.created_at).isoformat(),
        "doc_type": r.doc_type,
        "meta": r.meta,
        "split": r.split,
        "sizes": {"original": r.original_bytes, "processed": r.processed_bytes, "compressed": r.compressed_bytes},
        "attachments": [_attachment_dict(a) for a in r.attachments],
    }


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA foreign_keys=ON")  # SQLite ignores foreign keys unless asked
    cur.execute("PRAGMA journal_mode=WAL")  # readers do not block the writer
    cur.close()
