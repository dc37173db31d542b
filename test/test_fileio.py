"""fileio (atomic writes, hashes) and descriptors (the one L2 normalisation)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from salad_ros import fileio
from salad_ros.descriptors import l2_normalize, unit_rows


def test_hashes(tmp_path: Path) -> None:
    p = tmp_path / "w.bin"
    data = bytes(range(256)) * 50000  # > one 4 MiB read
    p.write_bytes(data)
    full = hashlib.sha256(data).hexdigest()
    assert fileio.sha256_file(p) == full
    assert fileio.file_fingerprint(p) == fileio.file_fingerprint(str(p)) == full[:12]
    assert fileio.file_fingerprint("") == fileio.file_fingerprint(None) == "random"


def test_atomic_write_replaces_or_keeps(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p = tmp_path / "f.json"
    fileio.write_bytes_atomic(p, b"one")
    entry = fileio.write_atomic(p, lambda w: (w(b"tw"), w(b"o")))
    assert p.read_bytes() == b"two"
    assert entry == {"name": "f.json", "size": 3, "sha256": hashlib.sha256(b"two").hexdigest()}

    def fail(src: Path, dst: Path) -> None:
        raise OSError("simulated")

    monkeypatch.setattr(fileio, "_replace", fail)
    with pytest.raises(OSError, match="simulated"):
        fileio.write_bytes_atomic(p, b"three")
    assert p.read_bytes() == b"two" and [q.name for q in tmp_path.iterdir()] == ["f.json"]


def test_l2_normalize_and_unit_rows() -> None:
    x = np.array([[3.0, 4.0], [0.0, 0.0]], dtype=np.float64)
    y = l2_normalize(x)
    assert y.dtype == np.float32
    np.testing.assert_allclose(y, [[0.6, 0.8], [0.0, 0.0]], rtol=1e-6)
    assert l2_normalize(np.array([0.0, 2.0])).tolist() == [0.0, 1.0]  # one row
    np.testing.assert_array_equal(unit_rows([3.0, 4.0], 2), l2_normalize([[3.0, 4.0]]))
    with pytest.raises(ValueError, match=r"queries must have shape \(N, 3\)"):
        unit_rows(x, 3, "queries")
    with pytest.raises(ValueError, match="all-zero"):
        unit_rows(x, 2)
    with pytest.raises(ValueError, match="NaN"):
        unit_rows([[np.nan, 1.0]], 2)
