"""Command-line pieces shared by the training tools."""

from __future__ import annotations

import argparse
import warnings


class DeprecatedAlias(argparse.Action):
    """An old option name that still works but warns (``--variant`` for ``--descriptor``)."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        # warn_explicit: one clean line naming the tool, not argparse's internals
        warnings.warn_explicit(f"{option_string} is deprecated; use --{self.dest}", FutureWarning, parser.prog, 0)
        setattr(namespace, self.dest, values)
