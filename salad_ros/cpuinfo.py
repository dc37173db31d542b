"""What the kernel says about this CPU (/proc/cpuinfo), without importing anything heavy: its
feature flags (for :mod:`salad_ros.backends.cpu_features`) and its model name (for messages and
the node's diagnostics hardware id)."""

from __future__ import annotations

import functools
import platform
from pathlib import Path

_CPUINFO = Path("/proc/cpuinfo")


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (x86 ``flags`` / Arm ``Features`` of the first processor in
    /proc/cpuinfo); empty where that file does not exist (macOS, Windows)."""
    try:
        text = _CPUINFO.read_text(errors="replace")
    except OSError:
        return frozenset()
    return parse_cpuinfo_flags(text)


def parse_cpuinfo_flags(text: str) -> frozenset[str]:
    """Flags of the first ``flags:`` or ``Features:`` line of a /proc/cpuinfo text."""
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip().lower() in ("flags", "features"):
            return frozenset(value.split())
    return frozenset()


def cpu_machine() -> str:
    """``platform.machine()`` (x86_64, AMD64, aarch64, arm64, ...)."""
    return platform.machine()


@functools.cache
def cpu_model() -> str:
    """The CPU's model name for messages: x86 ``model name`` in /proc/cpuinfo, on Arm boards the
    device-tree model (e.g. a Jetson's), else what :mod:`platform` knows."""
    try:
        for line in _CPUINFO.read_text(errors="replace").splitlines():
            key, sep, value = line.partition(":")
            if sep and key.strip() == "model name" and value.strip():
                return " ".join(value.split())
    except OSError:
        pass
    try:
        return Path("/proc/device-tree/model").read_text(errors="replace").strip("\0\n ") or cpu_machine()
    except OSError:
        return platform.processor() or cpu_machine() or "unknown CPU"
