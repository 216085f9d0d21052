"""The quality loop's tasks: each one step, each in its own transaction.

Tasks retry with exponential backoff and jitter, but only on transient errors (a
lost database connection, an I/O hiccup): a malformed predictions file or a failing
gate is an answer, and retrying it would only repeat the answer later.
"""

from __future__ import annotations

from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.states import Completed, State
from prefect.tasks import exponential_backoff

from tunix_rt.tasks import events
from tunix_rt.quality import chunks, evaluation, gating, leaderboard
from tunix_rt.store import runs
from tunix_rt.store.db import session_scope
from tunix_rt.errors import PredictionsError, is_transient
from tunix_rt.quality.evaluation import EvaluationSummary, RunInfo, ScoredRun
from tunix_rt.quality.gating import GateReport
from tunix_rt.quality.predictions import allowed_for, read_predictions_upto
from tunix_rt.quality.stats import GatePolicy
from tunix_rt.judges import judge_spec
from tunix_rt.settings import get_settings

RETRIES = 3
ARTIFACT_ROWS = 50


def retry_if_transient(task: Any, task_run: Any, state: State) -> bool:
    """Prefect ``retry_condition_fn``: retry lost connections and I/O errors only."""
    exc = state.data if isinstance(state.data, BaseException) else None
    if exc is None:
        try:
            state.result(raise_on_failure=True)
        except BaseException as raised:  # noqa: BLE001 - inspecting, not handling
            exc = raised
    return exc is not None and is_transient(exc)


RETRY_POLICY: dict[str, Any] = {
    "retries": RETRIES,
    "retry_delay_seconds": exponential_backoff(backoff_factor=1),
    "retry_jitter_factor": 0.5,
    "retry_condition_fn": retry_if_transient,
}


@task(name="load-run", **RETRY_POLICY)
def load_run(run_id: str) -> RunInfo:
    """The run to judge; a pending, failed or dry run is refused with the reason."""
    with session_scope() as session:
        run = runs.get_run(session, run_id)
        runs.ensure_evaluable(run)
        return RunInfo.of(run)


@task(name="score-run", **RETRY_POLICY)
def score_run(run: RunInfo, judge: str, force: bool = False,
              repeat: int = 1) -> ScoredRun | chunks.ChunkPlan | State:
    """Score the run's predictions with ``judge``, unless a stored evaluation stands.

    Reusing is a named no-op state, ``Skipped``, whose result is the stored
    evaluation. A file of more than ``TUNIX_RT_SCORE_CHUNK_ITEMS`` items is checked and
    planned, not scored: the result is a :class:`ChunkPlan` for the mapped
    ``score-chunk`` tasks (tunix_rt.quality.chunks). A bad predictions file is recorded as a failed evaluation (when no
    good one is on record) and fails the task without retries.
    """
    spec = judge_spec(judge)
    if not force:
        with session_scope() as session:
            stored = evaluation.find_evaluation(session, run.id, spec.name, spec.version)
            if stored is not None and stored.status == "completed":
                summary = EvaluationSummary.of(stored, reused=True)
                return Completed(name="Skipped", data=summary, message=(
                    f"run {run.id} already evaluated by {spec.name} {spec.version}; "
                    "pass force=True to score it again"))
    chunk_items = chunks.chunk_items_setting()
    try:
        line_of: dict[str, int] = {}
        small = read_predictions_upto(run.predictions_uri, chunk_items, line_of=line_of,
                                      allow=allowed_for(run.origin))
        if small is None:
            plan = chunks.plan_scoring(session_scope, run, spec.name, chunk_items=chunk_items,
                                       repeat=repeat)
            _log_plan(plan)
            return plan
        aligned = evaluation.prepare_items(session_scope, run, small, line_of)
    except PredictionsError as exc:
        with session_scope() as session:
            evaluation.store_failed_evaluation(session, run.id, spec.name, str(exc))
        raise
    logger = get_run_logger()
    if aligned.created:
        logger.info("dataset %s registered implicitly from run %s (%d items): later runs of "
                    "%s are scored over these items and references", aligned.dataset.label,
                    run.id, aligned.dataset.n_items, run.dataset)
    if aligned.missing:
        logger.warning("%d of %d items of dataset %s are missing from the predictions file: "
                       "each counts as a wrong answer", len(aligned.missing),
                       aligned.dataset.n_items, aligned.dataset.label)
    if aligned.extra:
        logger.warning("%d line(s) of the predictions file name items that dataset %s does not "
                       "have (first: %s); they are not scored", aligned.extra,
                       aligned.dataset.label, aligned.first_extra)
    return evaluation.score_items(run, spec.name, aligned.items, missing=aligned.missing,
                                  repeat=repeat, dataset=aligned.dataset,
                                  dataset_created=aligned.created, n_extra=aligned.extra)


def _log_plan(plan: chunks.ChunkPlan) -> None:
    logger = get_run_logger()
    logger.info("run %s: %d chunks of up to %d items (TUNIX_RT_SCORE_CHUNK_ITEMS)%s",
                plan.run.id, len(plan.chunks), max(c.n_lines for c in plan.chunks),
                f", {plan.chunks_stored} already stored: resuming" if plan.chunks_stored else "")
    if plan.dataset_created:
        logger.info("dataset %s registered implicitly from run %s: later runs of %s are scored "
                    "over these items and references", plan.dataset_label, plan.run.id,
                    plan.run.dataset)
    if plan.n_extra:
        logger.warning("%d line(s) of the predictions file name items that dataset %s does not "
                       "have (first: %s); they are not scored", plan.n_extra,
                       plan.dataset_label, plan.first_extra)


@task(name="score-chunk", task_run_name="score-chunk-{chunk.index}", **RETRY_POLICY)
def score_chunk(plan: chunks.ChunkPlan, chunk: chunks.Chunk) -> dict[str, Any] | State:
    """Score one chunk and store its verdicts; ``Skipped`` when they are stored already.

    Retries on its own (transient errors only); a file changed since the plan fails
    the evaluation, as a bad file does.
    """
    try:
        done = chunks.score_chunk(session_scope, plan, chunk)
    except PredictionsError as exc:
        with session_scope() as session:
            evaluation.store_failed_evaluation(session, plan.run.id, plan.judge, str(exc))
        raise
    if done is None:
        return Completed(name="Skipped", data=None, message=(
            f"chunk {chunk.index} (lines from {chunk.first_line}) is stored already"))
    return done


@task(name="finish-evaluation", **RETRY_POLICY)
def finish_evaluation(plan: chunks.ChunkPlan) -> EvaluationSummary:
    """Missing items as wrong answers, the aggregate from the database: completed."""
    summary = chunks.finish_evaluation(session_scope, plan)
    logger = get_run_logger()
    if summary.n_missing:
        logger.warning("%d of %d items of dataset %s are missing from the predictions file: "
                       "each counts as a wrong answer", summary.n_missing, summary.n_items,
                       plan.dataset_label)
    logger.info("%s %s: score %.4f on %d items (%d unscored), %d chunks", plan.judge,
                plan.judge_version, summary.score if summary.score is not None else float("nan"),
                summary.n_items, summary.n_unscored, len(plan.chunks))
    return summary


@task(name="store-evaluation", **RETRY_POLICY)
def store_evaluation(scored: ScoredRun) -> EvaluationSummary:
    """Write the evaluation and all its verdicts in one transaction."""
    with session_scope() as session:
        summary = evaluation.store_evaluation(session, scored)
    get_run_logger().info("%s %s: score %.4f on %d items (%d unscored)", scored.judge,
                          scored.judge_version, summary.score or float("nan"), summary.n_items,
                          summary.n_unscored)
    return summary


@task(name="update-leaderboard", **RETRY_POLICY)
def rebuild_leaderboard(dataset: str, judge: str, run_id: str | None = None) -> leaderboard.Page:
    """Bring the run's entry on the board of ``dataset`` under ``judge`` up to date (one
    row, not the whole board; all of it without ``run_id``); returns its first page."""
    with session_scope() as session:
        if run_id is None:
            leaderboard.rebuild_leaderboard(session, dataset, judge)
        else:
            leaderboard.update_board_for_run(session, dataset, judge, run_id)
        return leaderboard.leaderboard_page(session, dataset, judge, limit=ARTIFACT_ROWS)


@task(name="gate-run", **RETRY_POLICY)
def gate_run(run_id: str, judge: str, policy: GatePolicy) -> GateReport:
    """Compare the run with the baseline and record the decision (a result, not an error)."""
    with session_scope() as session:
        return gating.gate_run(session, run_id, judge, policy)


@task(name="promote-baseline", **RETRY_POLICY)
def promote_baseline(report: GateReport, policy: GatePolicy) -> str | State | None:
    """Make the run the baseline when the policy says so; ``Skipped`` otherwise."""
    with session_scope() as session:
        why = gating.promote_if_allowed(session, report, policy)
    if why is None:
        return Completed(name="Skipped", data=None, message="the policy does not promote")
    return why


@task(name="publish-artifacts", **RETRY_POLICY)
def publish_artifacts(board: leaderboard.Page, report: GateReport, promoted: str | None) -> None:
    """A table artifact of the board (a stable key per dataset and judge) and the decision."""
    create_table_artifact(
        key=artifact_key("leaderboard", board.dataset, board.judge),
        table=[{"rank": e.rank, "run": e.run_name, "run_id": e.run_id, "score": round(e.score, 4),
                "ci_low": round(e.ci_low, 4), "ci_high": round(e.ci_high, 4),
                "n_items": e.n_items} for e in board.entries],
        description=f"Leaderboard of {board.dataset} under {board.judge} (top {ARTIFACT_ROWS})")
    create_markdown_artifact(
        key=artifact_key("gate", report.dataset, report.judge),
        markdown=gate_markdown(report, promoted, get_settings().public_url),
        description=f"Gate decision for run {report.run_id}")


@task(name="announce-gate", **RETRY_POLICY)
def announce_gate(report: GateReport, promoted: str | None) -> str:
    """Emit the decision as a Prefect event (``tunix.gate.passed`` ...) for automations."""
    event = events.GATE_EVENTS[report.decision]
    events.emit_run_event(event, report.run_id, {**report.to_dict(), "promoted": promoted},
                          labels={"tunix.dataset": report.dataset, "tunix.judge": report.judge},
                          baseline_run_id=report.baseline_run_id)
    return event


def artifact_key(*parts: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes only."""
    import re

    return re.sub(r"[^a-z0-9]+", "-", "-".join(parts).lower()).strip("-")[:100]


def gate_page_url(public_url: str, run_id: str, judge: str) -> str:
    """The run's gate page on ``tunix-rt serve`` (``/runs/{id}/gate``), under its judge."""
    from urllib.parse import quote, urlencode

    return f"{public_url}/runs/{quote(run_id, safe='')}/gate?{urlencode({'judge': judge})}"


def gate_markdown(report: GateReport, promoted: str | None,
                  public_url: str | None = None) -> str:
    """The decision as markdown, linking to the evidence (the gate page) when it has an
    address: the items behind a fail are read there, not in the artifact."""
    def fmt(x: float | None) -> str:
        return "n/a" if x is None else f"{x:+.4f}"

    lines = [
        f"# Gate: **{report.decision}**",
        "",
        "| field | value |",
        "|---|---|",
        f"| run | `{report.run_id}` |",
        f"| baseline | `{report.baseline_run_id or 'none'}` |",
        f"| dataset / judge | {report.dataset} / {report.judge} |",
        f"| delta (candidate - baseline) | {fmt(report.delta)} |",
        f"| CI | [{fmt(report.ci_low)}, {fmt(report.ci_high)}] |",
        f"| paired items | {report.n_paired} |",
        "",
        report.reason,
    ]
    if promoted:
        lines += ["", f"Promoted to baseline: {promoted}."]
    if public_url:
        url = gate_page_url(public_url, report.run_id, report.judge)
        lines += ["", f"Evidence, item by item: [the run's gate page]({url})"]
    else:
        lines += ["", f"Evidence, item by item: `/runs/{report.run_id}/gate` on `tunix-rt "
                  "serve`; set `TUNIX_RT_PUBLIC_URL` to its public address to link it here."]
    return "\n".join(lines)
