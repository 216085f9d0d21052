"""One wording of pydantic validation errors: (field, message) pairs and their text."""

from __future__ import annotations

from typing import Literal

import pytest
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from tunix_rt.specfile import Problem, validation_problems


class Inner(BaseModel):
    model_config = ConfigDict(extra="forbid")

    steps: int


class Doc(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: Literal["a", "b"]
    inner: Inner
    rate: float = 0.1

    @field_validator("rate")
    @classmethod
    def _positive(cls, value: float) -> float:
        if value <= 0:
            raise ValueError("rate: must be > 0")  # already names its field
        return value


def _error(document: object) -> ValidationError:
    with pytest.raises(ValidationError) as raised:
        Doc.model_validate_json(document) if isinstance(document, str) else Doc.model_validate(
            document)
    return raised.value


def test_pairs_and_text() -> None:
    problems, text = validation_problems(_error(
        {"kind": "c", "inner": {"steps": 1, "colour": "red"}, "rate": -1}))

    assert [p.field for p in problems] == ["kind", "inner.colour", "rate"]
    assert problems[1] == Problem("inner.colour", "unknown key")
    assert problems[2].message == "rate: must be > 0"  # no "Value error, " prefix
    assert text == f"kind: {problems[0].message}; inner.colour: unknown key; rate: must be > 0"


def test_labels_and_the_whole_document() -> None:
    problems, text = validation_problems(_error({"kind": "a", "inner": {}}),
                                         label=lambda field: "--" + field.replace(".", "-"))
    assert problems == [Problem("--inner-steps", "Field required")]
    assert text == "--inner-steps: Field required"

    problems, text = validation_problems(_error('{"kind": '), root="body")
    assert [p.field for p in problems] == ["body"] and text.startswith("body: Invalid JSON")
