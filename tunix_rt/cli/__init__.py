"""The ``tunix-rt`` command line (docs/CONTRACT.md).

Exit codes: 0 success; ``gate``: 1 fail, 2 inconclusive or no baseline; 3 an error
the user can act on (the message on stderr says what and where); 4 anything else;
130 interrupted.

One module per command group declares its commands (``register(subparsers)``) and
their handlers: :mod:`~tunix_rt.cli.db`, :mod:`~tunix_rt.cli.datasets`, :mod:`~tunix_rt.cli.runs`,
:mod:`~tunix_rt.cli.judges`, :mod:`~tunix_rt.cli.evaluate`, :mod:`~tunix_rt.cli.board`
(leaderboard, baseline, gate), :mod:`~tunix_rt.cli.service` (serve, up, sweep, notify),
:mod:`~tunix_rt.cli.tune`, :mod:`~tunix_rt.cli.train`, :mod:`~tunix_rt.cli.demo`. They share :mod:`tunix_rt.cli._args` (flags, parser class)
and :mod:`tunix_rt.cli.output` (tables, CSV, JSON). This module assembles the parser
and turns errors into exit codes.

Read commands import neither Prefect nor pandas: the commands that run a flow
(``evaluate``, ``sweep``, ``tune``, ``train``, ``demo``) import Prefect when they run,
and ``tune show`` pandas, so ``tunix-rt leaderboard`` starts fast.
"""

from __future__ import annotations

import argparse
import gc
import sys
from collections.abc import Sequence

EXIT_ERROR = 3
EXIT_INTERNAL = 4
EXIT_INTERRUPTED = 130


class CliError(Exception):
    """Bad usage found after parsing (a --config that is not JSON, say)."""


# The group module that declares each command, in the order of ``tunix-rt --help``. A
# command line imports only the group of its command: compiling and importing the other
# ten cost a cold start (PYTHONDONTWRITEBYTECODE) ~0.1x of `import sqlalchemy`.
COMMANDS = {"db": "db", "datasets": "datasets", "runs": "runs", "judges": "judges",
            "evaluate": "evaluate", "leaderboard": "board", "baseline": "board", "gate": "board",
            "serve": "service", "up": "service", "sweep": "service", "notify": "service",
            "tune": "tune", "train": "train", "demo": "demo", "export": "export"}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser of every command; with ``command``, one of :data:`COMMANDS`, only of its
    group's commands (what parsing a command line needs: the same parser for them)."""
    import importlib

    # The groups import this module (CliError, exit codes): imported here, not above.
    from tunix_rt.cli._args import Parser

    parser = Parser(prog="tunix-rt", description=(
        "The model-quality loop for LLM post-training: judge a run's predictions, rebuild "
        "the leaderboard, gate the run against the baseline."))
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser,
                                metavar="COMMAND")
    groups = [COMMANDS[command]] if command in COMMANDS else dict.fromkeys(COMMANDS.values())
    for group in groups:
        importlib.import_module(f"tunix_rt.cli.{group}").register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(argv[0] if argv else None).parse_args(argv)
    from tunix_rt.errors import TunixRtError

    # A short read (``add_command(short=True)``) allocates ~90,000 objects importing
    # SQLAlchemy and mapping the models, nearly all kept to the exit: the collector's passes
    # over them were ~0.15x of `import sqlalchemy` and free nothing worth having in a
    # process that prints a page and exits. Long commands (serve, evaluate) keep it.
    collecting = gc.isenabled()
    if args.short:
        gc.disable()
    try:
        return args.func(args)
    except (TunixRtError, CliError) as exc:
        return _error(str(exc))
    except KeyboardInterrupt:
        print("tunix-rt: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:  # noqa: BLE001 - the last line of defence, with the cause named
        return _unexpected(exc)
    finally:
        if collecting:
            gc.enable()


def _error(message: str) -> int:
    print(f"tunix-rt: error: {message}", file=sys.stderr)
    return EXIT_ERROR


def _unexpected(exc: Exception) -> int:
    """An error the user can still act on (a judge not configured, the database out of
    reach) exits 3; anything else is an internal error, with its traceback: 4."""
    from sqlalchemy.exc import OperationalError

    from tunix_rt.judges import JudgeRegistryError
    from tunix_rt.judges.llm import JudgeConfigError

    if isinstance(exc, (JudgeRegistryError, JudgeConfigError)):
        return _error(str(exc))
    if isinstance(exc, OperationalError):
        return _error(f"cannot use the database: {exc.orig}")
    import traceback

    traceback.print_exc()
    print(f"tunix-rt: internal error: {exc!r}", file=sys.stderr)
    return EXIT_INTERNAL
