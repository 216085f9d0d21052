"""The HTTP service: the training webhook, the read API and the leaderboard page.

``POST /webhooks/training`` verifies the signature over the raw body, stores the
delivery and the run change in one transaction (the outbox), answers 202, and only
then dispatches the quality loop. A crash after the commit loses nothing: the
sweeper finds the pending dispatch.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import Depends, FastAPI, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from tunix_rt import __version__
from tunix_rt.service import (api_models as M, deliveries, group_commit, params,
                              webhook_openapi)
from tunix_rt.service.api_models import (BoardPage, DatasetList, DatasetOut, GateOut, Health,
                                         RunMetrics, RunOut, RunPage)
from tunix_rt.quality import datasets, gating, leaderboard
from tunix_rt.quality.predictions import allowed_prefixes
from tunix_rt.store import runs
from tunix_rt.store.db import get_engine, session_scope
from tunix_rt.service.deliveries import Dispatcher
from tunix_rt.errors import InvalidInputError, TunixRtError
from tunix_rt.store.models import RunOrigin, RunStatus
from tunix_rt.settings import Settings, get_settings
from tunix_rt.service.receiver import WEBHOOKS_OFF, FastLane, WebhookReceiver, tunix_error
from tunix_rt.service.webhooks import MAX_BODY_BYTES, Verifier, parse_sourced_secrets

log = logging.getLogger("tunix_rt.service.server")


def require_webhook_secret(settings: Settings) -> None:
    """Refuse a start that needs the receiver (``tunix-rt up``) when no secret is set."""
    if _verifier(settings) is None:
        raise InvalidInputError(f"{WEBHOOKS_OFF}: `tunix-rt up` needs it")


def _error(status: int, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": message, **extra}, status_code=status)


RUN_ID = Path(min_length=1, description="The run's id, or its external id")
# Filtering only by the fields a list route declares: another query parameter is refused.
QUERY_ALLOW_LIST = [Depends(params.declared_query_only)]


def create_app(settings: Settings | None = None, dispatcher: Dispatcher | None = None,
               max_body_bytes: int = MAX_BODY_BYTES) -> FastAPI:
    """The ASGI app. Refuses to start without a webhook secret.

    ``dispatcher`` starts the quality loop after a completed run is stored; without
    one, dispatches stay pending for the sweeper.
    """
    settings = settings or get_settings()
    verifier = _verifier(settings)
    engine = get_engine(settings.database_url)
    predictions_allow = allowed_prefixes(settings)

    def scope():  # noqa: ANN202
        return session_scope(engine)

    # Deliveries arriving together share a transaction on PostgreSQL (group commit).
    store = group_commit.for_engine(engine, lambda d, e, s: _store(scope, d, e, s),
                                    settings.webhook_batch)

    app = FastAPI(title="tunix-rt", version=__version__)
    app.state.dispatcher = dispatcher
    # POST /webhooks/training is served by the FastLane middleware (service.receiver), added
    # first so that it is the innermost: every other middleware's check comes before it.
    receiver = WebhookReceiver(verifier, store, predictions_allow, max_body_bytes,
                               lambda: app.state.dispatcher, scope)
    app.add_middleware(FastLane, receiver=receiver)
    params.install(app)  # a NUL in any parameter, a foreign cursor: 400 naming it
    webhook_openapi.install(app)  # the webhook's body and headers, in the served schema
    M.install(app, protected=bool(settings.api_token
                                  and settings.api_token.get_secret_value().strip()))
    _protect_reads(app, settings)
    from tunix_rt.service import gate_page, study_page, ui

    ui.install(app, scope, settings)  # the HTML pages: /, /runs/{id}, /datasets
    gate_page.install(app, scope, settings)  # /runs/{id}/gate, /api/runs/{id}/compare
    study_page.install(app, scope, settings)  # /studies, /studies/{id}, /api/studies

    @app.exception_handler(TunixRtError)
    async def _tunix_error(_request: Request, exc: TunixRtError) -> JSONResponse:
        return tunix_error(exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return params.validation_error(exc)

    @app.post("/webhooks/training", status_code=202, responses=webhook_openapi.RESPONSES,
              openapi_extra=webhook_openapi.REQUEST)
    async def training_webhook(request: Request) -> Response:  # the schema's; FastLane serves
        return await receiver.answer(request)

    @app.get("/healthz", response_model=Health,
             responses=M.responses(M.BAD_PARAMETER, M.UNAVAILABLE))
    def healthz() -> Any:
        try:
            with engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        except DBAPIError as exc:
            # The detail (host, user, why) goes to the log, never to the caller.
            log.warning("healthz: the database is unavailable: %s", exc.orig)
            return JSONResponse({"status": "unavailable", "database": "unavailable"},
                                status_code=503)
        return {"status": "ok", "database": "ok"}

    @app.get("/api/runs", response_model=RunPage, dependencies=QUERY_ALLOW_LIST,
             responses=M.responses(M.BAD_PARAMETER, M.INVALID))
    def list_runs(dataset: str | None = Query(None, description="Runs of this dataset"),
                  status: RunStatus | None = Query(None, description="Runs in this status"),
                  origin: RunOrigin | None = Query(None, description="Runs created this way"),
                  model: str | None = Query(None, description="Runs of this model"),
                  sort: runs.RunSort = Query(runs.DEFAULT_SORT, description=(
                      "The order: a field, descending with a leading '-'; ties by id")),
                  limit: int = Query(50, ge=1, le=runs.MAX_PAGE),
                  cursor: str | None = None) -> Any:
        """Runs, filtered by exact matches and sorted by one field of the allow-list."""
        with scope() as session:
            page, next_cursor = runs.list_runs(
                session, dataset=dataset, status=status.value if status else None,
                origin=origin.value if origin else None, model=model, sort=sort,
                limit=limit, cursor=cursor)
            return {"runs": [runs.run_to_dict(r) for r in page], "next_cursor": next_cursor}

    @app.get("/api/runs/{run_id}", response_model=RunOut,
             responses=M.responses(M.BAD_PARAMETER, M.NOT_FOUND_RUN))
    def show_run(run_id: str = RUN_ID) -> Any:
        with scope() as session:
            return runs.run_to_dict(runs.get_run(session, run_id))

    @app.get("/api/runs/{run_id}/metrics", response_model=RunMetrics,
             responses=M.responses(M.BAD_PARAMETER, M.NOT_FOUND_RUN, M.INVALID))
    def run_metrics(run_id: str = RUN_ID,
                    name: str | None = Query(None, min_length=1, max_length=255,
                                             description="Only this metric's series")) -> Any:
        """The run's metrics time series (its loss curve): ``{name: [{step, value}]}``."""
        from tunix_rt.store.metrics import series

        with scope() as session:
            run = runs.get_run(session, run_id)
            return {"run_id": run.id, "series": series(session, run.id, name)}

    @app.get("/api/runs/{run_id}/gate", response_model=GateOut, responses=M.responses(
        M.BAD_PARAMETER, {404: M.error("No such run, or it has no gate result (under "
                                       "that judge) yet")}))
    def run_gate(run_id: str = RUN_ID,
                 judge: str | None = Query(None, description="The judge's gate; the "
                                                             "latest of any judge if absent")
                 ) -> Any:
        with scope() as session:
            report = gating.latest_gate(session, run_id, judge)
        if report is None:
            return _error(404, f"run {run_id} has no gate result yet"
                          + (f" under judge {judge!r}" if judge else ""))
        return report.to_dict()

    @app.get("/api/leaderboard", response_model=BoardPage, dependencies=QUERY_ALLOW_LIST,
             responses=M.responses(M.BAD_PARAMETER, M.INVALID, {
                 404: M.error("No board for this dataset (or judge)")}))
    def board(dataset: str = Query(description="The board's dataset"),
              judge: str | None = Query(None, description="The board's judge; needed when "
                                                          "the dataset has several"),
              limit: int = Query(20, ge=1, le=leaderboard.MAX_PAGE),
              cursor: str | None = None) -> Any:
        with scope() as session:
            chosen = leaderboard.resolve_judge(session, dataset, judge)
            return leaderboard.leaderboard_page(session, dataset, chosen, limit=limit,
                                                cursor=cursor).to_dict()

    @app.get("/api/datasets", response_model=DatasetList,
             responses=M.responses(M.BAD_PARAMETER))
    def list_datasets() -> Any:
        with scope() as session:
            return {"datasets": datasets.list_datasets(session)}

    @app.get("/api/datasets/{name}", response_model=DatasetOut, responses=M.responses(
        M.BAD_PARAMETER, M.INVALID, {404: M.error("No such dataset, or no such version of "
                                                  "it: `error` names the versions it has")}))
    def show_dataset(name: str = Path(min_length=1, description="The dataset's name"),
                     version: int | None = Query(None, ge=1, le=params.MAX_INT,
                                                 description="The latest if absent")
                     ) -> Any:
        with scope() as session:
            return datasets.get_dataset(session, name, version).to_dict()

    return app


def _protect_reads(app: FastAPI, settings: Settings) -> None:
    """TUNIX_RT_API_TOKEN: every read needs it (tunix_rt.service.auth); unset, reads are open."""
    token = settings.api_token.get_secret_value().strip() if settings.api_token else ""
    if not token:
        log.warning("TUNIX_RT_API_TOKEN is unset: the read API and the page are open to "
                    "anyone who reaches this port")
        return
    from tunix_rt.service.auth import ApiTokenMiddleware

    app.add_middleware(ApiTokenMiddleware, token=token, max_failures=settings.auth_max_failures,
                       failure_window_s=settings.auth_failure_window_s)


def _verifier(settings: Settings) -> Verifier | None:
    """The webhook verifier of ``TUNIX_RT_WEBHOOK_SECRET`` (the anonymous source) and
    ``TUNIX_RT_WEBHOOK_SECRETS`` (named sources); None when neither is set: the receiver
    is then off (every delivery is a 503 naming the variable), the pages and the read
    API still serve. A secret that is set but malformed stops the start."""
    anonymous = settings.webhook_secret.get_secret_value() if settings.webhook_secret else ""
    named = settings.webhook_secrets.get_secret_value() if settings.webhook_secrets else ""
    try:
        sourced = parse_sourced_secrets(named)
        if not anonymous.strip() and not sourced:
            log.warning("%s: webhooks are refused (503) until it is set", WEBHOOKS_OFF)
            return None
        return Verifier(anonymous, sourced)
    except ValueError as exc:
        raise InvalidInputError(str(exc)) from None


def _store(scope: Any, delivery_id: str, event: Any,
           source: str | None = None) -> deliveries.Received:
    with scope() as session:
        return deliveries.receive(session, delivery_id, event, source=source)

