"""`make run` (scripts/run_local.py): a bad setting stops it before anything starts, with the
setting's own message; the set-up steps say how long they took; a failed service's own log
lines are what the terminal shows."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from support.paths import REPO, SCRIPTS
from support.scripts import script

run_local = script("run_local")
steps = script("steps")


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("MAILSLUICE_INGEST_LISTEN_PORT", "abc"),  # the case
        ("MAILSLUICE_DELIVERY_POOL", "Not A Pool"),  # a worker's setting
        ("MAILSLUICE_KAFKA_QUEUE_PARTITIONS", "many"),  # shared by every service
    ],
)
def test_a_bad_setting_stops_the_run_before_anything_starts(
    tmp_path: Path, variable: str, value: str
) -> None:
    run_dir = tmp_path / "run"
    done = subprocess.run(
        [sys.executable, str(SCRIPTS / "run_local.py"), "--dir", str(run_dir)],
        env={**os.environ, variable: value},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 2, output
    assert f"invalid setting {variable}:" in done.stderr
    assert "nothing was started" in done.stderr
    assert "Traceback" not in output
    # Nothing started: no run directory (the broker's data and log, pid files, service logs
    # and the tenants file all live there), and no set-up step after the check ran.
    assert not run_dir.exists()
    assert "Kafka" not in done.stdout


def test_make_run_with_a_bad_setting_names_it_and_starts_nothing(tmp_path: Path) -> None:
    """`make test` has made the venv, so `make run` goes straight to the check."""
    run_dir = tmp_path / "run"
    done = subprocess.run(
        ["make", "-s", "run", f"RUN_ARGS=--dir {run_dir}"],
        cwd=REPO,
        env={**os.environ, "MAILSLUICE_INGEST_LISTEN_PORT": "abc"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode != 0
    assert "invalid setting MAILSLUICE_INGEST_LISTEN_PORT:" in done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    assert not run_dir.exists()


def test_the_services_run_local_starts_are_the_ones_the_check_knows() -> None:
    from mailsluice.admin.preflight import SERVICE_SETTINGS

    assert {name for name, _, _ in run_local.SERVICES} <= set(SERVICE_SETTINGS)


def test_a_failed_service_shows_this_runs_lines_of_its_log(tmp_path: Path) -> None:
    log = tmp_path / "ingest.log"
    log.write_text("an earlier run\n")
    offset = log.stat().st_size
    with open(log, "a") as fh:
        fh.writelines(f"line {i}\n" for i in range(30))
        fh.write("invalid setting MAILSLUICE_INGEST_LISTEN_PORT: not a port\n")
    tail = run_local.log_tail(log, offset).splitlines()
    assert len(tail) == run_local.LOG_LINES
    assert tail[-1] == "    invalid setting MAILSLUICE_INGEST_LISTEN_PORT: not a port"
    assert "earlier run" not in "\n".join(run_local.log_tail(log, offset, lines=100))
    assert run_local.log_tail(tmp_path / "missing.log", 0) == "    (no log)"


def test_a_service_killed_by_a_signal_fails_the_run_as_a_shell_would(tmp_path: Path) -> None:
    runner = run_local.Runner(tmp_path, {})
    proc = subprocess.Popen([sys.executable, "-c", "import os, signal; os.kill(os.getpid(), 9)"])
    proc.wait(30)
    (tmp_path / "api.log").write_text("api: something went wrong\n")
    runner.started.append(("api", proc, tmp_path / "api.log", 0))
    failed = runner.exited("api")
    assert failed.code == 128 + 9
    assert "api was killed by SIGKILL" in str(failed)
    assert str(failed).endswith("    api: something went wrong")


def test_a_step_prints_its_name_and_elapsed_time(capsys: pytest.CaptureFixture[str]) -> None:
    assert steps.main(["ok step", "--", sys.executable, "-c", "pass"]) == 0
    assert steps.main(["bad step", "--", sys.executable, "-c", "raise SystemExit(3)"]) == 3
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "==> ok step"
    assert lines[1].startswith("    ok step: done in ") and lines[1].endswith("s")
    assert lines[2] == "==> bad step"
    assert lines[3].startswith("    bad step: failed (status 3) in ")


def test_a_step_that_raises_says_it_failed(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(run_local.Failed), steps.step("topics"):
        raise run_local.Failed("no broker")
    assert capsys.readouterr().out.splitlines()[-1].startswith("    topics: failed after ")
