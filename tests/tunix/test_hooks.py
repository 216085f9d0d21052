"""TunixRtHooks in a real Tunix PeftTrainer, reporting to a real `tunix-rt serve`.

The first test runs examples/tunix/own_script.py (the README's first form) as a newcomer
would: a subprocess that trains Tunix's Qwen3, made tiny, with qwix LoRA for 30 steps;
Tunix itself calls every hook method; the receiver stores run.started, the loss curve
and run.completed, then judges, ranks and gates the run against a baseline.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from sqlalchemy import select

from tests.tunix.conftest import ROOT, Receiver
from tests.waiting import wait_for
from tunix_rt.client import notify
from tunix_rt.quality.gating import set_baseline
from tunix_rt.store import db
from tunix_rt.store.db import session_scope
from tunix_rt.store.models import Evaluation, Run, WebhookDelivery
from tunix_rt.training.trainable import arithmetic_items

pytestmark = [pytest.mark.postgres, pytest.mark.slow]
STEPS = 30
WAIT_S = 300


def _run(receiver: Receiver, external_id: str) -> Run | None:
    with session_scope(db.get_engine(receiver.db_url)) as session:
        run = session.scalar(select(Run).where(Run.external_id == external_id))
        if run is not None:
            session.expunge(run)
        return run


def _evaluated(receiver: Receiver, run_id: str) -> bool:
    with session_scope(db.get_engine(receiver.db_url)) as session:
        return session.scalar(select(Evaluation.id).where(Evaluation.run_id == run_id)) is not None


def _baseline(receiver: Receiver) -> str:
    """A run that answers 0 to everything, evaluated by the receiver's loop, made the
    arithmetic baseline."""
    path = receiver.tmp / "baseline" / "predictions.jsonl"
    path.parent.mkdir()
    path.write_text("".join(json.dumps({**item, "response": "0"}) + "\n"
                            for item in arithmetic_items()[:100]))
    result = notify("run.completed", external_id="baseline", name="baseline",
                    dataset="arithmetic", model="zero", predictions_uri=path.as_uri(),
                    url=receiver.url, secret=receiver.env()["TUNIX_RT_WEBHOOK_SECRET"])
    assert result.ok, result
    run_id = result.response["run_id"]
    wait_for(lambda: _evaluated(receiver, run_id), WAIT_S, "the baseline's evaluation",
             proc=receiver.proc, log=receiver.log)
    with session_scope(db.get_engine(receiver.db_url)) as session:
        set_baseline(session, run_id, "exact_match")
    return run_id


def test_a_peft_trainer_with_the_hooks_is_reported_judged_ranked_and_gated(
        receiver: Receiver) -> None:
    baseline_id = _baseline(receiver)
    out = receiver.tmp / "own-script"
    # flush_every_s is an hour: the batching, not the clock, decides the deliveries.
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "tunix" / "own_script.py"), "--out", str(out),
         "--external-id", "tunix-own", "--steps", str(STEPS), "--flush-every-s", "3600"],
        env=receiver.env(), cwd=receiver.tmp, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])

    # Every hook method was called by Tunix itself: 30 steps, an eval before training
    # and every 10 steps (4 evals of 2 batches).
    assert summary["hook_calls"] == {
        "on_train_start": 1, "on_train_step_start": STEPS, "on_train_step_end": STEPS,
        "on_eval_step_start": 8, "on_eval_step_end": 4, "on_train_end": 1}
    assert [status for status, _ in summary["deliveries"]] == [202] * 4

    run = _run(receiver, "tunix-own")
    assert run is not None and run.status == "completed" and run.origin == "webhook"
    assert run.predictions_uri == (out / "predictions.jsonl").resolve().as_uri()
    with session_scope(db.get_engine(receiver.db_url)) as session:
        deliveries = session.execute(
            select(WebhookDelivery.event_type, WebhookDelivery.payload)
            .where(WebhookDelivery.run_id == run.id)
            .order_by(WebhookDelivery.received_at)).all()
    # started; one batch of progress at the end; completed once; then Tunix's late last
    # step (written by trainer.close() after on_train_end) as one more progress.
    assert [kind for kind, _ in deliveries] == ["run.started", "run.progress", "run.completed",
                                                "run.progress"]
    late = deliveries[-1][1]["data"]["progress"]
    assert [(p["step"], list(p["metrics"])) for p in late] == [(STEPS, ["train_loss"])]

    # The loss curve, served by the API: every step's train loss, the eval loss at each eval.
    answer = receiver.get(f"/api/runs/{run.id}/metrics")
    assert answer.status_code == 200, answer.text
    series = answer.json()["series"]
    assert [p["step"] for p in series["train_loss"]] == list(range(1, STEPS + 1))
    assert [p["step"] for p in series["eval_loss"]] == [0, 10, 20, 30]
    assert all(isinstance(p["value"], float) and p["value"] > 0
               for points in series.values() for p in points)
    # Training lowered the loss on held-out items.
    assert series["eval_loss"][-1]["value"] < series["eval_loss"][0]["value"]
    assert receiver.get(f"/api/runs/{run.id}/metrics", name="eval_loss").json()["series"] == {
        "eval_loss": series["eval_loss"]}

    # The loop judged it, ranked it and gated it against the baseline.
    gate = wait_for(lambda: (lambda r: r.status_code == 200 and r.json())(
        receiver.get(f"/api/runs/{run.id}/gate")), WAIT_S, "the Tunix run's gate",
        proc=receiver.proc, log=receiver.log)
    assert gate["baseline_run_id"] == baseline_id
    assert gate["decision"] in {"pass", "fail", "inconclusive"} and gate["n_paired"] == 100
    board = receiver.get("/api/leaderboard", dataset="arithmetic").json()
    assert {run.id, baseline_id} <= {entry["run_id"] for entry in board["entries"]}


def test_an_error_in_training_is_reported_as_run_failed(receiver: Receiver) -> None:
    """A data iterator that raises inside the real trainer: run.failed, with the error."""
    script = """
import optax, sys
from tunix.sft import peft_trainer
from tunix_rt.integrations.tunix import TunixRtHooks
from tunix_rt.integrations.tunix.tiny import CharTokenizer, tiny_qwen3
from tunix_rt.integrations.tunix.trainables import DEFAULTS, model_input_fn, sft_batches, with_lora
from tunix_rt.training.trainable import training_pairs

tok = CharTokenizer()
trainer = peft_trainer.PeftTrainer(with_lora(tiny_qwen3(), DEFAULTS), optax.adamw(1e-3),
                                   peft_trainer.TrainingConfig(eval_every_n_steps=100, max_steps=10))
trainer = trainer.with_gen_model_input_fn(model_input_fn(tok.pad_id()))
def data():
    yield from sft_batches(tok, "{prompt}=", training_pairs(), n=3, batch_size=4, length=24, seed=0)
    raise RuntimeError("the data loader broke at step 4")
hooks = TunixRtHooks("tunix-broken", name="broken", dataset="arithmetic", model="qwen3-tiny",
                     predictions_uri="file:///nowhere.jsonl", flush_every_s=0)
trainer.with_training_hooks(hooks)
with hooks:
    trainer.train(data())
"""
    proc = subprocess.run([sys.executable, "-c", script], env=receiver.env(), cwd=receiver.tmp,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 1 and "the data loader broke" in proc.stderr, proc.stderr[-3000:]
    run = _run(receiver, "tunix-broken")
    assert run is not None and run.status == "failed"
    assert "RuntimeError: the data loader broke at step 4" in run.error
    assert run.predictions_uri is None
    with session_scope(db.get_engine(receiver.db_url)) as session:
        kinds = session.scalars(select(WebhookDelivery.event_type)
                                .where(WebhookDelivery.run_id == run.id)).all()
    assert "run.completed" not in kinds and kinds.count("run.failed") == 1
    assert os.path.exists(receiver.log)
