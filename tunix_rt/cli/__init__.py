"""The ``tunix-rt`` command line (CONTRACT.md).

Exit codes: 0 success; ``gate``: 1 fail, 2 inconclusive or no baseline; 3 an error
the user can act on (the message on stderr says what and where); 4 anything else.

Read commands import neither Prefect nor pandas: only ``evaluate`` and ``demo``
start Prefect, and they import it when they run, so ``tunix-rt leaderboard``
starts fast.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

EXIT_ERROR = 3
EXIT_INTERNAL = 4

RUN_COLUMNS = ["id", "name", "dataset", "model", "status", "origin", "created_at"]
BOARD_COLUMNS = ["rank", "run_id", "run_name", "score", "ci_low", "ci_high", "n_items"]
GATE_FIELDS = ["decision", "delta", "ci_low", "ci_high", "n_paired", "baseline_run_id",
               "run_id", "dataset", "judge", "reason"]


class CliError(Exception):
    """Bad usage found after parsing (a --config that is not JSON, say)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # usage errors share the error exit code
        self.print_usage(sys.stderr)
        self.exit(EXIT_ERROR, f"{self.prog}: error: {message}\n")


def _session():  # noqa: ANN202
    from tunix_rt.store.db import session_scope

    return session_scope()


def _fmt_arg(parser: argparse.ArgumentParser, choices: Sequence[str] = ("table", "json")) -> None:
    parser.add_argument("--format", choices=choices, default="table",
                        help="output format (default: table)")


def _policy_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("gate policy")
    group.add_argument("--margin", type=float, default=0.01,
                       help="non-inferiority margin on the mean score (default 0.01)")
    group.add_argument("--confidence", type=float, default=0.95,
                       help="confidence of the bootstrap interval (default 0.95)")
    group.add_argument("--min-items", type=int, default=30,
                       help="fewer paired items than this is inconclusive (default 30)")
    group.add_argument("--require-improvement", action="store_true",
                       help="pass only when the run is better than the baseline")


def _policy(args: argparse.Namespace, auto_promote: bool = False):  # noqa: ANN202
    from pydantic import ValidationError

    from tunix_rt.quality.stats import GatePolicy

    try:
        return GatePolicy(margin=args.margin, confidence=args.confidence,
                          min_items=args.min_items, require_improvement=args.require_improvement,
                          auto_promote=auto_promote)
    except ValidationError as exc:
        problems = "; ".join(f"--{'-'.join(map(str, e['loc'])).replace('_', '-')}: {e['msg']}"
                             for e in exc.errors())
        raise CliError(f"invalid gate policy: {problems}") from None


def _json_object(text: str | None, flag: str) -> dict[str, Any] | None:
    if text is None:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CliError(f"{flag} is not valid JSON: {exc.msg} at column {exc.colno}") from None
    if not isinstance(value, dict):
        raise CliError(f"{flag} must be a JSON object")
    return value


# --- commands ---------------------------------------------------------------------------


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    from tunix_rt.store import db

    engine = db.get_engine(migrate_embedded=False)
    before = db.current_revision(engine)
    db.upgrade(engine, args.revision)
    after = db.current_revision(engine)
    if args.format == "json":
        from tunix_rt.cli.output import to_json

        to_json({"from": before, "to": after})
    else:
        print(f"database at {after} (was {before or 'empty'})")
    return 0


def cmd_runs_register(args: argparse.Namespace) -> int:
    from tunix_rt.store import runs
    from tunix_rt.store.models import RunStatus

    config = _json_object(args.config, "--config")
    metrics = _json_object(args.metrics, "--metrics")
    with _session() as session:
        run = runs.register_run(session, name=args.name, dataset=args.dataset, model=args.model,
                                predictions_uri=args.predictions, config=config, metrics=metrics,
                                external_id=args.external_id, status=RunStatus.completed)
        data = runs.run_to_dict(run)
    if args.format == "json":
        from tunix_rt.cli.output import to_json

        to_json(data)
    else:
        print(data["id"])
    return 0


def cmd_runs_list(args: argparse.Namespace) -> int:
    from tunix_rt.store import runs
    from tunix_rt.cli.output import to_json, to_table

    with _session() as session:
        page, cursor = runs.list_runs(session, dataset=args.dataset, status=args.status,
                                      limit=args.limit, cursor=args.cursor)
        rows = [runs.run_to_dict(r) for r in page]
    if args.format == "json":
        to_json({"runs": rows, "next_cursor": cursor})
    else:
        to_table(rows, RUN_COLUMNS)
        if cursor:
            print(f"next page: --cursor {cursor}", file=sys.stderr)
    return 0


def cmd_runs_show(args: argparse.Namespace) -> int:
    from sqlalchemy import select

    from tunix_rt.store import runs
    from tunix_rt.store.models import Evaluation
    from tunix_rt.cli.output import key_values, to_json, to_table

    with _session() as session:
        run = runs.get_run(session, args.run_id)
        data = runs.run_to_dict(run)
        evs = session.scalars(select(Evaluation).where(Evaluation.run_id == run.id)
                              .order_by(Evaluation.judge, Evaluation.judge_version))
        data["evaluations"] = [
            {"judge": e.judge, "judge_version": e.judge_version, "status": e.status,
             "score": e.score, "ci_low": e.ci_low, "ci_high": e.ci_high, "n_items": e.n_items,
             "n_unscored": e.n_unscored, "error": e.error,
             "finished_at": e.finished_at.isoformat()} for e in evs]
    if args.format == "json":
        to_json(data)
    else:
        evaluations = data.pop("evaluations")
        key_values(data)
        print()
        to_table(evaluations, ["judge", "judge_version", "status", "score", "ci_low", "ci_high",
                               "n_items", "n_unscored", "error"])
    return 0


def cmd_judges_list(args: argparse.Namespace) -> int:
    from tunix_rt.judges import list_judges
    from tunix_rt.quality.judge_config import ensure_configured_judges

    ensure_configured_judges()
    from tunix_rt.cli.output import to_json, to_table

    rows = [{"name": s.name, "version": s.version, "requires_reference": s.requires_reference,
             "description": s.description} for s in list_judges()]
    if args.format == "json":
        to_json({"judges": rows})
    else:
        to_table(rows, ["name", "version", "requires_reference", "description"])
    return 0


def _check_judges(names: list[str]) -> None:
    from tunix_rt.judges import judge_spec
    from tunix_rt.quality.judge_config import ensure_configured_judges

    ensure_configured_judges()

    for name in names:
        judge_spec(name)  # raises, listing the registered judges


def cmd_evaluate(args: argparse.Namespace) -> int:
    if not 1 <= args.repeat <= 20:
        raise CliError(f"--repeat must be between 1 and 20, got {args.repeat}")
    judges = args.judge or None
    _check_judges(judges or [])
    policy = _policy(args, auto_promote=args.auto_promote)
    with _session() as session:  # fail fast, before Prefect starts, on a bad run id
        from tunix_rt.store import runs

        run = runs.get_run(session, args.run_id)
        runs.ensure_evaluable(run)
        run_id = run.id
    from tunix_rt.flows.quality_loop import quality_loop

    chosen = {"judges": judges} if judges else {}  # else the flow's default judges
    result = quality_loop(run_id=run_id, policy=policy, force=args.force, repeat=args.repeat,
                          **chosen)
    if args.format == "json":
        from tunix_rt.cli.output import to_json

        to_json(result)
        return 0
    for judge, outcome in result["judges"].items():
        ev, gate = outcome["evaluation"], outcome["gate"]
        reused = " (stored evaluation reused; --force to re-score)" if ev["reused"] else ""
        print(f"{judge} {ev['judge_version']}: score {ev['score']:.4f} "
              f"[{ev['ci_low']:.4f}, {ev['ci_high']:.4f}] on {ev['n_scored']} items"
              f"{', ' + str(ev['n_unscored']) + ' unscored' if ev['n_unscored'] else ''}{reused}")
        print(f"  gate: {gate['decision']} - {gate['reason']}")
        if outcome["promoted"]:
            print(f"  promoted to baseline: {outcome['promoted']}")
    return 0


def cmd_leaderboard(args: argparse.Namespace) -> int:
    from tunix_rt.quality import leaderboard
    from tunix_rt.cli.output import to_csv, to_json, to_table

    with _session() as session:
        judge = leaderboard.resolve_judge(session, args.dataset, args.judge)
        page = leaderboard.leaderboard_page(session, args.dataset, judge, limit=args.limit,
                                            cursor=args.cursor)
    doc = page.to_dict()
    if args.format == "json":
        to_json(doc)
    elif args.format == "csv":
        to_csv(doc["entries"], BOARD_COLUMNS)
    else:
        print(f"{args.dataset} / {judge}")
        to_table(doc["entries"], BOARD_COLUMNS)
        if page.next_cursor:
            print(f"next page: --cursor {page.next_cursor}", file=sys.stderr)
    return 0


def cmd_baseline_set(args: argparse.Namespace) -> int:
    from tunix_rt.quality import gating

    with _session() as session:
        judge = gating.resolve_gate_judge(session, args.run_id, args.judge)
        info = gating.set_baseline(session, args.run_id, judge, source="manual",
                                   reason=args.reason or "set from the command line")
    return _print_baseline(info, args.format)


def cmd_baseline_show(args: argparse.Namespace) -> int:
    from tunix_rt.quality import gating, leaderboard
    from tunix_rt.errors import NotFoundError

    with _session() as session:
        judge = leaderboard.resolve_judge(session, args.dataset, args.judge)
        info = gating.get_baseline(session, args.dataset, judge)
    if info is None:
        raise NotFoundError(f"dataset {args.dataset!r} has no baseline under judge {judge!r}: "
                            "set one with `tunix-rt baseline set RUN_ID`")
    return _print_baseline(info, args.format)


def _print_baseline(info: Any, fmt: str) -> int:
    from tunix_rt.cli.output import key_values, to_json, to_table

    doc = info.to_dict()
    if fmt == "json":
        to_json(doc)
        return 0
    history = doc.pop("history")
    key_values(doc)
    print("\nhistory:")
    to_table(history, ["promoted_at", "run_id", "previous_run_id", "source", "reason"])
    return 0


def cmd_gate(args: argparse.Namespace) -> int:
    from tunix_rt.quality import gating
    from tunix_rt.cli.output import key_values, to_json

    policy = _policy(args)
    with _session() as session:
        judge = gating.resolve_gate_judge(session, args.run_id, args.judge)
        report = gating.gate_run(session, args.run_id, judge, policy)
    if args.format == "json":
        to_json(report.to_dict())
    else:
        key_values({k: report.to_dict()[k] for k in GATE_FIELDS})
    return report.exit_code


def cmd_demo(args: argparse.Namespace) -> int:
    from tunix_rt.cli.demo import run_demo

    return run_demo(workdir=args.workdir, items=args.items, output_format=args.format,
                    tune=not args.no_tune)


def cmd_serve(args: argparse.Namespace) -> int:
    from tunix_rt.cli.stack import serve

    serve(args.host, args.port)
    return 0


def cmd_up(args: argparse.Namespace) -> int:
    from tunix_rt.cli.stack import up

    return up(host=args.host, port=args.port, prefect_port=args.prefect_port, logs=args.logs)


def cmd_sweep(args: argparse.Namespace) -> int:
    from tunix_rt.flows.sweeper import sweep_owed_loops

    count = sweep_owed_loops(older_than_minutes=args.older_than_minutes, limit=args.limit)
    if args.format == "json":
        from tunix_rt.cli.output import to_json

        to_json({"redispatched": count})
    else:
        print(f"re-dispatched {count} owed quality loop(s)")
    return 0


def cmd_notify(args: argparse.Namespace) -> int:
    from tunix_rt.client import notify

    result = notify(f"run.{args.event}", external_id=args.external_id, name=args.name,
                    dataset=args.dataset, model=args.model, predictions_uri=args.predictions,
                    config=_json_object(args.config, "--config"),
                    metrics=_json_object(args.metrics, "--metrics"), error=args.error,
                    url=args.url)
    if args.format == "json":
        from tunix_rt.cli.output import to_json

        to_json(result.to_dict() if hasattr(result, "to_dict") else result.__dict__)
    elif result.ok:
        print(f"delivered {result.delivery_id}: HTTP {result.status}")
    if not result.ok:
        print(f"tunix-rt: error: notification not delivered after {result.attempts} "
              f"attempt(s): {result.error}", file=sys.stderr)
        return EXIT_ERROR
    return 0


def cmd_tune(args: argparse.Namespace) -> int:
    if args.what:
        if args.what[0] != "show" or len(args.what) != 2:
            raise CliError("usage: tunix-rt tune --config SWEEP.yaml | tunix-rt tune show STUDY")
        return _tune_show(args.what[1], args.format)
    if not args.config and not args.resume:
        raise CliError("tune needs --config SWEEP.yaml (or --resume STUDY)")
    from tunix_rt.tuning.sweep import Sweep, load_sweep

    if args.resume:
        from tunix_rt.tuning import studies

        with _session() as session:
            study = studies.get_study(session, args.resume)
            sweep, resume = Sweep.model_validate(study.spec), study.id
    else:
        sweep, resume = load_sweep(args.config), None
    if args.smoke:
        sweep = sweep.model_copy(update={"num_samples": 1, "time_budget_s": 120})
    print(f"tune: {sweep.name}: {sweep.total_trials} trial(s), {sweep.max_concurrent_trials} at "
          f"a time, {sweep.resources} each", file=sys.stderr)
    from tunix_rt.flows.tuning import tune_flow

    result = tune_flow(sweep=sweep, resume_study=resume)
    if args.format == "json":
        from tunix_rt.cli.output import to_json

        to_json(result)
        return 130 if result["unfinished"] else 0
    if result["unfinished"]:
        print(f"tune: interrupted with {result['unfinished']} trial(s) unfinished; resume with "
              f"`tunix-rt tune --resume {result['study_id']}`", file=sys.stderr)
        return 130
    print(f"study {result['study_id']}: {result['trials']} trials, {result['errors']} failed; "
          f"best {sweep.metric} {result['best_value']} (trial {result['best_trial_id']})")
    for run in result["runs"]:
        print(f"  run {run['run_id']}: gate {run['gate']['decision']} - {run['gate']['reason']}")
    print(f"trials: tunix-rt tune show {result['study_id']}")
    return 0


def _tune_show(study_ref: str, fmt: str) -> int:
    from tunix_rt.tuning import studies

    with _session() as session:
        study = studies.get_study(session, study_ref)
        frame = studies.trials_frame(session, study.id)
        head = {"study_id": study.id, "name": study.name, "status": study.status,
                "metric": study.metric, "mode": study.mode, "best_trial_id": study.best_trial_id}
    if fmt == "json":
        from tunix_rt.cli.output import to_json

        to_json({**head, "trials": json.loads(frame.to_json(orient="records", date_format="iso"))})
    elif fmt == "csv":
        sys.stdout.write(frame.to_csv(index=False))
    else:
        from tunix_rt.cli.output import key_values

        key_values(head)
        print()
        print(frame.to_string(index=False) if len(frame) else "(no trials)")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from tunix_rt.training.runfile import load_run_spec

    spec = load_run_spec(args.config)
    if args.dry_run:
        spec.check()  # fail here, before Prefect starts, on what a dry run would refuse
    from tunix_rt.flows.training import train_flow

    state = train_flow(spec=spec, dry_run=args.dry_run, return_state=True)
    result = state.result(raise_on_failure=False)
    if isinstance(result, BaseException):
        from tunix_rt.errors import TunixRtError

        if isinstance(result, TunixRtError):
            raise result
        raise CliError(f"the train flow failed: {result}")
    if args.format == "json":
        from tunix_rt.cli.output import to_json

        to_json(result)
    else:
        print(result["run_id"])
        if result["dry_run"]:
            print("dry run: validated and recorded; nothing trained", file=sys.stderr)
        else:
            gate = result["gate"]
            print(f"gate: {gate['decision']} - {gate['reason']}")
    return 0


def cmd_runs_cancel(args: argparse.Namespace) -> int:
    from tunix_rt.store import runs

    with _session() as session:
        run = runs.request_cancel(session, args.run_id)
        data = runs.run_to_dict(run)
    if args.format == "json":
        from tunix_rt.cli.output import to_json

        to_json(data)
    else:
        print(f"cancellation requested for run {data['id']}; its job stops within seconds")
    return 0


def cmd_judges_calibrate(args: argparse.Namespace) -> int:
    from tunix_rt.quality.calibrate import calibrate_command

    return calibrate_command(args.judge, args.labels, args.format)


# --- parser -----------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="tunix-rt", description=(
        "The model-quality loop for LLM post-training: judge a run's predictions, rebuild "
        "the leaderboard, gate the run against the baseline."))
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser,
                                metavar="COMMAND")

    def command(parent: Any, name: str, func: Callable[[argparse.Namespace], int], help: str,
                formats: Sequence[str] | None = ("table", "json")) -> argparse.ArgumentParser:
        p = parent.add_parser(name, help=help, description=help)
        p.set_defaults(func=func)
        if formats:
            _fmt_arg(p, formats)
        return p

    db = sub.add_parser("db", help="database schema").add_subparsers(
        dest="db_command", required=True, parser_class=_Parser, metavar="COMMAND")
    p = command(db, "upgrade", cmd_db_upgrade, "migrate the configured database to head")
    p.add_argument("--revision", default="head", help=argparse.SUPPRESS)

    runs = sub.add_parser("runs", help="training runs").add_subparsers(
        dest="runs_command", required=True, parser_class=_Parser, metavar="COMMAND")
    p = command(runs, "register", cmd_runs_register, "record a completed run; prints its id")
    p.add_argument("--name", required=True)
    p.add_argument("--dataset", required=True, help="the eval set the predictions answer")
    p.add_argument("--model", required=True)
    p.add_argument("--predictions", required=True, metavar="URI",
                   help="JSON Lines predictions: a path, file://, s3:// ... (fsspec)")
    p.add_argument("--config", metavar="JSON", help="training config, a JSON object")
    p.add_argument("--metrics", metavar="JSON", help="training metrics, a JSON object")
    p.add_argument("--external-id", help="the training job's own id (unique)")
    p = command(runs, "list", cmd_runs_list, "list runs, newest first")
    p.add_argument("--dataset")
    p.add_argument("--status", choices=["pending", "running", "completed", "failed"])
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--cursor")
    p = command(runs, "show", cmd_runs_show, "one run with its evaluations")
    p.add_argument("run_id", metavar="RUN_ID")
    p = command(runs, "cancel", cmd_runs_cancel, "stop the job of a run `tunix-rt train` "
                "launched")
    p.add_argument("run_id", metavar="RUN_ID")

    judges = sub.add_parser("judges", help="the judges").add_subparsers(
        dest="judges_command", required=True, parser_class=_Parser, metavar="COMMAND")
    command(judges, "list", cmd_judges_list, "the judges that can be named, with versions")
    p = command(judges, "calibrate", cmd_judges_calibrate, "agreement of a judge with human "
                "labels: accuracy and Cohen's kappa")
    p.add_argument("--judge", required=True, metavar="NAME")
    p.add_argument("--labels", required=True, metavar="FILE",
                   help='JSON Lines of predictions items, each with "label": true/false')

    p = command(sub, "evaluate", cmd_evaluate,
                "run the quality loop (score, leaderboard, gate) for one run through Prefect")
    p.add_argument("run_id", metavar="RUN_ID")
    p.add_argument("--judge", action="append", metavar="NAME",
                   help="a registered judge; repeat for several (default: exact_match)")
    p.add_argument("--force", action="store_true", help="score again even if already evaluated")
    p.add_argument("--repeat", type=int, default=1, metavar="K",
                   help="grade a sample K times and store the agreement rate (llm judges)")
    p.add_argument("--auto-promote", action="store_true",
                   help="make the run the baseline when there is none, or when it passes "
                        "with a better score")
    _policy_args(p)

    p = command(sub, "leaderboard", cmd_leaderboard, "ranked runs of a dataset",
                formats=("table", "json", "csv"))
    p.add_argument("--dataset", required=True)
    p.add_argument("--judge", help="needed when the dataset has boards for several judges")
    p.add_argument("--limit", type=int, default=20)
    p.add_argument("--cursor", help="next_cursor of the previous page")

    base = sub.add_parser("baseline", help="the baseline a dataset's runs are gated against")
    base_sub = base.add_subparsers(dest="baseline_command", required=True, parser_class=_Parser,
                                   metavar="COMMAND")
    p = command(base_sub, "set", cmd_baseline_set, "make a run its dataset's baseline")
    p.add_argument("run_id", metavar="RUN_ID")
    p.add_argument("--judge")
    p.add_argument("--reason", help="recorded in the baseline's history")
    p = command(base_sub, "show", cmd_baseline_show, "the current baseline and its history")
    p.add_argument("--dataset", required=True)
    p.add_argument("--judge")

    p = command(sub, "gate", cmd_gate, "compare a run with its dataset's baseline, item by item "
                "(exit 0 pass, 1 fail, 2 inconclusive or no baseline)")
    p.add_argument("run_id", metavar="RUN_ID")
    p.add_argument("--judge")
    _policy_args(p)

    p = command(sub, "serve", cmd_serve, "the HTTP service: training webhook, API, leaderboard "
                "page", formats=None)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)

    p = command(sub, "up", cmd_up, "a local stack: Prefect server, deployments, a worker and "
                "the service; Ctrl-C stops it all", formats=None)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000, help="the tunix-rt service's port")
    p.add_argument("--prefect-port", type=int, default=4200)
    p.add_argument("--logs", default=".tunix-rt/logs", help="where the children's logs go")

    p = command(sub, "sweep", cmd_sweep, "start again the quality loops a crash or a lost "
                "event left owed (the sweeper flow)")
    p.add_argument("--older-than-minutes", type=float, default=10.0)
    p.add_argument("--limit", type=int, default=100)

    p = command(sub, "notify", cmd_notify, "tell a tunix-rt service about a training run "
                "(a signed webhook; for shell-driven trainers)")
    p.add_argument("event", choices=["started", "completed", "failed"])
    p.add_argument("--external-id", required=True, help="the training job's own id")
    p.add_argument("--name")
    p.add_argument("--dataset")
    p.add_argument("--model")
    p.add_argument("--predictions", metavar="URI")
    p.add_argument("--config", metavar="JSON")
    p.add_argument("--metrics", metavar="JSON")
    p.add_argument("--error", help="why the run failed (with `failed`)")
    p.add_argument("--url", help="the service's base URL (default: $TUNIX_RT_URL)")

    p = command(sub, "tune", cmd_tune, "a Ray Tune sweep through the tuning flow (every trial "
                "stored), or `tune show STUDY` to list its trials",
                formats=("table", "json", "csv"))
    p.add_argument("what", nargs="*", metavar="show STUDY", help="list a study's trials")
    p.add_argument("--config", metavar="SWEEP.yaml", help="the sweep file")
    p.add_argument("--resume", metavar="STUDY", help="resume a study's unfinished trials")
    p.add_argument("--smoke", action="store_true",
                   help="one sample of each grid point, for a quick check of a sweep file")

    p = command(sub, "train", cmd_train, "launch a training job (a run file), then judge, rank "
                "and gate it; exits non-zero when the job fails")
    p.add_argument("--config", required=True, metavar="RUN.yaml", help="the run file")
    p.add_argument("--dry-run", action="store_true",
                   help="validate and record a dry-run run; train nothing")

    p = command(sub, "demo", cmd_demo,
                "the whole loop on sample data, on the embedded default, from nothing")
    p.add_argument("--workdir", default="tunix_rt_demo",
                   help="where the sample eval set and predictions are written")
    p.add_argument("--items", type=int, default=300, help="items in the sample eval set")
    p.add_argument("--no-tune", action="store_true",
                   help="skip the opening Ray Tune sweep (the quality loop only)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from tunix_rt.errors import TunixRtError

    try:
        return args.func(args)
    except (TunixRtError, CliError) as exc:
        print(f"tunix-rt: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("tunix-rt: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - the last line of defence, with the cause named
        from tunix_rt.judges import JudgeRegistryError
        from tunix_rt.judges.llm import JudgeConfigError

        if isinstance(exc, (JudgeRegistryError, JudgeConfigError)):
            print(f"tunix-rt: error: {exc}", file=sys.stderr)
            return EXIT_ERROR
        from sqlalchemy.exc import OperationalError

        if isinstance(exc, OperationalError):
            print(f"tunix-rt: error: cannot use the database: {exc.orig}", file=sys.stderr)
            return EXIT_ERROR
        import traceback

        traceback.print_exc()
        print(f"tunix-rt: internal error: {exc!r}", file=sys.stderr)
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
