"""Shaping: when each destination's next message may start (policy, adaptive backoff, warm-up)."""
