"""The system of record: SQLAlchemy 2 typed models.

One declarative base with a naming convention, so every constraint and index has a
stable name that migrations can refer to. JSON columns are JSONB on PostgreSQL and
JSON on SQLite, from the same model. Relationships load only when asked
(``lazy="raise"``): a query that needs related rows says so.

Unlike the other modules, this one does not use ``from __future__ import annotations``:
with it every ``Mapped[...]`` annotation is a string that SQLAlchemy evaluates again
when it maps the class: ~10 ms of CPU at each start, a fifth of mapping the models.
A class named before it is defined is quoted (``Mapped[list["Evaluation"]]``).
"""

import enum
import uuid
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (JSON, BigInteger, Boolean, CheckConstraint, DateTime, Float, ForeignKey,
                        Index, Integer, MetaData, String, Text, UniqueConstraint)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.orm import column_property
from sqlalchemy.sql import select
from sqlalchemy.types import TypeDecorator

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class JSONDocument(TypeDecorator[Any]):
    """JSON, stored as JSONB on PostgreSQL.

    Not ``JSON().with_variant(JSONB(), "postgresql")``: a variant needs the JSONB class
    when the models are defined, and importing the PostgreSQL dialect for it cost every
    process ~0.25x of ``import sqlalchemy``, SQLite commands included. Here the dialect's
    type is looked up when an engine first uses the column. As JSON: None is stored as
    JSON null, and values are not hashable.
    """

    impl = JSON
    cache_ok = True
    hashable = False
    should_evaluate_none = True

    def load_dialect_impl(self, dialect: Any) -> Any:
        if dialect.name == "postgresql":
            from sqlalchemy.dialects.postgresql import JSONB

            return dialect.type_descriptor(JSONB())
        return dialect.type_descriptor(JSON())


JSONType = JSONDocument()
# SQLite only auto-increments an INTEGER PRIMARY KEY.
BigIntPK = BigInteger().with_variant(Integer(), "sqlite")


class UtcDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC timestamp on every database.

    PostgreSQL keeps the zone (timestamptz); SQLite drops it, so values are stored
    as UTC and given back as UTC-aware datetimes.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given for a UTC column; use tunix_rt.store.models.utcnow()")
        return value.astimezone(timezone.utc)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def coverage(n_items: int, n_missing: int | None) -> float | None:
    """The share of an item set a run answered; None when it is not known."""
    if n_missing is None or n_items <= 0:
        return None
    return (n_items - n_missing) / n_items


def new_run_id() -> str:
    return uuid.uuid4().hex


class RunStatus(str, enum.Enum):
    pending = "pending"
    running = "running"
    completed = "completed"
    failed = "failed"


class RunOrigin(str, enum.Enum):
    cli = "cli"
    webhook = "webhook"
    tuning = "tuning"
    train = "train"
    api = "api"


class EvaluationStatus(str, enum.Enum):
    completed = "completed"
    failed = "failed"
    running = "running"  # chunked scoring: not every chunk is in yet


class GateDecision(str, enum.Enum):
    passed = "pass"
    failed = "fail"
    inconclusive = "inconclusive"
    no_baseline = "no_baseline"


def _in(column: str, enum_cls: type[enum.Enum]) -> str:
    values = ", ".join(f"'{m.value}'" for m in enum_cls)
    return f"{column} IN ({values})"


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {dict[str, Any]: JSONType, datetime: UtcDateTime()}


class Run(Base):
    """A training run whose predictions can be judged."""

    __tablename__ = "runs"
    __table_args__ = (
        CheckConstraint(_in("status", RunStatus), name="status"),
        Index("ix_runs_dataset_created_at", "dataset", "created_at"),
        Index("ix_runs_status", "status"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_run_id)
    external_id: Mapped[str | None] = mapped_column(String(255), unique=True)
    name: Mapped[str] = mapped_column(String(255))
    dataset: Mapped[str] = mapped_column(String(255))
    model: Mapped[str] = mapped_column(String(255))
    config: Mapped[dict[str, Any]] = mapped_column(default=dict)
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    predictions_uri: Mapped[str | None] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16), default=RunStatus.pending.value)
    dry_run: Mapped[bool] = mapped_column(Boolean, default=False)
    origin: Mapped[str] = mapped_column(String(16), default=RunOrigin.cli.value)
    # A webhook run's sender: the TUNIX_RT_WEBHOOK_SECRETS source whose secret verified its
    # first delivery (None: the anonymous TUNIX_RT_WEBHOOK_SECRET, or not a webhook run).
    # Only deliveries of that source change the run.
    source: Mapped[str | None] = mapped_column(String(64))
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow,
                                                 onupdate=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    completed_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    # A job tunix-rt launched (`tunix-rt train`): its exit code, where its log is, and
    # when someone asked to cancel it.
    exit_code: Mapped[int | None] = mapped_column(Integer)
    log_uri: Mapped[str | None] = mapped_column(Text)
    cancel_requested_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    # Lineage of a run registered from a tuning trial.
    study_id: Mapped[str | None] = mapped_column(ForeignKey("studies.id", ondelete="SET NULL"),
                                                 index=True)
    trial_id: Mapped[str | None] = mapped_column(String(64))

    evaluations: Mapped[list["Evaluation"]] = relationship(back_populates="run", lazy="raise",
                                                         passive_deletes=True)


class DatasetSource(str, enum.Enum):
    registered = "registered"   # tunix-rt datasets register
    implicit = "implicit"       # from the first evaluated run of a dataset without a record


class Dataset(Base):
    """An eval set: a named, versioned set of items with their prompts and references.

    The dataset, not a run's predictions file, is the answer key: runs are scored over
    its whole item set, against its references. ``content_hash`` covers the ids,
    prompts and references, so two versions with the same items and references have
    the same hash, and runs on different hashes are never compared.
    """

    __tablename__ = "datasets"
    __table_args__ = (
        UniqueConstraint("name", "version"),
        CheckConstraint(_in("source", DatasetSource), name="source"),
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(255))
    version: Mapped[int] = mapped_column(Integer)
    content_hash: Mapped[str] = mapped_column(String(64))
    n_items: Mapped[int] = mapped_column(Integer)
    source: Mapped[str] = mapped_column(String(16))
    source_run_id: Mapped[str | None] = mapped_column(ForeignKey("runs.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)


class DatasetItem(Base):
    """One item of a dataset version: its id, prompt and reference answer."""

    __tablename__ = "dataset_items"

    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"),
                                            primary_key=True)
    item_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    prompt: Mapped[str | None] = mapped_column(Text)
    reference: Mapped[str | None] = mapped_column(Text)


class Evaluation(Base):
    """One judge's evaluation of one run: the aggregate of its verdicts."""

    __tablename__ = "evaluations"
    __table_args__ = (
        UniqueConstraint("run_id", "judge", "judge_version"),
        CheckConstraint(_in("status", EvaluationStatus), name="status"),
        Index("ix_evaluations_judge_status", "judge", "status"),
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    judge: Mapped[str] = mapped_column(String(64))
    judge_version: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16))
    score: Mapped[float | None] = mapped_column(Float)
    ci_low: Mapped[float | None] = mapped_column(Float)
    ci_high: Mapped[float | None] = mapped_column(Float)
    # Coverage. n_items: the dataset's items; n_missing: those the predictions file
    # lacked (scored 0); n_unscored: those the judge could not judge; n_scored: the
    # rest, whose mean is the score. n_missing and dataset_id are NULL for
    # evaluations made before datasets existed: their coverage is unknown.
    n_items: Mapped[int] = mapped_column(Integer, default=0)
    n_scored: Mapped[int] = mapped_column(Integer, default=0)
    n_unscored: Mapped[int] = mapped_column(Integer, default=0)
    n_missing: Mapped[int | None] = mapped_column(Integer)
    # Lines of the predictions file whose item is not in the dataset (not scored).
    n_extra: Mapped[int | None] = mapped_column(Integer)
    dataset_id: Mapped[int | None] = mapped_column(ForeignKey("datasets.id", ondelete="RESTRICT"),
                                                   index=True)
    error: Mapped[str | None] = mapped_column(Text)
    started_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)
    finished_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)
    duration_s: Mapped[float] = mapped_column(Float, default=0.0)
    # What the judge cost: provider calls (retries included), cache hits, tokens.
    cost: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    # Self-consistency: the share of sampled items on which K repeated gradings agreed.
    agreement_rate: Mapped[float | None] = mapped_column(Float)
    agreement_repeats: Mapped[int | None] = mapped_column(Integer)

    run: Mapped[Run] = relationship(back_populates="evaluations", lazy="raise")


class EvaluationChunk(Base):
    """A chunk of a chunked evaluation whose verdicts are stored (tunix_rt.quality.chunks).

    Written in the transaction that stores the chunk's verdicts: a chunk with a row
    whose byte range and digest match the file is not scored again when a killed
    evaluation resumes.
    """

    __tablename__ = "evaluation_chunks"

    evaluation_id: Mapped[int] = mapped_column(
        BigIntPK, ForeignKey("evaluations.id", ondelete="CASCADE"), primary_key=True)
    chunk_index: Mapped[int] = mapped_column(Integer, primary_key=True)
    byte_start: Mapped[int] = mapped_column(BigInteger)
    byte_end: Mapped[int] = mapped_column(BigInteger)
    first_line: Mapped[int] = mapped_column(Integer)
    digest: Mapped[str] = mapped_column(String(64))
    n_verdicts: Mapped[int] = mapped_column(Integer)
    n_extra: Mapped[int] = mapped_column(Integer)
    cost: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    finished_at: Mapped[datetime] = mapped_column(UtcDateTime())


class Verdict(Base):
    """A judge's verdict on one item of one evaluation."""

    __tablename__ = "verdicts"
    __table_args__ = (UniqueConstraint("evaluation_id", "item_id"),)

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    evaluation_id: Mapped[int] = mapped_column(
        ForeignKey("evaluations.id", ondelete="CASCADE"))
    item_id: Mapped[str] = mapped_column(String(255))
    score: Mapped[float | None] = mapped_column(Float)
    passed: Mapped[bool | None] = mapped_column(Boolean)
    rationale: Mapped[str] = mapped_column(Text, default="")
    raw: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    # The candidate's response as the judge saw it, cut to RESPONSE_CHARS (NULL: stored
    # before 0.8, or the item was missing from the predictions file).
    response: Mapped[str | None] = mapped_column(Text)


class LeaderboardEntry(Base):
    """One run's standing on a dataset under a judge: its latest evaluation's figures.

    No stored rank: a rank is the entry's position in the order of the ``order`` index,
    so adding one evaluation writes one row (tunix_rt.quality.leaderboard).
    """

    __tablename__ = "leaderboard_entries"
    __table_args__ = (
        Index("ix_leaderboard_entries_run_id", "run_id"),
        # The board's order, every column ascending so a cursor's key is one row-value
        # comparison that the index can seek to.
        Index("ix_leaderboard_entries_order", "dataset", "judge", "order_flagged",
              "order_score", "order_n_scored", "run_created_at", "run_id"),
    )

    dataset: Mapped[str] = mapped_column(String(255), primary_key=True)
    judge: Mapped[str] = mapped_column(String(64), primary_key=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"),
                                        primary_key=True)
    evaluation_id: Mapped[int] = mapped_column(
        ForeignKey("evaluations.id", ondelete="CASCADE"))
    judge_version: Mapped[str] = mapped_column(String(32))
    score: Mapped[float] = mapped_column(Float)
    ci_low: Mapped[float] = mapped_column(Float)
    ci_high: Mapped[float] = mapped_column(Float)
    n_items: Mapped[int] = mapped_column(Integer)
    n_missing: Mapped[int | None] = mapped_column(Integer)
    n_unscored: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    dataset_version: Mapped[int | None] = mapped_column(Integer)
    # Why the entry is not ranked with the complete runs: "unscored" (the judge could
    # not score more than the allowed share) or "coverage_unknown"; NULL when complete.
    flag: Mapped[str | None] = mapped_column(String(32))
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)
    # The sort key: 1 when flagged (ranked below the complete entries), minus the score,
    # minus the items scored, then the run's creation time and id.
    order_flagged: Mapped[int] = mapped_column(Integer)
    order_score: Mapped[float] = mapped_column(Float)
    order_n_scored: Mapped[int] = mapped_column(Integer)
    run_created_at: Mapped[datetime] = mapped_column(UtcDateTime())


class LeaderboardBoard(Base):
    """A board's bookkeeping: the threshold its flags were computed with, its size, and a
    generation that every change bumps (a cursor of an older generation recounts its rank).
    """

    __tablename__ = "leaderboard_boards"

    dataset: Mapped[str] = mapped_column(String(255), primary_key=True)
    judge: Mapped[str] = mapped_column(String(64), primary_key=True)
    # NULL: not known (a board carried over by a migration); the next update rebuilds.
    max_unscored: Mapped[float | None] = mapped_column(Float)
    n_entries: Mapped[int] = mapped_column(Integer)
    generation: Mapped[int] = mapped_column(BigInteger)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)


class Baseline(Base):
    """The current baseline run of a dataset under a judge."""

    __tablename__ = "baselines"

    dataset: Mapped[str] = mapped_column(String(255), primary_key=True)
    judge: Mapped[str] = mapped_column(String(64), primary_key=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="RESTRICT"), index=True)
    promoted_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)


class BaselinePromotion(Base):
    """The history of baselines: who replaced whom, when, and why."""

    __tablename__ = "baseline_promotions"
    __table_args__ = (Index("ix_baseline_promotions_dataset_judge", "dataset", "judge",
                            "promoted_at"),)

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    dataset: Mapped[str] = mapped_column(String(255))
    judge: Mapped[str] = mapped_column(String(64))
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    previous_run_id: Mapped[str | None] = mapped_column(
        ForeignKey("runs.id", ondelete="SET NULL"))
    source: Mapped[str] = mapped_column(String(16))  # manual | auto
    reason: Mapped[str] = mapped_column(Text, default="")
    promoted_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)


class GateResult(Base):
    """A gate decision: a candidate run compared item by item with a baseline.

    One row per candidate, judge, baseline and policy: re-gating with the same
    inputs updates the row instead of adding another. ``baseline_key`` is the
    baseline run id, or "" when there was none, so the unique key holds on every
    database (NULLs are distinct in unique constraints).
    """

    __tablename__ = "gate_results"
    __table_args__ = (
        UniqueConstraint("run_id", "judge", "baseline_key", "policy_digest"),
        CheckConstraint(_in("decision", GateDecision), name="decision"),
        Index("ix_gate_results_run_id_updated_at", "run_id", "updated_at"),
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    dataset: Mapped[str] = mapped_column(String(255))
    judge: Mapped[str] = mapped_column(String(64))
    baseline_run_id: Mapped[str | None] = mapped_column(
        ForeignKey("runs.id", ondelete="SET NULL"))
    baseline_key: Mapped[str] = mapped_column(String(32), default="")
    decision: Mapped[str] = mapped_column(String(16))
    delta: Mapped[float | None] = mapped_column(Float)
    ci_low: Mapped[float | None] = mapped_column(Float)
    ci_high: Mapped[float | None] = mapped_column(Float)
    n_paired: Mapped[int] = mapped_column(Integer, default=0)
    # Items of the baseline's set left out because the judge could not score them.
    n_excluded: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    reason: Mapped[str] = mapped_column(Text, default="")
    policy: Mapped[dict[str, Any]] = mapped_column(default=dict)
    policy_digest: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow,
                                                 onupdate=utcnow)


class RunMetric(Base):
    """One point of a run's metrics time series: a metric's value at a training step.

    Written from ``run.progress`` deliveries and from the metrics of jobs that
    ``tunix-rt train`` launched; the loss curve of a run is its ``train_loss`` points.
    The key is (run, name, step): a repeated point (a retried delivery, every host of a
    multi-host job) is stored once. ``value`` is None for a NaN or an infinity.
    """

    __tablename__ = "run_metrics"

    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"),
                                        primary_key=True)
    name: Mapped[str] = mapped_column(String(255), primary_key=True)
    step: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    value: Mapped[float | None] = mapped_column(Float)
    recorded_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)


class DispatchStatus(str, enum.Enum):
    pending = "pending"
    dispatched = "dispatched"


class WebhookDelivery(Base):
    """A verified webhook delivery, stored before it is answered (dedupe by ``webhook-id``)."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (Index("ix_webhook_deliveries_received_at", "received_at"),)

    id: Mapped[str] = mapped_column(String(255), primary_key=True)  # the webhook-id header
    event_type: Mapped[str] = mapped_column(String(32))
    payload: Mapped[dict[str, Any]] = mapped_column(default=dict)
    run_id: Mapped[str | None] = mapped_column(ForeignKey("runs.id", ondelete="SET NULL"))
    received_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)


class Dispatch(Base):
    """The outbox: a quality loop owed to a completed run, written with the run change.

    The receiver commits the run and this row together, answers 202, then starts the
    loop and marks the row dispatched. A row still pending after a crash is found by
    the sweeper and dispatched again; ``key`` (the delivery id) is the idempotency
    key of the deployment run, so a dispatch repeated is not a loop run twice.
    """

    __tablename__ = "dispatches"
    __table_args__ = (
        CheckConstraint(_in("status", DispatchStatus), name="status"),
        Index("ix_dispatches_status_created_at", "status", "created_at"),
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    key: Mapped[str] = mapped_column(String(255), unique=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    status: Mapped[str] = mapped_column(String(16), default=DispatchStatus.pending.value)
    target: Mapped[str | None] = mapped_column(String(32))  # event | deployment | local
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)
    dispatched_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    # The lease: until when the loop this row owes is known to be alive (or about to
    # start). A sweeper's claim and a dispatch set it, the running loop renews it, and
    # its end clears it; the sweeper takes only rows whose lease has expired, so a slow
    # loop is never started twice. NULL: no lease (the grace period after dispatch
    # applies). ``claimed_by`` says who holds it; ``claims`` counts the sweepers'
    # claims, and names the lease period in the idempotency key of a re-dispatch.
    lease_until: Mapped[datetime | None] = mapped_column(UtcDateTime())
    claimed_by: Mapped[str | None] = mapped_column(String(255))
    claims: Mapped[int] = mapped_column(Integer, default=0, server_default="0")


# Why the run's quality loop could not run: the last error of its latest dispatch (the
# dispatch failed, the loop failed, or its flow run crashed before the loop's code ran).
# Loaded with the run; None when no loop is owed, and again once a loop completes.
Run.loop_error = column_property(
    select(Dispatch.last_error).where(Dispatch.run_id == Run.id)
    .order_by(Dispatch.id.desc()).limit(1).correlate_except(Dispatch).scalar_subquery())


class StudyStatus(str, enum.Enum):
    running = "running"
    completed = "completed"
    interrupted = "interrupted"  # stopped with trials unfinished: resume it
    failed = "failed"


class TrialStatus(str, enum.Enum):
    pending = "pending"
    running = "running"
    completed = "completed"   # ran to its end
    stopped = "stopped"       # stopped early by the scheduler
    failed = "failed"


class Study(Base):
    """A tuning sweep: its spec, where Ray keeps its state, and how it ended."""

    __tablename__ = "studies"
    __table_args__ = (CheckConstraint(_in("status", StudyStatus), name="status"),
                      Index("ix_studies_name_created_at", "name", "created_at"))

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_run_id)
    name: Mapped[str] = mapped_column(String(255))
    dataset: Mapped[str] = mapped_column(String(255))
    metric: Mapped[str] = mapped_column(String(64))
    mode: Mapped[str] = mapped_column(String(8))
    spec: Mapped[dict[str, Any]] = mapped_column(default=dict)
    storage_path: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16), default=StudyStatus.running.value)
    best_trial_id: Mapped[str | None] = mapped_column(String(64))
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UtcDateTime())


class Trial(Base):
    """One trial of a study, as Ray Tune ran it."""

    __tablename__ = "trials"
    __table_args__ = (UniqueConstraint("study_id", "trial_id"),
                      CheckConstraint(_in("status", TrialStatus), name="status"))

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    study_id: Mapped[str] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"))
    trial_id: Mapped[str] = mapped_column(String(64))  # Ray Tune's trial id
    config: Mapped[dict[str, Any]] = mapped_column(default=dict)
    status: Mapped[str] = mapped_column(String(16), default=TrialStatus.pending.value)
    iterations: Mapped[int] = mapped_column(Integer, default=0)
    last_metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    error: Mapped[str | None] = mapped_column(Text)
    predictions_uri: Mapped[str | None] = mapped_column(Text)
    run_id: Mapped[str | None] = mapped_column(ForeignKey("runs.id", ondelete="SET NULL"))
    started_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UtcDateTime())


class TrialResult(Base):
    """A result a trial reported: its iteration and metrics."""

    __tablename__ = "trial_results"
    __table_args__ = (UniqueConstraint("trial_pk", "iteration"),)

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    trial_pk: Mapped[int] = mapped_column(ForeignKey("trials.id", ondelete="CASCADE"))
    iteration: Mapped[int] = mapped_column(Integer)
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    reported_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)


class JudgeCacheEntry(Base):
    """A cached verdict of a paid judge, keyed by everything that decides it.

    The key hashes the judge, its version, the rubric, the model, the sampling
    parameters, the item id and its prompt, response and reference: re-scoring, or
    re-running after a crash, pays only for what is missing, and changing a rubric
    misses only that judge's entries.
    """

    __tablename__ = "judge_cache"
    __table_args__ = (Index("ix_judge_cache_judge_version", "judge", "judge_version"),)

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    judge: Mapped[str] = mapped_column(String(64))
    judge_version: Mapped[str] = mapped_column(String(32))
    verdict: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)
