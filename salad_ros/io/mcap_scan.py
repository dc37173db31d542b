"""Raw mcap handling where rosbags cannot help: chunk checksums and damaged files.

* :func:`check_chunks` verifies every chunk's CRC-32 (the mcap ``uncompressed_crc`` of the
  chunk's records; 0 = none written) and names the damaged chunks with their time range and the
  number of messages their message indexes list;
* :func:`add_chunk_crcs` writes those checksums into an mcap written without them (rosbags'
  writer leaves them 0), so that damage in a bag made here can be found later;
* :class:`McapScan` reads an mcap linearly, for files rosbags refuses (no footer: a recorder
  that died) or whose damaged chunks must be skipped.
"""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MAGIC = b"\x89MCAP0\r\n"
_CHUNK, _MESSAGE_INDEX, _DATA_END = 0x06, 0x07, 0x0F


@dataclass
class DamagedChunk:
    """A chunk whose records do not match their checksum (or cannot be decoded at all)."""

    offset: int  #: byte offset of the chunk record in the file
    start_ns: int  #: log time of its first message (as the chunk header says)
    end_ns: int
    problem: str
    messages: int | None = None  #: messages its message indexes list (None: no index)


@dataclass
class ChunkCheck:
    """What :func:`check_chunks` found."""

    chunks: int = 0
    with_crc: int = 0  #: chunks that carry a checksum (the others cannot be checked)
    damaged: list[DamagedChunk] = field(default_factory=list)

    def integrity(self) -> str:
        """One phrase about what could be verified."""
        if not self.chunks:
            return "no chunks"
        if self.with_crc == self.chunks:
            return f"chunk checksums verified ({self.chunks} chunks)"
        if not self.with_crc:
            return f"no chunk checksums ({self.chunks} chunks): damage inside messages cannot be detected"
        return f"chunk checksums verified on {self.with_crc} of {self.chunks} chunks"

    def describe_damage(self) -> str | None:
        """The warning about damaged chunks (None when there are none)."""
        if not self.damaged:
            return None
        counts = [c.messages for c in self.damaged]
        lost = "an unknown number of messages" if None in counts else f"{sum(counts)} messages"
        shown = "; ".join(f"chunk at byte {c.offset} (log time {c.start_ns * 1e-9:.3f} to {c.end_ns * 1e-9:.3f} s): "
                          f"{c.problem}" for c in self.damaged[:3])
        more = f"; and {len(self.damaged) - 3} more" if len(self.damaged) > 3 else ""
        return (f"{len(self.damaged)} of {self.chunks} mcap chunks fail their CRC check (damaged bytes) and were "
                f"skipped with their {lost}: {shown}{more}")


def check_chunks(path: str | os.PathLike[str]) -> ChunkCheck:
    """Verify the CRC of every chunk in the data section of the mcap file ``path`` (reads the
    file once, a chunk at a time). Structural damage (a truncated file, a record running past
    the end) ends the check quietly: the reader reports that itself."""
    result = ChunkCheck()
    last: DamagedChunk | None = None
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if f.read(8) != MAGIC:
            return result
        pos = 8
        while pos + 9 <= size:
            f.seek(pos)
            op = f.read(1)[0]
            (length,) = struct.unpack("<Q", f.read(8))
            if pos + 9 + length > size:
                break
            if op == _CHUNK:
                result.chunks += 1
                has_crc, start, end, problem = _check_chunk(f.read(length))
                result.with_crc += has_crc
                last = DamagedChunk(pos, start, end, problem, 0) if problem else None
                if last is not None:
                    result.damaged.append(last)
            elif op == _MESSAGE_INDEX and last is not None and length >= 6:
                _, records = struct.unpack("<HI", f.read(6))
                last.messages = (last.messages or 0) + records // 16
            elif op == _DATA_END:
                break
            else:
                last = None
            pos += 9 + length
    for chunk in result.damaged:
        if chunk.messages == 0:
            chunk.messages = None  # no message index after it: the count is unknown
    return result


def _check_chunk(body: bytes) -> tuple[bool, int, int, str]:
    """(has a CRC, start, end, problem or "") of one chunk record's body."""
    try:
        start, end, size, crc = struct.unpack_from("<QQQI", body, 0)
        compression, off = _mcap_str(body, 28)
        (csize,) = struct.unpack_from("<Q", body, off)
    except (struct.error, UnicodeDecodeError):
        return True, 0, 0, "its header is damaged"
    payload = body[off + 8 : off + 8 + csize]
    if len(payload) != csize:
        return True, start, end, "its sizes disagree (header damaged)"
    if crc == 0:
        return False, start, end, ""
    try:
        raw = _decompress(payload, compression, size, False)
    except ScanStop as exc:
        return True, start, end, str(exc)
    if len(raw) != size:
        return True, start, end, f"it holds {len(raw)} bytes, its header says {size}"
    if zlib.crc32(raw) != crc:
        return True, start, end, "CRC mismatch"
    return True, start, end, ""


def add_chunk_crcs(path: str | os.PathLike[str]) -> int:
    """Write the CRC-32 of each chunk that has none into the mcap file ``path`` (in place, the
    4-byte ``uncompressed_crc`` field of the chunk header); returns how many were written."""
    written = 0
    with open(path, "r+b") as f:
        size = os.fstat(f.fileno()).st_size
        if f.read(8) != MAGIC:
            raise ValueError(f"{path} is not an mcap file")
        pos = 8
        while pos + 9 <= size:
            f.seek(pos)
            op = f.read(1)[0]
            (length,) = struct.unpack("<Q", f.read(8))
            if op == _DATA_END or pos + 9 + length > size:
                break
            if op == _CHUNK:
                body = f.read(length)
                _, _, usize, crc = struct.unpack_from("<QQQI", body, 0)
                if crc == 0:
                    compression, off = _mcap_str(body, 28)
                    (csize,) = struct.unpack_from("<Q", body, off)
                    raw = _decompress(body[off + 8 : off + 8 + csize], compression, usize, False)
                    f.seek(pos + 9 + 24)
                    f.write(struct.pack("<I", zlib.crc32(raw)))
                    written += 1
            pos += 9 + length
        f.flush()
        os.fsync(f.fileno())
    return written


class McapScan:
    """Linear scan of a damaged mcap file (no footer/summary), duck-typing the bits of
    ``AnyReader`` that :class:`~salad_ros.io.bags.BagReader` uses. Stops at the first incomplete
    record. Chunks starting at a byte offset in ``skip`` (damaged ones, see :func:`check_chunks`)
    are not read; schemas and channels also come from the summary section when there is one."""

    @dataclass
    class _Conn:
        id: int
        topic: str
        msgtype: str

    def __init__(self, path: Path, skip: Collection[int] = ()) -> None:
        self.path = path
        self.skip = frozenset(skip)
        self.connections: list[McapScan._Conn] = []
        self._schemas: dict[int, tuple[str, str, str]] = {}
        self._counts: dict[int, int] = {}
        self.problem = ""
        try:
            for _ in self._records(collect=True):
                pass
        except ScanStop as stop:
            self.problem = str(stop)
        self.usable = bool(self.connections)
        self._typestore = self._build_typestore()

    def _build_typestore(self) -> Any:
        from rosbags.typesys import Stores, get_types_from_msg, get_typestore

        from .bags import default_typestore

        store = get_typestore(Stores.EMPTY)
        types: dict[str, Any] = dict(default_typestore().fielddefs)
        for name, encoding, text in self._schemas.values():
            if encoding == "ros2msg" and text:
                try:
                    types.update(get_types_from_msg(text, name))
                except Exception:  # keep the built-in definition of that type
                    pass
        store.register(types)
        return store

    @property
    def topics(self) -> dict[str, Any]:
        from types import SimpleNamespace

        return {
            c.topic: SimpleNamespace(msgtype=c.msgtype, msgcount=self._counts.get(c.id, 0)) for c in self.connections
        }

    def messages(self, connections: Collection[Any]) -> Iterator[tuple[Any, int, bytes]]:
        wanted = {c.id: c for c in connections}
        try:
            for channel_id, log_time, data in self._records(collect=False):
                if channel_id in wanted:
                    yield wanted[channel_id], log_time, data
        except ScanStop as stop:
            from .bags import BagError

            raise BagError(str(stop)) from None

    def deserialize(self, raw: bytes, msgtype: str) -> Any:
        return self._typestore.deserialize_cdr(raw, msgtype)

    def close(self) -> None:
        pass

    def _records(self, collect: bool) -> Iterator[tuple[int, int, bytes]]:
        """Message records (channel id, log time, data), chunks expanded; raises ScanStop."""
        data = self.path.read_bytes()
        if data[:8] != MAGIC:
            raise ScanStop("the file does not start with the mcap magic")
        # (buffer, position, end, what to say when this buffer is exhausted: None = fine)
        stack: list[tuple[bytes, int, int, str | None]] = [(data, 8, len(data), None)]
        while stack:
            buf, pos, end, cut = stack.pop()
            while pos < end:
                here = f"byte {pos}" if buf is data else f"byte {pos} of a chunk"
                if pos + 9 > end:
                    raise ScanStop(f"it ends inside a record header at {here}")
                op = buf[pos]
                (length,) = struct.unpack_from("<Q", buf, pos + 1)
                body_start, body_end = pos + 9, pos + 9 + length
                partial = body_end > end
                if partial and (op != 0x06 or buf is not data or end - body_start < 40):
                    raise ScanStop(f"it ends inside a record at {here}")
                body = memoryview(buf)[body_start:min(body_end, end)]
                pos = min(body_end, end)
                if op == 0x03 and collect:
                    sid = struct.unpack_from("<H", body, 0)[0]
                    name, off = _mcap_str(body, 2)
                    encoding, off = _mcap_str(body, off)
                    text, _ = _mcap_str(body, off)
                    self._schemas[sid] = (name, encoding, text)
                elif op == 0x04 and collect:
                    cid, sid = struct.unpack_from("<HH", body, 0)
                    topic, _ = _mcap_str(body, 4)
                    name = self._schemas.get(sid, ("", "", ""))[0]
                    if cid not in {c.id for c in self.connections}:
                        self.connections.append(self._Conn(cid, topic, name))
                elif op == 0x05:
                    cid = struct.unpack_from("<H", body, 0)[0]
                    (log_time,) = struct.unpack_from("<Q", body, 6)
                    if collect:
                        self._counts[cid] = self._counts.get(cid, 0) + 1
                    else:
                        yield cid, int(log_time), bytes(body[22:])
                elif op == 0x06 and buf is data and body_start - 9 in self.skip:
                    continue  # a damaged chunk (its CRC fails): its messages are not read
                elif op == 0x06:
                    # A recorder killed mid-chunk leaves the chunk cut short: its records up to
                    # the cut are still good (uncompressed, or zstd decoded as a stream).
                    _, _, size, _ = struct.unpack_from("<QQQI", body, 0)
                    compression, off = _mcap_str(body, 28)
                    (csize,) = struct.unpack_from("<Q", body, off)
                    payload = bytes(body[off + 8 : off + 8 + csize])
                    inner = _decompress(payload, compression, size, partial)
                    stack.append((buf, pos, end, cut))
                    where = f"it ends inside the chunk at byte {body_start - 9}"
                    buf, pos, end, cut = inner, 0, len(inner), where if partial else None
                elif op == 0x0F:  # data end: the summary section follows
                    if collect:
                        self._summary_definitions(buf, pos, end)
                    return
            if cut:
                raise ScanStop(cut)


    def _summary_definitions(self, data: bytes, pos: int, end: int) -> None:
        """Schemas and channels from the summary section (the only copy of those that were
        written inside a skipped chunk); stops quietly at anything unreadable."""
        known = {c.id for c in self.connections}
        try:
            while pos + 9 <= end:
                op = data[pos]
                (length,) = struct.unpack_from("<Q", data, pos + 1)
                body = memoryview(data)[pos + 9 : pos + 9 + length]
                if pos + 9 + length > end:
                    return
                if op == 0x03:
                    sid = struct.unpack_from("<H", body, 0)[0]
                    name, off = _mcap_str(body, 2)
                    encoding, off = _mcap_str(body, off)
                    text, _ = _mcap_str(body, off)
                    self._schemas.setdefault(sid, (name, encoding, text))
                elif op == 0x04:
                    cid, sid = struct.unpack_from("<HH", body, 0)
                    topic, _ = _mcap_str(body, 4)
                    if cid not in known:
                        self.connections.append(self._Conn(cid, topic, self._schemas.get(sid, ("", "", ""))[0]))
                        known.add(cid)
                pos += 9 + length
        except (struct.error, UnicodeDecodeError):
            return


def _decompress(payload: bytes, compression: str, size: int, partial: bool) -> bytes:
    """Decompress an mcap chunk; for a cut-off chunk, as much as the bytes present give."""
    try:
        if compression == "":
            return payload
        if compression == "zstd":
            try:
                from compression import zstd  # type: ignore[import-not-found]  # Python >= 3.14
            except ImportError:
                from backports import zstd  # type: ignore[import-not-found,no-redef]
            return zstd.ZstdDecompressor().decompress(payload) if partial else zstd.decompress(payload)
        if compression == "lz4" and not partial:
            from lz4.frame import decompress  # type: ignore[import-untyped]

            return decompress(payload)
    except Exception as exc:
        raise ScanStop(f"a {compression} chunk cannot be decompressed ({exc})") from None
    raise ScanStop(f"a cut-off {compression} chunk cannot be read")


class ScanStop(Exception):
    pass


def _mcap_str(body: memoryview | bytes, offset: int) -> tuple[str, int]:
    (n,) = struct.unpack_from("<I", body, offset)
    return bytes(body[offset + 4 : offset + 4 + n]).decode(), offset + 4 + n


