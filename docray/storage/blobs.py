"""Blobs by key, on local disk or any fsspec filesystem (S3-compatible storage, `memory://`).

Layout: a blob with key `a/b/c` lives at `<root>/a/b/c`. Keys are relative, `/`-separated paths;
`..`, `.`, empty parts, absolute paths, backslashes and hidden names (a part starting with `.`)
are refused, so a key can never leave the root nor collide with a temp file.

Writes are atomic. On local disk `put` writes `<dir>/.<name>.<random>.tmp` in the target folder,
fsyncs it and `os.replace`s it onto the key, so a reader sees the old blob or the whole new one,
never a part; a crash leaves at most a hidden `.tmp` file that `keys()` does not list. On an
object store a single PUT is already atomic.

Content-addressed keys (`put_content`) are `<prefix>/<sha[:2]>/<sha256 hex>`: equal bytes share a
blob. S3 needs the optional `s3fs` package (`pip install 'docray[s3]'`).
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import tempfile
import time

import fsspec
from fsspec.implementations.local import LocalFileSystem


class NotFound(KeyError):
    """A missing key, model or record. A `KeyError` whose message prints without extra quotes."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def filesystem(url: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """`(fs, path)` for a local path or URI, with a clear error when the backend is not installed."""
    try:
        return fsspec.core.url_to_fs(url)
    except ImportError as e:
        extra = " (pip install 'docray[s3]')" if url.startswith(("s3://", "s3a://")) else ""
        raise ImportError(f"cannot open {url!r}: {e}{extra}") from None
    except ValueError as e:  # unknown protocol
        raise ValueError(f"cannot open {url!r}: {e}") from None


def is_local(fs: fsspec.AbstractFileSystem) -> bool:
    return isinstance(fs, LocalFileSystem)


def check_key(key: str) -> str:
    """`key` if it is a safe relative key, else ValueError."""
    if not isinstance(key, str) or not key:
        raise ValueError(f"blob key must be a non-empty str, got {key!r}")
    if "\\" in key or "\x00" in key or "://" in key:
        raise ValueError(f"blob key {key!r}: backslashes, NUL and URIs are not allowed")
    for part in key.split("/"):
        if part in ("", ".", ".."):
            raise ValueError(f"blob key {key!r}: must be relative, without empty, '.' or '..' parts")
        if part.startswith("."):
            raise ValueError(f"blob key {key!r}: hidden names (starting with '.') are reserved")
    return key


def atomic_write(path: str, data: bytes) -> None:
    """Write a local file atomically: temp file in the same folder, fsync, `os.replace`."""
    folder, name = os.path.split(path)
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{name}.{secrets.token_hex(6)}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def write_file(url: str, data: bytes) -> str:
    """Write `data` to a local path or URI, whole or not at all: `atomic_write` on local disk, one PUT
    on an object store. Returns `url`. The one way jobs write an artifact file (configs, reports, grids)."""
    fs, path = filesystem(url)
    if is_local(fs):
        atomic_write(path, bytes(data))
    else:
        fs.pipe_file(path, bytes(data))
    return url


def read_file(url: str) -> bytes:
    """The bytes of a local path or URI; FileNotFoundError when there is none."""
    fs, path = filesystem(url)
    return fs.cat_file(path)


def exists(url: str) -> bool:
    """Whether a file or folder exists at a local path or URI (on an object store: any key under it)."""
    fs, path = filesystem(url)
    return fs.exists(path)


@contextlib.contextmanager
def local_folder(url: str):
    """A local folder to write a whole folder of files into (a library's `save(folder)`), found at
    `url` afterwards: `url` itself on local disk; on an object store a temporary folder whose files
    are uploaded under `url` when the block ends without an error."""
    fs, path = filesystem(url)
    if is_local(fs):
        os.makedirs(path, exist_ok=True)
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="docray-upload-") as tmp:
        yield tmp
        for folder, _, names in os.walk(tmp):
            for name in names:
                rel = os.path.relpath(os.path.join(folder, name), tmp).replace(os.sep, "/")
                fs.put_file(os.path.join(folder, name), f"{path.rstrip('/')}/{rel}")


def _is_temp(name: str) -> bool:
    return name.startswith(".") and name.endswith(".tmp")


class BlobStore:
    """Bytes by key under `root`, a local folder or an fsspec URI (`s3://bucket/prefix`, `memory://x`)."""

    def __init__(self, root: str):
        self.root = root.rstrip("/") or root
        self.fs, self._base = filesystem(root)
        self._base = self._base.rstrip("/")  # "" for the filesystem root
        self.local = is_local(self.fs)
        if self.local:
            os.makedirs(self._base or "/", exist_ok=True)

    def __repr__(self) -> str:
        return f"BlobStore({self.root!r})"

    def _path(self, key: str) -> str:
        return f"{self._base}/{check_key(key)}"

    def url(self, key: str) -> str:
        """Where the blob lives, as a local path or URI (for logs and external tools)."""
        return f"{self.root}/{check_key(key)}"

    def put(self, key: str, data: bytes) -> str:
        """Store `data` under `key` atomically (replacing any old blob); returns the key."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"blob {key!r}: expected bytes, got {type(data).__name__}")
        path = self._path(key)
        if self.local:
            atomic_write(path, bytes(data))
        else:
            self.fs.pipe_file(path, bytes(data))  # one PUT: atomic on object stores
        return key

    def put_content(self, data: bytes, prefix: str = "") -> str:
        """Store `data` under `<prefix>/<sha[:2]>/<sha256>`; returns the key. Equal bytes share a blob.

        An existing blob is not rewritten locally but its mtime is refreshed, so `gc`'s grace period
        (see `ImageRepository.gc`) counts from this write.
        """
        digest = hashlib.sha256(bytes(data)).hexdigest()
        key = "/".join(p for p in (prefix.strip("/"), digest[:2], digest) if p)
        if self.local:
            try:
                os.utime(self._path(key))  # already stored: refresh its mtime, keep the bytes
                return key
            except FileNotFoundError:
                pass
        return self.put(key, data)

    def get(self, key: str) -> bytes:
        """The blob's bytes; `KeyError` when there is none."""
        try:
            return self.fs.cat_file(self._path(key))
        except (FileNotFoundError, IsADirectoryError):
            raise NotFound(f"no blob {key!r} in {self.root}") from None

    def exists(self, key: str) -> bool:
        return self.fs.isfile(self._path(key))

    def delete(self, key: str) -> bool:
        """Remove the blob; returns whether it existed."""
        path = self._path(key)
        if not self.fs.isfile(path):
            return False
        try:
            self.fs.rm_file(path)
        except FileNotFoundError:
            return False
        return True

    def modified(self, key: str) -> float | None:
        """Last-modified time (epoch seconds) when the filesystem reports one, else None."""
        path = self._path(key)
        if self.local:
            return os.stat(path).st_mtime
        info = self.fs.info(path)
        t = info.get("mtime") or info.get("LastModified") or info.get("created")
        if t is None:
            return None
        return t.timestamp() if hasattr(t, "timestamp") else float(t)

    def age(self, key: str) -> float | None:
        """Seconds since the blob was last written, or None when unknown."""
        t = self.modified(key)
        return None if t is None else time.time() - t

    def keys(self, prefix: str = "") -> list[str]:
        """Sorted keys starting with `prefix` (a plain string prefix, as on S3). Temp files are not listed."""
        folder = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        start = f"{self._base}/{folder}".rstrip("/")
        try:
            paths = self.fs.find(start)
        except FileNotFoundError:
            return []
        base = self._base + "/"
        out = []
        for p in paths:
            if not p.startswith(base):
                continue
            key = p[len(base):]
            if key.startswith(prefix) and not any(_is_temp(part) for part in key.split("/")):
                out.append(key)
        return sorted(out)
