"""argparse pieces shared by every command: one-line usage errors, options given once, -v/-q anywhere.

``SegtrtParser`` is the parser class of ``segtrt`` and (argparse creates subparsers of the parent's
class) of every subcommand. It differs from ``argparse.ArgumentParser`` in two ways:

- a single-value option given twice (``-m A -m B``) is an error instead of silently keeping the last;
- a usage error is one line on stderr, ``segtrt predict: error: ... (see segtrt predict --help)``,
  exit code 2, like every other user error of the CLI.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, NoReturn, Sequence

_GIVEN = "_segtrt_options_given"


class StoreOnce(argparse.Action):
    """``store`` for options that take one value (or one list): a second occurrence is a usage error."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        if self.option_strings:
            given = namespace.__dict__.setdefault(_GIVEN, {})
            if self.dest in given:
                names = "/".join(self.option_strings)
                raise argparse.ArgumentError(
                    self, f"given twice ({_show(given[self.dest])} and {_show(values)}); {names} takes one value"
                    + (" list (put all values after one option)" if self.nargs in ("+", "*") else "")
                )
            given[self.dest] = values
        setattr(namespace, self.dest, values)


class SegtrtParser(argparse.ArgumentParser):
    """An ArgumentParser whose options are given at most once and whose errors are one line."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(*args, **kwargs)
        self.register("action", None, StoreOnce)
        self.register("action", "store", StoreOnce)

    def parse_known_args(self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None):
        parsed, extras = super().parse_known_args(args, namespace)
        parsed.__dict__.pop(_GIVEN, None)
        return parsed, extras

    def error(self, message: str) -> NoReturn:
        print(f"{self.prog}: error: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


def add_logging_options(parser: argparse.ArgumentParser, *, top_level: bool) -> None:
    """``-v/--verbose`` and ``-q/--quiet``. On a subcommand they default to SUPPRESS, so that the
    values given before the subcommand survive and the options work in either place."""
    default: dict[str, Any] = {"default": False} if top_level else {"default": argparse.SUPPRESS}
    parser.add_argument("-v", "--verbose", action="store_true", help="show debug logging", **default)
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors (no progress)",
                        **default)


def _show(values: Any) -> str:
    if isinstance(values, list):
        return " ".join(str(v) for v in values)
    return str(values)
