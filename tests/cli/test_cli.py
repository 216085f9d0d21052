"""The ``tunix-rt`` command as users and scripts run it (docs/CONTRACT.md, "Command line").

Every test runs the command in subprocesses: the installed console script, or, for a
batch of read commands, ``main(argv)`` in one subprocess (see conftest.py). Tests
that take ``db_url`` or ``engine`` run on SQLite and on PostgreSQL; ``evaluate`` and
``demo`` talk to the session's one Prefect server.
"""

from __future__ import annotations

import argparse
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import Engine, func, select, update

from tests.cli.conftest import Cli, expect_code
from tests.factories import make_run, write_predictions
from tunix_rt.store.db import SCHEMA_HEAD, session_scope
from tunix_rt.store.models import Run, RunStatus

RUN_KEYS = {"id", "external_id", "name", "dataset", "model", "status", "dry_run", "origin",
            "created_at"}
ENTRY_KEYS = {"rank", "run_id", "run_name", "score", "ci_low", "ci_high", "n_items"}
GATE_KEYS = {"decision", "delta", "ci_low", "ci_high", "n_paired", "baseline_run_id"}
BOARD_CSV_HEADER = "rank,run_id,run_name,score,ci_low,ci_high,n_items,coverage,n_unscored,flag"
N_ITEMS = 150

pytestmark = pytest.mark.cli


def correlated_outcomes(n: int = N_ITEMS, seed: int = 11) -> dict[str, list[bool]]:
    """Right or wrong, per item, for three checkpoints of one model.

    The items have one difficulty shared by all runs (checkpoints of one model get
    much the same items right), so the paired gate sees the correlation it sees in
    practice.
    """
    rng = np.random.default_rng(seed)
    difficulty = rng.random(n)
    return {name: [bool(x) for x in difficulty + rng.normal(0.0, 0.05, n) < skill]
            for name, skill in [("baseline", 0.65), ("better", 0.85), ("worse", 0.45)]}


def malformed_predictions(path: Path) -> str:
    """A predictions file whose line 3 is cut off mid-object."""
    lines = Path(write_predictions(path, [True] * 5)).read_text().splitlines()
    lines.insert(2, '{"id": "q-broken", "response": ')
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def page_through(cli: Cli, *args: str, key: str) -> tuple[list[dict], int]:
    """Every item of a paginated listing, following next_cursor; and the number of pages."""
    items: list[dict] = []
    cursor = None
    for pages in range(1, 20):
        doc = cli(*args, "--format", "json", *(["--cursor", cursor] if cursor else [])).json()
        assert {key, "next_cursor"} <= doc.keys()
        items += doc[key]
        cursor = doc["next_cursor"]
        if cursor is None:
            return items, pages
    raise AssertionError("the cursor never ran out")


def count_runs(engine: Engine) -> int:
    with session_scope(engine) as session:
        return session.scalar(select(func.count()).select_from(Run))


# --- help and usage ---------------------------------------------------------------------

# The commands docs/CONTRACT.md names; test_help runs every command the parser has.
CONTRACT_COMMANDS = {("db", "upgrade"), ("runs", "register"), ("runs", "list"), ("runs", "show"),
                     ("judges", "list"), ("evaluate",), ("leaderboard",), ("baseline", "set"),
                     ("baseline", "show"), ("gate",), ("demo",), ("datasets", "register"),
                     ("datasets", "list"), ("datasets", "show")}


def command_tree() -> dict[tuple[str, ...], bool]:
    """Every command path of the parser, each with whether it is a group of subcommands."""
    from tunix_rt.cli import build_parser

    tree: dict[tuple[str, ...], bool] = {}

    def walk(parser: argparse.ArgumentParser, path: tuple[str, ...]) -> None:
        subcommands = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        tree[path] = bool(subcommands)
        for action in subcommands:
            for name, sub in action.choices.items():
                walk(sub, (*path, name))

    walk(build_parser(), ())
    return tree


COMMAND_TREE = command_tree()


def test_every_contract_command_exists() -> None:
    assert CONTRACT_COMMANDS <= {path for path, group in COMMAND_TREE.items() if not group}


@pytest.mark.parametrize("command", list(COMMAND_TREE), ids=lambda c: " ".join(c) or "tunix-rt")
def test_help(cli: Cli, command: tuple[str, ...]) -> None:
    result = cli(*command, "--help")
    assert result.stdout.startswith(" ".join(["usage: tunix-rt", *command]) + " [-h]")
    assert result.stderr == ""
    if command in CONTRACT_COMMANDS:
        assert "--format" in result.stdout


def test_usage_errors_exit_3(cli: Cli) -> None:
    cases = {("runs",): "required: COMMAND", ("leaderboard",): "--dataset",
             ("runs", "list", "--status", "done"): "invalid choice: 'done'"}
    for result in cli.concurrently(*cases, expect=3):
        assert result.stderr.startswith("usage: tunix-rt"), result
        assert cases[result.args] in result.stderr, result
        assert result.stdout == "", result


# --- datasets ---------------------------------------------------------------------------

def test_datasets_register_list_show(cli: Cli, db_url: str, tmp_path: Path) -> None:
    items = tmp_path / "items.jsonl"
    items.write_text('{"id": "a", "prompt": "1+1?", "reference": "2"}\n'
                     '{"id": "b", "prompt": "2+2?", "reference": "4"}\n')
    first = cli("datasets", "register", "gsm", "--items", str(items), "--format", "json").json()
    assert (first["name"], first["version"], first["n_items"], first["created"]) == (
        "gsm", 1, 2, True)
    again = cli("datasets", "register", "gsm", "--items", str(items)).stdout
    assert "already has these items: nothing registered" in again
    items.write_text('{"id": "a", "prompt": "1+1?", "reference": "2"}\n'
                     '{"id": "b", "prompt": "2+2?", "reference": "5"}\n')  # a changed answer
    second = cli("datasets", "register", "gsm", "--items", str(items), "--format", "json").json()
    assert second["version"] == 2 and second["content_hash"] != first["content_hash"]
    listed = cli("datasets", "list", "--format", "json").json()["datasets"]
    assert [(d["name"], d["version"], d["versions"]) for d in listed] == [("gsm", 2, 2)]
    assert cli("datasets", "show", "gsm", "--version", "1", "--format", "json").json()[
        "content_hash"] == first["content_hash"]
    missing = cli("datasets", "show", "gsm", "--version", "7", expect=3)
    assert "dataset 'gsm' has no version 7; it has v1, v2" in missing.stderr
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "no id"}\n')
    refused = cli("datasets", "register", "gsm", "--items", str(bad), expect=3)
    assert "line 1: required field 'id' is missing" in refused.stderr


# --- db upgrade -------------------------------------------------------------------------

def test_db_upgrade_fresh_sqlite(cli: Cli, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'new' / 'tunix_rt.db'}"
    first = cli("db", "upgrade", "--format", "json", TUNIX_RT_DATABASE_URL=url).json()
    assert first == {"from": None, "to": SCHEMA_HEAD}
    again = cli("db", "upgrade", TUNIX_RT_DATABASE_URL=url).stdout
    assert again.strip() == f"database at {SCHEMA_HEAD} (was {SCHEMA_HEAD})"


@pytest.mark.postgres
def test_db_upgrade_fresh_postgres(cli: Cli, pg_admin_url: str) -> None:
    from tests.pgserver import create_database

    url = create_database(pg_admin_url)
    # Only the embedded default migrates itself: any other database says how to.
    refused = cli("runs", "list", expect=3, TUNIX_RT_DATABASE_URL=url)
    assert "tunix-rt db upgrade" in refused.stderr
    assert refused.stdout == ""
    upgraded = cli("db", "upgrade", "--format", "json", TUNIX_RT_DATABASE_URL=url).json()
    assert upgraded == {"from": None, "to": SCHEMA_HEAD}
    listed = cli("runs", "list", "--format", "json", TUNIX_RT_DATABASE_URL=url).json()
    assert listed == {"runs": [], "next_cursor": None}


# --- runs -------------------------------------------------------------------------------

def test_runs_register_and_show(cli: Cli, db_url: str, tmp_path: Path) -> None:
    preds = write_predictions(tmp_path / "p.jsonl", [True, False, True])
    common = ["runs", "register", "--dataset", "arith", "--model", "gemma", "--predictions", preds]
    plain, as_json = cli.concurrently(
        [*common, "--name", "plain"],
        [*common, "--name", "with-config", "--config", '{"learning_rate": 0.1}',
         "--external-id", "job-7", "--format", "json"])

    assert len(plain.stdout.split()) == 1  # the id, and nothing else
    run_id = plain.stdout.strip()
    doc = as_json.json()
    assert RUN_KEYS <= doc.keys()
    assert doc["id"] != run_id
    assert {k: doc[k] for k in ["external_id", "name", "dataset", "model", "status", "dry_run",
                                "origin", "config"]} == {
        "external_id": "job-7", "name": "with-config", "dataset": "arith", "model": "gemma",
        "status": "completed", "dry_run": False, "origin": "cli", "config": {"learning_rate": 0.1}}
    datetime.fromisoformat(doc["created_at"])

    batch = cli.batch(["runs", "show", run_id, "--format", "json"],
                      ["runs", "show", "job-7", "--format", "json"], ["runs", "show", "job-7"])
    assert [r.returncode for r in batch.results] == [0, 0, 0]
    shown, by_external_id, table = batch.results
    shown = shown.json()
    assert RUN_KEYS <= shown.keys()
    assert (shown["id"], shown["name"], shown["predictions_uri"]) == (run_id, "plain", preds)
    assert shown["evaluations"] == []
    assert by_external_id.json()["id"] == doc["id"]
    assert doc["id"] in table.stdout and "with-config" in table.stdout


def test_runs_register_refuses_bad_input(cli: Cli, engine: Engine, tmp_path: Path) -> None:
    preds = write_predictions(tmp_path / "p.jsonl", [True])
    register = ["runs", "register", "--name", "r", "--dataset", "arith", "--model", "m",
                "--predictions", preds]
    not_json, not_object, first = cli.concurrently(
        [*register, "--config", "{learning_rate: 0.1}"], [*register, "--config", "[0.1]"],
        [*register, "--external-id", "job-1"], expect=[3, 3, 0])
    assert "--config is not valid JSON" in not_json.stderr
    assert "--config must be a JSON object" in not_object.stderr

    duplicate = cli(*register, "--external-id", "job-1", expect=3)
    assert first.stdout.strip() in duplicate.stderr and "'job-1'" in duplicate.stderr
    for refused in (not_json, not_object, duplicate):
        assert refused.stdout == ""
        assert refused.stderr.startswith("tunix-rt: error:")
        assert "Traceback" not in refused.stderr
    assert count_runs(engine) == 1  # the refusals wrote nothing


def test_runs_show_unknown_id(cli: Cli, db_url: str) -> None:
    result = cli("runs", "show", "no-such-run", "--format", "json", expect=3)
    assert result.stdout == ""
    assert result.stderr.startswith("tunix-rt: error:")
    assert "'no-such-run'" in result.stderr
    assert "Traceback" not in result.stderr


def test_runs_list_pages_through_every_run_once(cli: Cli, engine: Engine, tmp_path: Path) -> None:
    ids = [make_run(engine, tmp_path, f"r{i}", [True], dataset="arith" if i % 2 else "other")
           for i in range(5)]
    # Three runs share one created_at: a page boundary falls inside the tie.
    tie = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=timezone.utc)
    with session_scope(engine) as session:
        session.execute(update(Run).where(Run.id.in_(ids[1:4])).values(created_at=tie))

    runs, pages = page_through(cli, "runs", "list", "--limit", "2", key="runs")
    assert pages == 3
    assert sorted(r["id"] for r in runs) == sorted(ids)
    stamps = [datetime.fromisoformat(r["created_at"]) for r in runs]
    assert stamps == sorted(stamps, reverse=True)  # newest first

    batch = cli.batch(
        ["runs", "list", "--dataset", "other", "--status", "completed", "--format", "json"],
        ["runs", "list"])
    assert [r.returncode for r in batch.results] == [0, 0]
    other, table = batch.results
    other = other.json()
    assert sorted(r["id"] for r in other["runs"]) == sorted(ids[0::2])
    assert other["next_cursor"] is None
    lines = table.stdout.splitlines()
    assert lines[0].split()[:3] == ["id", "name", "dataset"]
    assert len(lines) == 1 + len(ids)


def test_concurrent_first_use_of_the_embedded_default(cli: Cli, tmp_path: Path) -> None:
    """Several commands (training jobs registering, say) on a fresh ./tunix_rt.db at once:
    one migrates it, the others wait and find it migrated."""
    results = cli.concurrently(*[["runs", "list", "--format", "json"]] * 4, expect=None,
                               cwd=tmp_path, TUNIX_RT_DATABASE_URL=None)
    for result in results:
        assert result.returncode == 0, result
        assert result.json() == {"runs": [], "next_cursor": None}


# --- judges -----------------------------------------------------------------------------

def test_judges_list(cli: Cli) -> None:
    as_json, table = cli.concurrently(["judges", "list", "--format", "json"], ["judges", "list"])
    versions = {j["name"]: j["version"] for j in as_json.json()["judges"]}
    assert {"mock", "exact_match", "format"} <= versions.keys()
    assert all(isinstance(v, str) and v for v in versions.values())
    lines = table.stdout.splitlines()
    assert lines[0].split()[:2] == ["name", "version"]
    for name, version in versions.items():
        assert any(line.split()[:2] == [name, version] for line in lines)


# --- the quality loop ---------------------------------------------------------------------

@pytest.mark.flows
def test_quality_loop(cli: Cli, prefect_cli: Cli, engine: Engine, tmp_path: Path) -> None:
    outcomes = correlated_outcomes()
    accuracy = {name: float(np.mean(c)) for name, c in outcomes.items()}
    run = {name: make_run(engine, tmp_path, name, correct, dataset="arith")
           for name, correct in outcomes.items()}
    base, better, worse = run["baseline"], run["better"], run["worse"]
    bad_file = malformed_predictions(tmp_path / "broken.jsonl")
    broken = make_run(engine, tmp_path, "broken", [], dataset="broken", predictions=bad_file)
    exact = ["--judge", "exact_match"]

    # The first run of a dataset has nothing to be compared with, and becomes the baseline.
    first = prefect_cli("evaluate", base, "--auto-promote", "--format", "json").json()
    assert (first["run_id"], first["dataset"], list(first["judges"])) == (
        base, "arith", ["exact_match"])
    outcome = first["judges"]["exact_match"]
    assert outcome["gate"]["decision"] == "no_baseline"
    assert outcome["promoted"]
    assert outcome["evaluation"]["reused"] is False
    assert outcome["evaluation"]["n_items"] == N_ITEMS
    assert outcome["evaluation"]["score"] == pytest.approx(accuracy["baseline"])

    # Three training jobs finish at once: a better run; a worse one, judged also by
    # `format`, under which the dataset has no baseline yet; and one whose predictions
    # file is broken on line 3.
    better_doc, worse_doc, failed = prefect_cli.concurrently(
        ["evaluate", better, "--format", "json"],
        ["evaluate", worse, *exact, "--judge", "format", "--format", "json"],
        ["evaluate", broken, "--format", "json"], expect=[0, 0, 3])
    outcomes_by_judge = worse_doc.json()["judges"]
    assert list(outcomes_by_judge) == ["exact_match", "format"]
    gates = [better_doc.json()["judges"]["exact_match"]["gate"],
             *(o["gate"] for o in outcomes_by_judge.values())]
    assert [(g["decision"], g["baseline_run_id"]) for g in gates] == [
        ("pass", base), ("fail", base), ("no_baseline", None)]
    assert outcomes_by_judge["format"]["promoted"] is None  # no --auto-promote
    assert failed.stdout == ""
    last_line = failed.stderr.strip().splitlines()[-1]
    assert last_line.startswith(f"tunix-rt: error: {bad_file}, line 3: not valid JSON"), failed

    # The gate's exit codes, and the leaderboard, through the installed command.
    passed, fell, no_baseline, too_few, board, board_csv = cli.concurrently(
        ["gate", better, "--format", "json"], ["gate", worse, *exact, "--format", "json"],
        ["gate", worse, "--judge", "format", "--format", "json"],
        ["gate", better, "--min-items", str(N_ITEMS + 1), "--format", "json"],
        ["leaderboard", "--dataset", "arith", *exact, "--format", "json"],
        ["leaderboard", "--dataset", "arith", *exact, "--format", "csv"],
        expect=[0, 1, 2, 2, 0, 0])
    passed, fell, no_baseline, too_few = (r.json() for r in (passed, fell, no_baseline, too_few))
    assert GATE_KEYS <= passed.keys()
    assert (passed["decision"], passed["baseline_run_id"], passed["n_paired"]) == (
        "pass", base, N_ITEMS)
    assert passed["delta"] == pytest.approx(accuracy["better"] - accuracy["baseline"])
    assert passed["ci_low"] <= passed["delta"] <= passed["ci_high"]
    assert (fell["decision"], fell["baseline_run_id"], fell["n_paired"]) == ("fail", base, N_ITEMS)
    assert fell["delta"] == pytest.approx(accuracy["worse"] - accuracy["baseline"])
    assert fell["ci_high"] < 0
    assert (no_baseline["decision"], no_baseline["baseline_run_id"]) == ("no_baseline", None)
    assert (too_few["decision"], too_few["n_paired"]) == ("inconclusive", N_ITEMS)

    board = board.json()
    assert (board["dataset"], board["judge"], board["next_cursor"]) == (
        "arith", "exact_match", None)
    entries = board["entries"]
    assert all(ENTRY_KEYS <= e.keys() for e in entries)
    assert [(e["rank"], e["run_id"], e["run_name"]) for e in entries] == [
        (1, better, "better"), (2, base, "baseline"), (3, worse, "worse")]
    for e in entries:
        assert e["score"] == pytest.approx(accuracy[e["run_name"]])
        assert e["ci_low"] <= e["score"] <= e["ci_high"]
        assert e["n_items"] == N_ITEMS
    csv_lines = board_csv.stdout.splitlines()
    assert csv_lines[0] == BOARD_CSV_HEADER
    assert [line.split(",")[:3] for line in csv_lines[1:]] == [
        ["1", better, "better"], ["2", base, "baseline"], ["3", worse, "worse"]]
    paged, pages = page_through(cli, "leaderboard", "--dataset", "arith", *exact,
                                "--limit", "1", key="entries")
    assert (pages, paged) == (3, entries)

    # More read commands, in one batch (main() in one subprocess).
    batch = cli.batch(
        ["gate", worse, *exact], ["gate", worse, *exact, "--confidence", "1.5"],
        ["gate", worse], ["leaderboard", "--dataset", "arith"],
        ["leaderboard", "--dataset", "arith", "--judge", "format", "--format", "json"],
        ["baseline", "show", "--dataset", "arith", *exact, "--format", "json"],
        ["baseline", "show", "--dataset", "arith", "--judge", "format"],
        ["runs", "show", broken, "--format", "json"], ["leaderboard", "--dataset", "broken"])
    (table, bad_policy, which_gate, which_board, format_board, shown, not_set, broken_run,
     no_board) = batch.results
    assert expect_code(table, 1).stdout.split("\n")[0].split() == ["decision", "fail"]
    assert "--confidence" in expect_code(bad_policy, 3).stderr
    # Two judges, and no --judge: the command asks which, naming both.
    for ambiguous in (which_gate, which_board):
        said = expect_code(ambiguous, 3).stderr
        assert "(exact_match, format)" in said and "--judge" in said, ambiguous
    assert [e["run_id"] for e in expect_code(format_board, 0).json()["entries"]] == [worse]
    shown = expect_code(shown, 0).json()
    assert (shown["run_id"], shown["run_name"], shown["judge"]) == (base, "baseline",
                                                                    "exact_match")
    assert [(h["run_id"], h["source"]) for h in shown["history"]] == [(base, "auto")]
    assert "tunix-rt baseline set" in expect_code(not_set, 3).stderr
    # Nothing half-written: the broken run's evaluation is recorded as failed, with the
    # line, and its dataset has no board.
    [ev] = expect_code(broken_run, 0).json()["evaluations"]
    assert (ev["status"], ev["score"]) == ("failed", None)
    assert "line 3" in ev["error"]
    assert "no leaderboard" in expect_code(no_board, 3).stderr
    assert batch.imported == []

    # The baseline switched by hand; its history grows.
    switched = cli("baseline", "set", better, "--reason", "better", "--format", "json").json()
    assert switched["run_id"] == better
    assert [(h["run_id"], h["previous_run_id"], h["source"]) for h in switched["history"]] == [
        (better, base, "manual"), (base, None, "auto")]

    # Evaluating again without --force reuses the stored evaluation, and gates against
    # the new baseline, which the old one does not match.
    again, old_base = prefect_cli.concurrently(
        ["evaluate", base, "--format", "json"], ["gate", base, "--format", "json"],
        expect=[0, 1])
    outcome = again.json()["judges"]["exact_match"]
    assert outcome["evaluation"]["reused"] is True
    assert outcome["evaluation"]["evaluation_id"] == (
        first["judges"]["exact_match"]["evaluation"]["evaluation_id"])
    assert (outcome["gate"]["decision"], outcome["gate"]["baseline_run_id"]) == ("fail", better)
    assert old_base.json()["baseline_run_id"] == better

    # Read commands import neither Prefect nor pandas, and print to the sys.stdout of
    # the moment, so main() can be called in-process.
    batch = cli.batch(
        ["leaderboard", "--dataset", "arith", *exact, "--format", "json"],
        ["runs", "list", "--format", "json"], ["gate", worse, *exact, "--format", "json"],
        ["judges", "list", "--format", "json"],
        ["baseline", "show", "--dataset", "arith", *exact, "--format", "json"],
        ["baseline", "show", "--dataset", "arith", *exact])
    assert batch.imported == []
    assert [r.returncode for r in batch.results] == [0, 0, 1, 0, 0, 0]
    board, listed, gated, judges, shown, shown_table = batch.results
    assert board.json()["entries"] == entries  # the reused evaluation changed nothing
    assert len(listed.json()["runs"]) == 4
    assert gated.json()["baseline_run_id"] == better
    assert judges.json()["judges"]
    assert (shown.json()["run_id"], len(shown.json()["history"])) == (better, 2)
    assert better in shown_table.stdout and base in shown_table.stdout


def test_evaluate_refuses_before_prefect_starts(cli: Cli, engine: Engine, tmp_path: Path) -> None:
    done = make_run(engine, tmp_path, "done", [True, False])
    pending = make_run(engine, tmp_path, "waiting", [True], status=RunStatus.pending)
    dry = make_run(engine, tmp_path, "dry", [True], dry_run=True)

    # `cli` points Prefect at a closed port, and the batch reports what got imported:
    # each of these is refused before a flow could start.
    argvs = [["evaluate", done, "--judge", "exact_match", "--judge", "no-such-judge"],
             ["evaluate", pending], ["evaluate", dry], ["evaluate", "no-such-run"]]
    unknown_judge, not_done, dry_run, unknown_run = cli.concurrently(*argvs, expect=3)
    assert "'no-such-judge'" in unknown_judge.stderr
    assert "registered judges: exact_match, format, llm, mock" in unknown_judge.stderr
    assert f"run {pending} (waiting) is pending" in not_done.stderr
    assert "only completed runs can be evaluated" in not_done.stderr
    assert "dry run" in dry_run.stderr
    assert "'no-such-run'" in unknown_run.stderr
    for refused in (unknown_judge, not_done, dry_run, unknown_run):
        assert refused.stdout == ""
        assert "Traceback" not in refused.stderr

    batch = cli.batch(*argvs)
    assert [r.returncode for r in batch.results] == [3, 3, 3, 3]
    assert batch.imported == []


# --- demo -------------------------------------------------------------------------------

@pytest.mark.flows
def test_demo_from_nothing_twice(cli: Cli, prefect_cli: Cli, tmp_path: Path) -> None:
    """On the embedded default (no database configured: ./tunix_rt.db), from nothing.

    The quality loop part of the demo: --no-tune skips its opening Ray Tune sweep,
    which the tuning tests cover.
    """

    def demo() -> tuple[dict, str]:
        result = prefect_cli("demo", "--no-tune", "--format", "json", cwd=tmp_path,
                             TUNIX_RT_DATABASE_URL=None)
        return result.json(), result.stderr

    first, _ = demo()
    assert (tmp_path / "tunix_rt.db").exists()
    assert (tmp_path / "tunix_rt_demo" / "eval_set.jsonl").exists()
    second, said = demo()
    assert "removed the 3 runs of the previous demo" in said
    assert not set(first["run_ids"]) & set(second["run_ids"])

    for doc in (first, second):
        assert len(set(doc["run_ids"])) == 3
        assert set(doc["leaderboards"]) == {"exact_match", "format"}
        for board in doc["leaderboards"].values():
            assert sorted(e["run_id"] for e in board["entries"]) == sorted(doc["run_ids"])
            assert [e["rank"] for e in board["entries"]] == [1, 2, 3]
        decisions = [g["decision"] for g in doc["gates"] if g["judge"] == "exact_match"]
        assert decisions == ["no_baseline", "pass", "fail"]
        # The run that passed with a better score was promoted over the first one.
        assert doc["baselines"]["exact_match"] == doc["run_ids"][1]
    assert [g["decision"] for g in first["gates"]] == [g["decision"] for g in second["gates"]]

    # What the CLI reads afterwards is the second demo's alone.
    board = cli("leaderboard", "--dataset", first["dataset"], "--judge", "exact_match",
                "--format", "json", cwd=tmp_path, TUNIX_RT_DATABASE_URL=None).json()
    assert board == second["leaderboards"]["exact_match"]


def test_a_command_line_builds_the_same_parser_for_its_command() -> None:
    """main() builds only the group of its command (COMMANDS); for that command it must be
    the full parser's, and COMMANDS must name every command, in the order of --help."""
    from tunix_rt.cli import COMMANDS, build_parser

    def commands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
        action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        return dict(action.choices)

    full = commands(build_parser())
    assert list(full) == list(COMMANDS)
    for name in COMMANDS:
        one = commands(build_parser(name))
        assert name in one and len(one) < len(full)
        assert one[name].format_help() == full[name].format_help()


def test_a_short_read_runs_without_the_collector_and_restores_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import gc

    from tunix_rt.cli import build_parser, judges, main

    assert build_parser("leaderboard").parse_args(["leaderboard", "--dataset", "x"]).short
    assert not build_parser("evaluate").parse_args(["evaluate", "RUN"]).short
    seen: list[bool] = []
    monkeypatch.setattr(judges, "cmd_list", lambda args: seen.append(gc.isenabled()) or 0)
    assert main(["judges", "list"]) == 0
    assert seen == [False] and gc.isenabled()
    monkeypatch.setattr(judges, "cmd_list", lambda args: 1 / 0)
    assert main(["judges", "list"]) == 4  # an internal error, and the collector is back
    assert gc.isenabled()
