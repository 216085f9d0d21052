"""``INSERT ... ON CONFLICT DO UPDATE`` for PostgreSQL and SQLite alike.

Retryable writes are upserts: a task that runs twice, or two loops that race,
converge on one row per unique key instead of failing or duplicating.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import ColumnElement
from sqlalchemy.orm import Session


def upsert(session: Session, model: type, values: dict[str, Any], *, key: Sequence[str],
           update: Sequence[str], where: ColumnElement[bool] | None = None,
           returning: Any = None) -> Any:
    """Insert ``values``, or update the ``update`` columns of the row with the same ``key``.

    ``where`` limits which existing rows may be updated; with ``returning`` the
    statement's first returned row is given back (None when ``where`` kept the row).
    """
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    elif dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert
    else:  # pragma: no cover - tunix-rt supports the two above
        raise NotImplementedError(f"upsert is not implemented for {dialect}")
    stmt = insert(model).values(**values)
    stmt = stmt.on_conflict_do_update(
        index_elements=list(key), set_={c: stmt.excluded[c] for c in update}, where=where)
    if returning is not None:
        stmt = stmt.returning(*returning) if isinstance(returning, (list, tuple)) \
            else stmt.returning(returning)
        return session.execute(stmt).first()
    session.execute(stmt)
    return None


def insert_ignore(session: Session, model: type, values: dict[str, Any], *,
                  key: Sequence[str]) -> bool:
    """Insert ``values`` unless a row with the same ``key`` exists; True when inserted.

    On PostgreSQL a concurrent insert of the same key waits for the first
    transaction, then finds the row: exactly one caller sees True.
    """
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    stmt = (insert(model).values(**values).on_conflict_do_nothing(index_elements=list(key))
            .returning(*(getattr(model, k) for k in key)))
    return session.execute(stmt).first() is not None
