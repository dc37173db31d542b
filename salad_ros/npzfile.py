"""Reading ``.npz`` files that may be damaged or hostile: the one place for it.

``np.load`` trusts a file: a member's ``.npy`` header sizes the array it allocates (a few bytes
can ask for 8 GiB), a zip member may inflate a thousandfold, a damaged archive raises
``BadZipFile``, ``EOFError``, ``zlib.error`` or ``MemoryError``. :func:`read_npz` checks, before
decompressing anything, that the archive holds exactly the expected members, that each declares
at most its byte bound, that its header describes the expected dtype kind and shape (no object
arrays, no 0-d arrays where 1-D ones belong) and that header and declared size agree; it then
reads exactly that many bytes and lets ``zipfile`` check the CRC. Every failure is one
:class:`NpzError` (a ValueError) saying which member and what is wrong.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.lib import format as npy_format

#: Bound on a member's ``.npy`` header (numpy writes 64-byte-aligned headers of ~128 bytes).
MAX_HEADER_BYTES = 4096

_KIND_NAMES = {"i": "signed integers", "u": "unsigned integers", "f": "floats", "b": "booleans"}


class NpzError(ValueError):
    """An npz file that is not the expected one (damaged, foreign or hostile)."""


@dataclass(frozen=True)
class Member:
    """What one array must look like.

    ``kinds``: allowed numpy dtype kinds (``"i"`` signed integers, ``"u"`` unsigned, ``"f"``
    floats); ``shape``: one entry per dimension, an int for a fixed length or None for any;
    ``itemsize``: required bytes per element (None: any); ``max_items``: bound on the element
    count when the shape leaves a length open (None: the caller's byte bound only).
    """

    kinds: str
    shape: tuple[int | None, ...]
    itemsize: int | None = None
    max_items: int | None = None

    def max_bytes(self) -> int | None:
        """Largest legitimate size of the member's ``.npy`` (header included), or None."""
        width = self.itemsize or 8
        if all(n is not None for n in self.shape):
            return MAX_HEADER_BYTES + width * int(np.prod([int(n) for n in self.shape], dtype=object))
        if self.max_items is not None:
            return MAX_HEADER_BYTES + width * self.max_items
        return None


def read_npz(data: bytes, members: Mapping[str, Member], max_member_bytes: int | None = None) -> dict[str, np.ndarray]:
    """The arrays of the npz file ``data``, checked against ``members`` (name -> :class:`Member`).

    ``max_member_bytes`` bounds every member's declared size where its :class:`Member` gives
    no tighter bound. Raises :class:`NpzError` on anything unexpected; never allocates more than
    the bounds allow and never unpickles.
    """
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            infos = zf.infolist()
            found = sorted(i.filename for i in infos)
            wanted = sorted(f"{k}.npy" for k in members)
            if found != wanted:
                raise NpzError(f"holds {_names(found)}, expected {_names(wanted)}")
            return {i.filename[:-4]: _read_member(zf, i, members[i.filename[:-4]], max_member_bytes) for i in infos}
    except NpzError:
        raise
    except Exception as exc:  # BadZipFile, EOFError, zlib.error, OSError, MemoryError, ...
        raise NpzError(f"not a readable npz file ({type(exc).__name__}: {exc})") from exc


def _names(names: list[str]) -> str:
    shown = ", ".join(names[:8]) + (f", ... ({len(names)} members)" if len(names) > 8 else "")
    return shown or "no members"


def _read_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, spec: Member, default_bound: int | None) -> np.ndarray:
    name = info.filename
    bound = spec.max_bytes() if spec.max_bytes() is not None else default_bound
    if bound is not None and info.file_size > bound:
        raise NpzError(f"member {name} declares {info.file_size} bytes, at most {bound} expected")
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise NpzError(f"member {name} uses compression method {info.compress_type}")
    with zf.open(info) as f:
        version = npy_format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = npy_format.read_array_header_1_0(f, max_header_size=MAX_HEADER_BYTES)
        elif version in ((2, 0), (3, 0)):
            shape, fortran, dtype = npy_format.read_array_header_2_0(f, max_header_size=MAX_HEADER_BYTES)
        else:
            raise NpzError(f"member {name} has .npy format version {version}")
        header = f.tell() if f.seekable() else None
        _check_header(name, shape, fortran, dtype, spec)
        nbytes = int(np.prod(shape, dtype=object)) * dtype.itemsize
        if header is not None and header + nbytes != info.file_size:
            raise NpzError(f"member {name}: its header describes {nbytes} bytes of data, the archive declares "
                           f"{info.file_size - header}")
        raw = f.read(nbytes)
        if len(raw) != nbytes:
            raise NpzError(f"member {name} is truncated ({len(raw)} of {nbytes} bytes)")
        if f.read(1):  # also reaches the end of the member, where zipfile checks the CRC
            raise NpzError(f"member {name} has data after its array")
    arr = np.frombuffer(raw, dtype=dtype).reshape(shape)
    return arr if dtype.isnative else arr.astype(dtype.newbyteorder("="))


def _check_header(name: str, shape: Any, fortran: bool, dtype: np.dtype, spec: Member) -> None:
    if dtype.hasobject or dtype.kind not in spec.kinds or dtype.fields is not None or dtype.subdtype is not None:
        want = " or ".join(_KIND_NAMES.get(k, k) for k in spec.kinds)
        raise NpzError(f"member {name} holds {dtype}, expected {want}")
    if spec.itemsize is not None and dtype.itemsize != spec.itemsize:
        raise NpzError(f"member {name} holds {dtype}, expected {spec.itemsize}-byte elements")
    if fortran and len(shape) > 1:
        raise NpzError(f"member {name} is stored in Fortran order")
    if len(shape) != len(spec.shape) or any(want is not None and got != want for got, want in zip(shape, spec.shape)):
        want_shape = "(" + ", ".join("n" if n is None else str(n) for n in spec.shape) + ("," if len(spec.shape) == 1 else "") + ")"
        raise NpzError(f"member {name} has shape {tuple(shape)}, expected {want_shape}")
    if spec.max_items is not None and int(np.prod(shape, dtype=object)) > spec.max_items:
        raise NpzError(f"member {name} has shape {tuple(shape)}, more than the {spec.max_items} elements expected")
