"""Loopback addresses and ports for the test servers (fake MXes, smtp-sink), each on its own IP."""

from __future__ import annotations

import itertools
import socket

_loopback_counter = itertools.count(20)


def next_loopback() -> str:
    """A fresh 127.0.0.x address (x from 20 up) so each fake MX can have its own IP."""
    n = next(_loopback_counter)
    return f"127.0.{n // 250}.{n % 250 + 2}"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])
