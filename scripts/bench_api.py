"""`make bench`, HTTP API: accepted recipients per second of `mailsluice api` for POSTs of
1,000 recipients, each with its own data, rendered (subject, a text part with a loop, an HTML
part) and composed one message per recipient, with acks from a real single Kafka broker.

Starts a throwaway broker, creates the topics, writes a tenants file with one API key, starts
`mailsluice api` and POSTs BATCHES batches from CONCURRENCY clients at once (after one warm-up
batch). Prints recipients per second over the whole run and the p50/p95 time of one batch (POST
to 202, which comes only once Kafka has every record); the last line is JSON. Every process
started here is stopped by its pid.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import aiohttp
import kafka_local
from bench_ours import MAILSLUICE, Service, create_topics, start_broker
from bench_run import say
from bench_tools import new_result, tail

from mailsluice.tenancy.keys import new_key

RECIPIENTS = 1000
DOMAINS = ("gmail.com", "yahoo.com", "outlook.com", "example.org", "example.net")
SUBJECT = "{{ first }}, your order {{ order }} has shipped"
TEXT = (
    "Dear {{ first }} {{ last }},\n\nOrder {{ order }}:\n"
    "{% for item in items %}- {{ item.name }} x{{ item.qty }}: {{ '%.2f' | format(item.price) }}\n"
    "{% endfor %}\nTotal {{ '%.2f' | format(total) }}\n"
)
HTML = (
    "<html><body><p>Dear {{ first }} {{ last }},</p><table>"
    "{% for item in items %}<tr><td>{{ item.name }}</td><td>{{ item.qty }}</td></tr>{% endfor %}"
    "</table><p>Total {{ '%.2f' | format(total) }}</p></body></html>"
)


def batch(number: int) -> dict[str, Any]:
    recipients = []
    for i in range(RECIPIENTS):
        items = [{"name": f"item {i}-{k}", "qty": k + 1, "price": 9.5 + k} for k in range(3)]
        data = {
            "first": f"Reader{i}",
            "last": f"Batch{number}",
            "order": number * RECIPIENTS + i,
            "items": items,
            "total": sum(it["qty"] * it["price"] for it in items),
        }
        to = {"email": f"r{number}-{i}@{DOMAINS[i % len(DOMAINS)]}"}
        recipients.append({"to": to, "data": data})
    return {
        "from": {"email": "orders@bench.example", "name": "Bench Shop"},
        "subject": SUBJECT,
        "text": TEXT,
        "html": HTML,
        "campaign": "bench",
        "tags": ["bench"],
        "recipients": recipients,
    }


async def post_all(
    url: str, key: str, batches: int, concurrency: int
) -> tuple[float, list[float], int]:
    """(wall seconds, seconds per batch, recipients accepted) of `batches` POSTs."""
    headers = {"Authorization": f"Bearer {key}"}
    bodies = [json.dumps(batch(n)).encode() for n in range(batches + 1)]
    times: list[float] = []
    accepted = 0
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(timeout=timeout) as http:

        async def one(body: bytes) -> None:
            nonlocal accepted
            started = time.monotonic()
            async with http.post(
                url, data=body, headers={**headers, "Content-Type": "application/json"}
            ) as resp:
                answer = await resp.json(content_type=None)
                if resp.status != 202:
                    raise RuntimeError(f"POST answered {resp.status}: {answer}")
            times.append(time.monotonic() - started)
            accepted += int(answer["accepted"])

        await one(bodies[0])  # warm-up: producer connections, the first metadata
        times.clear()
        accepted = 0
        queue = list(bodies[1:])

        async def client() -> None:
            while queue:
                await one(queue.pop())

        started = time.monotonic()
        await asyncio.gather(*(client() for _ in range(concurrency)))
        return time.monotonic() - started, times, accepted


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def run(args: argparse.Namespace, work: Path, result: dict[str, Any]) -> None:
    with ExitStack() as stack:
        bootstrap = start_broker(stack, work)
        key, digest = new_key()
        tenants = work / "tenants.yaml"
        tenants.write_text(
            json.dumps(
                {
                    "tenants": {
                        "bench": {
                            "pools": ["default"],
                            "domains": ["bench.example"],
                            "api_keys": [{"id": key.split("_")[1], "hash": digest}],
                        }
                    }
                }
            )
        )
        api_port, ops_port = kafka_local.free_port(), kafka_local.free_port()
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("MAILSLUICE_")},
            "MAILSLUICE_KAFKA_BOOTSTRAP": bootstrap,
            "MAILSLUICE_LOG_JSON_FORMAT": "false",
            "MAILSLUICE_TENANTS_FILE": str(tenants),
            "MAILSLUICE_API_LISTEN_HOST": "127.0.0.1",
            "MAILSLUICE_API_LISTEN_PORT": str(api_port),
            "MAILSLUICE_API_HTTP_PORT": str(ops_port),
        }
        create_topics(env)
        api = Service("api", ["api"], env, work)
        stack.callback(api.stop)
        api.start(f"http://127.0.0.1:{ops_port}/readyz")
        say(f"api: ready (pid {api.pid}); {args.batches} batches of {RECIPIENTS}, "
            f"{args.concurrency} at once")  # fmt: skip
        url = f"http://127.0.0.1:{api_port}/v1/messages"
        try:
            wall, times, accepted = asyncio.run(post_all(url, key, args.batches, args.concurrency))
        except Exception:
            say(f"api log: {tail(api.log_path, 15)}")
            raise
        result.update(
            recipients_per_s=round(accepted / wall),
            batch_p50_s=round(statistics.median(times), 3),
            batch_p95_s=round(percentile(times, 0.95), 3),
            accepted=accepted,
            wall_s=round(wall, 2),
            api_peak_rss_mb=api.peak_rss_mb(),
        )
        result["loadavg_at_end"] = [round(v, 2) for v in os.getloadavg()]
        say("stopping everything")


def report(result: dict[str, Any]) -> None:
    if "recipients_per_s" in result:
        print(
            f"HTTP API, batches of {RECIPIENTS} rendered recipients, "
            f"{result['concurrency']} clients:\n"
            f"  accepted recipients/s  {result['recipients_per_s']:>8}\n"
            f"  batch p50 (POST->202)  {result['batch_p50_s']:>8.3f} s\n"
            f"  batch p95              {result['batch_p95_s']:>8.3f} s\n"
            f"  accepted               {result['accepted']:>8} in {result['wall_s']} s",
            flush=True,
        )
    print(json.dumps(result), flush=True)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--concurrency", type=int, default=4)
    args = parser.parse_args(argv)
    result = new_result(
        "api",
        batches=args.batches,
        concurrency=args.concurrency,
        recipients_per_batch=RECIPIENTS,
        cpus=os.cpu_count(),
    )
    if not MAILSLUICE.exists():
        result["errors"].append(f"{MAILSLUICE} missing (run make setup)")
    work = Path(tempfile.mkdtemp(prefix="mailsluice-bench-api-"))
    say(f"work dir {work}")
    signal.signal(signal.SIGTERM, _interrupt)  # unwind through the stops (by pid)
    try:
        if not result["errors"]:
            run(args, work, result)
    except KeyboardInterrupt:
        result["errors"].append("interrupted")
    except Exception as exc:
        result["errors"].append(f"api: {exc}")
        say(f"FAILED {exc}")
    report(result)
    return 1 if result["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
