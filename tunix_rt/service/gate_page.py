"""The gate's evidence: ``GET /runs/{id}/gate`` (a page) and ``GET /api/runs/{id}/compare``.

The gate's row says *that* a run failed; this page says *why*: the decision with its
reason, the interval of the mean difference drawn against the margin, the policy, the
baseline, the 2x2 table of who got which item right (:mod:`tunix_rt.quality.compare`)
and the items behind it, with the prompt, the reference, both responses and both
rationales, filtered by cell and paged.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, get_args
from urllib.parse import quote, urlencode

from fastapi import FastAPI, Path, Query
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, Field
from sqlalchemy import select

from tunix_rt.errors import InvalidInputError, NotFoundError
from tunix_rt.quality import compare as cmp
from tunix_rt.quality.gating import GateReport, get_baseline, latest_gate
from tunix_rt.service import params, plots, ui
from tunix_rt.settings import Settings
from tunix_rt.store.models import GateResult
from tunix_rt.store.runs import get_run

Outcome = Literal["disagree", "only_baseline", "only_candidate", "both_right", "both_wrong",
                  "excluded", "all"]
assert set(get_args(Outcome)) == set(cmp.FILTERS), "the enum the schema lists is the filters"


class SideOut(BaseModel):
    """One run's verdict on an item."""

    score: float | None = Field(description="In [0, 1]; null: the judge could not score it")
    passed: bool | None = Field(description="The judge's pass decision (the 2x2 table's "
                                            "'right')")
    rationale: str | None
    response: str | None = Field(description="The response as judged, cut at 4,000 "
                                             "characters; null: not on record")
    recorded: bool = Field(description="False: no verdict for the item, counted as a wrong "
                                       "answer (score 0) as the gate does")


class ItemOut(BaseModel):
    item_id: str
    outcome: Literal["both_right", "only_candidate", "only_baseline", "both_wrong", "excluded"]
    prompt: str | None
    reference: str | None
    candidate: SideOut
    baseline: SideOut


class CountsOut(BaseModel):
    """Items per cell of the 2x2 table, and those left out (unscored on either side)."""

    both_right: int
    only_candidate: int
    only_baseline: int
    both_wrong: int
    excluded: int


class CompareOut(BaseModel):
    """A run beside its baseline under one judge: the counts and a page of items."""

    run_id: str
    run_name: str
    dataset: str
    judge: str
    baseline_run_id: str
    baseline_run_name: str
    baseline_from: Literal["request", "gate", "board"] = Field(
        description="request: the baseline parameter; gate: the baseline of the run's latest "
                    "gate under the judge; board: the dataset's current baseline")
    candidate_evaluation_id: int
    baseline_evaluation_id: int
    dataset_version: int | None
    counts: CountsOut
    n_paired: int
    n_excluded: int
    n_items: int = Field(description="The baseline's item set, over which the gate compares")
    incomparable: str | None = Field(description="Why the gate would not compare these "
                                                 "evaluations (dataset or judge versions "
                                                 "differ); null when it would")
    outcome: Outcome
    items: list[ItemOut]
    next_cursor: str | None


def _error_doc(description: str) -> dict[str, Any]:
    return {"description": description,
            "content": {"application/json": {"schema": params.ERROR_SCHEMA}}}


# FastAPI declares the 422 itself (a parameter out of range or not one of its values); the
# same status with {"error": ...} answers a run evaluated by several judges, none named.
COMPARE_RESPONSES: dict[int | str, dict[str, Any]] = {
    **params.BAD_PARAMETER,
    404: _error_doc("No such run (or baseline run), no completed evaluation by the judge, "
                      "or no baseline to compare with"),
}

CELL_LABELS = {
    cmp.BOTH_RIGHT: "both right", cmp.ONLY_CANDIDATE: "only the candidate right",
    cmp.ONLY_BASELINE: "only the baseline right", cmp.BOTH_WRONG: "both wrong",
    cmp.EXCLUDED: "left out (unscored)", "disagree": "where they disagree", "all": "all items"}
DECISION_LABELS = {"pass": "PASS", "fail": "FAIL", "inconclusive": "INCONCLUSIVE",
                   "no_baseline": "NO BASELINE"}
PAGE_SIZE = 25


def install(app: FastAPI, scope: Callable[[], Any], settings: Settings) -> None:
    """Register this module's routes on ``app``; ``scope()`` opens a session."""

    @app.get("/api/runs/{run_id}/compare", response_model=CompareOut,
             responses=COMPARE_RESPONSES)
    def compare_runs(run_id: str,
                     baseline: str | None = Query(None, min_length=1, max_length=255,
                                                  description="The baseline run (id or "
                                                              "external id); default: the "
                                                              "one the run's latest gate used"),
                     judge: str | None = Query(None, min_length=1, max_length=64),
                     outcome: Outcome = "disagree",
                     limit: int = Query(cmp.DEFAULT_PAGE, ge=1, le=cmp.MAX_PAGE),
                     cursor: str | None = None) -> Any:
        """The item-level diff of a run and its baseline: the 2x2 counts and one page of
        the items in ``outcome`` (``disagree``: either side alone right), by item id."""
        with scope() as session:
            return cmp.compare(session, run_id, judge=judge, baseline=baseline,
                               outcome=outcome, limit=limit, cursor=cursor).to_dict()

    @app.get("/runs/{run_id}/gate", response_class=HTMLResponse, responses=ui.PAGE_ERRORS)
    def gate_page(run_id: str = Path(min_length=1),
                  judge: str | None = Query(None, min_length=1, max_length=64),
                  outcome: Outcome = "disagree", cursor: str | None = None) -> HTMLResponse:
        """Why the run passed or failed its gate: the interval, the table, the items."""
        with scope() as session:
            try:
                run = get_run(session, run_id)
            except NotFoundError as exc:
                return ui.error_page(404, "No such run", str(exc),
                                     links=[("Leaderboards", "/")])
            try:
                context = _page(session, run, judge, outcome, cursor or None)
            except InvalidInputError as exc:  # a cursor not made here
                return ui.error_page(400, "Bad page link", str(exc), links=[
                    ("First page", _href(run.id, judge=judge, outcome=outcome)),
                    ("The run", f"/runs/{quote(run.id, safe='')}")])
            return ui.page("gate.html", **context)


def _href(run_id: str, **query: Any) -> str:
    """The gate page of ``run_id`` with the parameters that are set."""
    given = {k: v for k, v in query.items() if v is not None}
    return f"/runs/{quote(run_id, safe='')}/gate" + ("?" + urlencode(given) if given else "")


def _page(session: Any, run: Any, judge: str | None, outcome: str,
          cursor: str | None) -> dict[str, Any]:
    """The template's context for a known run."""
    gate = latest_gate(session, run.id, judge)
    gated_judges = list(session.scalars(select(GateResult.judge).where(
        GateResult.run_id == run.id).distinct().order_by(GateResult.judge)))
    context: dict[str, Any] = {
        "run": run, "judges": gated_judges, "judge": gate.judge if gate else judge,
        "outcome": outcome, "labels": CELL_LABELS, "decisions": DECISION_LABELS,
        "cells": cmp.CELLS}
    if gate is None:
        hint = f" --judge {judge}" if judge else ""
        return {**context, "state": "no_gate",
                "message": (f"run {run.id} has no gate result"
                            + (f" under judge {judge}" if judge else "")
                            + f" yet: `tunix-rt evaluate {run.id}{hint}` scores and gates it")}
    context.update(state="gate", gate=gate, plot=_interval_plot(gate),
                   policy=_policy_rows(gate.policy), threshold=_threshold(gate.policy))
    if gate.baseline_run_id is None:
        current = get_baseline(session, run.dataset, gate.judge)
        then = ""
        if current is not None and current.run_id == run.id:
            then = "; the run then became the baseline"
        elif current is not None and any(h["run_id"] == run.id for h in current.history):
            then = (f"; the run then became the baseline, since replaced by "
                    f"{current.run_name} ({current.run_id})")
        return {**context, "comparison": None, "why_no_comparison": (
            "there was no baseline to compare with when this run was gated" + then)}
    try:
        comparison = cmp.compare(session, run.id, judge=gate.judge,
                                 baseline=gate.baseline_run_id, outcome=outcome,
                                 limit=PAGE_SIZE, cursor=cursor)
    except NotFoundError as exc:  # the baseline's evaluation was replaced or removed
        return {**context, "comparison": None, "why_no_comparison": str(exc)}

    def link(**change: Any) -> str:
        return _href(run.id, **{"judge": gate.judge, "outcome": outcome, **change})

    return {**context, "comparison": comparison, "link": link,
            "next_href": link(cursor=comparison.next_cursor) if comparison.next_cursor else None,
            "first_href": link() if cursor else None}


def _threshold(policy: dict[str, Any]) -> tuple[float, str]:
    """The line the interval is judged against, as the gate draws it (stats.decide_gate)."""
    if policy.get("require_improvement"):
        return 0.0, "threshold 0 (superiority: require_improvement)"
    margin = float(policy.get("margin", 0.01))
    return -margin + 0.0, f"threshold −{margin:g} (non-inferiority margin)"


def _interval_plot(gate: GateReport) -> Any:
    """The CI of (candidate − baseline) on a scale that holds it, 0 and the threshold."""
    if gate.ci_low is None or gate.ci_high is None:
        return None
    threshold, label = _threshold(gate.policy)
    values = [gate.ci_low, gate.ci_high, threshold, 0.0]
    if gate.delta is not None:
        values.append(gate.delta)
    span = (max(values) - min(values)) or 0.02
    lo, hi, _ = plots.nice_ticks(min(values) - span * 0.15, max(values) + span * 0.15)
    marks = [(threshold, label)] + ([(0.0, "0: no difference")] if threshold != 0.0 else [])
    level = f"{float(gate.policy.get('confidence', 0.95)) * 100:g}%"
    mean = f", mean {gate.delta:+.4f}" if gate.delta is not None else ""
    title = (f"{level} CI of the mean difference (candidate − baseline): "
             f"[{gate.ci_low:+.4f}, {gate.ci_high:+.4f}]{mean}; {label}")
    return {"svg": plots.interval(gate.delta if gate.delta is not None else float("nan"),
                                  gate.ci_low, gate.ci_high, lo=lo, hi=hi, marks=marks,
                                  title=title, width=560, height=36),
            "ruler": plots.scale_axis(lo, hi, title=f"the scale of the interval, {lo:g} to "
                                                    f"{hi:g}", width=560, height=22),
            "lo": lo, "hi": hi, "title": title, "threshold": threshold, "level": level,
            "marks": [(m, text, (m - lo) / (hi - lo) * 100) for m, text in marks]}


POLICY_FIELDS = [("margin", "non-inferiority margin"), ("confidence", "confidence level"),
                 ("min_items", "fewest paired items for a decision"),
                 ("require_improvement", "superiority test (threshold 0)"),
                 ("max_unscored", "most items left out (unscored)"),
                 ("n_resamples", "bootstrap resamples"), ("seed", "bootstrap seed")]


def _policy_rows(policy: dict[str, Any]) -> list[tuple[str, str, Any]]:
    return [(key, what, policy[key]) for key, what in POLICY_FIELDS if key in policy]
