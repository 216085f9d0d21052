"""Evaluating a run: scoring its predictions with a judge, and storing the result.

Scoring is pure (items in, verdicts and a summary out). Storing replaces the
evaluation and all its verdicts in the caller's transaction, so an evaluation is
either wholly there or not at all; re-storing the same run and judge updates the
one row its unique key allows.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import delete, insert, select
from sqlalchemy.orm import Session

from tunix_rt.judges import Item, ScoringContext, judge_spec
from tunix_rt.judges.base import Verdict as JudgeVerdict
from tunix_rt.errors import TunixRtError
from tunix_rt.store.models import (Evaluation, EvaluationChunk, EvaluationStatus, Run, Verdict,
                                   coverage, utcnow)
from tunix_rt.quality.judging import build_judge, self_consistency
from tunix_rt.quality.stats import bootstrap_mean_ci
from tunix_rt.store.upsert import upsert

# Rows per INSERT when storing verdicts: large enough to amortize round trips,
# small enough to stay well under any driver's parameter limit.
VERDICT_BATCH = 2_000
# The longest response kept on a verdict (characters); a longer one is cut and marked.
RESPONSE_CHARS = 4_000
CUT_MARK = " […cut]"


def stored_response(response: str | None) -> str | None:
    """A response as a verdict keeps it: at most RESPONSE_CHARS, the cut marked."""
    if response is None or len(response) <= RESPONSE_CHARS:
        return response
    return response[:RESPONSE_CHARS - len(CUT_MARK)] + CUT_MARK


@dataclass(frozen=True)
class RunInfo:
    """The fields of a run that the loop needs, detached from any session."""

    id: str
    name: str
    dataset: str
    model: str
    predictions_uri: str
    origin: str | None = None  # webhook: the predictions are checked again as they are read

    @classmethod
    def of(cls, run: Run) -> RunInfo:
        return cls(run.id, run.name, run.dataset, run.model, run.predictions_uri or "",
                   run.origin)


@dataclass(frozen=True)
class ScoredRun:
    """A judge's verdicts on a run's items, and their aggregate."""

    run_id: str
    judge: str
    judge_version: str
    verdicts: list[JudgeVerdict]
    score: float | None
    ci_low: float | None
    ci_high: float | None
    started_at: datetime
    duration_s: float
    cost: dict[str, Any] | None = None
    agreement_rate: float | None = None
    agreement_repeats: int | None = None
    # The dataset version the run was scored over, and how many of its items the
    # predictions file lacked (each a wrong answer among the verdicts).
    dataset_id: int | None = None
    n_missing: int = 0
    n_extra: int = 0
    dataset_created: bool = False
    dataset_label: str | None = None
    # The candidate's response for each verdict, in the same order (None: missing item).
    responses: Sequence[str | None] = ()
    n_items: int = field(init=False)
    n_scored: int = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "n_items", len(self.verdicts))
        object.__setattr__(self, "n_scored", sum(1 for v in self.verdicts if v.scored))

    @property
    def n_unscored(self) -> int:
        return self.n_items - self.n_scored


@dataclass(frozen=True)
class EvaluationSummary:
    """What the loop reports about one evaluation."""

    evaluation_id: int
    run_id: str
    judge: str
    judge_version: str
    status: str
    score: float | None
    ci_low: float | None
    ci_high: float | None
    n_items: int
    n_scored: int
    n_unscored: int
    error: str | None
    reused: bool = False
    cost: dict[str, Any] | None = None
    agreement_rate: float | None = None
    n_missing: int | None = None
    coverage: float | None = None
    dataset: str | None = None
    dataset_created: bool = False
    n_extra: int | None = None

    @classmethod
    def of(cls, ev: Evaluation, *, reused: bool = False, dataset: str | None = None,
           dataset_created: bool = False) -> EvaluationSummary:
        return cls(ev.id, ev.run_id, ev.judge, ev.judge_version, ev.status, ev.score, ev.ci_low,
                   ev.ci_high, ev.n_items, ev.n_scored, ev.n_unscored, ev.error, reused, ev.cost,
                   ev.agreement_rate, ev.n_missing, coverage(ev.n_items, ev.n_missing), dataset,
                   dataset_created, ev.n_extra)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


MISSING = "missing from the predictions file"


# The bootstrap's resamples, as bootstrap_mean_ci draws by default.
BOOTSTRAP_RESAMPLES = 2_000
# Up to this many distinct score values, each resample draws how often each value comes
# up (a multinomial over the values' counts) instead of n item indices: the same
# distribution of resampled means, at a cost that does not grow with the items.
COUNTS_MAX_DISTINCT = 256


def aggregate(scores: Any, *, seed: int = 0) -> tuple[float | None, float | None, float | None]:
    """(mean, CI low, CI high) of the scored verdicts' scores; Nones when there are none.

    A percentile bootstrap of the mean (95%, 2,000 resamples, seeded) that depends on
    the scores as a multiset, not on the order the file listed its items in: a chunked
    evaluation, whose scores come back from the database in no particular order, gets
    the interval an evaluation read in one piece gets. Judges give few distinct scores
    (exact_match two), so a resample is drawn as counts of the distinct values: at a
    million items, 2,000 resamples cost microseconds instead of 2 x 10^9 index draws.
    """
    import numpy as np

    values = np.asarray(scores, dtype=np.float64)
    if values.size == 0:
        return None, None, None
    distinct, counts = np.unique(values, return_counts=True)
    return _aggregate(distinct, counts, seed)


def aggregate_counts(values: Sequence[float], counts: Sequence[int], *,
                     seed: int = 0) -> tuple[float | None, float | None, float | None]:
    """:func:`aggregate` of the scores given as each distinct value and how often it
    comes (a database's ``GROUP BY score``), in any order: the same figures, without
    reading every score back."""
    import numpy as np

    distinct = np.asarray(values, dtype=np.float64)
    if distinct.size == 0:
        return None, None, None
    order = np.argsort(distinct, kind="stable")
    return _aggregate(distinct[order], np.asarray(counts, dtype=np.int64)[order], seed)


def _aggregate(distinct: Any, counts: Any, seed: int) -> tuple[float, float, float]:
    """The mean and bootstrap CI of sorted distinct scores and their counts."""
    import numpy as np

    if distinct.size > COUNTS_MAX_DISTINCT:
        ci = bootstrap_mean_ci(np.repeat(distinct, counts), n_resamples=BOOTSTRAP_RESAMPLES,
                               seed=seed)
        return ci.mean, ci.ci_low, ci.ci_high
    n = int(counts.sum())
    mean = float(np.dot(distinct, counts) / n)
    if distinct.size == 1:
        return mean, mean, mean
    rng = np.random.default_rng(seed)
    draws = rng.multinomial(n, counts / n, size=BOOTSTRAP_RESAMPLES)
    means = draws @ distinct / n
    low, high = np.quantile(means, [0.025, 0.975])
    return mean, float(low), float(high)


def raw_json(raw: Any) -> str:
    """A verdict's ``raw`` as JSON text for COPY: orjson (a tenth of ``json.dumps``'s
    cost, which showed per verdict), ``json`` for what orjson does not take (a Mapping
    that is no dict, an integer beyond 64 bits)."""
    import json

    import orjson

    try:
        return orjson.dumps(raw).decode()
    except TypeError:
        return json.dumps(dict(raw))


VERDICT_COLUMNS = ("evaluation_id", "item_id", "score", "passed", "rationale", "raw", "response")


def write_verdicts(session: Session, evaluation_id: int, verdicts: Sequence[JudgeVerdict],
                   responses: Sequence[str | None]) -> None:
    """Insert the verdicts in the caller's transaction: COPY on PostgreSQL (a stream, no
    per-row statement), batched ``executemany`` elsewhere."""
    if session.get_bind().dialect.name == "postgresql":
        import psycopg
        from sqlalchemy.exc import DBAPIError

        statement = f"COPY verdicts ({', '.join(VERDICT_COLUMNS)}) FROM STDIN"
        cursor = session.connection().connection.driver_connection.cursor()
        try:
            with cursor.copy(statement) as copy:
                write = copy.write_row
                for v, response in zip(verdicts, responses, strict=True):
                    write((evaluation_id, v.item_id, v.score, v.passed, v.rationale,
                           None if v.raw is None else raw_json(v.raw),
                           response if response is None or len(response) <= RESPONSE_CHARS
                           else stored_response(response)))
        except psycopg.Error as exc:  # as SQLAlchemy's own statements raise it
            raise DBAPIError.instance(statement, None, exc, psycopg.Error) from exc
        return
    rows = [{"evaluation_id": evaluation_id, "item_id": v.item_id, "score": v.score,
             "passed": v.passed, "rationale": v.rationale,
             "raw": dict(v.raw) if v.raw is not None else None,
             "response": stored_response(response)}
            for v, response in zip(verdicts, responses, strict=True)]
    connection = session.connection()  # Core: no ORM bookkeeping per row
    for start in range(0, len(rows), VERDICT_BATCH):
        connection.execute(insert(Verdict.__table__), rows[start:start + VERDICT_BATCH])


def score_items(run: RunInfo, judge_name: str, items: list[Item], *,
                missing: Sequence[str] = (), seed: int = 0, engine: Any = None,
                repeat: int = 1, dataset: Any = None, dataset_created: bool = False,
                n_extra: int = 0) -> ScoredRun:
    """Score ``items`` with the named judge and aggregate the scored verdicts.

    Each id in ``missing`` (an item of the dataset the predictions file lacks) is a
    wrong answer: a verdict of 0 with the reason, so the score and its interval are
    over the whole item set. ``dataset`` is the version the items were aligned with.

    With ``repeat`` K > 1, a judge that samples (one with a ``variant``) grades a
    sample of the items K - 1 more times with other seeds, and the share of sampled
    items on which all K gradings agree (pass or fail) is the agreement rate.
    """
    judge = build_judge(judge_name, engine)
    started_at = utcnow()
    start = time.perf_counter()
    context = ScoringContext(run_id=run.id, dataset=run.dataset, model=run.model)
    verdicts = judge.score(items, context) if items else []
    if len(verdicts) != len(items):
        raise TunixRtError(f"judge {judge_name!r} returned {len(verdicts)} verdicts for "
                           f"{len(items)} items")
    answered = list(verdicts)
    verdicts = answered + [JudgeVerdict.wrong(item_id, MISSING, judge=judge.name,
                                              judge_version=judge.version, raw={"missing": True})
                           for item_id in missing]
    mean, ci_low, ci_high = aggregate([v.score for v in verdicts if v.score is not None],
                                      seed=seed)
    ledger = getattr(judge, "ledger", None)  # paid judges say what the scoring cost
    cost = ledger.as_dict() if hasattr(ledger, "as_dict") else None
    agreement = None
    repeats = None
    if repeat > 1 and items:
        agreement, extra = self_consistency(judge, items, answered, context, repeat)
        repeats = repeat if agreement is not None else None
        if cost is not None and extra:
            cost = {**cost, "repeat_calls": extra}
    return ScoredRun(run.id, judge.name, judge.version, verdicts, mean, ci_low, ci_high,
                     started_at, time.perf_counter() - start, cost=cost,
                     agreement_rate=agreement, agreement_repeats=repeats,
                     dataset_id=getattr(dataset, "id", None), n_missing=len(missing),
                     n_extra=n_extra,
                     dataset_created=dataset_created,
                     dataset_label=getattr(dataset, "label", None),
                     responses=[item.response for item in items] + [None] * len(missing))


def find_evaluation(session: Session, run_id: str, judge_name: str,
                    judge_version: str | None = None) -> Evaluation | None:
    """The run's evaluation by this judge (at its registered version unless given)."""
    version = judge_version or judge_spec(judge_name).version
    return session.scalar(select(Evaluation).where(
        Evaluation.run_id == run_id, Evaluation.judge == judge_name,
        Evaluation.judge_version == version))


def _upsert_evaluation(session: Session, run_id: str, judge: str, version: str,
                       *, only_if_not_completed: bool = False, **values: Any) -> int | None:
    """Insert or update the evaluation row; its id, or None when the guard kept it.

    On PostgreSQL the conflicting row stays locked until the transaction ends, so
    two loops storing the same evaluation serialize instead of mixing verdicts.
    """
    guard = (Evaluation.status != EvaluationStatus.completed.value
             if only_if_not_completed else None)
    row = upsert(session, Evaluation, {"run_id": run_id, "judge": judge,
                                       "judge_version": version, **values},
                 key=("run_id", "judge", "judge_version"), update=list(values), where=guard,
                 returning=Evaluation.id)
    return None if row is None else row[0]


def store_evaluation(session: Session, scored: ScoredRun) -> EvaluationSummary:
    """Write the evaluation and replace its verdicts, in the caller's transaction."""
    ev_id = _upsert_evaluation(
        session, scored.run_id, scored.judge, scored.judge_version,
        status=EvaluationStatus.completed.value, score=scored.score, ci_low=scored.ci_low,
        ci_high=scored.ci_high, n_items=scored.n_items, n_scored=scored.n_scored,
        n_unscored=scored.n_unscored, error=None, started_at=scored.started_at,
        finished_at=utcnow(), duration_s=scored.duration_s, cost=scored.cost,
        agreement_rate=scored.agreement_rate, agreement_repeats=scored.agreement_repeats,
        dataset_id=scored.dataset_id, n_missing=scored.n_missing if scored.dataset_id else None,
        n_extra=scored.n_extra if scored.dataset_id else None)
    session.execute(delete(Verdict).where(Verdict.evaluation_id == ev_id))
    session.execute(delete(EvaluationChunk).where(EvaluationChunk.evaluation_id == ev_id))
    write_verdicts(session, ev_id, scored.verdicts,
                   list(scored.responses) or [None] * len(scored.verdicts))
    return EvaluationSummary.of(session.get(Evaluation, ev_id, populate_existing=True),
                                dataset=scored.dataset_label,
                                dataset_created=scored.dataset_created)


def store_failed_evaluation(session: Session, run_id: str, judge_name: str,
                            error: str) -> EvaluationSummary:
    """Record that a run could not be evaluated, and why.

    A completed evaluation already on record is kept as it is: a failed re-run
    (``--force`` on a file that has since gone bad) must not destroy good data.
    """
    spec = judge_spec(judge_name)
    now = utcnow()
    ev_id = _upsert_evaluation(session, run_id, spec.name, spec.version,
                               only_if_not_completed=True,
                               status=EvaluationStatus.failed.value, score=None, ci_low=None,
                               ci_high=None, n_items=0, n_scored=0, n_unscored=0, error=error,
                               started_at=now, finished_at=now, duration_s=0.0)
    if ev_id is None:
        return EvaluationSummary.of(find_evaluation(session, run_id, spec.name, spec.version))
    session.execute(delete(Verdict).where(Verdict.evaluation_id == ev_id))
    session.execute(delete(EvaluationChunk).where(EvaluationChunk.evaluation_id == ev_id))
    return EvaluationSummary.of(session.get(Evaluation, ev_id, populate_existing=True))


def latest_evaluation(session: Session, run_id: str, judge_name: str) -> Evaluation | None:
    """The run's most recent completed evaluation by this judge, at any version."""
    return session.scalar(select(Evaluation).where(
        Evaluation.run_id == run_id, Evaluation.judge == judge_name,
        Evaluation.status == EvaluationStatus.completed.value)
        .order_by(Evaluation.finished_at.desc(), Evaluation.id.desc()).limit(1))


def item_outcomes(session: Session, evaluation_id: int) -> dict[str, float | None]:
    """Every item of an evaluation, item id to score; None where the judge could not score."""
    rows = session.execute(select(Verdict.item_id, Verdict.score).where(
        Verdict.evaluation_id == evaluation_id))
    return dict(rows.all())


def prepare_items(session_scope: Callable[[], Any], run: RunInfo,
                  predictions: list[Item] | None = None,
                  line_of: dict[str, int] | None = None) -> Any:
    """Read the run's predictions and lay them over its dataset (an :class:`Aligned`).

    The dataset is the latest version of the run's dataset name; when there is none,
    one is registered from this run's file (ids, prompts, references) and
    ``created`` says so. A bad file, an item outside the dataset or a reference that
    disagrees with it is a :class:`PredictionsError` naming the line. ``predictions``
    (with ``line_of``, each id's line) are the file's items when the caller read them.
    """
    from dataclasses import replace

    from tunix_rt.quality import datasets
    from tunix_rt.quality.predictions import allowed_for, read_predictions
    from tunix_rt.store.models import DatasetSource

    if predictions is None:
        line_of = {}
        # A webhook's URI was checked when it came; the file it names may have changed since.
        predictions = read_predictions(run.predictions_uri, line_of=line_of,
                                       allow=allowed_for(run.origin))
    line_of = line_of if line_of is not None else {}
    with session_scope() as session:
        latest = datasets.latest_dataset(session, run.dataset)
        created = False
        if latest is None:
            registered = datasets.register_dataset(
                session, run.dataset, datasets.eval_items(predictions),
                source=DatasetSource.implicit, source_run_id=run.id)
            info, created = registered.dataset, registered.created
        else:
            info = datasets.DatasetInfo.of(latest)
        answer_key = datasets.dataset_items(session, info.id)
    aligned = datasets.align(info, answer_key, predictions, line_of, run.predictions_uri)
    return replace(aligned, created=created)
