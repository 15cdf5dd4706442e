"""What the replies of one source towards one destination say about the provider's rate.

The controller decides; this keeps the evidence: what was accepted and sent over the last
window, when the provider's bucket was seen empty, the bucket fitted to the history, and how
many deferrals came lately. Its one judgement is `estimate`: the rate a rate reply says the
provider allows, with whether enough messages back it to stop searching for it.
"""

from __future__ import annotations

from collections import deque

from mailsluice.delivery.shaping.controller_bucket import HELD, Bucket
from mailsluice.delivery.shaping.controller_meter import Bounds, Meter
from mailsluice.delivery.shaping.controller_tuning import Tuning


class Evidence:
    """Accepted and sent messages, deferrals, and the estimates they support."""

    def __init__(self, tuning: Tuning, now: float, fresh: bool) -> None:
        self.tuning = tuning
        self.accepted_meter = Meter(tuning.window, tuning.min_proof)
        self.sends = Meter(tuning.window, tuning.min_proof)
        self.bounds = Bounds(tuning.window)
        # A destination nothing was sent to lately starts with the provider's bucket full.
        self.bucket = Bucket(now if fresh else None, tuning.window)
        self.recent: deque[float] = deque(maxlen=tuning.calm_deferrals)
        self.born = self.active_since = now

    def accepted(self, at: float) -> None:
        self.accepted_meter.add(at)
        self.bounds.accepted()
        self.bucket.accepted(at)

    def started(self, at: float) -> None:
        self.sends.add(at)

    def deferred(self, at: float, in_flight: int) -> None:
        self.bounds.deferred(at, in_flight)
        self.bucket.deferred(at)
        self.recent.append(at)

    def idle(self, now: float) -> None:
        """A window passed with nothing accepted: the accepted rate restarts from here."""
        self.active_since = now

    def achieved(self, now: float, rate: float) -> float:
        """Accepted per second over the last window (less when younger), never above the
        rate in force: sends accepted at a higher rate prove nothing about it."""
        return min(self.accepted_meter.rate(now, self.active_since), rate)

    def pacing(self, now: float, rate: float) -> bool:
        """Sends have been starting at about `rate` (not fewer, for want of mail or of
        connections)."""
        return self.sends.rate(now, self.born) >= self.tuning.busy * rate

    def calm(self, now: float) -> bool:
        """Few deferrals lately: providers block a source after a run of them, so after a
        burst of deferrals nothing grows until they are old."""
        recent = self.recent
        return len(recent) < (recent.maxlen or 0) or now - recent[0] > self.tuning.calm_after

    def still_too_fast(self, now: float, rate: float) -> bool:
        """What was accepted since the episode's first deferral proves `rate` above the
        provider's (right after a cut the bucket is empty, so a send at a fine rate may still
        be deferred: only proof cuts again)."""
        upper = self.bounds.upper(now, self.tuning.window)
        return upper is not None and rate > upper

    def estimate(
        self, now: float, rate: float, state: str, searched: float | None
    ) -> tuple[float, bool]:
        """The provider's rate as the replies show it at a rate reply, and whether enough
        messages back it to stop searching. Best: the bucket fitted to the history (needs an
        earlier episode). Then, inside an episode, what was accepted since its first deferral
        (the bucket has been empty since: that is the refill). Searching, the rate before
        the last step (`searched`: it ran a window clean). Otherwise the rate refused, or
        leaving slow start the recent accepted rate, believed only as far as earlier
        deferrals proved it."""
        t, span = self.tuning, self.tuning.window / 2
        lower = self.bounds.lower(now, span, t.min_proof)
        fitted = self.bucket.fit(now, max(lower or 0.0, t.floor), rate, t.min_proof)
        episode = self.bounds.episode(now)
        in_episode = None if episode is None else self._episode_rate(episode)
        if fitted is not None:
            estimate, count = fitted
        elif episode is not None and in_episode is not None:
            estimate, count = in_episode, episode[0]
        elif searched is not None and self.pacing(now, rate):
            estimate, count = searched, t.min_trust
        else:
            estimate, count = self._recent(now, rate, state, lower), 0
        # Resting on a handful of messages it is a token or two off: keep searching.
        return max(lower or 0.0, min(estimate, rate)), count >= t.min_trust

    def _recent(self, now: float, rate: float, state: str, lower: float | None) -> float:
        estimate = self.achieved(now, rate)
        if state != "slow_start" and self.pacing(now, rate):
            # In use and reached step by step, not doubled into: the rate refused (the
            # accepted rate lags behind it at low rates).
            estimate = rate
        upper = self.bounds.upper(now, self.tuning.window / 2)
        if upper is not None:
            estimate = min(estimate, upper)
        if lower is not None:
            estimate = min(estimate, self.tuning.trust * lower)
        return estimate

    def _episode_rate(self, episode: tuple[int, float]) -> float | None:
        """The refill rate inside an episode: the bucket empty at its first deferral (holding
        about HELD) and at this one (about half). Not for a bucket of a token or two, which
        fills up and spills between the deferred sends of an episode."""
        accepted, span = episode
        if accepted < self.tuning.min_episode or span <= 0:
            return None
        rate = (accepted + 0.5 - HELD) / span
        burst = self.bucket.burst or self.bucket.burst_at(rate)
        return rate if burst is None or burst >= self.tuning.min_burst else None
