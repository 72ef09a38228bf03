"""The ``segtrt`` command line: a thin dispatcher over ``segtrt.commands.*``.

Each command module exposes ``register(subparsers)`` (adds its parser and sets ``func``) and
``run(args) -> int``. User errors (``SegtrtError``) are printed as one line, without a traceback,
and give exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from segtrt import __version__
from segtrt.errors import SegtrtError

COMMANDS = ("predict", "export", "verify", "build", "info")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="segtrt", description="Fast inference for nnU-Net v2 models.")
    parser.add_argument("--version", action="version", version=f"segtrt {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="show debug logging")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"segtrt.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"segtrt.commands.{name}":
                raise
            continue
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.func(args) or 0)
    except SegtrtError as exc:
        print(f"segtrt: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("segtrt: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
