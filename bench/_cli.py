"""What benchmark reports share: the command line that produced them."""

from __future__ import annotations

import argparse
from collections.abc import Collection


def command_line(module: str, args: argparse.Namespace, skip: Collection[str] = ()) -> str:
    """`python -m MODULE --flag value ...` for the parsed `args` (sorted; lists space-separated),
    without the flags in `skip` (outputs and machine-specific paths)."""
    flags = " ".join(
        f"--{name.replace('_', '-')} {' '.join(map(str, value)) if isinstance(value, list) else value}"
        for name, value in sorted(vars(args).items())
        if name not in skip
    )
    return f"python -m {module} {flags}"
