"""What an operator can set on the console, validated when the console is built."""

from __future__ import annotations

from typing import Any

from pydantic import ConfigDict, Field, SecretStr, ValidationError, field_validator

from contend.config import RangeChecked
from contend.errors import ConfigurationError

__all__ = ["MIN_TOKEN_LENGTH", "ConsoleSettings", "console_settings"]

MIN_TOKEN_LENGTH = 16


class ConsoleSettings(RangeChecked):
    """Console options; every bound is checked when the console is built.

    Actions (remove, purge, sweep) are off unless `token` is set, and then need it; with
    `protect_reads` every page needs it too.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    token: SecretStr | None = None
    protect_reads: bool = False
    sample_interval_seconds: float = Field(10.0, ge=1.0, le=600.0)
    history_minutes: int = Field(60, ge=5, le=1440)
    page_size: int = Field(50, ge=1, le=500)
    scan_limit: int = Field(20_000, ge=100, le=10_000_000)
    strategy_scan_limit: int = Field(200_000, ge=1_000, le=100_000_000)
    hot_targets: int = Field(10, ge=1, le=100)
    refresh_seconds: int = Field(10, ge=0, le=3600)

    @field_validator("token", mode="before")
    @classmethod
    def _no_blank_token(cls, value: Any) -> Any:
        raw = value.get_secret_value() if isinstance(value, SecretStr) else value
        if raw == "" or raw is None:
            return None
        if isinstance(raw, str) and len(raw.strip()) < MIN_TOKEN_LENGTH:
            raise ValueError(
                f"must be at least {MIN_TOKEN_LENGTH} characters (make one with "
                "`python -c 'import secrets; print(secrets.token_urlsafe())'`)"
            )
        return raw

    @property
    def actions_enabled(self) -> bool:
        return self.token is not None


def console_settings(settings: ConsoleSettings | None = None, **options: Any) -> ConsoleSettings:
    """`settings`, or one built from `options`; a bad value raises ConfigurationError naming it."""
    if settings is not None and options:
        raise ConfigurationError("settings", "pass a ConsoleSettings or keyword options, not both")
    if settings is not None:
        return settings
    try:
        return ConsoleSettings(**options)
    except ValidationError as exc:
        error = exc.errors()[0]
        field = ".".join(str(p) for p in error["loc"]) or "settings"
        raise ConfigurationError(field, error["msg"].removeprefix("Value error, ")) from exc
