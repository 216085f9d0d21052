"""``tunix-rt db``: the database schema."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from tunix_rt.cli._args import add_command, add_group
from tunix_rt.cli.output import to_json


def cmd_upgrade(args: argparse.Namespace) -> int:
    from tunix_rt.store import db

    engine = db.get_engine(migrate_embedded=False)
    # What the upgrade found once it held the lock: a run that waited for another
    # reports the revision that one left, not the one it saw before waiting.
    before = db.upgrade(engine, args.revision, on_wait=_waiting)
    after = db.current_revision(engine)
    if args.format == "json":
        to_json({"from": before, "to": after})
    else:
        print(f"database at {after} (was {before or 'empty'})")
    return 0


def _waiting() -> None:
    print("tunix-rt: another migration of this database is running; waiting for it to finish",
          file=sys.stderr, flush=True)


def register(subparsers: Any) -> None:
    db = add_group(subparsers, "db", "database schema")
    p = add_command(db, "upgrade", cmd_upgrade, "migrate the configured database to head")
    p.add_argument("--revision", default="head", help=argparse.SUPPRESS)
