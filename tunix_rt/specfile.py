"""What sweep files and run files share: YAML loading, error messages, resource rules.

:func:`validation_problems` is also how the webhook receiver, the settings and the
CLI word a pydantic validation error: one ``field: message`` per problem.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

from pydantic import BaseModel, ValidationError

from tunix_rt.errors import InvalidInputError

Spec = TypeVar("Spec", bound=BaseModel)


class Problem(NamedTuple):
    """One thing wrong with a validated document: where (a dotted path) and what."""

    field: str
    message: str

    def __str__(self) -> str:
        if not self.field or self.message.startswith(self.field):
            return self.message
        return f"{self.field}: {self.message}"


def validation_problems(exc: ValidationError, *, root: str = "",
                        label: Callable[[str], str] | None = None) -> tuple[list[Problem], str]:
    """The problems of a pydantic validation error, and their text (``; ``-joined).

    A problem's ``field`` is its location, dotted (``scheduler.max_steps``), passed
    through ``label`` when given (e.g. to name a flag or an environment variable), or
    ``root`` for a problem of the whole document. Its ``message`` is pydantic's without
    the ``Value error, `` prefix; an unexpected key's is ``unknown key``.
    """
    problems = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error["loc"])
        where = (label(where) if label else where) if where else root
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = "unknown key"
        problems.append(Problem(where, message))
    return problems, "; ".join(str(p) for p in problems)


def validate_spec(model: type[Spec], document: Any, *, source: str, what: str) -> Spec:
    """Validate a parsed document; the error lists every problem with its key named."""
    if not isinstance(document, dict):
        raise InvalidInputError(f"{source}: expected a mapping of {what} fields")
    try:
        return model.model_validate(document)
    except ValidationError as exc:
        raise InvalidInputError(f"{source}: {validation_problems(exc)[1]}") from None


def read_yaml(path: str | Path, *, what: str) -> Any:
    """The parsed YAML document at ``path``; unreadable files are named with the reason."""
    import yaml

    path = Path(path)
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InvalidInputError(f"{what} file not found: {path}") from None
    except IsADirectoryError:
        raise InvalidInputError(f"{what} file is a directory: {path}") from None
    except UnicodeDecodeError as exc:
        raise InvalidInputError(f"{path}: not UTF-8 text ({exc.reason})") from None
    except yaml.YAMLError as exc:
        raise InvalidInputError(f"{path}: not valid YAML ({exc})") from None


def check_resources(value: dict[str, float], *, unit: str) -> dict[str, float]:
    """Per-trial or per-job resources: non-negative, whole CPUs/GPUs above 1, not nothing."""
    for key, amount in value.items():
        if amount < 0:
            raise ValueError(f"{key}: must not be negative, got {amount}")
        if key in {"cpu", "gpu"} and amount > 1 and amount != int(amount):
            raise ValueError(f"{key}: fractions are allowed below 1 only, got {amount}")
    if not value.get("cpu") and not value.get("gpu") and not any(
            k not in {"cpu", "gpu", "memory"} for k in value):
        raise ValueError(f"a {unit} needs at least some cpu, gpu or an accelerator resource")
    return value


def check_trainable(value: str) -> str:
    """A trainable path in the form ``load_trainable`` accepts; refused here, not in a trial."""
    from tunix_rt.training.trainable import is_trainable_path

    if not is_trainable_path(value):
        raise ValueError('must be "builtin" or "package.module:function"')
    return value
