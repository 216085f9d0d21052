"""What the command groups share to declare their commands and read their arguments.

The parser class (a usage error exits 3, like any error the user can act on), the
``--format`` flag, the gate policy flags, and the parsing of JSON object flags.
Nothing here imports more than the standard library at import time.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from tunix_rt.cli import EXIT_ERROR, CliError

Handler = Callable[[argparse.Namespace], int]


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # usage errors share the error exit code
        self.print_usage(sys.stderr)
        self.exit(EXIT_ERROR, f"{self.prog}: error: {message}\n")


def add_group(subparsers: Any, name: str, help: str) -> Any:
    """A command made of subcommands (``tunix-rt runs ...``); returns its subparsers."""
    return subparsers.add_parser(name, help=help).add_subparsers(
        dest=f"{name}_command", required=True, parser_class=Parser, metavar="COMMAND")


def add_command(subparsers: Any, name: str, func: Handler, help: str,
                formats: Sequence[str] | None = ("table", "json"),
                short: bool = False) -> argparse.ArgumentParser:
    """A command that runs ``func(args)``; with a ``--format`` flag unless ``formats`` is None.

    ``short``: a read of a page or a record, which runs without the garbage collector
    (:func:`tunix_rt.cli.main`).
    """
    parser = subparsers.add_parser(name, help=help, description=help)
    parser.set_defaults(func=func, short=short)
    if formats:
        format_arg(parser, formats)
    return parser


def format_arg(parser: argparse.ArgumentParser, choices: Sequence[str] = ("table", "json")) -> None:
    parser.add_argument("--format", choices=choices, default="table",
                        help="output format (default: table)")


def policy_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("gate policy")
    group.add_argument("--margin", type=float, default=0.01,
                       help="non-inferiority margin on the mean score (default 0.01)")
    group.add_argument("--confidence", type=float, default=0.95,
                       help="confidence of the bootstrap interval (default 0.95)")
    group.add_argument("--min-items", type=int, default=30,
                       help="fewer paired items than this is inconclusive (default 30)")
    group.add_argument("--require-improvement", action="store_true",
                       help="pass only when the run is better than the baseline")


def policy(args: argparse.Namespace, auto_promote: bool = False):  # noqa: ANN201
    """The :class:`GatePolicy` of the policy flags; :class:`CliError` names a bad one."""
    from pydantic import ValidationError

    from tunix_rt.quality.stats import GatePolicy

    try:
        return GatePolicy(margin=args.margin, confidence=args.confidence,
                          min_items=args.min_items, require_improvement=args.require_improvement,
                          auto_promote=auto_promote)
    except ValidationError as exc:
        from tunix_rt.specfile import validation_problems

        _, problems = validation_problems(exc, label=lambda f: "--" + f.replace("_", "-"))
        raise CliError(f"invalid gate policy: {problems}") from None


def json_object(text: str | None, flag: str) -> dict[str, Any] | None:
    """The JSON object a flag such as ``--config`` holds; None when the flag is absent."""
    if text is None:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CliError(f"{flag} is not valid JSON: {exc.msg} at column {exc.colno}") from None
    if not isinstance(value, dict):
        raise CliError(f"{flag} must be a JSON object")
    return value
