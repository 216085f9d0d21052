"""``tunix-rt datasets``: the eval sets runs are scored over."""

from __future__ import annotations

import argparse
from typing import Any

from tunix_rt.cli._args import add_command, add_group
from tunix_rt.cli.output import key_values, to_json, to_table

LIST_COLUMNS = ["name", "version", "n_items", "content_hash", "source", "versions", "created_at"]


def _short(doc: dict[str, Any]) -> dict[str, Any]:
    return {**doc, "content_hash": doc["content_hash"][:12]}


def cmd_register(args: argparse.Namespace) -> int:
    from tunix_rt.errors import InvalidInputError, PredictionsError
    from tunix_rt.quality import datasets
    from tunix_rt.quality.predictions import parse_predictions, read_jsonl
    from tunix_rt.store.db import session_scope

    try:
        items = read_jsonl(args.items, lambda lines: parse_predictions(
            lines, uri=args.items, require_response=False), what="items")
    except PredictionsError as exc:
        raise InvalidInputError(str(exc)) from None
    with session_scope() as session:
        registered = datasets.register_dataset(session, args.name, datasets.eval_items(items))
    doc = {**registered.dataset.to_dict(), "created": registered.created}
    if args.format == "json":
        to_json(doc)
    elif registered.created:
        print(f"registered dataset {registered.dataset.label}: {registered.dataset.n_items} items")
    else:
        print(f"dataset {registered.dataset.label} already has these items: nothing registered")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from tunix_rt.quality import datasets
    from tunix_rt.store.db import session_scope

    with session_scope() as session:
        rows = datasets.list_datasets(session)
    if args.format == "json":
        to_json({"datasets": rows})
    else:
        to_table([_short(r) for r in rows], LIST_COLUMNS)
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from tunix_rt.quality import datasets
    from tunix_rt.store.db import session_scope

    with session_scope() as session:
        info = datasets.get_dataset(session, args.name, args.version)
    if args.format == "json":
        to_json(info.to_dict())
    else:
        key_values(info.to_dict())
    return 0


def register(subparsers: Any) -> None:
    group = add_group(subparsers, "datasets", "the eval sets runs are scored over")
    p = add_command(group, "register", cmd_register,
                    "record an eval set (a new version when its items or references change)")
    p.add_argument("name", metavar="NAME", help="the dataset name runs give")
    p.add_argument("--items", required=True, metavar="FILE",
                   help="JSON Lines: id, prompt, reference (a predictions file also works)")
    add_command(group, "list", cmd_list, "every dataset, latest version first", short=True)
    p = add_command(group, "show", cmd_show, "one dataset version", short=True)
    p.add_argument("name", metavar="NAME")
    p.add_argument("--version", type=int, help="a version number (default: the latest)")
