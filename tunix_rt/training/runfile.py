"""Run files (``tunix-rt train --config RUN.yaml [--dry-run]``): parsed and validated first.

A run file names one training job in one of two forms (docs/CONTRACT.md, "Run file"):

* ``trainable`` (``"builtin"`` or ``"package.module:function"``) with its ``config``:
  tunix-rt runs the trainable in a child process (:mod:`tunix_rt.training.job_entry`);
* ``command`` (the argv of any program) with the ``predictions`` URI it will write.

Parsing is pure: unknown keys, mixed forms and impossible values are refused with
every problem listed and its key named. :meth:`RunSpec.check` (``--dry-run``) goes
further and resolves the trainable or finds the executable, without training.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from tunix_rt.errors import InvalidInputError
from tunix_rt.specfile import check_resources, check_trainable, read_yaml, validate_spec

TRAINABLE_KEYS = ("trainable", "config")
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,254}")
MAX_ENV_NAMES = 256
COMMAND_KEYS = ("command", "predictions")


class RunSpec(BaseModel):
    """One training run (docs/CONTRACT.md, "Run file")."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    dataset: str = Field(min_length=1, max_length=255)
    model: str = Field(min_length=1, max_length=255)
    trainable: str | None = Field(None, description='"builtin" or "package.module:function"')
    config: dict[str, Any] | None = Field(None, description="passed to the trainable as is")
    command: list[str] | None = Field(None, description="argv of the training program")
    predictions: str | None = Field(None, description="URI the command writes its predictions to")
    resources: dict[str, float] = Field(default_factory=lambda: {"cpu": 1.0})
    timeout_s: float = Field(3600.0, gt=0, description="Seconds before the job is stopped")
    judges: list[str] = Field(default_factory=lambda: ["exact_match"], min_length=1)
    external_id: str | None = Field(None, min_length=1, max_length=255)
    env: list[str] = Field(
        default_factory=list,
        description="Names of environment variables the job gets beyond the allow-list "
                    "(tunix_rt.training.jobs.job_environment); names only, never values")

    @field_validator("env")
    @classmethod
    def _env(cls, value: list[str]) -> list[str]:
        if len(value) > MAX_ENV_NAMES:
            raise ValueError(f"at most {MAX_ENV_NAMES} names")
        for name in value:
            if not ENV_NAME.fullmatch(name):
                raise ValueError(f"{name!r} is not a variable name (letters, digits, _; "
                                 f"names only: the job reads the value from the environment)")
        if len(set(value)) != len(value):
            raise ValueError("a name is listed twice")
        return value

    @field_validator("name", "dataset", "model")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be blank")
        return value

    @field_validator("trainable")
    @classmethod
    def _trainable_path(cls, value: str | None) -> str | None:
        return value if value is None else check_trainable(value)

    @field_validator("command")
    @classmethod
    def _command(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return value
        if not value:
            raise ValueError("must not be empty: give the program and its arguments")
        if not value[0].strip():
            raise ValueError("the program (the first item) must not be blank")
        return value

    @field_validator("predictions")
    @classmethod
    def _predictions(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("must be a non-empty URI")
        return value.strip() if value is not None else None

    @field_validator("judges")
    @classmethod
    def _judges(cls, value: list[str]) -> list[str]:
        if any(not judge.strip() for judge in value):
            raise ValueError("judge names must not be blank")
        if len(set(value)) != len(value):
            raise ValueError("a judge is named twice")
        return value

    @field_validator("resources")
    @classmethod
    def _resources(cls, value: dict[str, float]) -> dict[str, float]:
        return check_resources(value, unit="job")

    @model_validator(mode="after")
    def _one_form(self) -> RunSpec:
        given_trainable = [k for k in TRAINABLE_KEYS if getattr(self, k) is not None]
        given_command = [k for k in COMMAND_KEYS if getattr(self, k) is not None]
        if given_trainable and given_command:
            raise ValueError(
                f"{', '.join(given_trainable + given_command)}: give either trainable/config "
                f"or command/predictions, not both")
        if not given_trainable and not given_command:
            raise ValueError("trainable, command: give either trainable (with config) or "
                             "command (with predictions)")
        if given_trainable and self.trainable is None:
            raise ValueError('trainable: required with config ("builtin" or '
                             '"package.module:function")')
        if given_command and self.command is None:
            raise ValueError("command: required with predictions")
        if given_command and self.predictions is None:
            raise ValueError("predictions: required with command (the URI of the "
                             "predictions file the command writes)")
        if self.trainable is not None and self.config is None:
            self.config = {}
        return self

    @property
    def is_command(self) -> bool:
        """True for the command/predictions form, False for trainable/config."""
        return self.command is not None

    def check(self) -> None:
        """The ``--dry-run`` checks beyond parsing; raises :class:`InvalidInputError`.

        A trainable is resolved (its module imported; ``builtin`` also has its config
        checked); a command's program must be on ``PATH`` or an existing file; the
        predictions URI must be non-empty and of a protocol fsspec knows.
        """
        if self.trainable is not None:
            from tunix_rt.training import trainable as trainables

            try:
                trainables.load_trainable(self.trainable)
            except InvalidInputError:
                raise
            except Exception as exc:  # the user's module may fail to import in any way
                message = str(exc) or type(exc).__name__
                if not message.startswith("trainable"):
                    message = f"trainable {self.trainable!r}: {type(exc).__name__}: {message}"
                raise InvalidInputError(message) from None
            if self.trainable == trainables.BUILTIN:
                try:
                    trainables._config(self.config or {})
                except ValueError as exc:
                    raise InvalidInputError(f"config.{exc}") from None
            elif self.trainable in trainables.TUNIX_TRAINABLES:
                from tunix_rt.integrations.tunix.trainables import check_config

                try:
                    check_config(self.trainable, self.config or {})
                except ValueError as exc:
                    raise InvalidInputError(f"config.{exc}") from None
            return
        assert self.command is not None and self.predictions is not None
        program = self.command[0]
        if shutil.which(program) is None and not Path(program).is_file():
            raise InvalidInputError(f"command: program {program!r} not found on PATH "
                                    f"nor as a file")
        _check_uri(self.predictions)


def _check_uri(uri: str) -> None:
    if not uri.strip():
        raise InvalidInputError("predictions: must be a non-empty URI")
    protocol, sep, rest = uri.partition("://")
    if not sep:
        return  # a local path
    if not rest:
        raise InvalidInputError(f"predictions: {uri!r} names no file")
    import fsspec

    known = set(fsspec.available_protocols())
    if protocol not in known:
        raise InvalidInputError(f"predictions: unknown URI protocol {protocol!r} in {uri!r}")


def parse_run_spec(document: Any, *, source: str = "run") -> RunSpec:
    """Validate a parsed run file; the error lists every problem with its key named."""
    return validate_spec(RunSpec, document, source=source, what="run")


def load_run_spec(path: str | Path) -> RunSpec:
    """Read and validate a run YAML file."""
    return parse_run_spec(read_yaml(path, what="run"), source=str(path))
