"""The gate's evidence, item by item: a run's verdicts beside its baseline's.

The gate (:mod:`tunix_rt.quality.gating`) answers with one interval; this module says
which items moved it. Items are paired exactly as the gate pairs them:

* the comparison is over the *baseline's* item set (its verdicts); an item only the
  candidate has is not compared;
* an item the judge could not score on either side (score NULL) is *excluded* and
  counted apart, as ``n_excluded`` is;
* an item of the baseline's set that has no candidate verdict counts as a wrong answer
  for the candidate (the gate's score 0); since 0.6 every item of the dataset gets a
  verdict, so this only happens with older evaluations.

Each paired item falls in one cell of a 2x2 table by whether each side got it *right*:
the verdict's ``passed``, the judge's own pass decision (``exact_match`` and
``format`` score 0 or 1; ``llm`` and weighted composites pass at a score of 0.5 or
more; a majority composite with more than half the votes). A scored verdict stored
without ``passed`` counts as right at a score of 0.5 or more. With fractional scores
the gate's delta is over the scores while the table is over pass/fail, so two
"both right" items can still differ in score: the table says where the runs disagree
on the verdict, the interval how much the scores differ.

Everything is done in SQL, one join of the two evaluations' verdicts on item id (the
unique ``(evaluation_id, item_id)`` index serves both sides): the counts in one pass,
the items by keyset pages on item id, so a page costs the same at 100k items.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy import and_, case, func, literal, null, or_, select
from sqlalchemy.orm import Session, aliased

from tunix_rt.errors import InvalidInputError, NotFoundError
from tunix_rt.quality.evaluation import latest_evaluation
from tunix_rt.store.cursor import ID, decode_cursor, encode_cursor
from tunix_rt.quality.gating import incomparable, resolve_gate_judge
from tunix_rt.store.models import Baseline, Dataset, DatasetItem, GateResult, Verdict
from tunix_rt.store.runs import get_run

BOTH_RIGHT, ONLY_CANDIDATE, ONLY_BASELINE, BOTH_WRONG = (
    "both_right", "only_candidate", "only_baseline", "both_wrong")
EXCLUDED = "excluded"
CELLS = (BOTH_RIGHT, ONLY_CANDIDATE, ONLY_BASELINE, BOTH_WRONG)
# What ``outcome=`` may ask for: a cell, the excluded items, both disagreeing cells, all.
FILTERS: dict[str, tuple[str, ...] | None] = {
    "disagree": (ONLY_CANDIDATE, ONLY_BASELINE), BOTH_RIGHT: (BOTH_RIGHT,),
    ONLY_CANDIDATE: (ONLY_CANDIDATE,), ONLY_BASELINE: (ONLY_BASELINE,),
    BOTH_WRONG: (BOTH_WRONG,), EXCLUDED: (EXCLUDED,), "all": None}
PASS_SCORE = 0.5  # a scored verdict stored without ``passed`` is right from here
DEFAULT_PAGE = 50
MAX_PAGE = 200
NO_VERDICT = ("no verdict on record: the item is not in the candidate's evaluation, so it "
              "counts as a wrong answer (score 0), as in the gate")


@dataclass(frozen=True)
class Side:
    """One run's verdict on an item. ``response`` None: not on record (stored before 0.8,
    or the item was missing from the predictions file); ``recorded`` False: no verdict."""

    score: float | None
    passed: bool | None
    rationale: str | None
    response: str | None
    recorded: bool = True


@dataclass(frozen=True)
class ItemDiff:
    item_id: str
    outcome: str
    prompt: str | None
    reference: str | None
    candidate: Side
    baseline: Side


@dataclass(frozen=True)
class Comparison:
    """A run against a baseline under one judge: the 2x2 counts and one page of items."""

    run_id: str
    run_name: str
    dataset: str
    judge: str
    baseline_run_id: str
    baseline_run_name: str
    baseline_from: str  # "request" | "gate" (the run's latest gate) | "board" (current)
    candidate_evaluation_id: int
    baseline_evaluation_id: int
    dataset_version: int | None
    counts: dict[str, int]
    n_paired: int
    n_excluded: int
    n_items: int  # the baseline's item set
    incomparable: str | None  # why the gate would not compare them (versions differ)
    outcome: str
    items: list[ItemDiff]
    next_cursor: str | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _outcome_query(candidate_ev: int, baseline_ev: int, dataset_id: int | None) -> Any:
    """Every item of the baseline's evaluation with its outcome and both verdicts."""
    b, c = aliased(Verdict, name="b"), aliased(Verdict, name="c")
    cand_right = and_(c.score.is_not(None), func.coalesce(c.passed, c.score >= PASS_SCORE))
    base_right = func.coalesce(b.passed, b.score >= PASS_SCORE)
    outcome = case(
        (or_(b.score.is_(None), and_(c.item_id.is_not(None), c.score.is_(None))),
         literal(EXCLUDED)),
        (and_(base_right, cand_right), literal(BOTH_RIGHT)),
        (cand_right, literal(ONLY_CANDIDATE)),
        (base_right, literal(ONLY_BASELINE)),
        else_=literal(BOTH_WRONG))
    query = select(
        b.item_id.label("item_id"), outcome.label("outcome"),
        c.item_id.label("c_item"), c.score.label("c_score"), c.passed.label("c_passed"),
        c.rationale.label("c_rationale"), c.response.label("c_response"),
        b.score.label("b_score"), b.passed.label("b_passed"),
        b.rationale.label("b_rationale"), b.response.label("b_response"),
    ).select_from(b).outerjoin(c, and_(c.evaluation_id == candidate_ev,
                                       c.item_id == b.item_id)).where(
        b.evaluation_id == baseline_ev)
    if dataset_id is None:
        return query.add_columns(null().label("prompt"), null().label("reference"))
    d = aliased(DatasetItem, name="d")
    return query.add_columns(d.prompt.label("prompt"), d.reference.label("reference")).outerjoin(
        d, and_(d.dataset_id == dataset_id, d.item_id == b.item_id))


def outcome_counts(session: Session, candidate_ev: int, baseline_ev: int) -> dict[str, int]:
    """Items per cell (and ``excluded``), by one pass over the paired verdicts.

    ``count(*) FILTER (WHERE ...)`` per class rather than a GROUP BY: no sort or hash
    of the classes (SQLite grouped them in a temporary B-tree), half the time at 100k.
    """
    inner = _outcome_query(candidate_ev, baseline_ev, None).subquery()
    classes = (*CELLS, EXCLUDED)
    row = session.execute(select(*[func.count().filter(inner.c.outcome == name)
                                   for name in classes])).one()
    return dict(zip(classes, (int(n) for n in row)))


def outcome_page(session: Session, candidate_ev: int, baseline_ev: int,
                 dataset_id: int | None, outcome: str = "disagree", *,
                 limit: int = DEFAULT_PAGE, cursor: str | None = None
                 ) -> tuple[list[ItemDiff], str | None]:
    """One page of items in ``outcome`` (a key of FILTERS), in item id order."""
    if outcome not in FILTERS:
        raise InvalidInputError(f"outcome {outcome!r} is not one of {', '.join(FILTERS)}",
                                field="outcome")
    if not 1 <= limit <= MAX_PAGE:
        raise InvalidInputError(f"limit must be from 1 to {MAX_PAGE}, got {limit}",
                                field="limit")
    inner = _outcome_query(candidate_ev, baseline_ev, dataset_id).subquery()
    query = select(inner)
    wanted = FILTERS[outcome]
    if wanted is not None:
        query = query.where(inner.c.outcome.in_(wanted))
    if cursor is not None:
        (after,) = decode_cursor(cursor, ID)
        query = query.where(inner.c.item_id > after)
    rows = session.execute(query.order_by(inner.c.item_id).limit(limit + 1)).mappings().all()
    items = [_item(row) for row in rows[:limit]]
    more = len(rows) > limit
    return items, encode_cursor(items[-1].item_id) if more else None


def _item(row: Any) -> ItemDiff:
    recorded = row["c_item"] is not None
    candidate = (Side(row["c_score"], _bool(row["c_passed"]), row["c_rationale"],
                      row["c_response"]) if recorded
                 else Side(0.0, False, NO_VERDICT, None, recorded=False))
    baseline = Side(row["b_score"], _bool(row["b_passed"]), row["b_rationale"], row["b_response"])
    return ItemDiff(row["item_id"], row["outcome"], row["prompt"], row["reference"],
                    candidate, baseline)


def _bool(value: Any) -> bool | None:
    return None if value is None else bool(value)


def resolve_judge(session: Session, run_id: str, judge: str | None) -> str:
    """The judge asked for; else the judge of the run's latest gate; else its only judge."""
    if judge:
        return judge
    latest = session.scalar(select(GateResult.judge).where(GateResult.run_id == run_id)
                            .order_by(GateResult.updated_at.desc(), GateResult.id.desc())
                            .limit(1))
    if latest is not None:
        return latest
    return resolve_gate_judge(session, run_id, None)


def default_baseline(session: Session, run_id: str, dataset: str,
                     judge: str) -> tuple[str | None, str]:
    """The baseline the run's latest gate under ``judge`` used, else the board's current
    one; with where it came from (``gate`` or ``board``)."""
    gated = session.scalar(select(GateResult.baseline_run_id).where(
        GateResult.run_id == run_id, GateResult.judge == judge,
        GateResult.baseline_run_id.is_not(None))
        .order_by(GateResult.updated_at.desc(), GateResult.id.desc()).limit(1))
    if gated is not None:
        return gated, "gate"
    current = session.get(Baseline, (dataset, judge))
    return (current.run_id if current else None), "board"


def compare(session: Session, run_id: str, *, judge: str | None = None,
            baseline: str | None = None, outcome: str = "disagree",
            limit: int = DEFAULT_PAGE, cursor: str | None = None) -> Comparison:
    """The run's latest completed evaluation under ``judge`` beside the baseline's.

    ``baseline`` (a run id) defaults to :func:`default_baseline`. An unknown run, a run
    or baseline without a completed evaluation by the judge, or no baseline at all is a
    :class:`NotFoundError` saying what to do.
    """
    if outcome not in FILTERS:  # before any query: a bad parameter is the caller's
        raise InvalidInputError(f"outcome {outcome!r} is not one of {', '.join(FILTERS)}",
                                field="outcome")
    if cursor is not None:
        decode_cursor(cursor, ID)
    run = get_run(session, run_id)
    judge = resolve_judge(session, run.id, judge)
    candidate_ev = latest_evaluation(session, run.id, judge)
    if candidate_ev is None:
        raise NotFoundError(f"run {run.id} ({run.name}) has no completed evaluation by judge "
                            f"{judge!r}: run `tunix-rt evaluate {run.id} --judge {judge}` first")
    if baseline:
        base_run, source = get_run(session, baseline), "request"
    else:
        base_id, source = default_baseline(session, run.id, run.dataset, judge)
        if base_id is None:
            raise NotFoundError(
                f"there is no baseline to compare run {run.id} with: {run.dataset} has none "
                f"under {judge} (`tunix-rt baseline set RUN_ID --judge {judge}`), or pass "
                "baseline=RUN_ID")
        base_run = get_run(session, base_id)
    baseline_ev = latest_evaluation(session, base_run.id, judge)
    if baseline_ev is None:
        raise NotFoundError(f"baseline run {base_run.id} ({base_run.name}) has no completed "
                            f"evaluation by judge {judge!r}")
    dataset_id = candidate_ev.dataset_id or baseline_ev.dataset_id
    counts = outcome_counts(session, candidate_ev.id, baseline_ev.id)
    items, next_cursor = outcome_page(session, candidate_ev.id, baseline_ev.id, dataset_id,
                                      outcome, limit=limit, cursor=cursor)
    version = session.scalar(select(Dataset.version).where(Dataset.id == dataset_id)) \
        if dataset_id is not None else None
    n_excluded = counts[EXCLUDED]
    return Comparison(
        run.id, run.name, run.dataset, judge, base_run.id, base_run.name, source,
        candidate_ev.id, baseline_ev.id, version, counts,
        n_paired=sum(counts[c] for c in CELLS), n_excluded=n_excluded,
        n_items=sum(counts.values()),
        incomparable=incomparable(session, candidate_ev, baseline_ev, judge),
        outcome=outcome, items=items, next_cursor=next_cursor)

