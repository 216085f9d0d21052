"""The settings: the class built from KNOBS, and the database URL read without it."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tunix_rt import settings
from tunix_rt.errors import InvalidInputError

# Values the light reader accepts, values only the class can read, and values it refuses.
CASES = [
    {},
    {"TUNIX_RT_DATABASE_URL": "sqlite:///./elsewhere.db"},
    {"tunix_rt_database_url": "sqlite:///./lower.db"},  # names in any case
    {"TUNIX_RT_DATABASE_URL": ""},  # empty: unset
    {"TUNIX_RT_LLM_MAX_CONCURRENCY": "4", "TUNIX_RT_LEADERBOARD_MAX_UNSCORED": "0.5",
     "TUNIX_RT_TASK_RUNNER": "ray", "TUNIX_RT_PUBLIC_URL": "https://x.example/",
     "TUNIX_RT_WEBHOOK_SECRET": "whsec_abc", "TUNIX_RT_URL": "not a setting"},
    {"TUNIX_RT_LLM_TIMEOUT_S": "1e3", "TUNIX_RT_SCORE_CHUNK_ITEMS": " 7 "},  # class only
    {"TUNIX_RT_LLM_MAX_CONCURRENCY": "many"},
    {"TUNIX_RT_SCORE_CHUNK_ITEMS": "0"},
    {"TUNIX_RT_LEADERBOARD_MAX_UNSCORED": "1.5"},
    {"TUNIX_RT_TASK_RUNNER": "ray\n"},
    {"TUNIX_RT_PUBLIC_URL": "ftp://x.example"},
]


def _outcome(read: object) -> tuple[str, str]:
    try:
        return "value", read()  # type: ignore[operator]
    except InvalidInputError as exc:
        return "error", str(exc)


@pytest.mark.parametrize("env", CASES, ids=lambda env: ",".join(f"{k}={v!r}" for k, v in
                                                               env.items()) or "none")
def test_database_url_is_the_settings_value_or_the_same_error(
        monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> None:
    for key in [k for k in os.environ if k.upper().startswith("TUNIX_RT_")]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    full = _outcome(lambda: settings.get_settings().database_url)
    assert _outcome(settings.database_url) == full
    if env.get("TUNIX_RT_LLM_MAX_CONCURRENCY") == "many":
        assert full[0] == "error" and "TUNIX_RT_LLM_MAX_CONCURRENCY" in full[1]


def test_the_class_has_every_knob_with_its_default() -> None:
    fields = settings.Settings.model_fields
    assert list(fields) == list(settings.KNOBS)
    for name, knob in settings.KNOBS.items():
        assert fields[name].default == knob.default
        assert fields[name].description == knob.description


def test_reading_the_database_url_imports_no_pydantic() -> None:
    code = ("import sys; from tunix_rt.settings import database_url; url = database_url(); "
            "print(url, 'pydantic' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env={"TUNIX_RT_DATABASE_URL": "sqlite:///./x.db",
                                          "TUNIX_RT_LLM_MAX_CONCURRENCY": "8"}).stdout
    assert out.split() == ["sqlite:///./x.db", "False"]


def test_settings_are_kept_until_a_variable_changes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TUNIX_RT_LLM_MAX_CONCURRENCY", "3")
    first = settings.get_settings()
    assert settings.get_settings() is first  # kept: nothing changed
    monkeypatch.setenv("TUNIX_RT_LLM_MAX_CONCURRENCY", "5")
    assert settings.get_settings().llm_max_concurrency == 5  # read afresh
    monkeypatch.setenv("TUNIX_RT_LLM_MAX_CONCURRENCY", "many")
    with pytest.raises(InvalidInputError, match="TUNIX_RT_LLM_MAX_CONCURRENCY"):
        settings.get_settings()  # a bad value is never served from the last good read
    monkeypatch.delenv("TUNIX_RT_LLM_MAX_CONCURRENCY")
    kept = settings.get_settings()
    with pytest.raises(ValueError):  # pydantic's frozen-instance error
        kept.llm_max_concurrency = 99  # type: ignore[misc]
    assert settings.get_settings().llm_max_concurrency == kept.llm_max_concurrency
