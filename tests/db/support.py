"""Helpers shared by the database tests: evaluate a run the way the score task does."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from sqlalchemy import Engine, func, select, update

from tunix_rt.judges import judge_spec
from tests.factories import make_run
from tunix_rt.store.db import session_scope
from tunix_rt.quality.evaluation import (EvaluationSummary, RunInfo, prepare_items, score_items,
                                        store_evaluation)
from tunix_rt.store.models import Run
from tunix_rt.store.runs import ensure_evaluable, get_run

JUDGE = "exact_match"


def evaluate(engine: Engine, run_id: str, judge: str = JUDGE) -> EvaluationSummary:
    """Load, read, score and store: the path of the quality loop's tasks, minus Prefect."""
    spec = judge_spec(judge)
    with session_scope(engine) as session:
        run = get_run(session, run_id)
        ensure_evaluable(run)
        info = RunInfo.of(run)
    aligned = prepare_items(lambda: session_scope(engine), info)
    scored = score_items(info, spec.name, aligned.items, missing=aligned.missing,
                         dataset=aligned.dataset, dataset_created=aligned.created,
                         n_extra=aligned.extra)
    with session_scope(engine) as session:
        return store_evaluation(session, scored)


def evaluated_run(engine: Engine, tmp_path: Path, name: str, correct: Sequence[bool], *,
                  dataset: str = "arith", judge: str = JUDGE) -> str:
    """A registered run of ``correct`` with a stored evaluation; its id."""
    run_id = make_run(engine, tmp_path, name, correct, dataset=dataset)
    evaluate(engine, run_id, judge)
    return run_id


def count(engine: Engine, model: type, *where) -> int:  # noqa: ANN001
    with session_scope(engine) as session:
        return session.scalar(select(func.count()).select_from(model).where(*where)) or 0


def set_created_at(engine: Engine, run_id: str, when) -> None:  # noqa: ANN001
    with session_scope(engine) as session:
        session.execute(update(Run).where(Run.id == run_id).values(created_at=when))
