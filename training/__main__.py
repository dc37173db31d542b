"""``python -m training {train,evaluate} ...``: the two CLIs behind one entry point."""

from __future__ import annotations

import sys

USAGE = "usage: python -m training {train,evaluate} [options]  (or python -m training.train / training.evaluate)"


def main(argv: list[str] | None = None) -> int:
    """Dispatch to :func:`training.train.main` or :func:`training.evaluate.main`."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in ("train", "evaluate"):
        print(USAGE, file=sys.stderr)
        return 0 if argv[:1] in (["-h"], ["--help"]) else 2
    if argv[0] == "train":
        from .train import main as run
    else:
        from .evaluate import main as run
    return run(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
