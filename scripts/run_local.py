"""`make run`: the whole pipeline on this machine, on its embedded defaults.

Starts a single-node Kafka, the sandbox MX (captures everything delivered), ingest on
127.0.0.1:2525, the HTTP API on 127.0.0.1:8081 for a `demo` tenant (its API key is made at
start and printed), the tracker on 127.0.0.1:8082 (opens and clicks of the HTML mail the worker
tracks), a delivery worker for the default pool, the stream processors (events
become suppressions and campaign stats) and the webhook sender, all routed to the sandbox so
nothing leaves the machine. Ctrl-C stops everything, each process by its own pid, in reverse
order.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import localproc  # neighbours in scripts/, which is on sys.path
import steps

from mailsluice.tenancy.keys import new_key

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # the venv's bin: `make run` runs us with its python
KAFKA_PORT = 9092
TRACKER_PORT = 8082
API_PORT = 8081
READY_TIMEOUT_S = 90.0
LOG_LINES = 20  # lines of a failed service's log shown on the terminal


def local_env(run_dir: Path) -> dict[str, str]:
    return {
        "MAILSLUICE_KAFKA_BOOTSTRAP": f"127.0.0.1:{KAFKA_PORT}",
        # Everything goes to the sandbox MX; no recipient domain needs to exist.
        "MAILSLUICE_OUTBOUND_STATIC_ROUTES": "*=127.0.0.1:1025",
        "MAILSLUICE_INGEST_VERIFY_DOMAINS": "false",
        "MAILSLUICE_LOG_JSON_FORMAT": "false",
        "MAILSLUICE_TENANTS_FILE": str(run_dir / "tenants.yaml"),
        "MAILSLUICE_API_LISTEN_HOST": "127.0.0.1",
        # Open and click tracking: a development key (never one of production's), links to the
        # local tracker, every bulk message tracked unless it says otherwise.
        "MAILSLUICE_TRACKING_KEYS": "dev:local-tracking-key-not-secret",
        "MAILSLUICE_TRACKING_URL": f"http://127.0.0.1:{TRACKER_PORT}",
        "MAILSLUICE_TRACKING_DEFAULT": "all",
        "MAILSLUICE_TRACKING_LISTEN_HOST": "127.0.0.1",
        "MAILSLUICE_TRACKING_LISTEN_PORT": str(TRACKER_PORT),
    }


# (name, argv, readiness URL)
SERVICES = (
    ("sandbox", ["sandbox"], "http://127.0.0.1:8025/healthz"),
    ("delivery", ["delivery", "--pool", "default"], "http://127.0.0.1:9102/readyz"),
    ("streams", ["streams"], "http://127.0.0.1:9105/readyz"),
    ("ingest", ["ingest"], "http://127.0.0.1:9101/readyz"),
    ("api", ["api"], "http://127.0.0.1:9107/readyz"),
    ("webhooks", ["webhooks"], "http://127.0.0.1:9108/readyz"),
    ("tracker", ["tracker"], "http://127.0.0.1:9109/readyz"),
)


class Failed(Exception):
    """A step failed: the message is for the terminal, the code is the exit status."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def demo_tenant(run_dir: Path) -> str:
    """Write the tenants file with the `demo` tenant and a new API key; the key."""
    key, digest = new_key("demo01")
    (run_dir / "tenants.yaml").write_text(
        "tenants:\n"
        "  demo:\n"
        "    pools: [default]\n"
        '    domains: [example.com, "*.example.com"]\n'
        f'    api_keys: [{{id: demo01, hash: "{digest}"}}]\n'
    )
    return key


def shown(path: Path) -> str:
    """A path as the user would type it: relative to the current directory when inside it."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def check_settings(env: dict[str, str]) -> None:
    """Every service's settings, checked as each service checks them at start (`mailsluice
    config check`), before anything is installed or started; its messages name the variables."""
    names = [name for name, _, _ in SERVICES]
    with steps.step("check every service's settings (nothing starts if one is bad)"):
        done = subprocess.run(
            [str(BIN / "mailsluice"), "config", "check", *names], env=env, check=False
        )
        if done.returncode != 0:
            raise Failed("make run: fix the settings above; nothing was started", 2)


def prepare() -> None:
    """The Debian packages and the Kafka jars (both cached: nothing to do the second time)."""
    with steps.step("Debian packages (only those missing)"):
        if subprocess.run(
            ["bash", str(ROOT / "scripts" / "install_system_deps.sh")], check=False
        ).returncode:
            raise Failed("make run: installing the Debian packages failed (see above)")
    with steps.step("Kafka jars (Maven Central, cached under .cache)"):
        script = str(ROOT / "scripts" / "kafka_local.py")
        done = subprocess.run(
            [sys.executable, script, "fetch"], stdout=subprocess.DEVNULL, check=False
        )
        if done.returncode:
            raise Failed("make run: fetching the Kafka jars failed (see above)")


def log_tail(path: Path, offset: int, lines: int = LOG_LINES) -> str:
    """The last lines this run wrote to a service's log, indented for the terminal."""
    try:
        with open(path, "rb") as fh:
            fh.seek(offset)
            text = fh.read().decode("utf-8", "replace")
    except OSError:
        return "    (no log)"
    tail = text.splitlines()[-lines:] or ["(empty)"]
    return "\n".join(f"    {line}" for line in tail)


class Runner:
    """What this run started, in order, so that it is stopped by pid in reverse order."""

    def __init__(self, run_dir: Path, env: dict[str, str]) -> None:
        self.run_dir = run_dir
        self.env = env
        self.kafka_dir = run_dir / "kafka"
        self.kafka_started = False
        self.started: list[tuple[str, subprocess.Popen[bytes], Path, int]] = []
        self.stopping = False

    def on_signal(self, _signum: int, _frame: object) -> None:
        self.stopping = True

    def kafka(self, action: str) -> subprocess.CompletedProcess[bytes]:
        args = [sys.executable, str(ROOT / "scripts" / "kafka_local.py"), action]
        args += ["--dir", str(self.kafka_dir)]
        if action == "start":
            args += ["--port", str(KAFKA_PORT)]
        return subprocess.run(args, stdout=subprocess.DEVNULL, check=False)

    def start_kafka(self) -> None:
        with steps.step(f"Kafka broker on 127.0.0.1:{KAFKA_PORT} (log {shown(self.kafka_dir)})"):
            self.kafka_started = True  # it may have spawned the broker even when it fails
            if self.kafka("start").returncode:
                raise Failed("make run: the Kafka broker did not start (see above)")

    def create_topics(self) -> None:
        with steps.step("Kafka topics"):
            done = subprocess.run(
                [str(BIN / "mailsluice"), "topics", "create"],
                env=self.env,
                stdout=subprocess.DEVNULL,
                check=False,
            )
            if done.returncode:
                raise Failed("make run: creating the topics failed (see above)")

    def start_service(self, name: str, argv: list[str], url: str) -> None:
        log_path = self.run_dir / f"{name}.log"
        offset = log_path.stat().st_size if log_path.exists() else 0
        with steps.step(f"{name} (log {shown(log_path)})"):
            with open(log_path, "ab") as log:
                # Own session: Ctrl-C reaches only us, and we stop the children in order.
                proc = subprocess.Popen(
                    [str(BIN / "mailsluice"), *argv],
                    env=self.env,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            self.started.append((name, proc, log_path, offset))
            self.wait_ready(name, url, proc)
            print(f"    {name} ready (pid {proc.pid})", flush=True)

    def wait_ready(self, name: str, url: str, proc: subprocess.Popen[bytes]) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.stopping:
                raise Failed("interrupted", 130)
            if proc.poll() is not None:
                raise self.exited(name)
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.5)
        raise self.failure(name, f"not ready after {READY_TIMEOUT_S:.0f}s ({url})", 1)

    def exited(self, name: str) -> Failed:
        status = next(p for n, p, _, _ in self.started if n == name).returncode or 0
        if status < 0:  # killed by a signal: report it as a shell would (128 + signal)
            what, code = f"was killed by {signal.Signals(-status).name}", 128 - status
        else:
            what, code = f"exited with status {status}", status or 1
        return self.failure(name, what, code)

    def failure(self, name: str, what: str, code: int) -> Failed:
        _, _, log_path, offset = next(s for s in self.started if s[0] == name)
        text = f"make run: {name} {what}; its log ({shown(log_path)}) ends with:\n"
        return Failed(text + log_tail(log_path, offset), code)

    def watch(self) -> None:
        """Until Ctrl-C or SIGTERM; a service that exits on its own fails the run."""
        while not self.stopping:
            for name, proc, _, _ in self.started:
                if proc.poll() is not None:
                    raise self.exited(name)
            time.sleep(0.5)

    def stop_all(self) -> None:
        if not self.started and not self.kafka_started:
            return
        print("stopping...", flush=True)
        for name, proc, _, _ in reversed(self.started):
            if localproc.stop_child(proc, 20):
                print(f"{name} did not stop in 20s; killed pid {proc.pid}", file=sys.stderr)
        if self.kafka_started:
            self.kafka("stop")
        print("stopped.", flush=True)


def banner(key: str) -> str:
    return f"""
Mailsluice is running locally.
  SMTP ingest       127.0.0.1:2525   (trusted network: loopback, no auth needed)
  HTTP API          http://127.0.0.1:{API_PORT}   (tenant `demo`, key {key})
  tracker           http://127.0.0.1:{TRACKER_PORT}   (open pixel /o/..., click links /c/...)
  sandbox MX        127.0.0.1:1025   (every delivered message lands here)
  sandbox API       http://127.0.0.1:8025/api/v1/messages
  sandbox web UI    http://127.0.0.1:8025/   (list, search, HTML view, live updates)
  metrics           http://127.0.0.1:9101/metrics (ingest), :9102 (delivery), :9105 (streams),
                    :9107 (api), :9108 (webhooks), :9109 (tracker)
  Kafka             127.0.0.1:{KAFKA_PORT}

Send a message:
  swaks --server 127.0.0.1:2525 --from you@example.com --to someone@example.org
Send over HTTP (each recipient rendered with its own data):
  curl -s http://127.0.0.1:{API_PORT}/v1/messages -H 'Authorization: Bearer {key}' \\
    -H 'Content-Type: application/json' -d '{{"from": {{"email": "news@example.com"}},
    "subject": "Hi {{{{ name }}}}", "text": "Hello {{{{ name }}}}", "campaign": "welcome",
    "html": "<p>Hello {{{{ name }}}}, <a href=\\"https://example.com/spring\\">spring</a></p>",
    "recipients": [{{"to": {{"email": "ann@example.org"}}, "data": {{"name": "Ann"}}}}]}}'
  curl -s http://127.0.0.1:{API_PORT}/v1/campaigns/welcome -H 'Authorization: Bearer {key}'
  (its HTML link and pixel go through the tracker on 127.0.0.1:{TRACKER_PORT}: open one from the
  sandbox's copy and the campaign's opens and clicks count it)
See it in Kafka:
  .venv/bin/mailsluice peek --pool default
See it delivered:
  curl -s http://127.0.0.1:8025/api/v1/messages

Ctrl-C stops everything.
"""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Run the whole pipeline locally (`make run`).")
    parser.add_argument(
        "--dir", type=Path, default=ROOT / "run", help="run directory: logs, Kafka's data"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    run_dir = parse_args(argv).dir
    env = {**os.environ, **local_env(run_dir)}
    runner = Runner(run_dir, env)
    signal.signal(signal.SIGINT, runner.on_signal)
    signal.signal(signal.SIGTERM, runner.on_signal)
    try:
        check_settings(env)
        prepare()
        run_dir.mkdir(parents=True, exist_ok=True)
        runner.start_kafka()
        key = demo_tenant(run_dir)
        runner.create_topics()
        for name, service_argv, url in SERVICES:
            runner.start_service(name, service_argv, url)
        print(banner(key), flush=True)
        runner.watch()
    except Failed as exc:
        print(exc, file=sys.stderr, flush=True)
        return exc.code
    finally:
        runner.stop_all()
    return 0


if __name__ == "__main__":
    sys.exit(main())
