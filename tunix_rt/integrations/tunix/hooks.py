"""Tunix training hooks that report a run to tunix-rt from inside the trainer.

:class:`TunixRtHooks` is a ``tunix.sft.hooks.TrainingHooks``: attach it with
``trainer.with_training_hooks(hooks)`` to a ``PeftTrainer`` (or a GRPO learner's actor
trainer, ``rl_cluster.actor_trainer``). It reports:

- ``run.started`` when training starts (``on_train_start``);
- the loss curve: ``train_loss`` by step (``on_train_step_end``) and ``eval_loss``, the
  mean over the eval batches, at the step it was measured (``on_eval_step_end``). Points
  are buffered and sent as ``run.progress`` at most every ``flush_every_s`` seconds
  (default 10: six requests a minute however fast the steps are), never one per step;
- ``run.completed`` with the predictions URI when training ends (``on_train_end``);
- ``run.failed`` with the error when training raises inside ``with hooks:``.

Tunix 0.1.7 writes a step's metrics one step late (overlapping I/O with the next
step), so the last step's ``on_train_step_end`` comes from ``trainer.close()``, after
``on_train_end``. That point is sent as one more ``run.progress`` (the receiver stores
points on a completed run without changing it); ``run.completed`` is sent once.

Two ways out:

- **webhook** (the default): signed deliveries to ``tunix-rt serve``
  (``TUNIX_RT_URL``, ``TUNIX_RT_WEBHOOK_SECRET``), with delivery ids derived from the
  external id and the content, so a retry or every host of a multi-host job is stored once;
- **direct** (``report=``, e.g. :func:`tunix_rt.training.trainable.report` inside a job
  that ``tunix-rt train`` or ``tunix-rt tune`` launched): the launcher owns the run, so no
  lifecycle event is sent; each eval (and the end of training) is one report of the
  latest values with the points since the last one under ``tunix_rt_points``, which the
  launcher stores as the run's series. One report per eval is one Ray Tune iteration.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
import traceback
from collections.abc import Callable, Mapping
from typing import Any

from tunix.sft import hooks as tunix_hooks

from tunix_rt.client import NotifyResult, TunixRtHook

__all__ = ["POINTS_KEY", "TunixRtHooks"]

log = logging.getLogger("tunix_rt.integrations.tunix")

#: In a direct report: the time series points since the previous report.
POINTS_KEY = "tunix_rt_points"
MAX_POINTS_PER_DELIVERY = 1000  # the receiver's limit for one run.progress


def _number(value: Any) -> float | None:
    """A float from a Python, NumPy or JAX scalar; None for NaN and the infinities."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


class TunixRtHooks(tunix_hooks.TrainingHooks):
    """Report a Tunix training run to tunix-rt (see the module docstring).

    ``predictions_uri`` is a string or a callable ``trainer -> str``, evaluated when
    training ends (write the predictions there, e.g. with
    :func:`tunix_rt.integrations.tunix.sampling.write_predictions`). ``metrics_fn(trainer)``
    adds to the metrics sent with ``run.completed``. ``complete_on_train_end=False``
    leaves the completion to :meth:`finish` (a GRPO learner calls its actor trainer's
    ``train`` once per batch, each with its own ``on_train_end``). Every webhook
    delivery's :class:`~tunix_rt.client.NotifyResult` is kept in ``results``; calls
    seen from Tunix are counted in ``calls`` by hook name.
    """

    def __init__(self, external_id: str | None = None, *, name: str | None = None,
                 dataset: str | None = None, model: str | None = None,
                 predictions_uri: str | Callable[[Any], str] | None = None,
                 config: Mapping[str, Any] | None = None,
                 metrics_fn: Callable[[Any], Mapping[str, Any]] | None = None,
                 report: Callable[[dict[str, Any]], None] | None = None,
                 flush_every_s: float = 10.0, complete_on_train_end: bool = True,
                 url: str | None = None, secret: str | None = None, retries: int = 5,
                 timeout: float = 10.0, raise_on_error: bool = False) -> None:
        if report is None and (not isinstance(external_id, str) or not external_id.strip()):
            raise ValueError("external_id must be a non-empty string (or pass report= to "
                             "report to the job's launcher)")
        if flush_every_s < 0:
            raise ValueError(f"flush_every_s must be >= 0, got {flush_every_s}")
        self.report = report
        self.predictions_uri = predictions_uri
        self.metrics_fn = metrics_fn
        self.flush_every_s = flush_every_s
        self.complete_on_train_end = complete_on_train_end
        self.calls: dict[str, int] = {}
        self.latest: dict[str, float | int | None] = {}  # the last value of each metric
        self.completed = False
        self._pending: list[dict[str, Any]] = []
        self._last_flush = time.monotonic()
        self._eval_batches = 0
        self._started = False
        self._lifecycle = None if report is not None else TunixRtHook(
            external_id, name=name, dataset=dataset, model=model, config=config,
            url=url, secret=secret, retries=retries, timeout=timeout,
            raise_on_error=raise_on_error)

    @property
    def results(self) -> list[NotifyResult]:
        return self._lifecycle.results if self._lifecycle is not None else []

    def _seen(self, hook: str) -> None:
        self.calls[hook] = self.calls.get(hook, 0) + 1

    # --- Tunix's hook methods -------------------------------------------------------------

    def on_train_start(self, train_ctx: Any) -> None:
        self._seen("on_train_start")
        if self._started:
            return  # a GRPO learner starts its actor trainer once per batch
        self._started = True
        self._last_flush = time.monotonic()
        if self._lifecycle is not None:
            self._lifecycle.on_train_start(train_ctx)

    def on_train_step_start(self, train_ctx: Any) -> None:
        self._seen("on_train_step_start")

    def on_train_step_end(self, train_ctx: Any, train_step: int, train_loss: float) -> None:
        self._seen("on_train_step_end")
        self._add(train_step, {"train_loss": _number(train_loss)})
        if self.completed:
            self.flush()  # the late last step: after run.completed, one more progress
        elif self.report is None and time.monotonic() - self._last_flush >= self.flush_every_s:
            self.flush()

    def on_eval_step_start(self, train_ctx: Any) -> None:
        self._seen("on_eval_step_start")
        self._eval_batches += 1

    def on_eval_step_end(self, train_ctx: Any, eval_loss: float) -> None:
        """Tunix passes the sum of the batches' losses; the point is their mean."""
        self._seen("on_eval_step_end")
        batches, self._eval_batches = max(self._eval_batches, 1), 0
        total = _number(eval_loss)
        step = int(getattr(train_ctx, "train_steps", 0) or 0)
        self._add(step, {"eval_loss": None if total is None else total / batches})
        if self.report is not None or self.completed \
                or time.monotonic() - self._last_flush >= self.flush_every_s:
            self.flush()

    def on_train_end(self, train_ctx: Any) -> None:
        self._seen("on_train_end")
        if self.complete_on_train_end:
            self.finish(train_ctx)

    # --- reporting ------------------------------------------------------------------------

    def _add(self, step: Any, metrics: dict[str, float | None]) -> None:
        try:
            step = int(step)
        except (TypeError, ValueError):
            return
        self.latest.update(metrics)
        self.latest["step"] = max(step, int(self.latest.get("step") or 0))
        self._pending.append({"step": step, "metrics": dict(metrics)})

    def flush(self) -> None:
        """Send the buffered points now (``run.progress``, or one direct report)."""
        self._last_flush = time.monotonic()
        if not self._pending:
            return
        points, self._pending = self._pending, []
        if self.report is not None:
            latest = {k: v for k, v in self.latest.items() if v is not None}
            self.report({**latest, POINTS_KEY: points})
            return
        assert self._lifecycle is not None
        for start in range(0, len(points), MAX_POINTS_PER_DELIVERY):
            chunk = points[start:start + MAX_POINTS_PER_DELIVERY]
            result = self._progress(chunk)
            if not result.ok and result.attempts == 0:
                break  # not configured: the warning is logged once per flush

    def _progress(self, points: list[dict[str, Any]]) -> NotifyResult:
        """One run.progress; its id is keyed by its content, so the same points sent
        again (a retry, another host) are stored once."""
        assert self._lifecycle is not None
        digest = hashlib.sha256(json.dumps(points, sort_keys=True).encode()).hexdigest()[:32]
        return self._lifecycle._send(
            "run.progress", event_key=f"run.progress:{digest}", progress=points,
            metrics={k: v for k, v in self.latest.items() if v is not None})

    def finish(self, train_ctx: Any = None) -> None:
        """Flush the points and send ``run.completed`` (once; later calls do nothing)."""
        if self.completed:
            return
        self.flush()
        if self._lifecycle is None:
            self.completed = True
            return
        try:
            uri = (self.predictions_uri(train_ctx) if callable(self.predictions_uri)
                   else self.predictions_uri)
            extra = dict(self.metrics_fn(train_ctx)) if self.metrics_fn is not None else {}
        except Exception as exc:
            self.report_failure(f"tunix-rt hooks could not gather the results: {exc!r}")
            raise
        metrics = {k: v for k, v in self.latest.items() if v is not None}
        metrics.update(extra)
        self.completed = True
        self._lifecycle._send("run.completed", predictions_uri=uri, metrics=metrics)

    def report_failure(self, error: str) -> NotifyResult | None:
        """Send ``run.failed`` with ``error`` (webhook mode; the last 4,000 characters)."""
        self.flush()
        if self._lifecycle is None:
            return None
        self.completed = True
        return self._lifecycle.report_failure(error)

    def __enter__(self) -> TunixRtHooks:
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        if exc is not None and not isinstance(exc, GeneratorExit) and not self.completed:
            self.report_failure("".join(traceback.format_exception(exc_type, exc, tb)))
