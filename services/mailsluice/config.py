"""Settings machinery shared by every process, and the logging settings.

Every setting is an environment variable named MAILSLUICE_<GROUP>_<NAME>. A service loads its
settings with `load()` before it opens any port: a bad value exits with status 2 and a message
that names the variable.
"""

from __future__ import annotations

import sys
from typing import Literal, TypeVar

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict


class MailsluiceSettings(BaseSettings):
    """Base class: subclasses set env_prefix to MAILSLUICE_<GROUP>_."""

    model_config = SettingsConfigDict(env_prefix="MAILSLUICE_", extra="ignore", frozen=True)


class LogSettings(MailsluiceSettings):
    """Logging, shared by every service."""

    model_config = SettingsConfigDict(env_prefix="MAILSLUICE_LOG_", extra="ignore", frozen=True)

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="Log level.")
    json_format: bool = Field(True, description="Structured JSON logs (false: plain text).")


S = TypeVar("S", bound=MailsluiceSettings)


def settings_epilog(*groups: str) -> str:
    """The --help epilog of a command whose settings are the MAILSLUICE_<group> variables."""
    names = ", ".join(f"MAILSLUICE_{g}" for g in (*groups, "KAFKA_*", "LOG_*"))
    return f"All settings are environment variables ({names}); see docs/configuration.md."


class ConfigError(SystemExit):
    """Raised by load(): exits with status 2 after printing which settings are wrong."""


def describe_errors(cls: type[MailsluiceSettings], exc: ValidationError) -> str:
    prefix = str(cls.model_config.get("env_prefix", ""))
    lines = []
    for err in exc.errors():
        field = ".".join(str(p) for p in err["loc"])
        env = f"{prefix}{field.split('.')[0]}".upper()
        lines.append(f"invalid setting {env}: {err['msg']}")
    return "\n".join(lines)


def load(cls: type[S]) -> S:
    """Load a settings class from the environment, or exit 2 naming the bad variables."""
    try:
        return cls()
    except ValidationError as exc:
        print(describe_errors(cls, exc), file=sys.stderr)
        raise ConfigError(2) from None
