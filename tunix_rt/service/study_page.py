"""Tuning studies on the web: ``/studies``, ``/studies/{id}`` and their JSON, ``/api/studies``.

The study page answers what a sweep was for: which trials finished, which the scheduler
stopped early and which broke (with their configs); every trial's learning curve on
one plot; each hyperparameter against the metric (a scatter for a number, on a log
axis when the space is log-uniform; a table of the mean per value for a category);
and the best trial with links to its run and its gate.

Sorting and filtering take only the values of an allow-list, declared as enums in the
served schema; anything else is FastAPI's 422 naming the parameter.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, Literal

from fastapi import FastAPI, Query
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, Field
from sqlalchemy import select

from tunix_rt.errors import NotFoundError
from tunix_rt.service import params
from tunix_rt.service.templating import render
from tunix_rt.settings import Settings
from tunix_rt.store.cursor import InvalidCursorError
from tunix_rt.store.models import Study, Trial
from tunix_rt.tuning import studies

TrialSort = Literal["metric", "trial_id", "status", "iterations"]
TrialStatusName = Literal["pending", "running", "completed", "stopped", "failed"]
StudyStatusName = Literal["running", "completed", "interrupted", "failed"]
#: A log axis for a choice or grid of positive numbers spanning this factor or more.
LOG_SPAN = 100.0
#: Trials whose last value says what their config is worth: ran out, or cut by the scheduler.
FINISHED = ("completed", "stopped")
#: Most series drawn on the learning-curve plot; the rest are named as left out.
MAX_CURVES = 60


def _errors(not_found: str) -> dict[int | str, dict[str, Any]]:
    return {**params.BAD_PARAMETER,
            404: {"description": not_found,
                  "content": {"application/json": {"schema": params.ERROR_SCHEMA}}}}


NOT_FOUND = _errors("No study with that id or name")
PAGE_NOT_FOUND: dict[int | str, dict[str, Any]] = {
    **params.BAD_PARAMETER, 404: {"description": "No study with that id or name (the page "
                                                 "says so)", "content": {"text/html": {}}}}
PAGE_BAD_CURSOR: dict[int | str, dict[str, Any]] = {
    400: {"description": "A cursor not made here (the page says so), or a NUL in a "
                         "parameter (JSON)", "content": {"text/html": {},
                                                          "application/json": {
                                                              "schema": params.ERROR_SCHEMA}}}}


class StudySummaryModel(BaseModel):
    """A study in the list: trial counts by status and the best value so far."""

    id: str
    name: str
    dataset: str
    metric: str
    mode: Literal["max", "min"]
    status: StudyStatusName
    created_at: datetime
    finished_at: datetime | None
    n_trials: int = Field(description="Trials on record, whatever their status")
    by_status: dict[str, int] = Field(description="Trials per status")
    best_trial_id: str | None = Field(
        description="The trial Ray named best when the study ended; while it runs (or when "
                    "interrupted), the best finished trial so far")
    best_value: float | None
    error: str | None


class StudyPage(BaseModel):
    """A page of studies, newest first."""

    studies: list[StudySummaryModel]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null "
                                                "on the last")


class TrialResultModel(BaseModel):
    iteration: int
    metrics: dict[str, Any]


class TrialModel(BaseModel):
    trial_id: str
    status: TrialStatusName = Field(description="completed: ran to its end; stopped: "
                                                "stopped early by the scheduler; failed: "
                                                "errored (see error)")
    iterations: int
    value: float | None = Field(description="The study's metric, as last reported")
    config: dict[str, Any]
    metrics: dict[str, Any] = Field(description="The last reported metrics")
    error: str | None
    run_id: str | None = Field(description="The run this trial was registered as (the best "
                                           "trials are), else null")
    started_at: datetime | None
    finished_at: datetime | None
    results: list[TrialResultModel] | None = Field(
        None, description="Every reported result in iteration order (omitted with "
                          "results=false)")


class StudyDetailModel(StudySummaryModel):
    param_space: dict[str, Any]
    best_run_id: str | None = Field(description="The best trial's run, judged and gated")
    trials: list[TrialModel]


def _summary(s: studies.StudySummary) -> dict[str, Any]:
    return {"id": s.id, "name": s.name, "dataset": s.dataset, "metric": s.metric,
            "mode": s.mode, "status": s.status, "created_at": s.created_at,
            "finished_at": s.finished_at, "n_trials": s.trials, "by_status": s.by_status,
            "best_trial_id": s.best_trial_id, "best_value": s.best_value, "error": s.error}


def _summary_of(session: Any, study: Study) -> studies.StudySummary:
    """The list's summary of one study (the same counts and best value as the list)."""
    return studies.summarize(session, [study])[0]


def _trial(t: studies.TrialView, results: list[tuple[int, dict[str, Any]]] | None
           ) -> dict[str, Any]:
    return {"trial_id": t.trial_id, "status": t.status, "iterations": t.iterations,
            "value": t.value, "config": t.config, "metrics": t.last_metrics,
            "error": t.error, "run_id": t.run_id, "started_at": t.started_at,
            "finished_at": t.finished_at,
            "results": None if results is None else [{"iteration": i, "metrics": m}
                                                     for i, m in results]}


def study_detail(session: Any, ref: str, *, sort: str = "metric", status: str | None = None,
                 results: bool = True) -> dict[str, Any]:
    """The study, its trials (sorted, filtered) and, with ``results``, every result."""
    study = studies.get_study(session, ref)
    summary = _summary_of(session, study)
    trials = studies.study_trials(session, study, sort=sort, status=status)
    by_trial = studies.study_results(session, study.id) if results else None
    best_run = session.scalar(select(Trial.run_id).where(
        Trial.study_id == study.id, Trial.trial_id == summary.best_trial_id))
    return {**_summary(summary), "param_space": (study.spec or {}).get("param_space", {}),
            "best_run_id": best_run,
            "trials": [_trial(t, None if by_trial is None else by_trial.get(t.trial_id, []))
                       for t in trials]}


# --- the page's figures -------------------------------------------------------------------


def _numeric(values: Sequence[Any]) -> bool:
    return bool(values) and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                for v in values)


def _axis(spec: Any) -> tuple[str, bool] | None:
    """How to show a hyperparameter: ("scatter", log x?) or ("table", False); None for a
    constant (nothing to compare)."""
    if not isinstance(spec, dict) or len(spec) != 1:
        return None
    (kind, args), = spec.items()
    if kind == "loguniform":
        return "scatter", True
    if kind in ("uniform", "randint"):
        return "scatter", False
    if kind in ("choice", "grid") and isinstance(args, list):
        if len(args) < 2:
            return None
        if _numeric(args):
            positive = [float(a) for a in args if a > 0]
            log = len(positive) == len(args) and max(positive) / min(positive) >= LOG_SPAN
            return "scatter", log
        return "table", False
    return None


def _label(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def hyperparameters(summary: studies.StudySummary, space: dict[str, Any],
                    trials: Sequence[studies.TrialView]) -> list[dict[str, Any]]:
    """One figure per searched hyperparameter, over the trials that reported the metric."""
    from tunix_rt.service import plots

    # A failed trial's last value is where it broke, not what its config is worth.
    scored = [t for t in trials if t.value is not None and t.status in FINISHED]
    figures = []
    for name in sorted(space):
        how = _axis(space[name])
        if how is None:
            continue
        have = [t for t in scored if name in t.config]
        kind, log = how
        if kind == "scatter" and not _numeric([t.config[name] for t in have]):
            kind = "table"  # a value the sampler passed as text: show it as a category
        if kind == "scatter":
            best = [i for i, t in enumerate(have) if t.trial_id == summary.best_trial_id]
            svg = plots.scatter([(float(t.config[name]), t.value) for t in have],
                                title=f"{summary.metric} by {name}", x_label=name,
                                y_label=summary.metric, log_x=log, highlight=best,
                                labels=[t.trial_id for t in have])
            figures.append({"name": name, "kind": "scatter", "svg": svg, "log": log,
                            "n": len(have)})
            continue
        groups: dict[str, list[float]] = {}
        for t in have:
            groups.setdefault(_label(t.config[name]), []).append(t.value)
        sign = 1 if summary.mode == "max" else -1
        rows = sorted(({"value": v, "n": len(xs), "mean": statistics.fmean(xs),
                        "best": max(xs) if summary.mode == "max" else min(xs)}
                       for v, xs in groups.items()), key=lambda r: (-sign * r["mean"], r["value"]))
        figures.append({"name": name, "kind": "table", "rows": rows, "n": len(have)})
    return figures


def curve_trials(summary: studies.StudySummary, trials: Sequence[studies.TrialView]
                 ) -> list[studies.TrialView]:
    """The trials whose curves are drawn: the best first, then in the given order, at most
    MAX_CURVES (a plot of hundreds of lines shows none of them)."""
    ordered = sorted(trials, key=lambda t: t.trial_id != summary.best_trial_id)
    return ordered[:MAX_CURVES]


def learning_curves(summary: studies.StudySummary, drawn: Sequence[studies.TrialView],
                    results: dict[str, list[tuple[int, dict[str, Any]]]]) -> Any:
    """Every drawn trial's metric per iteration, one series each, the best trial first
    and named so in the legend."""
    from tunix_rt.service import plots

    series: dict[str, list[tuple[float, float | None]]] = {}
    for t in drawn:
        points = [(float(i), studies.metric_value(m, summary.metric))
                  for i, m in results.get(t.trial_id, [])]
        if any(v is not None for _, v in points):
            name = f"{t.trial_id} (best)" if t.trial_id == summary.best_trial_id else t.trial_id
            series[name] = points
    return plots.line_chart(series, title=f"{summary.metric} per iteration, every trial",
                            x_label="iteration", y_label=summary.metric)


def _config_text(config: dict[str, Any], space: dict[str, Any]) -> list[tuple[str, str]]:
    """The searched keys first (they differ between trials), then the constants."""
    keys = sorted(config, key=lambda k: (not isinstance(space.get(k), dict), k))
    return [(k, _short(config[k])) for k in keys]


def _short(value: Any) -> str:
    if isinstance(value, float) and math.isfinite(value):
        return f"{value:.4g}"
    return _label(value)


# --- routes -------------------------------------------------------------------------------


def _problem(code: int, title: str, message: str) -> HTMLResponse:
    """The pages' error page (``p#problem``), with the way back to the studies."""
    return HTMLResponse(render("error.html", title=title, message=message, code=code,
                               links=[("all studies", "/studies")]), status_code=code)


def install(app: FastAPI, scope: Callable[[], Any], settings: Settings) -> None:
    """Register this module's routes on ``app``; ``scope()`` opens a session."""

    @app.get("/api/studies", response_model=StudyPage, responses=params.BAD_PARAMETER)
    def list_studies_api(dataset: str | None = Query(None, max_length=255),
                         status: StudyStatusName | None = None,
                         limit: int = Query(50, ge=1, le=studies.MAX_PAGE),
                         cursor: str | None = None) -> dict[str, Any]:
        """Tuning studies, newest first, a page at a time."""
        with scope() as session:
            page, next_cursor = studies.list_studies(session, dataset=dataset, status=status,
                                                     limit=limit, cursor=cursor)
            return {"studies": [_summary(s) for s in page], "next_cursor": next_cursor}

    @app.get("/api/studies/{study_id}", response_model=StudyDetailModel, responses=NOT_FOUND)
    def show_study_api(study_id: str, sort: TrialSort = "metric",
                       status: TrialStatusName | None = None,
                       results: bool = True) -> dict[str, Any]:
        """A study (by id, or the latest of that name), its trials and their results.

        ``sort``: metric (best first), trial_id, status (completed, stopped, failed,
        running, pending) or iterations (most first); ``status`` keeps one status.
        """
        with scope() as session:
            return study_detail(session, study_id, sort=sort, status=status, results=results)

    @app.get("/studies", response_class=HTMLResponse, responses=PAGE_BAD_CURSOR)
    def studies_page(dataset: str | None = Query(None, max_length=255),
                     status: StudyStatusName | None = None,
                     cursor: str | None = None) -> HTMLResponse:
        try:
            with scope() as session:
                page, next_cursor = studies.list_studies(session, dataset=dataset,
                                                         status=status, limit=50, cursor=cursor)
        except InvalidCursorError as exc:
            return _problem(400, "Not a page of studies", str(exc))
        return HTMLResponse(render("studies.html", studies=page, next_cursor=next_cursor,
                                   dataset=dataset, status=status, first=cursor is None))

    @app.get("/studies/{study_id}", response_class=HTMLResponse, responses=PAGE_NOT_FOUND)
    def study_page(study_id: str, sort: TrialSort = "metric",
                   status: TrialStatusName | None = None) -> HTMLResponse:
        with scope() as session:
            try:
                study = studies.get_study(session, study_id)
            except NotFoundError as exc:
                return _problem(404, "No such study", str(exc))
            summary = _summary_of(session, study)
            space = (study.spec or {}).get("param_space", {})
            every = studies.study_trials(session, study)
            shown = (every if sort == "metric" and status is None
                     else studies.study_trials(session, study, sort=sort, status=status))
            drawn = curve_trials(summary, every)
            results = studies.study_results(session, study.id, [t.trial_id for t in drawn])
        best = next((t for t in every if t.trial_id == summary.best_trial_id), None)
        curves = learning_curves(summary, drawn, results)
        left_out = len(every) - len(drawn)
        return HTMLResponse(render(
            "study.html", study=summary, spec=study.spec or {}, space=space, trials=shown,
            n_every=len(every), sort=sort, status=status, best=best, curves=curves,
            curves_left_out=left_out, figures=hyperparameters(summary, space, every),
            config_text=lambda t: _config_text(t.config, space),
            sorts=list(TrialSort.__args__), statuses=list(TrialStatusName.__args__)))
