"""The one backup of a replaced map: ``<database folder>/previous/``.

When a save would replace a map holding keyframes that the new map lacks (after
``~/reset_database``, or when another session's map is saved over it), :func:`storage.save
<salad_ros.database.storage.save>` first keeps the replaced map here, before the new manifest
commits: whenever the new map is in place, the old one is recoverable. ``previous/`` is a
complete keyframe database of its own (manifest, data files, thumbnails): load it with
``database_path: <folder>/previous``, or move its files back to restore it. One backup is kept;
the next save that loses keyframes replaces it. Files are hard links where the file system
allows them (no extra space; the old generation's names are unlinked from the main folder after
the commit), copies elsewhere.
"""

from __future__ import annotations

import os
import shutil
import stat
from collections.abc import Iterable
from pathlib import Path

from salad_ros import fileio

#: Name of the backup folder inside the database folder.
BACKUP_DIR = "previous"
_TMP_PREFIX = f"{BACKUP_DIR}.tmp"
_OLD_PREFIX = f"{BACKUP_DIR}.old"


def keep(directory: Path, names: Iterable[str]) -> Path:
    """Make ``directory/previous`` hold the files ``names`` of ``directory`` (regular files
    only; the manifest should come last) and return it. Built under a temporary name and
    renamed into place, so ``previous/`` is always either the old backup or the complete new
    one. Raises OSError (and leaves no temporary folder) when it cannot be made."""
    d = Path(directory)
    tmp = d / f"{_TMP_PREFIX}{os.getpid()}"
    final = d / BACKUP_DIR
    old = d / f"{_OLD_PREFIX}{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        for name in names:
            src = d / name
            try:
                if not stat.S_ISREG(os.lstat(src).st_mode):
                    continue  # a FIFO, device or link in a damaged folder: nothing to keep
            except FileNotFoundError:
                continue
            _link_or_copy(src, tmp / name)
        fileio.fsync_dir(tmp)
        if os.path.lexists(final):
            os.rename(final, old)
        os.rename(tmp, final)
        fileio.fsync_dir(d)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if os.path.lexists(old) and not os.path.lexists(final):
            os.rename(old, final)  # put the previous backup back
        raise
    shutil.rmtree(old, ignore_errors=True)
    return final


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst, follow_symlinks=False)
        return
    except OSError:
        pass  # no hard links here (or across): copy
    shutil.copyfile(src, dst, follow_symlinks=False)
    with open(dst, "rb") as fh:
        os.fsync(fh.fileno())


def remove_leftovers(directory: Path) -> None:
    """Remove half-made backup folders of a save that died (never ``previous/`` itself)."""
    for p in Path(directory).iterdir():
        if p.name.startswith((_TMP_PREFIX, _OLD_PREFIX)) and p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
