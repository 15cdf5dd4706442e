"""Records of the compacted topic mailsluice.control: destination commands and worker status.

Why a topic rather than each worker's HTTP endpoint: workers come and go and a destination moves
between them on a rebalance; a compacted topic reaches every current and future owner with no
discovery, and a suspension survives restarts. Two kinds of records share it:

- `cmd/<pool>/<routing key>`: the operator's latest command for a destination (suspend until t,
  resume, retry-now). Workers read the topic from the beginning at start and follow it.
- `status/<pool>/<worker id>`: a worker's snapshot of its destinations (state, queue, rate,
  last error), written periodically and at once after each command of its pool, with the
  timestamp of the last command it applied (`control_ts`), so a reader tells a command the
  worker has not acted on yet; a null value (tombstone) when it shuts down cleanly. `mailsluice
  destinations list` reads these.
- `retries/<mover id>`: a retry mover's counts of the records it holds on the delay topics,
  per destination: shaping holds (suspended, warm-up, throttled, blocked) and failure retries;
  a tombstone when it stops.
- `learned/<pool>/<source address>/<routing key>`: the limits a worker's controller learned for
  a destination from one source address, so a restarted worker or the next owner after a
  rebalance starts from them instead of from scratch.
- `probe/<component>/<instance>`: always a tombstone, written with acks=all to learn whether
  Kafka takes writes again (ingest's readiness after a failed publish); readers skip it.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from typing import Literal

from mailsluice.contracts.versioning import load_versioned

CommandAction = Literal["suspend", "resume", "retry-now"]
VERSION = 1
# v2: control_ts, lag, interval_s (a v1 record reads as control_ts 0: every command looks
# unconfirmed)
STATUS_VERSION = 2
RETRIES_VERSION = 1


@dataclass(frozen=True)
class Command:
    pool: str
    key: str  # routing key
    action: CommandAction
    until: float = 0.0  # epoch seconds; suspend only
    reason: str = ""
    ts: float = field(default_factory=time.time)
    by: str = ""


@dataclass(frozen=True)
class DestinationRow:
    """One destination as a worker sees it."""

    key: str
    state: str  # the controller's (slow_start, steady, probing, hold, blocked, fixed) or suspended
    queued: int = 0
    active: int = 0
    rate: float = 0.0  # messages per second now (inf: unlimited)
    connections: int = 0
    until: float = 0.0  # epoch seconds the suspension or throttle hold lasts
    last_error: str = ""
    rule: str = ""  # the reply rule behind the state (or "operator")
    source: str = ""  # the source address the row is about ("": the pool's only one)
    ceiling: float = 0.0  # learned ceiling in messages per second (0: none found)
    per_connection: int = 0  # messages per connection in force
    last_class: str = ""  # class of the last reply that moved the state


@dataclass(frozen=True)
class Learned:
    """What a controller learned about a destination from one source address."""

    pool: str
    source: str
    key: str  # routing key
    state: str
    rate: float  # messages per second in force
    ceiling: float = 0.0  # learned ceiling in messages per second (0: none found)
    connections: int = 0
    learned_connections: int = 0  # 0: no connection limit found
    per_connection: int = 0  # 0: no per-connection cap found
    until: float = 0.0  # epoch seconds the state lasts (0: open-ended)
    block_interval: float = 0.0  # seconds of the next block, backed off
    last_class: str = ""
    last_reply: str = ""
    ts: float = field(default_factory=time.time)


@dataclass(frozen=True)
class Status:
    pool: str
    worker: str
    ts: float
    destinations: tuple[DestinationRow, ...]
    control_ts: float = 0.0  # `ts` of the last command of this pool the worker applied
    # records of the pool's queue topic on this worker's partitions not finished yet (fetched
    # or not: the destination of those not fetched is not known), and how often it writes
    lag: int = 0
    interval_s: float = 0.0  # 0: unknown (v1)


@dataclass(frozen=True)
class RetryCount:
    """Records of one destination a retry mover holds on the delay topics."""

    pool: str
    key: str  # routing key
    held: int = 0  # deferred by a shaping hold (suspended, warm-up, throttled, blocked)
    retrying: int = 0  # failure retries (a 4xx, a connection failure) waiting for their time


@dataclass(frozen=True)
class RetryStatus:
    mover: str
    ts: float
    interval_s: float  # how often the mover writes this record (a reader judges its age)
    counts: tuple[RetryCount, ...]
    # some partition is paused at the mover's memory bound: records behind it are not counted
    partial: bool = False


def command_key(pool: str, key: str) -> bytes:
    return f"cmd/{pool}/{key}".encode()


def status_key(pool: str, worker: str) -> bytes:
    return f"status/{pool}/{worker}".encode()


def learned_key(pool: str, source: str, key: str) -> bytes:
    return f"learned/{pool}/{source}/{key}".encode()


def retries_key(mover: str) -> bytes:
    return f"retries/{mover}".encode()


def probe_key(component: str, instance: str) -> bytes:
    return f"probe/{component}/{instance}".encode()


def encode_learned(learned: Learned) -> bytes:
    data = asdict(learned)
    data["rate"] = None if data["rate"] == float("inf") else data["rate"]  # JSON has no inf
    return json.dumps({"v": VERSION, **data}, sort_keys=True, allow_nan=False).encode()


def decode_learned(raw: bytes) -> Learned:
    data = load_versioned(raw, VERSION, "control learned limits")
    data["rate"] = float("inf") if data.get("rate") is None else float(data["rate"])
    return Learned(**{k: v for k, v in data.items() if k in _LEARNED_FIELDS})


def encode_command(cmd: Command) -> bytes:
    return json.dumps({"v": VERSION, **asdict(cmd)}, sort_keys=True).encode()


def encode_status(status: Status) -> bytes:
    data = asdict(status)
    for row in data["destinations"]:
        # JSON has no infinity; an unlimited rate is written as null
        row["rate"] = None if row["rate"] == float("inf") else row["rate"]
    return json.dumps({"v": STATUS_VERSION, **data}, sort_keys=True).encode()


def decode_status(raw: bytes) -> Status:
    data = load_versioned(raw, STATUS_VERSION, "control status")
    rows = []
    for row in data["destinations"]:
        row["rate"] = float("inf") if row.get("rate") is None else float(row["rate"])
        rows.append(DestinationRow(**{k: v for k, v in row.items() if k in _ROW_FIELDS}))
    return Status(
        data["pool"],
        data["worker"],
        float(data["ts"]),
        tuple(rows),
        float(data.get("control_ts", 0.0)),
        int(data.get("lag", 0)),
        float(data.get("interval_s", 0.0)),
    )


def encode_retries(status: RetryStatus) -> bytes:
    return json.dumps({"v": RETRIES_VERSION, **asdict(status)}, sort_keys=True).encode()


def decode_retries(raw: bytes) -> RetryStatus:
    data = load_versioned(raw, RETRIES_VERSION, "control retries")
    counts = tuple(
        RetryCount(str(c["pool"]), str(c["key"]), int(c["held"]), int(c["retrying"]))
        for c in data["counts"]
    )
    return RetryStatus(
        str(data["mover"]),
        float(data["ts"]),
        float(data["interval_s"]),
        counts,
        bool(data.get("partial", False)),
    )


_ROW_FIELDS = set(DestinationRow.__dataclass_fields__)
_CMD_FIELDS = set(Command.__dataclass_fields__)
_LEARNED_FIELDS = set(Learned.__dataclass_fields__)


def decode_command(raw: bytes) -> Command:
    data = load_versioned(raw, VERSION, "control command")
    if data.get("action") not in ("suspend", "resume", "retry-now"):
        raise ValueError(f"unknown control action {data.get('action')!r}")
    return Command(**{k: v for k, v in data.items() if k in _CMD_FIELDS})


@dataclass
class ControlState:
    """The current contents of the control topic, built by applying its records in order."""

    commands: dict[tuple[str, str], Command] = field(default_factory=dict)
    statuses: dict[tuple[str, str], Status] = field(default_factory=dict)
    learned: dict[tuple[str, str, str], Learned] = field(default_factory=dict)
    retries: dict[str, RetryStatus] = field(default_factory=dict)

    def apply(self, key: bytes | None, value: bytes | None) -> Command | None:
        """Apply one record; returns the command it carries (for a live worker to act on)."""
        if key is None:
            return None
        kind, _, rest = key.decode(errors="replace").partition("/")
        if kind == "retries" and rest:
            self._apply_retries(rest, value)
            return None
        pool, _, name = rest.partition("/")
        if not pool or not name:
            return None
        try:
            if kind == "cmd":
                if value is None:
                    self.commands.pop((pool, name), None)
                    return None
                cmd = decode_command(value)
                self.commands[(pool, name)] = cmd
                return cmd
            if kind == "status":
                if value is None:
                    self.statuses.pop((pool, name), None)
                else:
                    self.statuses[(pool, name)] = decode_status(value)
            if kind == "learned":
                self._apply_learned(pool, name, value)
        except (ValueError, KeyError, TypeError):
            return None  # a record this version cannot read is skipped, not fatal
        return None

    def _apply_retries(self, mover: str, value: bytes | None) -> None:
        if value is None:
            self.retries.pop(mover, None)
            return
        try:
            self.retries[mover] = decode_retries(value)
        except (ValueError, KeyError, TypeError):
            return  # a record this version cannot read is skipped, not fatal

    def _apply_learned(self, pool: str, name: str, value: bytes | None) -> None:
        source, _, key = name.partition("/")
        if not key:
            return
        if value is None:
            self.learned.pop((pool, source, key), None)
        else:
            self.learned[(pool, source, key)] = decode_learned(value)

    def rows(self, pool: str | None = None) -> list[tuple[str, str, DestinationRow]]:
        """(pool, worker, row) of every reported destination, by pool then key."""
        out = [
            (p, w, row)
            for (p, w), status in self.statuses.items()
            if pool is None or p == pool
            for row in status.destinations
        ]
        return sorted(out, key=lambda item: (item[0], item[2].key))
