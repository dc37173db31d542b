"""Light modules stay light: message and trajectory code must not pull in faiss (or torch)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("modules", [
    "salad_ros.io.messages, salad_ros.io.trajectory",
    "salad_ros.geometry, salad_ros.fileio, salad_ros.descriptors, salad_ros.exclusions",
])
def test_no_faiss_or_torch(modules: str) -> None:
    # a fresh interpreter: other tests' imports would hide the problem
    code = f"import {modules}, sys; bad = {{'faiss', 'torch'}} & set(sys.modules); assert not bad, bad"
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
