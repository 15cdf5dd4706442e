"""Campaigns seen from outside the stream processors: when a campaign's queued mail will be
delivered (eta.py, warmup_caps.py). Shared code: no stage's."""
