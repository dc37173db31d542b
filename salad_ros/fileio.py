"""Crash-safe file writing, content hashes and a directory lock: the one place for each.

* :func:`write_atomic` / :func:`write_bytes_atomic`: write a temporary file next to the target,
  fsync it, rename it over the target (readers see the old or the new file, never a part);
* :func:`move_into_place`: commit a finished file (fsync, rename over the target, fsync the
  folder);
* :func:`sha256_file` (full hex digest) and :func:`file_fingerprint` (the short content hash
  that names a weights file in a model name);
* :func:`dir_lock`: one writer per directory at a time (flock on ``<dir>/.lock``);
* :func:`open_regular` / :func:`read_regular`: read a file that may be hostile (a FIFO, a
  device, a link to ``/dev/zero``, far too large) without blocking or following links.

Only the standard library is imported here.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

#: Length of :func:`file_fingerprint` (hex digits of the sha256).
FINGERPRINT_HEX = 12

Writer = Callable[[bytes], None]


def _replace(src: Path, dst: Path) -> None:
    """``os.replace``; module-level so that tests can inject a failure at the commit point."""
    os.replace(src, dst)


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Make a rename inside ``path`` durable (fsync the directory itself)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(final: str | os.PathLike[str], produce: Callable[[Writer], None]) -> dict[str, Any]:
    """Write ``final`` through ``produce(write)``: temporary file ``<name>.tmp<pid>``, fsync,
    rename. Returns ``{"name", "size", "sha256"}`` of what was written. The folder is not
    fsynced (callers writing several files do that once; see :func:`write_bytes_atomic`).
    On any error the temporary file is removed and ``final`` is untouched."""
    final = Path(final)
    tmp = final.with_name(f"{final.name}.tmp{os.getpid()}")
    digest = hashlib.sha256()
    size = 0
    try:
        with open(tmp, "wb") as fh:

            def write(chunk: bytes) -> None:
                nonlocal size
                mv = memoryview(chunk)
                digest.update(mv)
                fh.write(mv)
                size += mv.nbytes

            produce(write)
            fh.flush()
            os.fsync(fh.fileno())
        _replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return {"name": final.name, "size": size, "sha256": digest.hexdigest()}


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically: temporary file, fsync, rename, fsync the folder."""
    path = Path(path)
    write_atomic(path, lambda w: w(data))
    fsync_dir(path.parent)


def move_into_place(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
    """Commit the finished file ``src`` as ``dst`` (same folder): fsync it, rename it over
    ``dst``, fsync the folder. For files written by other libraries (e.g. ``onnx.save``)."""
    src, dst = Path(src), Path(dst)
    with open(src, "rb") as fh:
        os.fsync(fh.fileno())
    _replace(src, dst)
    fsync_dir(dst.parent)


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Full sha256 hex digest of a file's content (read in 4 MiB pieces)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def file_fingerprint(path: str | os.PathLike[str] | None) -> str:
    """Short content hash naming a weights file: the first 12 hex digits of its sha256;
    ``"random"`` for no file (None or an empty path)."""
    if not path:
        return "random"
    return sha256_file(path)[:FINGERPRINT_HEX]


@contextmanager
def dir_lock(directory: str | os.PathLike[str]) -> Iterator[None]:
    """Hold an exclusive flock on ``directory/.lock`` (between processes and between threads,
    each of which opens the file itself). Without fcntl (not POSIX) there is no lock."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no cross-process lock
        yield
        return
    with open(Path(directory) / ".lock", "a+b") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


class UnsafeFileError(OSError):
    """A file that is not what a reader expects: not a regular file, a symbolic link, or
    larger than the reader's bound. The message names the file."""


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISDIR, "a directory"), (stat.S_ISSOCK, "a socket"), (stat.S_ISLNK, "a symbolic link")):
        if test(mode):
            return name
    return "not a regular file"


@contextmanager
def open_regular(path: str | os.PathLike[str], max_bytes: int | None = None) -> Iterator[BinaryIO]:
    """Open ``path`` for reading only if it is a regular file (not a symbolic link, FIFO, device
    or directory) of at most ``max_bytes``; :class:`UnsafeFileError` otherwise. Never blocks on
    a FIFO and never follows a link in the last path component: the kind is checked with lstat
    before opening and again on the open descriptor (so a file swapped in between is caught)."""
    path = Path(path)
    mode = os.lstat(path).st_mode  # FileNotFoundError passes through
    if not stat.S_ISREG(mode):
        raise UnsafeFileError(f"{path.name} is {_kind(mode)}, not a regular file")
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # became a symbolic link after the lstat
            raise UnsafeFileError(f"{path.name} is a symbolic link, not a regular file") from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UnsafeFileError(f"{path.name} is {_kind(st.st_mode)}, not a regular file")
        if max_bytes is not None and st.st_size > max_bytes:
            raise UnsafeFileError(f"{path.name} is {st.st_size} bytes, larger than the {max_bytes} bytes it can be")
        fh = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    with fh:
        yield fh


def read_regular(path: str | os.PathLike[str], max_bytes: int) -> bytes:
    """The content of ``path`` read through :func:`open_regular` (regular file, at most
    ``max_bytes``, no link followed, no blocking)."""
    with open_regular(path, max_bytes) as fh:
        data = fh.read(max_bytes + 1)
    if len(data) > max_bytes:  # grew while being read
        raise UnsafeFileError(f"{Path(path).name} is larger than the {max_bytes} bytes it can be")
    return data


def directory_problem(path: str | os.PathLike[str]) -> str | None:
    """Why a directory could not be written to ``path`` (None when it can, or when no path is set).

    Raises ValueError when the path can never be such a directory: an existing file, or a folder
    that can't be created because a parent is a file. The node checks its ``database_path`` with it
    at start-up instead of failing at the first save, after a whole session.
    """
    if not path:
        return None
    target = Path(path)
    if target.exists() and not target.is_dir():
        raise ValueError(f"{path} is a file, not a directory")
    existing = target
    while not existing.exists():  # the nearest existing ancestor: where the folder would be created
        existing = existing.parent
    if not existing.is_dir():
        raise ValueError(f"{path} can't be created: {existing} is not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"{path} is not writable" if existing == target else \
            f"{path} is not writable ({existing} does not allow creating it)"
    return None
