"""Crash-safe file writing, content hashes and a directory lock: the one place for each.

* :func:`write_atomic` / :func:`write_bytes_atomic`: write a temporary file next to the target,
  fsync it, rename it over the target (readers see the old or the new file, never a part);
* :func:`move_into_place`: commit a finished file (fsync, rename over the target, fsync the
  folder);
* :func:`sha256_file` (full hex digest) and :func:`file_fingerprint` (the short content hash
  that names a weights file in a model name);
* :func:`dir_lock`: one writer per directory at a time (flock on ``<dir>/.lock``).

Only the standard library is imported here.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

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
