"""Remote replies as classes: what a reply says about sending from this source to this
destination.

Shaping reacts to the class of a reply, not to its text: the provider texts of the rule pack
map to classes, and the controller (delivery/shaping/controller.py) knows what each class
means for the rate, the connections and the messages per connection.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Literal


class ReplyClass(StrEnum):
    """The closed set of reply classes."""

    SUCCESS = "success"
    RATE = "rate"  # too fast: rate-limited
    CONNECTIONS = "connections"  # too many concurrent connections
    PER_CONNECTION = "per_connection"  # messages-per-connection cap: reconnect at once
    REPUTATION = "reputation"  # reputation or policy deferral of this source
    BLOCK = "block"  # refuses everything from this source for a while
    # This recipient or message only (mailbox full, unknown user, content): never a signal
    # about the destination.
    RECIPIENT = "recipient"
    SERVER = "server"  # transient server trouble: busy, down, refused, dropped


# Where in the SMTP dialogue a reply came.
Phase = Literal["connect", "greeting", "ehlo", "tls", "mail", "rcpt", "data"]
