"""Run one trainable in this process and speak the job protocol on stdout.

``python -m tunix_rt.training.job_entry --trainable T --config JSON [--out DIR]`` is the child
process :func:`tunix_rt.training.jobs.run_job` supervises for a run file's trainable form. Each
:func:`tunix_rt.training.trainable.report` becomes one line ``TUNIX_RT_METRICS {json}``; the URI
the trainable returns becomes a final line ``TUNIX_RT_PREDICTIONS <uri>``.

``--out DIR`` is where predictions should go: the built-in trainable writes there; a
trainable of the user's own finds it in the environment as ``TUNIX_RT_OUT_DIR``.

Exit codes: 0 done, 1 the trainable raised (its traceback is printed), 2 bad arguments
or a trainable that cannot be loaded, 3 the trainable returned no usable URI.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from pathlib import Path
from typing import Any

from tunix_rt.jsonsafe import json_safe
from tunix_rt.training.jobs import METRICS_PREFIX, PREDICTIONS_PREFIX

OUT_DIR_ENV = "TUNIX_RT_OUT_DIR"


def emit_metrics(metrics: dict[str, Any]) -> None:
    """Print one metrics report as a protocol line."""
    line = json.dumps(json_safe(metrics), separators=(",", ":"), allow_nan=False)
    print(f"{METRICS_PREFIX} {line}", flush=True)


def _predictions_uri(value: Any) -> str | None:
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str) or not value.strip():
        return None
    value = value.strip()
    if "://" not in value and not os.path.isabs(value):
        value = os.path.abspath(value)  # the supervisor's working directory may differ
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tunix_rt.training.job_entry",
                                     description="Run one tunix-rt trainable as a job.")
    parser.add_argument("--trainable", required=True,
                        help='"builtin" or "package.module:function"')
    parser.add_argument("--config", default="{}", help="the trainable's config, a JSON object")
    parser.add_argument("--out", default=None, help="directory for the predictions file")
    args = parser.parse_args(argv)

    try:
        config = json.loads(args.config)
    except json.JSONDecodeError as exc:
        print(f"tunix-rt: --config: not valid JSON ({exc})", file=sys.stderr, flush=True)
        return 2
    if not isinstance(config, dict):
        print("tunix-rt: --config: expected a JSON object", file=sys.stderr, flush=True)
        return 2

    from tunix_rt.training import trainable as trainables

    out_dir = Path(args.out).resolve() if args.out else None
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        os.environ[OUT_DIR_ENV] = str(out_dir)

    try:
        function = trainables.load_trainable(args.trainable)
    except Exception as exc:  # the user's module may fail to import in any way
        print(f"tunix-rt: cannot load trainable: {exc}", file=sys.stderr, flush=True)
        return 2

    try:
        with trainables.reporting_to(emit_metrics):
            if args.trainable == trainables.BUILTIN:
                result = trainables.train_arithmetic(config, report=trainables.report,
                                                     out_dir=out_dir)
            else:
                result = function(config)
    except Exception:
        traceback.print_exc()
        sys.stderr.flush()
        return 1

    uri = _predictions_uri(result)
    if uri is None:
        print(f"tunix-rt: trainable {args.trainable!r} returned {result!r}, not the URI of "
              f"its predictions file", file=sys.stderr, flush=True)
        return 3
    print(f"{PREDICTIONS_PREFIX} {uri}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
