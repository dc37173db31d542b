"""``python -m export onnx ...`` / ``python -m export tensorrt ...``: the two exporters by name."""

from __future__ import annotations

import sys
from collections.abc import Sequence

USAGE = """usage: python -m export {onnx,tensorrt} [options]

  onnx      export DINOv2 SALAD to ONNX and verify it with onnxruntime   (python -m export.onnx --help)
  tensorrt  build and verify a TensorRT engine from that ONNX            (python -m export.tensorrt --help)
"""


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if args else 2
    command, rest = args[0], args[1:]
    if command == "onnx":
        from .onnx import main as run
    elif command == "tensorrt":
        from .tensorrt import main as run
    else:
        print(f"unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
        return 2
    return run(rest)


if __name__ == "__main__":
    sys.exit(main())
