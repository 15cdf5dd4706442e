"""`mailsluice config check`: each service's settings checked as the service checks them at
start, without starting it (scripts/run_local.py runs it before anything else)."""

from __future__ import annotations

import ast
import importlib
import inspect
import subprocess
import sys
from pathlib import Path

import pytest

from mailsluice.admin import preflight
from mailsluice.cli import COMMANDS
from mailsluice.config import MailsluiceSettings

MAILSLUICE = Path(sys.executable).parent / "mailsluice"
RUN_LOCAL = ["sandbox", "delivery", "streams", "ingest", "api", "webhooks", "tracker"]


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in [n for n in os.environ if n.startswith("MAILSLUICE_")]:
        monkeypatch.delenv(name)


def test_defaults_are_valid_for_services_without_keys() -> None:
    keyless = [s for s in preflight.SERVICE_SETTINGS if s not in ("tracker", "unsubscribe")]
    assert preflight.check(keyless) == []


def test_a_bad_value_is_named_once_with_the_services_message(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MAILSLUICE_INGEST_LISTEN_PORT", "abc")
    monkeypatch.setenv("MAILSLUICE_KAFKA_QUEUE_PARTITIONS", "many")
    problems = preflight.check(["ingest", "delivery", "api"])
    assert problems == [
        "invalid setting MAILSLUICE_KAFKA_QUEUE_PARTITIONS: Input should be a valid integer, "
        "unable to parse string as an integer",
        "invalid setting MAILSLUICE_INGEST_LISTEN_PORT: Input should be a valid integer, "
        "unable to parse string as an integer",
    ]
    # only the services that read a setting complain about it
    assert preflight.check(["delivery"]) == [problems[0]]
    monkeypatch.delenv("MAILSLUICE_KAFKA_QUEUE_PARTITIONS")
    assert preflight.check(["sandbox", "delivery"]) == []


def test_keys_a_service_needs_are_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    assert preflight.check(["tracker"]) == [
        "tracker: no tracking keys (MAILSLUICE_TRACKING_KEYS_DIR or _KEYS)"
    ]
    monkeypatch.setenv("MAILSLUICE_TRACKING_KEYS", "dev:local-tracking-key-not-secret")
    assert preflight.check(["tracker"]) == []


def test_every_service_is_a_command_and_every_settings_class_is_known() -> None:
    commands = {name for name, _, _ in COMMANDS}
    assert set(preflight.SERVICE_SETTINGS) <= commands
    for refs in preflight.SERVICE_SETTINGS.values():
        for ref in refs:
            assert issubclass(preflight.settings_class(ref), MailsluiceSettings)


def _loaded_names(module_name: str) -> set[str]:
    """The names of the classes a service module passes to load(...)."""
    tree = ast.parse(inspect.getsource(importlib.import_module(module_name)))
    return {
        call.args[0].id
        for call in ast.walk(tree)
        if isinstance(call, ast.Call)
        and isinstance(call.func, ast.Name)
        and call.func.id == "load"
        and call.args
        and isinstance(call.args[0], ast.Name)
    }


@pytest.mark.parametrize("service", list(preflight.SERVICE_SETTINGS))
def test_the_check_covers_what_the_service_loads(service: str) -> None:
    # If a service starts loading another settings class, its check must too.
    module_name = next(module for name, module, _ in COMMANDS if name == service)
    checked = {ref.partition(":")[2] for ref in preflight.SERVICE_SETTINGS[service]}
    assert _loaded_names(module_name) - checked == set()


def test_the_command_exits_2_naming_the_variable() -> None:
    env = {"PATH": "/usr/bin:/bin", "MAILSLUICE_INGEST_LISTEN_PORT": "abc"}
    bad = subprocess.run(
        [str(MAILSLUICE), "config", "check", *RUN_LOCAL],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert bad.returncode == 2
    assert bad.stderr.startswith("invalid setting MAILSLUICE_INGEST_LISTEN_PORT: ")
    assert "Traceback" not in bad.stderr
    good = subprocess.run(
        [str(MAILSLUICE), "config", "check", "ingest", "api"],
        env={"PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (good.returncode, good.stdout) == (0, "settings ok: ingest, api\n")


def test_an_unknown_service_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    from mailsluice.cli import main

    assert main(["config", "check", "ingset"]) == 2
    assert "unknown service 'ingset' (did you mean ingest?" in capsys.readouterr().err
