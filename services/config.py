"""Settings shared by every service, and the machinery to load and document settings.

Every setting is an environment variable named MAILSLUICE_<GROUP>_<NAME>. A service loads its
settings with `load()` before it opens any port: a bad value exits with status 2 and a message
that names the variable.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any, Literal, TypeVar

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

# Modules whose MailsluiceSettings subclasses make up docs/configuration.md.
SETTINGS_MODULES = (
    "mailsluice.config",
    "mailsluice.resolver",
    "mailsluice.ingest.settings",
    "mailsluice.delivery.settings",
    "mailsluice.delivery.outbound_settings",
    "mailsluice.delivery.shaping_runtime",
    "mailsluice.delivery.retry_mover",
    "mailsluice.sandbox.settings",
    "mailsluice.streams.settings",
    "mailsluice_operator.settings",
)


class MailsluiceSettings(BaseSettings):
    """Base class: subclasses set env_prefix to MAILSLUICE_<GROUP>_."""

    model_config = SettingsConfigDict(env_prefix="MAILSLUICE_", extra="ignore", frozen=True)


class KafkaSettings(MailsluiceSettings):
    """How every service reaches Kafka, and how the project creates its topics."""

    model_config = SettingsConfigDict(env_prefix="MAILSLUICE_KAFKA_", extra="ignore", frozen=True)

    bootstrap: str = Field("127.0.0.1:9092", description="Bootstrap servers, comma-separated.")
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", description="Kafka security protocol."
    )
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = Field(
        "PLAIN", description="SASL mechanism when the protocol uses SASL."
    )
    sasl_username: str = Field("", description="SASL user name.")
    sasl_password: str = Field("", description="SASL password.")
    ssl_cafile: str = Field("", description="CA bundle for TLS to the brokers (empty: system).")
    replication_factor: int = Field(
        1, ge=1, le=32, description="Replication factor of topics the project creates."
    )
    min_insync_replicas: int = Field(
        1, ge=1, le=32, description="min.insync.replicas of created topics (2 in production)."
    )
    queue_partitions: int = Field(
        12, ge=1, le=10000, description="Partitions of a pool's queue topic (>= max workers)."
    )
    request_timeout_ms: int = Field(
        10000, ge=1000, le=300000, description="Kafka client request timeout."
    )

    def client_options(self) -> dict[str, Any]:
        """Keyword arguments common to aiokafka clients."""
        opts: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap,
            "security_protocol": self.security_protocol,
            "request_timeout_ms": self.request_timeout_ms,
        }
        if self.security_protocol.startswith("SASL"):
            opts.update(
                sasl_mechanism=self.sasl_mechanism,
                sasl_plain_username=self.sasl_username,
                sasl_plain_password=self.sasl_password,
            )
        if self.security_protocol.endswith("SSL"):
            from aiokafka.helpers import create_ssl_context

            opts["ssl_context"] = create_ssl_context(cafile=self.ssl_cafile or None)
        return opts


class LogSettings(MailsluiceSettings):
    """Logging, shared by every service."""

    model_config = SettingsConfigDict(env_prefix="MAILSLUICE_LOG_", extra="ignore", frozen=True)

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="Log level.")
    json_format: bool = Field(True, description="Structured JSON logs (false: plain text).")


S = TypeVar("S", bound=MailsluiceSettings)


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


def settings_classes() -> list[type[MailsluiceSettings]]:
    found: list[type[MailsluiceSettings]] = []
    for name in SETTINGS_MODULES:
        module = importlib.import_module(name)
        for value in vars(module).values():
            if (
                isinstance(value, type)
                and issubclass(value, MailsluiceSettings)
                and value is not MailsluiceSettings
                and value.__module__ == name
            ):
                found.append(value)
    return found


def render_docs() -> str:
    """docs/configuration.md, generated from the settings classes (a test keeps it in sync)."""
    out = [
        "# Configuration",
        "",
        "Every setting is an environment variable. Services validate their settings at start;",
        "a bad value exits with status 2 and names the variable, before any port opens.",
        "This file is generated by `mailsluice config docs`; edit the settings classes instead.",
        "",
    ]
    for cls in settings_classes():
        prefix = str(cls.model_config.get("env_prefix", ""))
        out += [f"## {cls.__name__}", "", (cls.__doc__ or "").strip(), ""]
        out += ["| variable | default | meaning |", "|---|---|---|"]
        for name, field in cls.model_fields.items():
            default = field.default
            shown = "(empty)" if default in ("", None) else f"`{default}`"
            if isinstance(default, (list, tuple, dict)):
                shown = f"`{default!r}`"
            out.append(f"| `{prefix}{name.upper()}` | {shown} | {field.description or ''} |")
        out.append("")
    return "\n".join(out)
