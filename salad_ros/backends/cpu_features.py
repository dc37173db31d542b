"""Does this CPU compute in bf16 natively? The one check the torch and OpenVINO backends share.

bf16 on a CPU only pays off with instructions that multiply bf16 directly: on x86
``avx512_bf16`` (Cooper Lake, Sapphire Rapids and later Xeons, Zen 4 and later) or ``amx_bf16``
(Sapphire Rapids and later), on Arm the ``bf16`` feature (Armv8.6-A: Graviton 3, Neoverse V1/N2,
Apple M2). Elsewhere bf16 is emulated through fp32 and is slower than fp32, so it is refused.

The flags come from ``/proc/cpuinfo`` (``flags`` on x86, ``Features`` on Arm), as the kernel
reports them (:mod:`salad_ros.cpuinfo`); tests replace :func:`cpu_flags` and :func:`cpu_machine` here to
play another CPU.

    python -m salad_ros.backends.cpu_features     # one line; exit status 0 with native bf16, 1 without
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence

from ..cpuinfo import cpu_flags, cpu_machine, cpu_model, parse_cpuinfo_flags
from ..params import ConfigError

#: Flags that mean native bf16 arithmetic, per architecture family.
BF16_FLAGS = {"x86": ("avx512_bf16", "amx_bf16"), "arm": ("bf16",)}
__all__ = ["BF16_FLAGS", "cpu_bf16_problem", "cpu_flags", "cpu_machine", "cpu_model", "native_bf16_flags",
           "parse_cpuinfo_flags", "require_cpu_bf16"]


def _family(machine: str) -> str | None:
    m = machine.lower()
    if m in ("x86_64", "amd64", "i686", "i386", "x86"):
        return "x86"
    if m.startswith(("aarch64", "arm64", "armv8", "armv9")):
        return "arm"
    return None


def native_bf16_flags(flags: Iterable[str], machine: str) -> list[str]:
    """The native-bf16 flags among ``flags`` on a ``machine`` architecture (empty: none)."""
    family = _family(machine)
    have = set(flags)
    return [f for f in BF16_FLAGS.get(family, ()) if f in have] if family else []


def cpu_bf16_problem() -> str | None:
    """Why this CPU cannot run bf16 natively, or None when it can."""
    machine = cpu_machine()
    family = _family(machine)
    if family is None:
        return f"no native bf16 check for architecture {machine!r}"
    if native_bf16_flags(cpu_flags(), machine):
        return None
    wanted = " or ".join(BF16_FLAGS[family])
    return f"this CPU ({cpu_model()}, {machine}) lacks native bf16 (no {wanted} flag in /proc/cpuinfo)"


def require_cpu_bf16(backend: str) -> None:
    """Refuse ``precision: bf16`` on a CPU without native bf16, in one line naming the parameter."""
    problem = cpu_bf16_problem()
    if problem:
        raise ConfigError(
            f"parameter 'precision': bf16 on the CPU ({backend}) needs native bf16 arithmetic, but {problem}; "
            "use precision: fp32 (fp16 needs CUDA or TensorRT)"
        )


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    problem = cpu_bf16_problem()
    if "--quiet" not in argv:
        machine = cpu_machine()
        found = native_bf16_flags(cpu_flags(), machine)
        print(f"bf16: native ({', '.join(found)}) on {cpu_model()}" if not problem else f"bf16: not native: {problem}")
    return 0 if problem is None else 1


if __name__ == "__main__":
    sys.exit(main())
