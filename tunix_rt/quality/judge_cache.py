"""The database behind a paid judge's verdict cache (the judges' ``VerdictCache`` hook)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, select

from tunix_rt.store.db import session_scope
from tunix_rt.store.models import JudgeCacheEntry, utcnow
from tunix_rt.store.upsert import insert_ignore

LOOKUP_BATCH = 1_000


class DatabaseVerdictCache:
    """Cached verdicts of one judge at one version, in the ``judge_cache`` table.

    Each call is its own short transaction: verdicts bought before a crash stay
    bought, whatever happens to the evaluation that asked for them.
    """

    def __init__(self, engine: Engine, judge: str, judge_version: str) -> None:
        self.engine = engine
        self.judge = judge
        self.judge_version = judge_version

    def get_many(self, keys: list[str]) -> dict[str, dict[str, Any]]:
        found: dict[str, dict[str, Any]] = {}
        with session_scope(self.engine) as session:
            for start in range(0, len(keys), LOOKUP_BATCH):
                chunk = keys[start:start + LOOKUP_BATCH]
                found.update(session.execute(select(JudgeCacheEntry.key, JudgeCacheEntry.verdict)
                                             .where(JudgeCacheEntry.key.in_(chunk))).all())
        return found

    def put_many(self, entries: dict[str, dict[str, Any]]) -> None:
        now = utcnow()
        with session_scope(self.engine) as session:
            for key, verdict in entries.items():
                insert_ignore(session, JudgeCacheEntry,
                              {"key": key, "judge": self.judge,
                               "judge_version": self.judge_version, "verdict": verdict,
                               "created_at": now}, key=("key",))
