"""Configuration: one settings object, read from the environment (see docs/CONTRACT.md).

Every knob is declared once, in :data:`KNOBS`, as plain data. The pydantic-settings
class :class:`Settings` is built from it when first asked for (``get_settings()``,
``from tunix_rt.settings import Settings``). :func:`database_url`, all that opening the
database needs, reads the same table without pydantic: importing pydantic-settings and
building the class cost each `tunix-rt runs list` about a third of `import sqlalchemy`.
It returns a value only when it can tell that the class would accept every variable set
(plain integers, decimals within their bounds, any text); on anything else it asks the
class, so the values and the errors are the class's own.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tunix_rt.errors import InvalidInputError

if TYPE_CHECKING:
    from pydantic_settings import BaseSettings as Settings

ENV_PREFIX = "TUNIX_RT_"
EMBEDDED_DATABASE_URL = "sqlite:///./tunix_rt.db"


def _http_url(value: str | None) -> str | None:
    """An http(s) URL without its trailing slash: links are made by appending paths."""
    from urllib.parse import urlsplit

    if value is None:
        return None
    value = value.strip().rstrip("/")
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query \
            or parts.fragment or any(c.isspace() for c in value):
        raise ValueError("must be an http:// or https:// URL with a host, no query or "
                         "fragment (https://tunix.example.org)")
    return value


SECRET = "secret"  # a str kept as pydantic's SecretStr


@dataclass(frozen=True)
class Knob:
    """One setting: its type (str, int, float or SECRET), its default (None: optional,
    unset is None), what it is for, pydantic's bounds (ge, gt, le, pattern), and a
    validator that may reject or rewrite a value."""

    type: Any
    default: Any = None
    description: str | None = None
    bounds: dict[str, Any] = field(default_factory=dict)
    validator: Callable[[Any], Any] | None = None


def _knob(type_: Any, default: Any = None, description: str | None = None, *,
          validator: Callable[[Any], Any] | None = None, **bounds: Any) -> Knob:
    return Knob(type_, default, description, bounds, validator)


_SETTINGS_DOC = """Every knob tunix-rt reads, each from a ``TUNIX_RT_*`` environment variable.

    An empty variable counts as unset. The ``llm_*`` knobs left unset keep the llm
    judge's own defaults (:class:`tunix_rt.judges.llm.LLMConfig`).
    """
KNOBS: dict[str, Knob] = {
    "database_url": _knob(
        str, EMBEDDED_DATABASE_URL,
        "System of record: postgresql+psycopg://... or sqlite:///..."),
    "webhook_secret": _knob(
        SECRET, None,
        "Standard Webhooks secret(s), whsec_<base64>, space-separated during rotation"),
    "webhook_secrets": _knob(
        SECRET, None, "A secret per source: source=whsec_<base64>, space-separated (a source "
                      "named again: rotation); a run a source created is changed only by it"),
    "webhook_batch": _knob(
        int, 256, "The most webhook deliveries stored in one transaction on PostgreSQL (group "
                  "commit); 1: one transaction per delivery", ge=1),
    "llm_base_url": _knob(
        str, None, "The llm judge's OpenAI-compatible endpoint, e.g. http://localhost:8000/v1"),
    "llm_model": _knob(str, None, "The model that endpoint serves"),
    "llm_api_key": _knob(SECRET, None, "The endpoint's API key, if it needs one"),
    "llm_max_concurrency": _knob(int, None, "Requests in flight at once"),
    "llm_requests_per_second": _knob(float, None, "A rate limit; unset: none"),
    "llm_timeout_s": _knob(float, None, "Seconds allowed for one request"),
    "llm_preset": _knob(str, None, "The prompt preset its models want (gemma)"),
    "llm_max_reply_bytes": _knob(
        int, None, "The most bytes of one provider reply the llm judge reads", gt=0),
    "ray_address": _knob(str, None),
    "score_chunk_items": _knob(
        int, 10_000, "Predictions lines per chunk of a chunked evaluation; a file of at most "
                     "this many items is scored in one piece", ge=1),
    "task_runner": _knob(
        str, "default",
        "What runs the chunks of an evaluation: default (Prefect's thread pool) or ray "
        "(prefect-ray's RayTaskRunner on TUNIX_RT_RAY_ADDRESS, else a local Ray)",
        pattern="^(default|ray)$"),
    "judges_config": _knob(str, None, "YAML file of judges defined in configuration (composites)"),
    "jobs_dir": _knob(str, "./tunix_rt_jobs",
                      "Logs and outputs of the jobs `tunix-rt train` launches"),
    "leaderboard_max_unscored": _knob(
        float, 0.05, "Share of a run's items its judge may leave unscored before its board "
                     "entry is flagged and ranked below the complete ones", ge=0.0, le=1.0),
    "tune_storage": _knob(str, "./tunix_rt_tune",
                          "Where Ray Tune keeps each study's state (resume)"),
    "predictions_allow": _knob(
        str, None, "Space-separated prefixes a predictions_uri arriving over the webhook must "
                   "start with (file:///data/runs/ s3://team-bucket/; a path covers its "
                   "file:// URIs); unset: the jobs directory and ./tunix_rt_demo"),
    "predictions_max_bytes": _knob(
        int, 2 * 1024 ** 3, "The most bytes of one predictions file read", gt=0),
    "predictions_max_line_bytes": _knob(
        int, 1024 ** 2, "The most bytes of one line of a predictions file", gt=0),
    "api_token": _knob(
        SECRET, None, "Bearer token every read of `tunix-rt serve` needs (the API, the page); "
                      "unset: reads are open to anyone who reaches the port"),
    "auth_max_failures": _knob(
        int, 10, "Failed token checks (POST /login, a wrong bearer token or cookie) one client "
                 "address may make within the window before it gets 429", ge=1),
    "auth_failure_window_s": _knob(
        float, 60.0, "The sliding window of TUNIX_RT_AUTH_MAX_FAILURES, in seconds", gt=0),
    "loop_timeout_s": _knob(
        float, 6 * 3600.0,
        "The most seconds one quality loop may run: then Prefect times it out, its lease is "
        "no longer renewed and the sweeper may start it again", gt=0),
    "heartbeat_s": _knob(
        float, None,
        "Seconds between the heartbeats of a deployed flow run (run by `python -m "
        "tunix_rt.flows.engine`); 0: none; unset: Prefect's PREFECT_FLOWS_HEARTBEAT_FREQUENCY",
        ge=0),
    "public_url": _knob(
        str, None, "Public base URL of `tunix-rt serve` (https://tunix.example.org), for links "
                   "to its pages from Prefect artifacts; unset: no links", validator=_http_url),
}

_settings_class: Any = None


def _build_settings() -> Any:
    """The pydantic-settings class of :data:`KNOBS` (built once)."""
    from pydantic import Field, SecretStr, create_model, field_validator
    from pydantic_settings import BaseSettings, SettingsConfigDict

    class Base(BaseSettings):
        model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True,
                                          env_ignore_empty=True)

    def validator(check: Callable[[Any], Any]) -> Any:
        def validate(cls: Any, value: Any) -> Any:
            return check(value)
        return validate

    fields: dict[str, Any] = {}
    for name, knob in KNOBS.items():
        kind = SecretStr if knob.type is SECRET else knob.type
        fields[name] = (kind | None if knob.default is None else kind,
                        Field(knob.default, description=knob.description, **knob.bounds))
    settings = create_model(
        "Settings", __base__=Base, __module__=__name__, __doc__=_SETTINGS_DOC,
        __validators__={f"check_{name}": field_validator(name)(validator(knob.validator))
                        for name, knob in KNOBS.items() if knob.validator is not None},
        **fields)
    return settings


def __getattr__(name: str) -> Any:
    """``Settings``, built on first use."""
    global _settings_class
    if name == "Settings":
        if _settings_class is None:
            _settings_class = _build_settings()
        return _settings_class
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


_read: tuple[tuple[tuple[str, str], ...], Any] | None = None


def get_settings() -> Settings:
    """The settings of the environment as it is now.

    Validating the class costs ~2.5 ms of CPU, and a quality loop asks ~17 times, so the
    last result is kept with the ``TUNIX_RT_*`` variables it was read from: a changed
    variable (a test's ``monkeypatch``, a deployment's job variables) is read afresh.
    The instance is frozen, so no caller can change what the next one sees.

    A variable that cannot be read (``TUNIX_RT_LLM_MAX_CONCURRENCY=many``) is an
    :class:`InvalidInputError` naming it.
    """
    global _read
    from pydantic import ValidationError

    key = tuple(sorted((name, value) for name, value in os.environ.items()
                       if name[:len(ENV_PREFIX)].upper() == ENV_PREFIX))
    if _read is not None and _read[0] == key:
        return _read[1]
    try:
        settings = __getattr__("Settings")()
        _read = (key, settings)
        return settings
    except ValidationError as exc:
        from tunix_rt.specfile import validation_problems

        _, text = validation_problems(exc, label=lambda field: ENV_PREFIX + field.upper())
        raise InvalidInputError(f"invalid settings: {text}") from None


_INTEGER = re.compile(r"0|-?[1-9][0-9]{0,17}")
_DECIMAL = re.compile(r"-?(0|[1-9][0-9]{0,17})(\.[0-9]{1,17})?")


def _plainly_valid(knob: Knob, raw: str) -> bool:
    """Whether the class surely accepts ``raw`` for ``knob`` (False: ask it)."""
    if knob.type is int or knob.type is float:
        if not (_INTEGER if knob.type is int else _DECIMAL).fullmatch(raw):
            return False
        number = knob.type(raw)
        bounds = knob.bounds
        return (number >= bounds.get("ge", number) and number > bounds.get("gt", number - 1)
                and number <= bounds.get("le", number))
    if "pattern" in knob.bounds and not (raw.isprintable() and raw.strip() == raw
                                         and re.search(knob.bounds["pattern"], raw)):
        return False
    if knob.validator is not None:
        try:
            knob.validator(raw)
        except ValueError:
            return False
    return True


def database_url() -> str:
    """``get_settings().database_url``, without building the settings class when every
    ``TUNIX_RT_*`` variable set is plainly valid (read as pydantic-settings reads them:
    names in any case, an empty value unset)."""
    prefix = ENV_PREFIX.lower()
    read = {key.lower()[len(prefix):]: value for key, value in os.environ.items()
            if key.lower().startswith(prefix)}
    values = {name: value for name, value in read.items() if value != ""}
    if all(_plainly_valid(KNOBS[name], raw) for name, raw in values.items() if name in KNOBS):
        return values.get("database_url", KNOBS["database_url"].default)
    return get_settings().database_url
