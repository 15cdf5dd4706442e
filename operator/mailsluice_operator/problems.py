"""What can stop a pool from progressing, typed by what makes it go away.

A problem ends one reconciliation early and becomes the pool's Stalled condition (its `reason`
and `message`) plus one Warning event; it never fails the kopf handler, so the operator's error
counter and alerts are about the operator itself, not about a pool's spec or surroundings.
"""

from __future__ import annotations


class PoolProblem(Exception):
    """A reason (CamelCase, machine-readable) and a message for people."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


class PermanentProblem(PoolProblem):
    """The spec is wrong: nothing changes until someone edits it."""


class TemporaryProblem(PoolProblem):
    """Something the pool needs is missing or away (a Secret, Kafka, the API server refusing a
    write); the next round tries again."""
