"""The pages people look at: leaderboards (``/``), a run (``/runs/{id}``), datasets.

Server-rendered HTML (tunix_rt.service.templating) with inline SVG plots
(tunix_rt.service.plots): no script, no build step, and every page works without
JavaScript. Each view reads through the same query functions as the JSON API, plus
the read-only helpers of tunix_rt.service.views_data, a bounded number of queries
per page whatever its size. A client's mistake (an unknown run, board or dataset, a
cursor not made here) is a 4xx page that says what was wrong and where to go.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from typing import Any
from urllib.parse import urlencode

from fastapi import FastAPI, Path, Query
from fastapi.responses import HTMLResponse
from markupsafe import Markup

from tunix_rt.errors import InvalidInputError, NotFoundError
from tunix_rt.quality import datasets, leaderboard
from tunix_rt.service import plots, views_data
from tunix_rt.service.params import ERROR_SCHEMA
from tunix_rt.service.templating import render
from tunix_rt.settings import Settings
from tunix_rt.store import runs
from tunix_rt.store.models import Evaluation, GateResult, coverage

PAGE_SIZE = 50

_HTML = {"text/html": {"schema": {"type": "string"}}}
#: The answers of the pages, for the served schema: a cursor not made here is a 400 page
#: (a NUL in a parameter is the JSON 400 every route gives), an unknown name a 404 page.
PAGE_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"description": "A cursor not made here (the page says so), or a NUL in a parameter "
                         "(JSON naming it)",
          "content": {**_HTML, "application/json": {"schema": ERROR_SCHEMA}}},
    404: {"description": "No such run, board or dataset (the page says so)", "content": _HTML},
}
DECISION_LABELS = {"pass": "pass", "fail": "fail", "inconclusive": "inconclusive",
                   "no_baseline": "no baseline"}


def _query(**params: Any) -> str:
    """``?a=1&b=2`` of the parameters that are set (the template escapes the ``&``)."""
    given = {k: v for k, v in params.items() if v is not None}
    return "?" + urlencode(given) if given else ""


def board_url(dataset: str, judge: str, cursor: str | None = None,
              limit: int | None = None) -> str:
    """A board's page (``limit`` only when it is not the default)."""
    return "/" + _query(dataset=dataset, judge=judge, cursor=cursor,
                        limit=None if limit == PAGE_SIZE else limit)


def gate_url(run_id: str, judge: str | None = None) -> str:
    return f"/runs/{run_id}/gate" + _query(judge=judge)


def when(value: datetime | str | None) -> Markup | str:
    """A timestamp as people read it (UTC, to the second), machine-readable in <time>."""
    if value is None:
        return "–"
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            return value
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    value = value.astimezone(timezone.utc)
    return Markup('<time datetime="{}">{}</time>').format(
        value.isoformat(), value.strftime("%Y-%m-%d %H:%M:%S UTC"))


def page(template: str, status: int = 200, **context: Any) -> HTMLResponse:
    return HTMLResponse(render(template, when=when, **context), status_code=status)


def error_page(status: int, title: str, message: str, *,
               links: Sequence[tuple[str, str]] = ()) -> HTMLResponse:
    """A 4xx page: what was wrong, in words, and where to go from here."""
    return page("error.html", status, title=title, message=message, code=status,
                links=list(links))


def install(app: FastAPI, scope: Callable[[], Any], settings: Settings) -> None:
    """Register the HTML routes on ``app``; ``scope()`` opens a session."""

    @app.get("/", response_class=HTMLResponse, responses=PAGE_ERRORS)
    def leaderboard_view(dataset: str | None = None, judge: str | None = None,
                         cursor: str | None = None,
                         limit: int = Query(PAGE_SIZE, ge=1, le=leaderboard.MAX_PAGE)
                         ) -> HTMLResponse:
        """A leaderboard: runs ranked with their score's interval, baseline and gate."""
        dataset, judge = dataset or None, judge or None  # an empty field is no choice
        with scope() as session:
            sizes = views_data.board_sizes(session)
            every = list(sizes)
            chosen = _choose_board(every, dataset, judge)
            if chosen is None:
                if dataset is None and judge is None:
                    return page("leaderboard.html", boards=every, board=None, rows=[],
                                board_url=board_url)
                asked = " under judge ".join(
                    f"{k} {v!r}" for k, v in (("dataset", dataset), ("judge", judge)) if v)
                return error_page(404, "No such leaderboard",
                                  f"There is no leaderboard for {asked}.",
                                  links=[(f"{d} / {j}", board_url(d, j)) for d, j in every]
                                  or [("Datasets", "/datasets")])
            name, judge_name = chosen
            try:
                board = leaderboard.leaderboard_page(session, name, judge_name, limit=limit,
                                                     cursor=cursor or None)
            except InvalidInputError as exc:
                return error_page(400, "Bad page link", str(exc),
                                  links=[("First page", board_url(name, judge_name))])
            baseline = views_data.board_baseline(session, name, judge_name)
            gates = views_data.latest_gates(session, [e.run_id for e in board.entries],
                                            judge_name)
        rows, scale = _board_rows(board.entries, baseline, gates)
        ruler = plots.scale_axis(*scale, title=f"the bars' scale, {scale[0]:g} to {scale[1]:g}")
        return page("leaderboard.html", boards=every, board=board, rows=rows, scale=scale,
                    ruler=ruler, size=sizes.get(chosen),
                    baseline=baseline, cursor=cursor, limit=limit, board_url=board_url,
                    datasets=sorted({d for d, _ in every}),
                    judges=sorted({j for _, j in every}),
                    next_url=board_url(name, judge_name, board.next_cursor, limit)
                    if board.next_cursor else None,
                    first_url=board_url(name, judge_name, None, limit) if cursor else None)

    @app.get("/runs/{run_id}", response_class=HTMLResponse, responses=PAGE_ERRORS)
    def run_view(run_id: str = Path(min_length=1)) -> HTMLResponse:
        """A run: what it is, where it came from, its curves, log, evaluations and gates."""
        with scope() as session:
            try:
                run = runs.get_run(session, run_id)
            except NotFoundError as exc:
                return error_page(404, "No such run", str(exc), links=[("Leaderboards", "/")])
            info = runs.run_to_dict(run)
            context = dict(
                run=info, evaluations=views_data.evaluations(session, run.id),
                gates=views_data.gate_history(session, run.id),
                lineage=views_data.lineage(session, run),
                baseline_of=views_data.baseline_of(session, run.id),
                on_boards=views_data.boards_of(session, run.id),
                curves=_curves(*views_data.plot_series(session, run.id)))
        launched = info["origin"] == "train" or info["log_uri"] is not None
        log = views_data.log_tail(info["log_uri"], settings.jobs_dir) if launched else None
        judges = sorted({e.judge for e in context["evaluations"]}
                        | {g.result.judge for g in context["gates"]})
        several = len(judges) > 1  # then a gate link names its judge
        evaluation_rows, evaluation_scale = _evaluation_rows(context["evaluations"])
        gate_rows, gate_scale = _gate_rows(context["gates"], several=several)
        gate_links = [(j, gate_url(run_id=info["id"], judge=j if several else None))
                      for j in sorted({g.result.judge for g in context["gates"]})]
        return page("run.html", **context, launched=launched, log=log, gate_links=gate_links,
                    several_judges=several, board_url=board_url,
                    config_rows=_fields(info["config"]), metric_rows=_fields(info["metrics"]),
                    evaluation_rows=evaluation_rows, gate_rows=gate_rows,
                    evaluation_ruler=plots.scale_axis(
                        *evaluation_scale, title=f"the bars' scale, {evaluation_scale[0]:g} "
                                                 f"to {evaluation_scale[1]:g}"),
                    gate_ruler=plots.scale_axis(
                        *gate_scale, title=f"the bars' scale, {gate_scale[0]:g} to "
                                           f"{gate_scale[1]:g}"))

    @app.get("/datasets", response_class=HTMLResponse, responses=PAGE_ERRORS)
    def datasets_view() -> HTMLResponse:
        """The datasets with their versions, items and source, and links to their boards."""
        with scope() as session:
            listed = datasets.list_datasets(session)
            on_boards = views_data.datasets_boards(session)
        names = {d["name"] for d in listed}
        # A board of a dataset evaluated before datasets were recorded has no record.
        unrecorded = sorted(set(on_boards) - names)
        return page("datasets.html", datasets=listed, boards=on_boards, unrecorded=unrecorded,
                    board_url=board_url)


def _choose_board(every: list[tuple[str, str]], dataset: str | None, judge: str | None
                  ) -> tuple[str, str] | None:
    """The board asked for: both names, or one (its first match), or the first board."""
    matching = [b for b in every
                if (not dataset or b[0] == dataset) and (not judge or b[1] == judge)]
    return matching[0] if matching else None


def _badge_title(gate: GateResult) -> str:
    parts = [f"latest gate under {gate.judge}: {DECISION_LABELS.get(gate.decision, gate.decision)}"]
    if gate.delta is not None:
        parts.append(f"delta {gate.delta:+.4f}")
    if gate.ci_low is not None and gate.ci_high is not None:
        parts.append(f"CI [{gate.ci_low:+.4f}, {gate.ci_high:+.4f}]")
    return ", ".join(parts)


def _board_rows(entries: Sequence[leaderboard.Entry], baseline: views_data.BaselineMark | None,
                gates: dict[str, GateResult]
                ) -> tuple[list[dict[str, Any]], tuple[float, float]]:
    """The table's rows, each entry with its interval bar, and the page's one scale."""
    base_score = baseline.score if baseline else None
    lo, hi = plots.shared_scale([v for e in entries for v in (e.ci_low, e.ci_high, e.score)],
                                include=[base_score] if base_score is not None else [])
    marks = ([(base_score, f"baseline {baseline.run_name}: {base_score:.4f}")]
             if baseline and base_score is not None else [])
    rows = []
    for e in entries:
        gate = gates.get(e.run_id)
        rows.append({
            "entry": e,
            "is_baseline": baseline is not None and baseline.run_id == e.run_id,
            "gate": gate, "gate_label": DECISION_LABELS.get(gate.decision, gate.decision)
            if gate else None, "gate_title": _badge_title(gate) if gate else None,
            "bar": plots.interval(e.score, e.ci_low, e.ci_high, lo=lo, hi=hi, marks=marks,
                                  title=f"{e.run_name}: score {e.score:.4f}, 95% CI "
                                        f"{e.ci_low:.4f} to {e.ci_high:.4f}"),
        })
    return rows, (lo, hi)


def _fields(values: dict[str, Any] | None) -> list[tuple[str, str]]:
    """A JSON object as (key, value) rows: scalars as they are, the rest as compact JSON."""
    rows = []
    for key, value in sorted((values or {}).items()):
        if isinstance(value, str):
            shown = value
        elif isinstance(value, float) and math.isfinite(value):
            shown = f"{value:.6g}"
        else:
            shown = json.dumps(value, sort_keys=True, default=str)
        rows.append((str(key), shown))
    return rows


def _curves(points: dict[str, list[tuple[int, float | None]]],
            stats: dict[str, views_data.SeriesStats]) -> list[dict[str, Any]]:
    """The run's series as charts: every loss on one (train and eval compare), each other
    metric on its own."""
    if not points:
        return []
    losses = {n: p for n, p in points.items() if "loss" in n.lower()}
    groups: list[tuple[str, str, dict[str, list[tuple[int, float | None]]]]] = []
    if losses:
        groups.append(("Loss over steps", "loss", losses))
    groups += [(f"{n} over steps", n, {n: p}) for n, p in points.items() if n not in losses]
    return [{"title": title,
             "svg": plots.line_chart(members, title=title, x_label="step", y_label=y_label),
             "summary": [_series_summary(n, stats[n]) for n in members if n in stats]}
            for title, y_label, members in groups]


def _series_summary(name: str, s: views_data.SeriesStats) -> str:
    """One line a reader (or a screen reader) takes in without the chart."""
    text = f"{name}: {s.n:,} points, steps {s.first_step:,}–{s.last_step:,}"
    if s.last is not None:
        text += f", last {s.last[1]:.4g} at step {s.last[0]:,}"
    if s.lowest is not None:
        text += f", lowest {s.lowest[1]:.4g} at step {s.lowest[0]:,}"
    gaps = s.n - s.n_finite
    if gaps:
        text += f", {gaps:,} not finite (line broken)"
    return text


def _evaluation_rows(evaluations: Sequence[Evaluation]
                     ) -> tuple[list[dict[str, Any]], tuple[float, float]]:
    lo, hi = plots.shared_scale([v for e in evaluations for v in (e.score, e.ci_low, e.ci_high)])
    rows = []
    for e in evaluations:
        bar = None
        if e.score is not None and e.ci_low is not None and e.ci_high is not None:
            bar = plots.interval(e.score, e.ci_low, e.ci_high, lo=lo, hi=hi,
                                 title=f"{e.judge}: score {e.score:.4f}, 95% CI "
                                       f"{e.ci_low:.4f} to {e.ci_high:.4f}")
        rows.append({"ev": e, "bar": bar, "coverage": coverage(e.n_items, e.n_missing),
                     "cost": _fields(e.cost) if e.cost else []})
    return rows, (lo, hi)


def _gate_rows(gates: Sequence[views_data.GateRow], *, several: bool
               ) -> tuple[list[dict[str, Any]], tuple[float, float]]:
    """Gate results with their delta's interval on one scale that shows 0 and the margins."""
    margins = [-float(g.result.policy.get("margin") or 0) for g in gates
               if isinstance(g.result.policy, dict)
               and isinstance(g.result.policy.get("margin"), (int, float))]
    values = [abs(v) for g in gates for v in (g.result.delta, g.result.ci_low, g.result.ci_high)
              if v is not None and math.isfinite(v)]
    reach = max([*values, *(abs(m) for m in margins), 0.01])
    lo, hi, _ = plots.nice_ticks(-reach, reach)  # symmetric: 0 in the middle
    rows = []
    for row in gates:
        g = row.result
        bar = None
        if g.delta is not None and g.ci_low is not None and g.ci_high is not None:
            marks: list[tuple[float, str]] = [(0.0, "no difference")]
            margin = g.policy.get("margin") if isinstance(g.policy, dict) else None
            if isinstance(margin, (int, float)) and margin > 0 \
                    and not g.policy.get("require_improvement"):
                marks.append((-float(margin), f"margin −{margin:g}"))
            bar = plots.interval(g.delta, g.ci_low, g.ci_high, lo=lo, hi=hi, marks=marks,
                                 title=f"{g.judge}: delta {g.delta:+.4f}, CI {g.ci_low:+.4f} "
                                       f"to {g.ci_high:+.4f}")
        rows.append({"gate": g, "baseline_name": row.baseline_name, "bar": bar,
                     "label": DECISION_LABELS.get(g.decision, g.decision),
                     "url": gate_url(g.run_id, g.judge if several else None)})
    return rows, (lo, hi)

