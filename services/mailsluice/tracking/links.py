"""The tracked links and the pixel's place in one HTML document, as offsets into its text. Pure.

The standard library's tokenizer finds the tags (so `<a>` inside a comment or a script is not a
link); a small scan of one tag's own text then finds where its href value lies, checked against
what the tokenizer read, so the edit replaces exactly that value and nothing else.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from html import unescape
from html.parser import HTMLParser

NOTRACK = "data-ms-notrack"
_TRACKED_SCHEMES = ("http://", "https://")
# After the tag name: one attribute, as html.parser's tolerant scan reads them.
_TAG_NAME = re.compile(r"<[a-zA-Z][^\t\n\r\f />\x00]*")
_ATTRIBUTE = re.compile(
    r"""(?:\s|/(?!>))*(?P<name>[^\s/>][^\s/=>]*)"""
    r"""(?:\s*=+\s*(?P<value>'[^']*'|"[^"]*"|(?!['"])[^>\s]*))?"""
)


@dataclass(frozen=True)
class Link:
    """A tracked link: the span of its href value (quotes included) and its decoded target."""

    start: int
    end: int
    target: str


@dataclass(frozen=True)
class Found:
    links: list[Link]
    # Where the pixel goes: before the last </body>, else before the text's trailing whitespace.
    pixel_at: int


def find(text: str, keep: Callable[[str], bool]) -> Found:
    """The links to track in an HTML document and where its pixel goes."""
    scanner = _Scanner(text, keep)
    scanner.feed(text)
    scanner.close()
    pixel_at = scanner.body_end if scanner.body_end >= 0 else len(text.rstrip())
    return Found(scanner.links, pixel_at)


def tracked(target: str, attributes: dict[str, str | None], keep: Callable[[str], bool]) -> bool:
    """Whether a link is rewritten: http(s) only, and never one marked or kept by the caller."""
    if NOTRACK in attributes:
        return False
    return target.lower().startswith(_TRACKED_SCHEMES) and not keep(target)


def href_span(tag: str) -> tuple[int, int, str] | None:
    """(start, end, raw value) of the first href value in one start tag's text."""
    name = _TAG_NAME.match(tag)
    if name is None:
        return None
    at = name.end()
    while (found := _ATTRIBUTE.match(tag, at)) is not None and found.end() > at:
        value = found.group("value")
        if found.group("name").lower() == "href" and value is not None:
            return found.start("value"), found.end("value"), value
        at = found.end()
    return None


def _unquoted(value: str) -> str:
    if len(value) >= 2 and value[0] in "'\"" and value[-1] == value[0]:
        return value[1:-1]
    return value


class _Scanner(HTMLParser):
    def __init__(self, text: str, keep: Callable[[str], bool]) -> None:
        super().__init__(convert_charrefs=True)
        self._keep = keep
        self._line_starts = [0] + [m.end() for m in re.finditer("\n", text)]
        self.links: list[Link] = []
        self.body_end = -1

    def _offset(self) -> int:
        line, column = self.getpos()
        return self._line_starts[line - 1] + column

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag != "a":
            return
        attributes = dict(reversed(attrs))  # the first of a repeated attribute wins
        href = attributes.get("href")
        if href is None or not tracked(href.strip(), attributes, self._keep):
            return
        raw = self.get_starttag_text()
        span = href_span(raw) if raw is not None else None
        # The scan must agree with the tokenizer, or the link is left as it is.
        if span is None or unescape(_unquoted(span[2])) != href:
            return
        start = self._offset()
        self.links.append(Link(start + span[0], start + span[1], href.strip()))

    def handle_endtag(self, tag: str) -> None:
        if tag == "body":
            self.body_end = self._offset()
