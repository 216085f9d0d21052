"""Configuration: one settings object, read from the environment (see docs/CONTRACT.md)."""

from __future__ import annotations

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from tunix_rt.errors import InvalidInputError

ENV_PREFIX = "TUNIX_RT_"
EMBEDDED_DATABASE_URL = "sqlite:///./tunix_rt.db"


class Settings(BaseSettings):
    """Every knob tunix-rt reads, each from a ``TUNIX_RT_*`` environment variable.

    An empty variable counts as unset. The ``llm_*`` knobs left unset keep the llm
    judge's own defaults (:class:`tunix_rt.judges.llm.LLMConfig`).
    """

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore",
                                      env_ignore_empty=True)

    database_url: str = Field(
        EMBEDDED_DATABASE_URL,
        description="System of record: postgresql+psycopg://... or sqlite:///...",
    )
    webhook_secret: SecretStr | None = Field(
        None, description="Standard Webhooks secret(s), whsec_<base64>, space-separated during rotation")
    webhook_secrets: SecretStr | None = Field(
        None, description="A secret per source: source=whsec_<base64>, space-separated (a source "
                          "named again: rotation); a run a source created is changed only by it")
    webhook_batch: int = Field(
        256, ge=1, description="The most webhook deliveries stored in one transaction on "
                               "PostgreSQL (group commit); 1: one transaction per delivery")
    llm_base_url: str | None = Field(
        None, description="The llm judge's OpenAI-compatible endpoint, e.g. http://localhost:8000/v1")
    llm_model: str | None = Field(None, description="The model that endpoint serves")
    llm_api_key: SecretStr | None = Field(None, description="The endpoint's API key, if it needs one")
    llm_max_concurrency: int | None = Field(None, description="Requests in flight at once")
    llm_requests_per_second: float | None = Field(None, description="A rate limit; unset: none")
    llm_timeout_s: float | None = Field(None, description="Seconds allowed for one request")
    llm_preset: str | None = Field(None, description="The prompt preset its models want (gemma)")
    llm_max_reply_bytes: int | None = Field(
        None, gt=0, description="The most bytes of one provider reply the llm judge reads")
    ray_address: str | None = None
    score_chunk_items: int = Field(
        10_000, ge=1, description="Predictions lines per chunk of a chunked evaluation; a file "
                                  "of at most this many items is scored in one piece")
    task_runner: str = Field(
        "default", pattern="^(default|ray)$",
        description="What runs the chunks of an evaluation: default (Prefect's thread pool) or "
                    "ray (prefect-ray's RayTaskRunner on TUNIX_RT_RAY_ADDRESS, else a local Ray)")
    judges_config: str | None = Field(
        None, description="YAML file of judges defined in configuration (composites)")
    jobs_dir: str = Field("./tunix_rt_jobs",
                          description="Logs and outputs of the jobs `tunix-rt train` launches")
    leaderboard_max_unscored: float = Field(
        0.05, ge=0.0, le=1.0,
        description="Share of a run's items its judge may leave unscored before its board "
                    "entry is flagged and ranked below the complete ones")
    tune_storage: str = Field("./tunix_rt_tune",
                              description="Where Ray Tune keeps each study's state (resume)")
    predictions_allow: str | None = Field(
        None, description="Space-separated prefixes a predictions_uri arriving over the webhook "
                          "must start with (file:///data/runs/ s3://team-bucket/; a path covers "
                          "its file:// URIs); unset: the jobs directory and ./tunix_rt_demo")
    predictions_max_bytes: int = Field(
        2 * 1024 ** 3, gt=0, description="The most bytes of one predictions file read")
    predictions_max_line_bytes: int = Field(
        1024 ** 2, gt=0, description="The most bytes of one line of a predictions file")
    api_token: SecretStr | None = Field(
        None, description="Bearer token every read of `tunix-rt serve` needs (the API, the page); "
                          "unset: reads are open to anyone who reaches the port")
    auth_max_failures: int = Field(
        10, ge=1, description="Failed token checks (POST /login, a wrong bearer token or cookie) "
                              "one client address may make within the window before it gets 429")
    auth_failure_window_s: float = Field(
        60.0, gt=0, description="The sliding window of TUNIX_RT_AUTH_MAX_FAILURES, in seconds")
    loop_timeout_s: float = Field(
        6 * 3600.0, gt=0,
        description="The most seconds one quality loop may run: then Prefect times it out, its "
                    "lease is no longer renewed and the sweeper may start it again")
    heartbeat_s: float | None = Field(
        None, ge=0,
        description="Seconds between the heartbeats of a deployed flow run (run by `python -m "
                    "tunix_rt.flows.engine`); 0: none; unset: Prefect's "
                    "PREFECT_FLOWS_HEARTBEAT_FREQUENCY")
    public_url: str | None = Field(
        None, description="Public base URL of `tunix-rt serve` (https://tunix.example.org), for "
                          "links to its pages from Prefect artifacts; unset: no links")

    @field_validator("public_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
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


def get_settings() -> Settings:
    """Read the settings afresh (cheap; the engine is cached per URL, not the settings).

    A variable that cannot be read (``TUNIX_RT_LLM_MAX_CONCURRENCY=many``) is an
    :class:`InvalidInputError` naming it.
    """
    try:
        return Settings()
    except ValidationError as exc:
        from tunix_rt.specfile import validation_problems

        _, text = validation_problems(exc, label=lambda field: ENV_PREFIX + field.upper())
        raise InvalidInputError(f"invalid settings: {text}") from None
