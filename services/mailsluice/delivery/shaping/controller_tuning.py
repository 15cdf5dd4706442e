"""The numbers of the shaping controller.

Every number the controller reacts with lives in one frozen `Tuning`, each with the reason it
has that value, so a test can name the exact figure a reaction must produce and a change of
tuning is one reviewed diff. The simulated-clock convergence test (random provider limits)
is what these values were tuned against.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Tuning:
    """How the controller reacts; rates are messages per second, times seconds."""

    # 12/min: about what the smallest providers accept from a new source (10/min), so the
    # first deferral comes from slow start's doubling, not from the very first sends, and
    # slow start still reaches 50/s in under two minutes.
    start_rate: float = 0.2
    # Two connections show whether a destination is connection-bound without hitting the
    # smallest caps (1 connection is the only cap below it).
    start_connections: int = 2
    # Connections double while fewer than this, then grow by one per saturated window: a
    # provider defers every send in flight once its bucket is empty, and a handful of
    # deferrals in a row is what providers tolerate before they block.
    fast_connections: int = 4
    # One measuring window: long enough to hold several replies at the lowest rates,
    # short enough that slow start reaches 50/s within a couple of minutes.
    window: float = 10.0
    # Slow start multiplies the rate by this per clean, fully used window.
    growth: float = 2.0
    # A window counts as "used" when sends started at this share of the allowed rate: growth
    # without use would hand an unproven rate to a later burst.
    busy: float = 0.7
    # On a rate reply: the new rate is this share of the rate the provider gave, so its
    # bucket refills a little during the hold.
    beta_rate: float = 0.9
    # Leaving slow start on a rate reply: its last doubling may have doubled past the limit.
    beta_start: float = 0.5
    # On a reputation reply: cut harder, the provider is judging the source, not the pace.
    beta_reputation: float = 0.5
    # No reply ever cuts below this: one per minute still learns when the provider relents.
    floor: float = 1 / 60
    # Hold after a rate cut: the provider's bucket refills meanwhile.
    hold_rate: float = 15.0
    # Hold after a reputation cut: reputation recovers slower than a bucket.
    hold_reputation: float = 30.0
    # Steady state runs at this share of the learned ceiling: under it by more than the few
    # percent a fitted ceiling is off, never on it.
    steady: float = 0.96
    # The recent accepted rate is believed up to this much above what deferrals proved: more is
    # a burst the provider's bucket had saved up.
    trust: float = 1.05
    # Deferrals prove a rate only over this many accepted messages: with fewer, the part token
    # a bucket may hold blurs the bound by more than a tenth.
    min_proof: int = 10
    # Inside an episode (the bucket empty throughout) this many accepted messages already
    # place the rate better than the recent rate does.
    min_episode: int = 3
    # ... unless the bucket holds fewer tokens than this: it fills and spills between the
    # deferred sends, so fewer are accepted than it refills.
    min_burst: float = 3.0
    # A ceiling is proven (no more searching above it) when it rests on this many messages:
    # a token off is then at most a few percent.
    min_trust: int = 10
    # After a reputation hold the rate climbs back under a proven ceiling by this factor per
    # clean window (after a rate hold it goes straight back to the steady rate).
    recover: float = 1.25
    # With no ceiling proven (one reply of a handful of messages proves nothing) the rate
    # searches upwards from where the hold left it, by this factor per clean window: small
    # steps, so the next deferral comes at a small overshoot and proves where the limit is.
    search: float = 1.1
    # A clean stretch this long in steady state starts probing above the ceiling, so a limit
    # that rose is found again.
    probe_after: float = 120.0
    # ... and at least this many messages long: a probe costs a deferral or two, which must
    # stay a small share of what is sent.
    probe_after_messages: int = 300
    # After a reputation reply the provider judges the source: do not push it for this long.
    probe_after_reputation: float = 1800.0
    # Probing raises the rate by this share of itself per minute: slow enough that the
    # provider's bucket, not a burst, tells us where the new limit is.
    probe_per_min: float = 0.03
    # Providers block a source that keeps sending into deferrals: after this many deferrals
    # within calm_after seconds, nothing grows until they are that old.
    calm_deferrals: int = 4
    calm_after: float = 60.0
    # First block: stop this long, then send one probe.
    block_initial: float = 60.0
    # Each failed probe doubles the block, up to this cap.
    block_factor: float = 2.0
    block_cap: float = 3600.0
    # A block this long ago no longer lengthens the next one.
    block_forget: float = 3600.0
    # This many transient server failures in a row, with nothing accepted between, mean the
    # server is down: stop and probe instead of hammering it.
    server_streak: int = 3
    server_initial: float = 15.0
    server_cap: float = 300.0
    # A probe with no reply after this long is considered lost, and another one may go.
    probe_timeout: float = 120.0


TUNING = Tuning()
