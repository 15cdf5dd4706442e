"""Whether an open or a click was a machine's, not a person's. Pure (the data is read once).

Who the machines are is data, not code: `machines.yaml` beside this module (privacy-proxy
networks and user agents, prefetchers, security scanners), or the file of
MAILSLUICE_TRACKING_MACHINES_FILE instead. `judge` gives "" for a person, else one of
contracts.events.MACHINE_REASONS; `LinkBursts` tells clicks on every link of a message at once.
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Kind = Literal["open", "click"]

SHIPPED = "machines.yaml"
# Messages whose recent clicks LinkBursts remembers (the oldest are forgotten first).
BURST_MESSAGES = 10_000


@dataclass(frozen=True)
class Machines:
    """The known machines: networks, and user-agent fragments (lower case)."""

    proxy_networks: tuple[Network, ...] = ()
    proxy_agents: frozenset[str] = frozenset()  # the whole User-Agent, lower case
    prefetch_agents: tuple[str, ...] = ()
    scanner_agents: tuple[str, ...] = ()
    scanner_networks: tuple[Network, ...] = ()
    every_link_links: int = 3
    every_link_within_s: float = 2.0


def _networks(values: Any, where: str) -> tuple[Network, ...]:
    try:
        return tuple(ipaddress.ip_network(str(v), strict=False) for v in values or ())
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from None


def _agents(values: Any) -> tuple[str, ...]:
    return tuple(str(v).strip().lower() for v in values or () if str(v).strip())


def parse_machines(data: Mapping[str, Any]) -> Machines:
    """Machines from the parsed YAML; ValueError naming what is wrong."""
    if not isinstance(data, Mapping):
        raise ValueError("the machines file must be a mapping")
    proxy = data.get("privacy_proxy") or {}
    scanner = data.get("scanner") or {}
    burst = data.get("every_link") or {}
    links = int(burst.get("links", 3))
    within = float(burst.get("within_s", 2.0))
    if links < 2 or within < 0:
        raise ValueError("every_link: links must be at least 2 and within_s not negative")
    return Machines(
        proxy_networks=_networks(proxy.get("networks"), "privacy_proxy.networks"),
        proxy_agents=frozenset(_agents(proxy.get("agents_exact"))),
        prefetch_agents=_agents((data.get("prefetch") or {}).get("agents")),
        scanner_agents=_agents(scanner.get("agents")),
        scanner_networks=_networks(scanner.get("networks"), "scanner.networks"),
        every_link_links=links,
        every_link_within_s=within,
    )


def load_machines(path: str = "") -> Machines:
    """The machines of `path`, or the shipped list when empty; OSError or ValueError."""
    if path:
        text = Path(path).read_text(encoding="utf-8")
    else:
        text = resources.files(__package__ or "mailsluice.tracking").joinpath(SHIPPED).read_text()
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ValueError(f"machines file: {exc}") from None
    return parse_machines(data or {})


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        address = ipaddress.ip_address(text.strip())
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _within(address: str, networks: tuple[Network, ...]) -> bool:
    ip = _address(address) if networks else None
    return ip is not None and any(ip in net for net in networks)


def judge(
    machines: Machines,
    kind: Kind,
    address: str,
    agent: str,
    *,
    since_sent: float | None,
    too_soon_s: float,
) -> str:
    """ "" when a person is taken to have opened or clicked, else why not (MACHINE_REASONS).

    `since_sent` is seconds from the message's sending to the request (None: not known).
    A privacy proxy counts for opens only: a person behind the same relay clicks for real.
    """
    ua = agent.strip().lower()
    if kind == "open" and (
        ua in machines.proxy_agents or _within(address, machines.proxy_networks)
    ):
        return "privacy_proxy"
    if any(a in ua for a in machines.scanner_agents) or _within(address, machines.scanner_networks):
        return "scanner"
    if any(a in ua for a in machines.prefetch_agents):
        return "prefetch"
    if since_sent is not None and since_sent < too_soon_s:
        return "too_soon"
    return ""


class LinkBursts:
    """Clicks on many different links of one message within seconds: a scanner following every
    link. Remembers the latest clicks of the last BURST_MESSAGES messages; `now` is given by
    the caller (a clock of its choice)."""

    def __init__(self, links: int, within_s: float, *, capacity: int = BURST_MESSAGES) -> None:
        self._links, self._within, self._capacity = links, within_s, capacity
        self._recent: OrderedDict[str, dict[int, float]] = OrderedDict()

    def click(self, message: str, link: int, now: float) -> bool:
        """Record a click on `link` of `message`; whether it completes a burst."""
        clicks = self._recent.pop(message, {})
        clicks = {i: t for i, t in clicks.items() if now - t <= self._within}
        clicks[link] = now
        self._recent[message] = clicks
        while len(self._recent) > self._capacity:
            self._recent.popitem(last=False)
        return len(clicks) >= self._links
