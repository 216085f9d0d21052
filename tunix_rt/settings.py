"""Configuration: one settings object, read from the environment (see CONTRACT.md)."""

from __future__ import annotations

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

EMBEDDED_DATABASE_URL = "sqlite:///./tunix_rt.db"


class Settings(BaseSettings):
    """Every knob tunix-rt reads, each from a ``TUNIX_RT_*`` environment variable."""

    model_config = SettingsConfigDict(env_prefix="TUNIX_RT_", extra="ignore")

    database_url: str = Field(
        EMBEDDED_DATABASE_URL,
        description="System of record: postgresql+psycopg://... or sqlite:///...",
    )
    webhook_secret: SecretStr | None = Field(
        None, description="Standard Webhooks secret(s), whsec_<base64>, space-separated during rotation")
    llm_base_url: str | None = None
    llm_model: str | None = None
    llm_api_key: SecretStr | None = None
    ray_address: str | None = None
    judges_config: str | None = Field(
        None, description="YAML file of judges defined in configuration (composites)")
    jobs_dir: str = Field("./tunix_rt_jobs",
                          description="Logs and outputs of the jobs `tunix-rt train` launches")
    tune_storage: str = Field("./tunix_rt_tune",
                              description="Where Ray Tune keeps each study's state (resume)")

    @property
    def is_embedded(self) -> bool:
        """True for the zero-configuration SQLite file (migrated on first use)."""
        return self.database_url.startswith("sqlite")


def get_settings() -> Settings:
    """Read the settings afresh (cheap; the engine is cached per URL, not the settings)."""
    return Settings()
