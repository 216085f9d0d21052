"""Peak memory of ``tunix-rt export --what verdicts`` at 10k, 100k and 1M verdicts on PostgreSQL.

``python -m benchmarks.export_memory [--sizes 10000,100000,1000000] [--chunk-rows N]``

For each size a fresh database is filled with COPY (one run, one evaluation, N verdicts
with a rationale and a response of realistic length), then, each in a subprocess of its
own whose peak RSS is read from ``os.wait4``'s rusage (that child only, not the sum of
all children):

- ``empty``: ``tunix-rt export`` of an empty table: the interpreter, SQLAlchemy, pandas
  and pyarrow, the floor every export pays;
- ``ours parquet`` / ``ours csv``: ``tunix-rt export --what verdicts`` (chunks of
  ``--chunk-rows`` streamed from a server-side cursor, one row group each);
- ``naive``: the same query read whole with ``pandas.read_sql`` and written with
  ``DataFrame.to_parquet``, as a script would do it.

Both sides write the same rows and columns; the files are checked to hold N rows.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

SIZES = (10_000, 100_000, 1_000_000)
RATIONALE = "the extracted answer {} matches the reference after normalisation"
RESPONSE = ("<reasoning>Add the units, carry the one, then add the tens: the sum is {}."
            "</reasoning><answer>{}</answer>")

NAIVE = r"""
import sys
import pandas as pd
from sqlalchemy import create_engine
from tunix_rt.store.export import _query
query = _query("verdicts", None)
engine = create_engine(sys.argv[1])
with engine.connect() as conn:
    frame = pd.read_sql(query, conn)
frame.to_parquet(sys.argv[2], index=False)
print(len(frame))
"""


def fill(url: str, n: int) -> None:
    """One run, one evaluation and ``n`` verdicts, by COPY."""
    import psycopg
    from sqlalchemy.engine import make_url

    from tunix_rt.store.models import utcnow

    sa = make_url(url)
    conninfo = sa.set(drivername="postgresql").render_as_string(hide_password=False)
    now = utcnow()
    with psycopg.connect(conninfo) as conn, conn.cursor() as cur:
        cur.execute("INSERT INTO runs (id, name, dataset, model, config, metrics, status, "
                    "dry_run, origin, created_at, updated_at) VALUES ('r1', 'run', 'bench', "
                    "'m', '{}', '{}', 'completed', false, 'cli', %s, %s)", (now, now))
        cur.execute("INSERT INTO evaluations (run_id, judge, judge_version, status, n_items, "
                    "n_scored, n_unscored, started_at, finished_at, duration_s) VALUES "
                    "('r1', 'exact_match', '1.0', 'completed', %s, %s, 0, %s, %s, 1.0) "
                    "RETURNING id", (n, n, now, now))
        (evaluation_id,) = cur.fetchone()
        with cur.copy("COPY verdicts (evaluation_id, item_id, score, passed, rationale, "
                      "response, raw) FROM STDIN") as copy:
            for i in range(n):
                ok = i % 3 != 0
                copy.write_row((evaluation_id, f"item-{i:07d}", 1.0 if ok else 0.0, ok,
                                RATIONALE.format(i), RESPONSE.format(i, i),
                                json.dumps({"extracted": str(i)})))
        cur.execute("ANALYZE verdicts")


def peak(cmd: list[str], env: dict[str, str]) -> tuple[float, float, str]:
    """(peak RSS in MiB, seconds, stdout) of one child process."""
    start = time.perf_counter()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        seconds = time.perf_counter() - start
        out.seek(0)
        err.seek(0)
        text, problems = out.read().decode(), err.read().decode()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}:\n{problems[-3000:]}")
    return usage.ru_maxrss / 1024, seconds, text  # ru_maxrss is in KiB on Linux


def tunix_rt() -> list[str]:
    script = shutil.which("tunix-rt", path=str(Path(sys.prefix) / "bin"))
    return [script] if script else [sys.executable, "-m", "tunix_rt.cli"]


def rows_in(path: Path) -> int:
    import pyarrow.parquet as pq

    if path.suffix == ".parquet":
        return pq.ParquetFile(path).metadata.num_rows
    with path.open("rb") as handle:
        return sum(1 for _ in handle) - 1  # no newline inside the generated values


def run(sizes: tuple[int, ...], chunk_rows: int) -> list[dict[str, Any]]:
    from tests.pgserver import create_database, postgres_server
    from tunix_rt.store import db

    results = []
    work = Path(tempfile.mkdtemp(prefix="tunix-rt-export-bench-"))
    try:
        with postgres_server() as admin_url:
            empty = create_database(admin_url, prefix="empty")
            db.upgrade(db.make_engine(empty))
            env = dict(os.environ, TUNIX_RT_DATABASE_URL=empty)
            floor, _, _ = peak([*tunix_rt(), "export", "--what", "verdicts", "--out",
                                str(work / "empty.parquet")], env)
            print(f"empty export: peak RSS {floor:.0f} MiB", file=sys.stderr, flush=True)
            for n in sizes:
                url = create_database(admin_url, prefix=f"v{n}")
                engine = db.make_engine(url)
                db.upgrade(engine)
                engine.dispose()
                started = time.perf_counter()
                fill(url, n)
                print(f"{n:,} verdicts filled in {time.perf_counter() - started:.1f} s",
                      file=sys.stderr, flush=True)
                env = dict(os.environ, TUNIX_RT_DATABASE_URL=url)
                row: dict[str, Any] = {"verdicts": n, "empty_mib": round(floor, 1),
                                       "chunk_rows": chunk_rows}
                for label, fmt in (("ours_parquet", "parquet"), ("ours_csv", "csv")):
                    out = work / f"{n}.{fmt}"
                    mib, secs, _ = peak([*tunix_rt(), "export", "--what", "verdicts",
                                         "--format", fmt, "--out", str(out),
                                         "--chunk-rows", str(chunk_rows)], env)
                    assert rows_in(out) == n, (label, rows_in(out))
                    row[f"{label}_mib"], row[f"{label}_s"] = round(mib, 1), round(secs, 2)
                    row[f"{label}_file_mib"] = round(out.stat().st_size / 2**20, 1)
                    out.unlink()
                out = work / f"{n}-naive.parquet"
                mib, secs, _ = peak([sys.executable, "-c", NAIVE, url, str(out)], env)
                assert rows_in(out) == n
                row["naive_mib"], row["naive_s"] = round(mib, 1), round(secs, 2)
                out.unlink()
                print(json.dumps(row), file=sys.stderr, flush=True)
                results.append(row)
    finally:
        db.dispose_engines()
        shutil.rmtree(work, ignore_errors=True)
    return results


def table(results: list[dict[str, Any]]) -> str:
    lines = ["| verdicts | ours, Parquet | ours, CSV | naive read_sql + to_parquet "
             "| naive / ours |", "|---:|---:|---:|---:|---:|"]
    for r in results:
        lines.append(
            f"| {r['verdicts']:,} | {r['ours_parquet_mib']:.0f} MiB ({r['ours_parquet_s']:.1f} s)"
            f" | {r['ours_csv_mib']:.0f} MiB ({r['ours_csv_s']:.1f} s)"
            f" | {r['naive_mib']:.0f} MiB ({r['naive_s']:.1f} s)"
            f" | {r['naive_mib'] / r['ours_parquet_mib']:.1f}x |")
    if results:
        lines.append(f"\nPeak RSS of the export process (os.wait4); an export of an empty "
                     f"table peaks at {results[0]['empty_mib']:.0f} MiB (interpreter, "
                     f"SQLAlchemy, pandas, pyarrow). Chunks of {results[0]['chunk_rows']:,} "
                     f"rows.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.export_memory",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default=",".join(str(s) for s in SIZES),
                        help="comma-separated verdict counts (default 10000,100000,1000000)")
    parser.add_argument("--chunk-rows", type=int, default=10_000)
    parser.add_argument("--output", type=Path, help="also write the rows as JSON here")
    args = parser.parse_args(argv)
    sizes = tuple(int(s) for s in args.sizes.split(","))
    results = run(sizes, args.chunk_rows)
    print(table(results))
    if args.output:
        args.output.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
