"""Datasets: the eval sets runs are scored over, kept as records.

A dataset is the answer key. A run is scored over its dataset's whole item set, with
the dataset's references: an item the predictions file lacks is a wrong answer; a
line whose item the dataset does not have is not scored, only counted (``n_extra`` on
the evaluation: a file may cover a larger benchmark than the eval set, and answering
more can never raise a score); a reference in the predictions file that disagrees
with the dataset's is refused, naming the line and the item. A run can neither answer
less nor bring its own answer key.

A dataset is created explicitly (``tunix-rt datasets register NAME --items FILE``),
or implicitly from the first evaluated run of a dataset name that has no record. Each
distinct content (ids, prompts, references: ``content_hash``) is a new version; runs
are evaluated against the latest version, and the gate never compares runs evaluated
on different hashes.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, insert, select, text
from sqlalchemy.orm import Session

from tunix_rt.errors import NotFoundError, PredictionsError
from tunix_rt.judges.base import Item
from tunix_rt.store.models import Dataset, DatasetItem, DatasetSource, utcnow

# Rows per INSERT of dataset items.
ITEM_BATCH = 2_000


@dataclass(frozen=True)
class EvalItem:
    """One item of an eval set: what is asked, and the right answer."""

    id: str
    prompt: str | None
    reference: str | None


@dataclass(frozen=True)
class DatasetInfo:
    """A dataset version as the CLI and the API show it."""

    id: int
    name: str
    version: int
    content_hash: str
    n_items: int
    source: str
    source_run_id: str | None
    created_at: datetime

    @classmethod
    def of(cls, row: Dataset) -> DatasetInfo:
        return cls(row.id, row.name, row.version, row.content_hash, row.n_items, row.source,
                   row.source_run_id, row.created_at)

    @property
    def label(self) -> str:
        """``gsm8k v2 (3f2a9c01)``: how decisions and errors name a version."""
        return f"{self.name} v{self.version} ({self.content_hash[:8]})"

    def to_dict(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        out["created_at"] = self.created_at.isoformat()
        return out


@dataclass(frozen=True)
class Registered:
    """What registering gave: the dataset version, and whether it is new."""

    dataset: DatasetInfo
    created: bool


@dataclass(frozen=True)
class Aligned:
    """A run's predictions laid over its dataset: what the judge scores, what is missing."""

    dataset: DatasetInfo
    items: list[Item]
    missing: list[str]
    created: bool = False
    # Lines whose item is not in the dataset: not scored, counted.
    extra: int = 0
    first_extra: str | None = None


def content_hash(items: Iterable[EvalItem]) -> str:
    """sha256 of the items' ids, prompts and references, in id order."""
    digest = hashlib.sha256()
    for item in sorted(items, key=lambda i: i.id):
        digest.update(json.dumps([item.id, item.prompt, item.reference],
                                 ensure_ascii=False).encode())
        digest.update(b"\n")
    return digest.hexdigest()


def _lock(session: Session, name: str) -> None:
    """Serialize registrations of one dataset name (PostgreSQL; SQLite has one writer)."""
    if session.get_bind().dialect.name != "postgresql":
        return
    key = hashlib.blake2b(f"dataset:{name}".encode(), digest_size=8).digest()
    session.execute(text("SELECT pg_advisory_xact_lock(:key)"),
                    {"key": int.from_bytes(key, "big", signed=True)})


def latest_dataset(session: Session, name: str) -> Dataset | None:
    """The newest version of ``name``, or None when it has no record."""
    return session.scalar(select(Dataset).where(Dataset.name == name)
                          .order_by(Dataset.version.desc()).limit(1))


def get_dataset(session: Session, name: str, version: int | None = None) -> DatasetInfo:
    """A version of ``name`` (the latest unless given); NotFoundError names what exists."""
    if version is None:
        row = latest_dataset(session, name)
    else:
        row = session.scalar(select(Dataset).where(Dataset.name == name,
                                                   Dataset.version == version))
    if row is None:
        known = session.scalars(select(Dataset.version).where(Dataset.name == name)
                                .order_by(Dataset.version)).all()
        if known:
            raise NotFoundError(f"dataset {name!r} has no version {version}; it has "
                                f"{', '.join(f'v{v}' for v in known)}")
        raise NotFoundError(f"no dataset named {name!r}: register it with `tunix-rt datasets "
                            "register NAME --items FILE`, or evaluate a run of it")
    return DatasetInfo.of(row)


def list_datasets(session: Session) -> list[dict[str, Any]]:
    """Every dataset name with its latest version and how many versions it has."""
    versions = (select(Dataset.name, func.max(Dataset.version).label("latest"),
                       func.count().label("versions"))
                .group_by(Dataset.name).subquery())
    rows = session.execute(
        select(Dataset, versions.c.versions)
        .join(versions, (versions.c.name == Dataset.name)
              & (versions.c.latest == Dataset.version))
        .order_by(Dataset.name)).all()
    return [{**DatasetInfo.of(row).to_dict(), "versions": n} for row, n in rows]


def register_dataset(session: Session, name: str, items: Sequence[EvalItem], *,
                     source: DatasetSource = DatasetSource.registered,
                     source_run_id: str | None = None) -> Registered:
    """Record ``items`` as the newest version of ``name``, unless it already is.

    The same content as the latest version is that version (nothing is written). An
    implicit registration (from a run) never adds a version to a dataset on record:
    only an explicit one does.
    """
    if not name.strip():
        raise PredictionsError("a dataset needs a name")
    if not items:
        raise PredictionsError(f"dataset {name!r}: no items")
    _lock(session, name)
    latest = latest_dataset(session, name)
    digest = content_hash(items)
    if latest is not None and (latest.content_hash == digest
                               or source is DatasetSource.implicit):
        return Registered(DatasetInfo.of(latest), created=False)
    row = Dataset(name=name, version=(latest.version + 1) if latest else 1, content_hash=digest,
                  n_items=len(items), source=source.value, source_run_id=source_run_id,
                  created_at=utcnow())
    session.add(row)
    session.flush()
    values = [{"dataset_id": row.id, "item_id": i.id, "prompt": i.prompt,
               "reference": i.reference} for i in items]
    for start in range(0, len(values), ITEM_BATCH):
        session.execute(insert(DatasetItem), values[start:start + ITEM_BATCH])
    return Registered(DatasetInfo.of(row), created=True)


def dataset_items(session: Session, dataset_id: int) -> dict[str, EvalItem]:
    """The items of a dataset version, by id, in id order."""
    rows = session.execute(select(DatasetItem.item_id, DatasetItem.prompt, DatasetItem.reference)
                           .where(DatasetItem.dataset_id == dataset_id)
                           .order_by(DatasetItem.item_id))
    return {item_id: EvalItem(item_id, prompt, reference) for item_id, prompt, reference in rows}


def eval_items(items: Iterable[Item]) -> list[EvalItem]:
    """The eval-set part of predictions (ids, prompts, references): what an implicit
    registration records."""
    return [EvalItem(i.id, i.prompt, i.reference) for i in items]


def align(dataset: DatasetInfo, answer_key: dict[str, EvalItem], predictions: Sequence[Item],
          line_of: dict[str, int], uri: str) -> Aligned:
    """Lay a run's predictions over its dataset.

    Each answered item is judged with the dataset's prompt (when it has one) and the
    dataset's reference. A line whose item is not in the dataset is counted and left
    out; a reference that disagrees with the dataset's is a :class:`PredictionsError`
    naming the line and the item.
    """
    judged: list[Item] = []
    extra: list[str] = []
    for pred in predictions:
        where = f"{uri}, line {line_of.get(pred.id, '?')}"
        key = answer_key.get(pred.id)
        if key is None:
            extra.append(f"{where}: item {pred.id!r}")
            continue
        if (pred.reference is not None and key.reference is not None
                and pred.reference.strip() != key.reference.strip()):
            raise PredictionsError(
                f"{where}: item {pred.id!r} has reference {_clip(pred.reference)!r}, but dataset "
                f"{dataset.label} says {_clip(key.reference)!r}: a run cannot bring its own "
                "answer key (leave the reference out, or register a new dataset version)")
        judged.append(Item(id=pred.id, response=pred.response,
                           prompt=key.prompt if key.prompt is not None else pred.prompt,
                           reference=key.reference, metadata=pred.metadata))
    answered = {i.id for i in judged}
    missing = [item_id for item_id in answer_key if item_id not in answered]
    return Aligned(dataset, judged, missing, extra=len(extra),
                   first_extra=extra[0] if extra else None)


def _clip(value: str, limit: int = 60) -> str:
    return value if len(value) <= limit else value[:limit] + "…"
