"""The table of `mailsluice destinations list`, from the control topic read to its end.

What each row shows, and as of when (the AGE column):
- a worker's status row (state, queue, rate) as of the worker's last status record; unless an
  operator's command for that destination came after the last command the worker had applied
  when it wrote it (the record's `control_ts`): then the row shows the command's effect
  (suspended until t; resumed) as of the command, marked `*`, until the worker reports it,
  which it does at once (runtime.py), so a `list` right after a `suspend` never shows the state
  before it; a destination a worker starts on, or one entering or leaving a troubled state, is
  reported within seconds (shaping/status.py StatusSoon), the rest every status interval;
- HELD and RETRY: what the retry movers hold on the delay topics (report.py), as of their
  records; a mover's record older than three of its intervals is a mover gone and not counted;
- QUEUED: the messages of the pool's queue topic waiting in the worker's memory for the
  destination (fetched, not yet sent or deferred); ACTIVE: those being sent. Records a worker
  has not fetched yet have no known destination: a line per pool gives the whole queue topic's
  records not yet finished by its live workers (their status records' `lag`).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass

from mailsluice.contracts.control import Command, ControlState, DestinationRow, Status
from mailsluice.contracts.routing import base_of

# A mover's record older than this many of its intervals (plus the slack) is a mover gone.
MOVER_MISSED = 3
MOVER_SLACK_S = 10.0
# The state a resumed lane's controller leaves at once (lanes.py `lift`)
LIFTED = ("blocked", "probe", "probing", "hold")
HEADER = (
    f"{'POOL':<12} {'DESTINATION':<28} {'SOURCE':<15} {'STATE':<11} {'AGE':>9} {'QUEUED':>7} "
    f"{'HELD':>6} {'RETRY':>6} {'ACTIVE':>6} {'RATE/MIN':>9} {'CEIL/MIN':>9} {'CONNS':>5} "
    f"{'PER-CONN':>8} {'CLASS':<14} {'UNTIL':<20} LAST REPLY"
)
LAG_NOTE = (
    "pool {pool}: {lag} records of its queue topic not delivered yet (QUEUED: those a worker "
    "has fetched, by destination)"
)
PENDING_NOTE = "* from the operator's command: no worker has reported since it"
PARTIAL_NOTE = "HELD and RETRY are lower bounds: a retry mover is at its memory bound"


@dataclass
class Line:
    pool: str
    key: str
    state: str
    age_s: float
    pending: bool = False  # shown from a command not yet confirmed by a worker
    until: float = 0.0
    worker: str = ""
    row: DestinationRow | None = None
    held: int = 0
    retrying: int = 0
    command: str = ""
    lag: int | None = None  # the reporting worker's unfinished records of the queue topic


def retry_counts(
    state: ControlState, now: float
) -> tuple[dict[tuple[str, str], list[float]], bool]:
    """(pool, key) -> [held, retrying, ts of the oldest record counted]; and whether any mover
    counts only part of what it has."""
    out: dict[tuple[str, str], list[float]] = {}
    partial = False
    for status in state.retries.values():
        if _gone(status.ts, status.interval_s, now):
            continue
        partial = partial or status.partial
        for c in status.counts:
            entry = out.setdefault((c.pool, c.key), [0, 0, status.ts])
            entry[0] += c.held
            entry[1] += c.retrying
            entry[2] = min(entry[2], status.ts)
    return out, partial


def _gone(ts: float, interval_s: float, now: float) -> bool:
    """Whether a worker's or mover's record is too old for it to be still running."""
    return now - ts > MOVER_MISSED * interval_s + MOVER_SLACK_S


def command_for(state: ControlState, pool: str, key: str) -> Command | None:
    """The latest command covering `key` (its own, or its provider's for a shard)."""
    found = [state.commands.get((pool, k)) for k in dict.fromkeys((key, base_of(key)))]
    return max((c for c in found if c is not None), key=lambda c: c.ts, default=None)


def _effect(
    state: ControlState, cmd: Command, pool: str, row: DestinationRow, now: float
) -> tuple[str, float]:
    """The state and until a worker shows for `row` once it applies `cmd`."""
    if cmd.action == "suspend":
        return ("suspended", cmd.until) if cmd.until > now else (row.state, row.until)
    if row.state == "suspended" or row.state in LIFTED:
        learned = state.learned.get((pool, row.source, row.key))
        if learned is None or learned.state == "suspended":
            return "resumed", 0.0
        return ("steady" if learned.state in LIFTED else learned.state), 0.0
    return row.state, row.until


def _worker_line(
    state: ControlState, p: str, status: Status, row: DestinationRow, now: float
) -> Line:
    cmd = command_for(state, p, row.key)
    line = Line(p, row.key, row.state, now - status.ts, until=row.until, worker=status.worker)
    line.row, line.command, line.lag = row, cmd.action if cmd else "", status.lag
    if cmd is not None and cmd.ts > status.control_ts:
        line.state, line.until = _effect(state, cmd, p, row, now)
        line.age_s, line.pending = now - cmd.ts, True
    return line


def lines_of(state: ControlState, pool: str | None, now: float) -> tuple[list[Line], bool]:
    counts, partial = retry_counts(state, now)
    out: list[Line] = []
    for (p, _worker), status in sorted(state.statuses.items()):
        if pool is None or p == pool:
            out += [_worker_line(state, p, status, row, now) for row in status.destinations]
    out.sort(key=lambda line: (line.pool, line.key, line.row.source if line.row else ""))
    seen = {(line.pool, line.key) for line in out}
    # a provider's command shows on its shards' rows (a worker reports "google#2")
    covered = seen | {(line.pool, base_of(line.key)) for line in out}
    for (p, key), cmd in state.commands.items():
        if (pool is None or p == pool) and (p, key) not in covered and _active(cmd, now):
            out.append(Line(p, key, "suspended", now - cmd.ts, True, cmd.until, command=cmd.action))
            seen.add((p, key))
    for (p, key), (_held, _retrying, ts) in counts.items():
        if (pool is None or p == pool) and (p, key) not in seen:
            latest = command_for(state, p, key)
            held_state = "suspended" if latest is not None and _active(latest, now) else "-"
            action = latest.action if latest else ""
            out.append(Line(p, key, held_state, now - ts, command=action))
    out.sort(key=lambda line: (line.pool, line.key))
    for line in out:  # the counts go on the first row of their destination
        entry = counts.pop((line.pool, line.key), None)
        if entry is not None:
            line.held, line.retrying = int(entry[0]), int(entry[1])
    return out, partial


def pool_lags(state: ControlState, pool: str | None, now: float) -> dict[str, int]:
    """Per pool, the records of its queue topic its live workers have not finished (a status
    older than three of its worker's intervals is a worker gone: its partitions are another's)."""
    out: dict[str, int] = {}
    for (p, _worker), status in sorted(state.statuses.items()):
        gone = status.interval_s and _gone(status.ts, status.interval_s, now)
        if (pool is None or p == pool) and not gone:
            out[p] = out.get(p, 0) + status.lag
    return out


def render(state: ControlState, pool: str | None, *, as_json: bool, now: float) -> list[str]:
    lines, partial = lines_of(state, pool, now)
    if as_json:
        return [json.dumps(_json(line), sort_keys=True) for line in lines]
    text = [HEADER] + [_text(line) for line in lines]
    for p, lag in pool_lags(state, pool, now).items():
        text.append(LAG_NOTE.format(pool=p, lag=lag))
    if any(line.pending for line in lines):
        text.append(PENDING_NOTE)
    if partial:
        text.append(PARTIAL_NOTE)
    return text


def _json(line: Line) -> dict[str, object]:
    # no worker reports the destination: its queue and sends are unknown, not 0
    data: dict[str, object] = (
        asdict(line.row) if line.row else {"key": line.key, "queued": None, "active": None}
    )
    if line.row is not None:
        data["rate"] = None if math.isinf(line.row.rate) else line.row.rate
        data["reported_state"] = line.row.state
    data.update(
        pool=line.pool,
        worker=line.worker,
        state=line.state,
        until=line.until,
        age_s=round(line.age_s, 3),
        worker_lag=line.lag,
        confirmed=not line.pending,
        held=line.held,
        retrying=line.retrying,
        command=line.command,
    )
    return data


def _text(line: Line) -> str:
    row = line.row or DestinationRow(line.key, line.state)
    # no worker reports it: its queue, sends and connections are unknown
    queued, active, conns = (row.queued, row.active, row.connections) if line.row else ("-",) * 3
    rate = "unlimited" if math.isinf(row.rate) else f"{row.rate * 60:.4g}" if line.row else "-"
    ceiling = f"{row.ceiling * 60:.4g}" if row.ceiling else "-"
    until = _when(line.until) if line.until else ""
    age = age_text(line.age_s) + ("*" if line.pending else "")
    return (
        f"{line.pool:<12} {line.key:<28} {row.source or '-':<15} {line.state:<11} {age:>9} "
        f"{queued:>7} {line.held:>6} {line.retrying:>6} {active:>6} {rate:>9} "
        f"{ceiling:>9} {conns:>5} {row.per_connection or '-':>8} "
        f"{row.last_class or '-':<14} {until:<20} {row.last_error[:120]}"
    ).rstrip()


def age_text(seconds: float) -> str:
    """'12s ago', '3m ago', '2h ago', '4d ago' (a clock ahead of ours reads as 0s)."""
    s = max(0, int(seconds))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= size:
            return f"{s // size}{unit} ago"
    return f"{s}s ago"


def _active(cmd: Command, now: float) -> bool:
    return cmd.action == "suspend" and cmd.until > now


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))
