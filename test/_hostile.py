"""Damaged and hostile files for the load-hardening tests: zip bombs, byte fuzz, manifests whose
checksums are recomputed so that the damage gets past them."""

from __future__ import annotations

import hashlib
import json
import struct
import zlib
from pathlib import Path

import numpy as np

GIB = 1 << 30


def _npy_header(dtype: str, shape: tuple[int, ...]) -> bytes:
    """A version-1.0 .npy header for an array of ``dtype`` and ``shape`` (data not included)."""
    text = f"{{'descr': '{np.dtype(dtype).str}', 'fortran_order': False, 'shape': {shape!r}, }}"
    pad = 64 - (10 + len(text) + 1) % 64
    text = text + " " * pad + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text.encode("latin1")


def _deflated_zeros(header: bytes, nbytes: int) -> bytes:
    """Raw deflate of ``header`` followed by ``nbytes`` zero bytes (a multiple of 1 MiB), built
    from one compressed MiB repeated: a full flush resets the compressor, so every MiB
    compresses to the same bytes and 8 GiB costs ~8 MB and no time."""
    mib = b"\0" * (1 << 20)
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    head = c.compress(header) + c.flush(zlib.Z_FULL_FLUSH)
    block = c.compress(mib) + c.flush(zlib.Z_FULL_FLUSH)
    assert c.compress(mib) + c.flush(zlib.Z_FULL_FLUSH) == block
    return head + block * (nbytes >> 20) + c.flush()


def write_zip(path: Path, members: list[tuple[str, bytes, int, int]]) -> None:
    """A zip file of raw-deflated ``(name, deflated, crc32, declared uncompressed size)`` members,
    with zip64 size fields, so the declared sizes may be anything (zipfile cannot write that)."""
    out = bytearray()
    central = bytearray()
    for name, data, crc, size in members:
        bname = name.encode()
        extra = struct.pack("<HHQQ", 1, 16, size, len(data))
        offset = len(out)
        out += struct.pack("<IHHHHHIIIHH", 0x04034B50, 45, 0, 8, 0, 0x21, crc, 0xFFFFFFFF, 0xFFFFFFFF,
                           len(bname), len(extra)) + bname + extra + data
        central += struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 45, 45, 0, 8, 0, 0x21, crc, 0xFFFFFFFF,
                               0xFFFFFFFF, len(bname), len(extra), 0, 0, 0, 0, offset) + bname + extra
    eocd = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(members), len(members), len(central), len(out), 0)
    path.write_bytes(bytes(out + central + eocd))


def zip_bomb_npz(path: Path, name: str = "ids", dtype: str = "<i8", nbytes: int = 8 * GIB,
                 others: dict[str, np.ndarray] | None = None, declared: int | None = None,
                 items: int | None = None) -> None:
    """An npz whose member ``name`` is a .npy of ``nbytes`` zeros (deflated to ~nbytes/1000),
    plus ordinary members ``others``. ``declared`` replaces the member's uncompressed size in
    the zip directory and ``items`` the element count in its .npy header (a lie either way).
    The CRC of the bomb is not computed (the reader must stop long before it checks it)."""
    itemsize = np.dtype(dtype).itemsize
    header = _npy_header(dtype, (items if items is not None else nbytes // itemsize,))
    size = declared if declared is not None else len(header) + nbytes
    members = [(f"{name}.npy", _deflated_zeros(header, nbytes), 0, size)]
    for key, arr in (others or {}).items():
        raw = _npy_header(arr.dtype.str, arr.shape) + np.ascontiguousarray(arr).tobytes()
        c = zlib.compressobj(6, zlib.DEFLATED, -15)
        members.append((f"{key}.npy", c.compress(raw) + c.flush(), zlib.crc32(raw), len(raw)))
    write_zip(path, members)


def fuzz(data: bytes, seed: int, count: int = 64) -> bytes:
    """``data`` with ``count`` random bytes overwritten at random places (reproducible)."""
    rng = np.random.default_rng(seed)
    out = bytearray(data)
    pos = rng.integers(0, len(out), count)
    out_arr = np.frombuffer(out, np.uint8).copy()
    out_arr[pos] = rng.integers(0, 256, count, dtype=np.uint8)
    return out_arr.tobytes()


def manifest_files(d: Path) -> dict[str, dict]:
    return json.loads((d / "manifest.json").read_text())["files"]


def replace_data_file(d: Path, key: str, data: bytes | None = None) -> Path:
    """Give the data file ``key`` of the database in ``d`` new content (``data``; None keeps the
    file as it now is, e.g. after replacing it by a FIFO or a link) and write its size and sha256
    into the manifest, so that only the parsing stage can notice the damage."""
    man = json.loads((d / "manifest.json").read_text())
    entry = man["files"][key]
    path = d / entry["name"]
    if data is not None:
        path.write_bytes(data)
    content = data if data is not None else b""
    entry["size"], entry["sha256"] = len(content), hashlib.sha256(content).hexdigest()
    (d / "manifest.json").write_text(json.dumps(man, indent=1, sort_keys=True))
    return path


def tree_digest(d: Path) -> dict[str, str]:
    """Name -> sha256 of every regular file under ``d``, and the kind of everything else
    (never opens a FIFO or a device)."""
    out = {}
    for p in sorted(d.rglob("*")):
        rel = str(p.relative_to(d))
        if p.is_symlink():
            out[rel] = "link:" + str(p.readlink())
        elif p.is_fifo():
            out[rel] = "fifo"
        elif p.is_file():
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
        else:
            out[rel] = "dir"
    return out
