"""Calibrating a judge against human labels: how often does it agree with people?

A labels file is a predictions file (JSON Lines, see docs/CONTRACT.md) whose every line
also carries ``"label"``: the human verdict, ``true``/``false`` or ``1``/``0``. The
judge scores the items; on the items it could score, its ``passed`` is compared with
the label: accuracy, Cohen's kappa and the confusion matrix (positive = passed).
Items the judge could not score are counted, never compared.

Cohen's kappa is computed exactly (fractions) from the 2x2 table:
``kappa = (p_o - p_e) / (1 - p_e)`` with ``p_o`` the observed agreement and ``p_e``
the agreement expected by chance from the two marginals. When ``p_e`` is 1 (judge and
labels both give one and the same verdict to every item) the formula is 0/0; kappa
is then defined as 1.0 if the observed agreement is 1, else 0.0. With no scored item,
accuracy and kappa are ``None``.

``tunix-rt judges calibrate --judge NAME --labels FILE [--format table|json]`` prints
:func:`calibrate`'s result (:mod:`tunix_rt.cli.judges`).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from fractions import Fraction
from typing import Any

from tunix_rt.errors import InvalidInputError, PredictionsError

RUN_ID = "calibration"


@dataclass(frozen=True)
class Confusion:
    """The 2x2 table, judge ``passed`` (positive) against the human label."""

    tp: int = 0  # judge passed, label true
    fp: int = 0  # judge passed, label false
    tn: int = 0  # judge failed, label false
    fn: int = 0  # judge failed, label true

    @property
    def n(self) -> int:
        return self.tp + self.fp + self.tn + self.fn

    @classmethod
    def of(cls, pairs: list[tuple[bool, bool]]) -> Confusion:
        """From (judge passed, label) pairs."""
        tp = sum(1 for j, h in pairs if j and h)
        fp = sum(1 for j, h in pairs if j and not h)
        tn = sum(1 for j, h in pairs if not j and not h)
        fn = sum(1 for j, h in pairs if not j and h)
        return cls(tp, fp, tn, fn)

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def accuracy(c: Confusion) -> float | None:
    """Observed agreement; ``None`` for an empty table."""
    return None if c.n == 0 else float(Fraction(c.tp + c.tn, c.n))


def cohen_kappa(c: Confusion) -> float | None:
    """Cohen's kappa, exact; ``None`` for an empty table, see the module docstring for p_e = 1."""
    n = c.n
    if n == 0:
        return None
    p_o = Fraction(c.tp + c.tn, n)
    judge_pos, label_pos = Fraction(c.tp + c.fp, n), Fraction(c.tp + c.fn, n)
    p_e = judge_pos * label_pos + (1 - judge_pos) * (1 - label_pos)
    if p_e == 1:
        return 1.0 if p_o == 1 else 0.0
    return float((p_o - p_e) / (1 - p_e))


@dataclass(frozen=True)
class Calibration:
    judge: str
    judge_version: str
    n: int
    n_scored: int
    n_unscored: int
    accuracy: float | None
    cohen_kappa: float | None
    confusion: dict[str, int]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _label(value: Any, where: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise InvalidInputError(f"{where}: invalid label {json.dumps(value)}; "
                            "expected true/false or 1/0")


def read_labels(path: str) -> tuple[list[Any], list[bool]]:
    """(items, labels) from a labels file; :class:`InvalidInputError` names the bad line."""
    from tunix_rt.quality.predictions import parse_predictions, read_jsonl

    try:
        lines = read_jsonl(path, list, what="labels")
        items = parse_predictions(lines, uri=path)
    except PredictionsError as exc:
        raise InvalidInputError(str(exc)) from None
    except OSError as exc:
        raise InvalidInputError(f"cannot read labels file {path}: {exc}") from None
    labels: list[bool] = []
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path}, line {lineno}"
        obj = json.loads(line)  # parse_predictions has checked it is a JSON object
        if "label" not in obj or obj["label"] is None:
            raise InvalidInputError(f"{where}: required field 'label' is missing "
                                    "(the human verdict: true/false or 1/0)")
        labels.append(_label(obj["label"], where))
    return items, labels


def calibrate(judge_name: str, labels_path: str) -> Calibration:
    """Score the labelled items with the named judge and measure its agreement."""
    from tunix_rt.judges import ScoringContext
    from tunix_rt.judges.llm import JudgeConfigError
    from tunix_rt.quality.judging import build_judge

    items, labels = read_labels(labels_path)
    try:
        judge = build_judge(judge_name)  # a paid judge gets the database's verdict cache
    except JudgeConfigError as exc:
        raise InvalidInputError(str(exc)) from None
    verdicts = judge.score(items, ScoringContext(run_id=RUN_ID))
    if len(verdicts) != len(items):
        raise InvalidInputError(f"judge {judge_name!r} returned {len(verdicts)} verdicts for "
                                f"{len(items)} items")
    pairs = [(bool(v.passed), label) for v, label in zip(verdicts, labels) if v.scored]
    confusion = Confusion.of(pairs)
    return Calibration(judge=judge.name, judge_version=judge.version, n=len(items),
                       n_scored=len(pairs), n_unscored=len(items) - len(pairs),
                       accuracy=accuracy(confusion), cohen_kappa=cohen_kappa(confusion),
                       confusion=confusion.as_dict())


__all__ = ["Calibration", "Confusion", "accuracy", "calibrate", "cohen_kappa", "read_labels"]
