"""Small builders for test data: predictions files and registered runs."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from tunix_rt.store.db import session_scope
from tunix_rt.store.models import RunStatus
from tunix_rt.store.runs import register_run


def write_predictions(path: Path, correct: Sequence[bool | None], *, prefix: str = "q") -> str:
    """A predictions file whose i-th item is answered right iff ``correct[i]``; a None
    leaves the response blank."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        for i, ok in enumerate(correct):
            answer = i if ok else i + 1
            response = ("" if ok is None
                        else f"<reasoning>r</reasoning><answer>{answer}</answer>")
            handle.write(json.dumps({"id": f"{prefix}{i:05d}", "prompt": f"what is {i}?",
                                     "response": response, "reference": str(i)}) + "\n")
    return str(path)


def correctness(n: int, accuracy: float, seed: int) -> list[bool]:
    rng = np.random.default_rng(seed)
    return list(rng.random(n) < accuracy)


def make_run(engine, tmp_path: Path, name: str, correct: Sequence[bool], *,  # noqa: ANN001
             dataset: str = "arith", status: RunStatus = RunStatus.completed,
             dry_run: bool = False, predictions: str | None = None) -> str:
    uri = predictions or write_predictions(tmp_path / f"{name}.jsonl", correct)
    with session_scope(engine) as session:
        return register_run(session, name=name, dataset=dataset, model="m",
                            predictions_uri=uri, status=status, dry_run=dry_run).id
