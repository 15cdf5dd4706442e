"""The SendingPool's spec and status as pydantic models: the one source of the CRD's schema (types,
limits, defaults, validation rules) and of the defaults reconcile fills in.

Rules across fields are CEL (`x-kubernetes-validations`), enforced by the API server;
`check_limits` checks the same limits again, so a pool stored under an older CRD cannot crash a
reconciliation. The operator reads specs as plain dicts (kopf's bodies), so these models are
never used to parse one: `SPEC_SCHEMA` and `with_defaults` are what the rest of the operator uses.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema
from pydantic.alias_generators import to_camel
from pydantic.config import JsonDict

from mailsluice.tracking.settings import Choice
from mailsluice_operator import schema
from mailsluice_operator.problems import PermanentProblem
from mailsluice_operator.warmup import PRESETS

DNS_NAME = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$"
INT32: JsonDict = {"format": "int32"}
INT64: JsonDict = {"format": "int64"}


def _map_list(*keys: str) -> JsonDict:
    """A list whose items are identified by `keys`: merged per item by server-side apply, and
    the API server refuses two items with the same keys."""
    return {"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": list(keys)}


def _rules(*rules: tuple[str, str]) -> JsonDict:
    return {"x-kubernetes-validations": [{"rule": r, "message": m} for r, m in rules]}


IntOrString = Annotated[int | str, WithJsonSchema({"x-kubernetes-int-or-string": True})]
Count = Annotated[int | None, Field(json_schema_extra=INT64)]


class Model(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True)


class WarmupDay(Model):
    day: int = Field(ge=1, le=3650, description="Day of the ramp, from 1.", json_schema_extra=INT32)
    volume: int = Field(
        ge=0, description="Messages the pool may send on that day.", json_schema_extra=INT64
    )


class WarmupSource(Model):
    model_config = ConfigDict(
        json_schema_extra=_rules(
            (
                "has(self.startDate) != (has(self.warm) && self.warm)",
                "give the address either its own startDate or warm: true",
            ),
            ("isIP(self.address)", "address must be an IP address"),
        )
    )

    address: str = Field(
        min_length=2, max_length=45, description="One of the pool's sourceAddresses."
    )
    start_date: dt.date | None = Field(
        None, description="Day 1 of this address's ramp (YYYY-MM-DD), instead of the pool's."
    )
    warm: bool | None = Field(
        None, description="true: the address is already warm and sends without a warm-up cap."
    )


class Warmup(Model):
    model_config = ConfigDict(
        json_schema_extra=_rules(
            (
                "!has(self.table) || size(self.table) == 0 || self.preset == 'none'",
                "give either a warm-up preset or a table, not both",
            )
        )
    )

    preset: str = Field(
        "none",
        description="Named ramp: none, sendgrid-like (20/hour, x1.4 a day) or "
        "ses-45-day (45 days to 50,000/day).",
        json_schema_extra={"enum": list(PRESETS)},
    )
    table: list[WarmupDay] | None = Field(
        None,
        max_length=366,
        description="Custom ramp: daily volume from a day on (1-based); past the last day the "
        "pool is warm and uncapped.",
        json_schema_extra=_map_list("day"),
    )
    start_date: dt.date | None = Field(
        None, description="Day 1 of the ramp (YYYY-MM-DD); default: the pool's creation day."
    )
    sources: list[WarmupSource] | None = Field(
        None,
        max_length=64,
        description="Each source address follows the ramp on its own (its own day and caps) "
        "from startDate; list an address here to give it its own start date, or to mark it "
        "warm.",
        json_schema_extra=_map_list("address"),
    )


NO_WARMUP = Warmup.model_validate({})


class ShapingRule(Model):
    match: str = Field(
        min_length=1,
        max_length=253,
        description="Provider name of the shaping policy (e.g. google, no dot) or recipient "
        "domain (with a dot).",
    )
    messages_per_second: float | None = Field(
        None, gt=0, description="Most messages per second to this destination."
    )
    max_connections: int | None = Field(
        None,
        ge=1,
        le=1000,
        description="Most concurrent connections to this destination.",
        json_schema_extra=INT32,
    )
    messages_per_connection: int | None = Field(
        None,
        ge=1,
        le=100000,
        description="Messages sent over one connection before it is closed.",
        json_schema_extra=INT32,
    )


class Resources(Model):
    requests: dict[str, IntOrString] | None = None
    limits: dict[str, IntOrString] | None = None


class EnvVar(Model):
    # The rest of a Kubernetes EnvVar (value, valueFrom) is kept as written.
    model_config = ConfigDict(extra="allow")

    name: str = Field(min_length=1, description="Variable name.")


class WorkerTemplate(Model):
    image: str | None = Field(
        None,
        max_length=512,
        description="Worker image (default: the operator's MAILSLUICE_OPERATOR_IMAGE).",
    )
    resources: Resources | None = Field(
        None, description="Container resources (requests, limits) as in a Pod spec."
    )
    env: list[EnvVar] | None = Field(
        None,
        max_length=128,
        description="Extra environment variables (EnvVar objects); they win over the "
        "operator's by name.",
    )
    node_selector: dict[str, str] | None = Field(
        None,
        description="Node labels the workers must run on (e.g. nodes owning the IPs).",
    )
    tolerations: list[dict[str, Any]] | None = Field(
        None, max_length=64, description="Tolerations of worker pods."
    )


class Dkim(Model):
    """DKIM signing of the pool's mail: keys from a Secret mounted into the workers."""

    secret_name: str = Field(
        min_length=1,
        max_length=253,
        pattern=DNS_NAME,
        description="Secret with the private keys, one per selector, each under the key "
        "<selector>._domainkey.<domain>.pem (`mailsluice dkim keygen` writes such files).",
    )
    domain: str | None = Field(
        None,
        max_length=253,
        pattern=DNS_NAME,
        description="Signing domain for mail whose header From domain has no key (the pool's "
        "own domain); unset: such mail goes unsigned.",
    )
    schedule_key: str | None = Field(
        None,
        max_length=253,
        pattern=r"^[-._a-zA-Z0-9]+$",
        description="Key of the Secret holding the rotation schedule (YAML: when each selector "
        "starts signing, grace_days); unset: every key signs from the start.",
    )


class PoolSpec(Model):
    """What the pool sends from and how it scales."""

    model_config = ConfigDict(
        json_schema_extra=_rules(
            ("self.minWorkers <= self.maxWorkers", "minWorkers must not exceed maxWorkers"),
            (
                "self.maxWorkers <= self.partitions",
                "maxWorkers must not exceed partitions (a worker needs a partition)",
            ),
            (
                "!has(self.replicas) || self.replicas <= self.partitions",
                "replicas must not exceed partitions",
            ),
        )
    )

    source_addresses: list[Annotated[str, Field(min_length=2, max_length=45)]] | None = Field(
        None,
        max_length=64,
        description="IP addresses the workers send from (must exist on their nodes); mail is "
        "spread over all of them.",
        json_schema_extra={
            **_rules(("self.all(a, isIP(a))", "every source address is an IP")),
            "x-kubernetes-list-type": "set",  # the API server refuses duplicates
        },
    )
    ehlo_name: str = Field(
        max_length=253,
        pattern=DNS_NAME,
        description="Host name in EHLO; should match the source addresses' PTR.",
    )
    warmup: Warmup = Field(
        default=NO_WARMUP,
        description="IP warm-up: a preset ramp or a custom table of daily volumes.",
        json_schema_extra={"default": NO_WARMUP.model_dump(by_alias=True, exclude_none=True)},
    )
    shaping: list[ShapingRule] | None = Field(
        None,
        max_length=256,
        description="Overrides of the shipped shaping policy for this pool, per provider or "
        "domain.",
        json_schema_extra=_map_list("match"),
    )
    partitions: int = Field(
        12,
        ge=1,
        le=1000,
        description="Partitions of the pool's queue topic; grows, never shrinks.",
        json_schema_extra=INT32,
    )
    min_workers: int = Field(
        1, ge=0, le=1000, description="Fewest workers.", json_schema_extra=INT32
    )
    max_workers: int = Field(
        4, ge=1, le=1000, description="Most workers (at most partitions).", json_schema_extra=INT32
    )
    lag_per_worker: int = Field(
        1000,
        ge=1,
        le=10_000_000,
        description="Queued messages one worker should have (KEDA lagThreshold).",
        json_schema_extra=INT32,
    )
    worker_throughput: float = Field(
        50,
        gt=0,
        description="Messages per second one worker sustains; with today's warm-up cap it "
        "bounds how many workers are useful.",
    )
    scale_down_stabilization_seconds: int = Field(
        300,
        ge=0,
        le=86400,
        description="How long lower worker counts must be wanted before scaling down.",
        json_schema_extra=INT32,
    )
    replicas: int | None = Field(
        None,
        ge=0,
        le=1000,
        description="Fixed worker count (scale subresource); unset: scale on lag.",
        json_schema_extra=INT32,
    )
    worker_template: WorkerTemplate | None = Field(
        None, description="How worker pods look; unset fields take the operator's defaults."
    )
    dkim: Dkim | None = Field(None, description="DKIM signing; unset: the pool signs nothing.")
    tracking: Choice | None = Field(
        None,
        description="Open and click tracking of the pool's mail when neither the message, its "
        "campaign nor its tenant says: off, opens, clicks or all; unset: the operator's "
        "default. Needs the operator's tracking settings (the tracker's link base and keys).",
    )


class Condition(Model):
    type: str
    status: Literal["True", "False", "Unknown"]
    reason: str | None = None
    message: str | None = None
    last_transition_time: dt.datetime | None = None
    observed_generation: Count = None


class AddressWarmup(Model):
    address: str
    warm: bool = Field(description="true: no warm-up cap (listed as warm, or past its ramp).")
    day: Count = None
    cap: Count = None
    usage: Count = None


class PoolStatus(Model):
    # kopf keeps its own progress here; without this the API server prunes it.
    model_config = ConfigDict(extra="allow")

    observed_generation: Count = None
    conditions: list[Condition] | None = Field(None, json_schema_extra=_map_list("type"))
    replicas: Count = None
    ready_replicas: Count = None
    selector: str | None = None
    lag: Count = None
    partitions: Count = None
    warmup_day: Count = Field(
        None, description="Day of the ramp of the pool's coldest (latest started) address."
    )
    today_cap: Count = Field(
        None,
        description="Messages the pool's addresses may send today together (unset: "
        "no cap, some address is warm or past its ramp).",
    )
    today_usage: Count = None
    warmup: list[AddressWarmup] | None = Field(
        None,
        description="The warm-up of each source address.",
        json_schema_extra=_map_list("address"),
    )
    topic: str | None = None
    last_scale_reason: str | None = None


SPEC_SCHEMA = schema.structural(PoolSpec)
STATUS_SCHEMA = schema.structural(PoolStatus)


def with_defaults(spec: Mapping[str, Any]) -> dict[str, Any]:
    """The spec with the CRD's defaults, as the API server fills them in (here too for bodies
    that did not come through it)."""
    result: dict[str, Any] = schema.with_defaults(SPEC_SCHEMA, spec)
    return result


def check_limits(spec: Mapping[str, Any]) -> None:
    """The CRD's limits on a defaulted spec; raises PermanentProblem("InvalidLimits", or
    "InvalidSourceAddresses")."""
    check_source_addresses(spec)
    lo, hi, parts = spec["minWorkers"], spec["maxWorkers"], spec["partitions"]
    if not 0 <= lo <= hi:
        raise PermanentProblem(
            "InvalidLimits", f"minWorkers {lo} must be between 0 and maxWorkers {hi}"
        )
    if hi > parts:
        raise PermanentProblem("InvalidLimits", f"maxWorkers {hi} exceeds partitions {parts}")
    if spec["lagPerWorker"] < 1 or spec["workerThroughput"] <= 0:
        raise PermanentProblem(
            "InvalidLimits", "lagPerWorker and workerThroughput must be positive"
        )


def check_source_addresses(spec: Mapping[str, Any]) -> None:
    """Every source address an IP literal, none twice (also spelled differently, as IPv6 can
    be); raises PermanentProblem("InvalidSourceAddresses")."""
    seen: dict[str, str] = {}
    for text in spec.get("sourceAddresses") or []:
        try:
            address = str(ipaddress.ip_address(str(text).strip()))
        except ValueError:
            raise PermanentProblem(
                "InvalidSourceAddresses", f"source address {text!r} is not an IP address"
            ) from None
        if address in seen:
            raise PermanentProblem(
                "InvalidSourceAddresses",
                f"source address {text} is given twice (as {seen[address]} too)",
            )
        seen[address] = str(text)
