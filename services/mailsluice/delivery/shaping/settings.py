"""Settings of the shaping engine, and the engine of one pool built from them.

Every file a worker reads (shaping policy, reply rules, pool overrides from the SendingPool
resource) is validated when the settings load, so bad configuration stops the worker before a
port opens.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import SettingsConfigDict

from mailsluice.config import MailsluiceSettings
from mailsluice.delivery.shaping.engine import PolicyShaper
from mailsluice.delivery.shaping.warmup import PoolWarmup, WarmupTracker
from mailsluice.policy.replies import load_replies
from mailsluice.policy.shaping import PolicyInvalid, PoolSection, Rule, load_policy
from mailsluice.policy.warmup import Plan
from mailsluice.policy.warmup_config import WarmupConfig

log = logging.getLogger(__name__)

# The shipped policy's default rate, for a burst given without a rate.
DEFAULT_RATE_PER_S = 100.0


class ShapingSettings(MailsluiceSettings):
    """Shaping engine of delivery workers: policy files, pool overrides, control and status."""

    model_config = SettingsConfigDict(env_prefix="MAILSLUICE_SHAPING_", extra="ignore", frozen=True)

    policy_file: str = Field(
        "", description="Shaping policy TOML (empty: the shipped mailsluice/policy/shaping.toml)."
    )
    replies_file: str = Field(
        "",
        description="Reply rules TOML: provider texts to reply classes (empty: the shipped "
        "replies.toml).",
    )
    pool_overrides: str = Field(
        "",
        description="JSON of this pool's overrides: {defaults, provider, domain, warmup} as in "
        "a policy file's [pool.<name>] section (from the SendingPool resource).",
    )
    status_interval_s: float = Field(
        10.0,
        gt=0,
        le=3600,
        description="How often status and warm-up usage are published (a status also goes out "
        "at once after a command, and within seconds for a new destination or one entering or "
        "leaving hold, blocked, probe or suspended).",
    )
    worker_id: str = Field("", description="Name in status records (empty: host name and pid).")

    @field_validator("policy_file")
    @classmethod
    def _policy(cls, value: str) -> str:
        _check(lambda: load_policy(value or None))
        return value

    @field_validator("replies_file")
    @classmethod
    def _rules(cls, value: str) -> str:
        _check(lambda: load_replies(value or None))
        return value

    @field_validator("pool_overrides")
    @classmethod
    def _overrides(cls, value: str) -> str:
        if value:
            try:
                PoolSection.model_validate_json(value)
            except ValidationError as exc:
                raise ValueError(str(exc).replace("\n", "; ")) from None
        return value


def _check(load: Callable[[], object]) -> None:
    try:
        load()
    except PolicyInvalid as exc:
        raise ValueError("; ".join(e.format("file") for e in exc.errors)) from None
    except OSError as exc:
        raise ValueError(f"cannot read: {exc}") from None


def build_shaper(
    settings: ShapingSettings,
    pool: str,
    wall: Callable[[], float],
    defaults: Rule | None = None,
    sources: Sequence[str] = (),
) -> PolicyShaper:
    """The engine of one pool sending from `sources`. `defaults` (from the worker's
    MAILSLUICE_DELIVERY_DEST_* settings) are pool defaults; the pool overrides' own defaults
    win over them."""
    policy = load_policy(settings.policy_file or None)
    section = PoolSection()
    if settings.pool_overrides:
        section = PoolSection.model_validate_json(settings.pool_overrides)
    if defaults is not None:
        merged = {
            **defaults.model_dump(exclude_none=True),
            **section.defaults.model_dump(exclude_none=True),
        }
        section = section.model_copy(update={"defaults": Rule(**merged)})
    if settings.pool_overrides or defaults is not None:
        policy = policy.with_pool(pool, section)
    warmup = pool_warmup(policy.warmup(pool), pool, tuple(sources) or ("",), settings.worker_id)
    rules = load_replies(settings.replies_file or None)
    return PolicyShaper(policy, pool, rules=rules, sources=sources, warmup=warmup, wall=wall)


def pool_warmup(
    config: WarmupConfig | None, pool: str, sources: tuple[str, ...], worker_id: str
) -> PoolWarmup | None:
    """A tracker per source address that warms up; None when none does."""
    if config is None:
        return None
    # The owner names this worker's share of a pool-wide cap in the warm-up ledger; it must
    # survive restarts, hence the configured id or "0" (one worker per warming pool).
    owner = worker_id or "0"
    trackers = {}
    for source in sources:
        plan = Plan.of_source(config, source)
        if plan is not None:
            trackers[source] = WarmupTracker(
                pool, plan, source=source, owner=owner, inherits=config.source
            )
    unknown = sorted({config.source, *config.sources} - set(sources) - {""})
    if unknown and sources != ("",):
        log.warning("pool %s: warm-up names addresses it does not send from: %s", pool, unknown)
    return PoolWarmup(trackers, sources) if trackers else None


def delivery_defaults(
    concurrency: int | None, rate: float | None, burst: int | None
) -> Rule | None:
    """Pool defaults from the worker's per-destination settings that were set explicitly."""
    fields: dict[str, object] = {}
    if concurrency is not None:
        fields["connection_limit"] = concurrency
    if rate is not None or burst is not None:
        per_s = rate if rate is not None else DEFAULT_RATE_PER_S
        number = f"{per_s:.6f}".rstrip("0").rstrip(".")  # the rate syntax has no exponents
        fields["max_message_rate"] = f"{number}/s" + (f",burst={burst}" if burst else "")
    return Rule.model_validate(fields) if fields else None
