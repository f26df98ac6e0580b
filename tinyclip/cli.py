"""The ``tinyclip`` command line: one sub-command per task, each defined next to the code it runs.

Every module listed in ``_COMMAND_MODULES`` provides ``add_cli(subparsers)``, which registers its
sub-commands with ``set_defaults(func=handler)``; a handler returns the exit code. A
:class:`~tinyclip.errors.TinyCLIPError` becomes one ``error: ...`` line and exit code 2.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from .errors import TinyCLIPError

_COMMAND_MODULES = [
    "tinyclip.zoo",             # tinyclip models
    "tinyclip.inherit.manual",  # tinyclip inherit
    "tinyclip.report",          # tinyclip report
    "tinyclip.data",            # tinyclip data build|card
    "tinyclip.eval",            # tinyclip eval
    "tinyclip.commands",        # tinyclip train-teacher | distill | smoke
    "tinyclip.studies.table2",  # tinyclip reproduce-table2
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tinyclip", description=__doc__.splitlines()[0])
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name in _COMMAND_MODULES:
        importlib.import_module(name).add_cli(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    import tinyclip  # noqa: F401  (registers the model configs)

    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except TinyCLIPError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
