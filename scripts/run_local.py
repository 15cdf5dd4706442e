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

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import localproc  # a neighbour in scripts/, which is on sys.path

from mailsluice.tenancy.keys import new_key

ROOT = Path(__file__).resolve().parents[1]
RUN_DIR = ROOT / "run"
BIN = ROOT / ".venv" / "bin"
KAFKA_PORT = 9092
TRACKER_PORT = 8082

LOCAL_ENV = {
    "MAILSLUICE_KAFKA_BOOTSTRAP": f"127.0.0.1:{KAFKA_PORT}",
    # Everything goes to the sandbox MX; no recipient domain needs to exist.
    "MAILSLUICE_OUTBOUND_STATIC_ROUTES": "*=127.0.0.1:1025",
    "MAILSLUICE_INGEST_VERIFY_DOMAINS": "false",
    "MAILSLUICE_LOG_JSON_FORMAT": "false",
    "MAILSLUICE_TENANTS_FILE": str(RUN_DIR / "tenants.yaml"),
    "MAILSLUICE_API_LISTEN_HOST": "127.0.0.1",
    # Open and click tracking: a development key (never one of production's), links to the
    # local tracker, every bulk message tracked unless it says otherwise.
    "MAILSLUICE_TRACKING_KEYS": "dev:local-tracking-key-not-secret",
    "MAILSLUICE_TRACKING_URL": f"http://127.0.0.1:{TRACKER_PORT}",
    "MAILSLUICE_TRACKING_DEFAULT": "all",
    "MAILSLUICE_TRACKING_LISTEN_HOST": "127.0.0.1",
    "MAILSLUICE_TRACKING_LISTEN_PORT": str(TRACKER_PORT),
}
API_PORT = 8081

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


def demo_tenant() -> str:
    """Write the tenants file with the `demo` tenant and a new API key; the key."""
    key, digest = new_key("demo01")
    (RUN_DIR / "tenants.yaml").write_text(
        "tenants:\n"
        "  demo:\n"
        "    pools: [default]\n"
        '    domains: [example.com, "*.example.com"]\n'
        f'    api_keys: [{{id: demo01, hash: "{digest}"}}]\n'
    )
    return key


def kafka(action: str) -> None:
    args = [sys.executable, str(ROOT / "scripts" / "kafka_local.py"), action]
    args += ["--dir", str(RUN_DIR / "kafka")]
    if action == "start":
        args += ["--port", str(KAFKA_PORT)]
    subprocess.run(args, check=True)


def wait_ready(name: str, url: str, proc: subprocess.Popen[bytes], timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with status {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{name} not ready after {timeout:.0f}s ({url})")


def stop(name: str, proc: subprocess.Popen[bytes], timeout: float = 20) -> None:
    if localproc.stop_child(proc, timeout):
        print(f"{name} did not stop in {timeout:.0f}s; killed pid {proc.pid}", file=sys.stderr)


def banner(key: str) -> str:
    return f"""
Mailsluice is running locally.
  SMTP ingest       127.0.0.1:2525   (trusted network: loopback, no auth needed)
  HTTP API          http://127.0.0.1:{API_PORT}   (tenant `demo`, key {key})
  tracker           http://127.0.0.1:{TRACKER_PORT}   (open pixel /o/..., click links /c/...)
  sandbox MX        127.0.0.1:1025   (every delivered message lands here)
  sandbox API       http://127.0.0.1:8025/api/v1/messages
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


def main() -> int:
    RUN_DIR.mkdir(exist_ok=True)
    env = {**os.environ, **LOCAL_ENV}
    started: list[tuple[str, subprocess.Popen[bytes]]] = []
    kafka("start")
    stopping = False

    def on_signal(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        key = demo_tenant()
        subprocess.run([str(BIN / "mailsluice"), "topics", "create"], env=env, check=True)
        for name, argv, url in SERVICES:
            log = open(RUN_DIR / f"{name}.log", "ab")  # noqa: SIM115 - lives as long as the child
            # Own session: Ctrl-C reaches only us, and we stop the children in order.
            proc = subprocess.Popen(
                [str(BIN / "mailsluice"), *argv],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            started.append((name, proc))
            wait_ready(name, url, proc)
            print(f"{name} ready (pid {proc.pid}, log run/{name}.log)")
        print(banner(key), flush=True)
        while not stopping:
            for name, proc in started:
                if proc.poll() is not None:
                    print(f"{name} exited with status {proc.returncode}; stopping", file=sys.stderr)
                    stopping = True
            time.sleep(0.5)
    finally:
        print("stopping...", flush=True)
        for name, proc in reversed(started):
            stop(name, proc)
        kafka("stop")
        print("stopped.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
