"""Settings: env-var loading, a bad value exits 2 naming the variable, and the generated docs."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from support.paths import REPO

from mailsluice.admin.config import render_docs, settings_classes
from mailsluice.config import LogSettings, load
from mailsluice.kafka.settings import KafkaSettings
from mailsluice.resolver import DnsSettings

DOCS = REPO / "docs" / "configuration.md"
MAILSLUICE = Path(sys.executable).parent / "mailsluice"


def test_load_reads_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAILSLUICE_KAFKA_BOOTSTRAP", "127.0.0.1:19092,127.0.0.2:19092")
    monkeypatch.setenv("MAILSLUICE_KAFKA_QUEUE_PARTITIONS", "24")
    monkeypatch.setenv("MAILSLUICE_LOG_JSON_FORMAT", "false")
    kafka = load(KafkaSettings)
    assert kafka.bootstrap == "127.0.0.1:19092,127.0.0.2:19092"
    assert kafka.queue_partitions == 24
    assert kafka.client_options()["bootstrap_servers"] == kafka.bootstrap
    assert load(LogSettings).json_format is False


def test_defaults_without_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MAILSLUICE_KAFKA_QUEUE_PARTITIONS", raising=False)
    assert load(KafkaSettings).queue_partitions == 12


@pytest.mark.parametrize(
    ("cls", "variable", "value"),
    [
        (KafkaSettings, "MAILSLUICE_KAFKA_QUEUE_PARTITIONS", "abc"),
        (KafkaSettings, "MAILSLUICE_KAFKA_QUEUE_PARTITIONS", "0"),
        (KafkaSettings, "MAILSLUICE_KAFKA_SECURITY_PROTOCOL", "CARRIER_PIGEON"),
        (KafkaSettings, "MAILSLUICE_KAFKA_REQUEST_TIMEOUT_MS", "5"),
        (LogSettings, "MAILSLUICE_LOG_LEVEL", "LOUD"),
        (DnsSettings, "MAILSLUICE_DNS_NAMESERVERS", "not-an-ip"),
        (DnsSettings, "MAILSLUICE_DNS_NAMESERVERS", "127.0.0.1:99999"),
        (DnsSettings, "MAILSLUICE_DNS_TIMEOUT_S", "-1"),
    ],
)
def test_bad_value_exits_2_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    cls: type[KafkaSettings] | type[LogSettings] | type[DnsSettings],
    variable: str,
    value: str,
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(SystemExit) as exc:
        load(cls)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert variable in err
    assert "invalid setting" in err


def test_every_bad_variable_is_named(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("MAILSLUICE_KAFKA_QUEUE_PARTITIONS", "abc")
    monkeypatch.setenv("MAILSLUICE_KAFKA_REPLICATION_FACTOR", "zero")
    with pytest.raises(SystemExit):
        load(KafkaSettings)
    err = capsys.readouterr().err
    assert "MAILSLUICE_KAFKA_QUEUE_PARTITIONS" in err
    assert "MAILSLUICE_KAFKA_REPLICATION_FACTOR" in err


def test_bad_value_stops_the_console_command() -> None:
    # Before any connection is attempted: the command exits 2 and names the variable.
    env = {"MAILSLUICE_KAFKA_QUEUE_PARTITIONS": "abc", "PATH": "/usr/bin:/bin"}
    proc = subprocess.run(
        [str(MAILSLUICE), "topics", "list"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 2
    assert "MAILSLUICE_KAFKA_QUEUE_PARTITIONS" in proc.stderr


def test_every_setting_is_documented() -> None:
    for cls in settings_classes():
        assert (cls.__doc__ or "").strip(), f"{cls.__name__} has no docstring"
        prefix = str(cls.model_config.get("env_prefix", ""))
        assert prefix.startswith("MAILSLUICE_") and prefix.endswith("_"), cls.__name__
        for name, field in cls.model_fields.items():
            assert field.description, f"{prefix}{name.upper()} has no description"


def test_every_settings_class_is_documented() -> None:
    """A settings class in a module config docs does not read (one moved by a layout change)
    would leave its variables out of docs/configuration.md without any other test noticing."""
    declared = set()
    for root in ("services", "operator"):
        for path in (REPO / root).rglob("*.py"):
            declared |= set(
                re.findall(r"^class (\w+)\(MailsluiceSettings\)", path.read_text(), re.M)
            )
    assert declared == {cls.__name__ for cls in settings_classes()}


def test_configuration_docs_are_current() -> None:
    # Regenerate with: .venv/bin/mailsluice config docs > docs/configuration.md
    assert DOCS.exists(), "docs/configuration.md missing; run `mailsluice config docs`"
    assert DOCS.read_text().rstrip("\n") == render_docs().rstrip("\n"), (
        "docs/configuration.md is stale; run `.venv/bin/mailsluice config docs "
        "> docs/configuration.md`"
    )


def test_config_docs_command_prints_the_docs(capsys: pytest.CaptureFixture[str]) -> None:
    from mailsluice.cli import main

    assert main(["config", "docs"]) == 0
    out = capsys.readouterr().out
    assert out.rstrip("\n") == render_docs().rstrip("\n")
    assert "`MAILSLUICE_KAFKA_BOOTSTRAP`" in out
    assert "`MAILSLUICE_DNS_NAMESERVERS`" in out
