"""Line numbers of keys in a TOML text, for error messages (tomllib keeps no positions).

A light scanner, not a parser: it follows table headers (`[a."b.c"]`, `[[a.b]]` with array
indexes) and `key = value` lines (dotted keys too) and records the line where each key path
starts. Values spanning lines (arrays, multi-line strings) are skipped well enough for that.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

Path = tuple[str | int, ...]

_BARE = re.compile(r"[A-Za-z0-9_-]+")


def split_key(text: str) -> list[str] | None:
    """Split a dotted TOML key (`a."b.c".d`) into its parts; None if it is not a key."""
    parts: list[str] = []
    i, n = 0, len(text)
    while True:
        while i < n and text[i] in " \t":
            i += 1
        if i >= n:
            return None
        if text[i] in "\"'":
            quote = text[i]
            end = text.find(quote, i + 1)
            while quote == '"' and end > 0 and text[end - 1] == "\\":
                end = text.find(quote, end + 1)
            if end < 0:
                return None
            parts.append(text[i + 1 : end])
            i = end + 1
        else:
            match = _BARE.match(text, i)
            if not match:
                return None
            parts.append(match.group())
            i = match.end()
        while i < n and text[i] in " \t":
            i += 1
        if i >= n:
            return parts
        if text[i] != ".":
            return None
        i += 1


def key_lines(text: str) -> dict[Path, int]:
    """Map every key path (array-of-tables entries carry their index) to its 1-based line."""
    lines: dict[Path, int] = {}
    array_counts: dict[Path, int] = {}
    table: Path = ()
    in_multiline: str | None = None
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if in_multiline is not None:
            if in_multiline in line:
                in_multiline = None
            continue
        if not line or line.startswith("#"):
            continue
        if line.startswith("[["):
            parts = split_key(line[2 : line.find("]]")]) if "]]" in line else None
            if parts is not None:
                base = _resolve(parts, array_counts)
                index = array_counts.get(base, -1) + 1
                array_counts[base] = index
                table = (*base, index)
                lines.setdefault(base, number)
                lines[table] = number
            continue
        if line.startswith("["):
            parts = split_key(line[1 : line.find("]")]) if "]" in line else None
            if parts is not None:
                table = _resolve(parts, array_counts)
                lines.setdefault(table, number)
            continue
        key_text, sep, value = line.partition("=")
        if not sep:
            continue
        parts = split_key(key_text)
        if parts is None:
            continue
        path: Path = (*table, *parts)
        for cut in range(len(table) + 1, len(path) + 1):
            lines.setdefault(path[:cut], number)
        for quote in ('"""', "'''"):
            if value.count(quote) == 1:
                in_multiline = quote
    return lines


def _resolve(parts: Sequence[str], array_counts: dict[Path, int]) -> Path:
    """A header path, with the current index inserted after each array-of-tables prefix."""
    out: list[str | int] = []
    for i, part in enumerate(parts):
        out.append(part)
        index = array_counts.get(tuple(out))
        if index is not None and i < len(parts) - 1:
            out.append(index)
    return tuple(out)


def line_of(lines: dict[Path, int], path: Sequence[str | int]) -> int:
    """The line of the longest known prefix of `path` (0 when nothing matches)."""
    current = tuple(path)
    while current:
        if current in lines:
            return lines[current]
        current = current[:-1]
    return 0
