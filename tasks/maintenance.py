"""Tasks of the maintenance flows."""

from __future__ import annotations

from prefect import task
from sqlalchemy import select

from tunix_rt.tasks.quality import RETRY_POLICY
from tunix_rt.quality import leaderboard
from tunix_rt.store.db import session_scope
from tunix_rt.store.models import Evaluation, EvaluationStatus, Run


@task(name="list-boards", **RETRY_POLICY)
def list_boards(dataset: str | None = None) -> list[tuple[str, str]]:
    """Every (dataset, judge) with a completed evaluation."""
    query = (select(Run.dataset, Evaluation.judge).join(Run, Run.id == Evaluation.run_id)
             .where(Evaluation.status == EvaluationStatus.completed.value).distinct()
             .order_by(Run.dataset, Evaluation.judge))
    if dataset:
        query = query.where(Run.dataset == dataset)
    with session_scope() as session:
        return [(d, j) for d, j in session.execute(query)]


@task(name="rebuild-board", **RETRY_POLICY)
def rebuild_board(dataset: str, judge: str) -> int:
    with session_scope() as session:
        return leaderboard.rebuild_leaderboard(session, dataset, judge)
