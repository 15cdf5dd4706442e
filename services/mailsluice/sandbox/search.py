"""The sandbox's search: a subset of Mailpit's search syntax, case-insensitive substrings.

    invoice                 free text: subject, From/To/Cc/Bcc names and addresses, text body
    "monthly invoice"       a phrase, the same fields
    from:alice@             the From address or name (also the envelope sender)
    to:bob                  To, Cc, Bcc and the envelope recipients
    subject:"your order"    the Subject
    message-id:abc@x        the Message-ID
    is:read / is:unread     read status (opening a message marks it read)
    -word, !from:x          negation of any term

Terms are ANDed. Anything else Mailpit knows (tags, dates, attachments) is not supported here;
an unknown `name:` prefix is treated as free text.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

FIELDS = ("from", "to", "subject", "message-id")


@dataclass(frozen=True)
class Searchable:
    """What a query looks at in one message, lower-cased once when it is captured."""

    sender: str
    recipients: str
    subject: str
    message_id: str
    text: str

    def field(self, name: str) -> str:
        return {
            "from": self.sender,
            "to": self.recipients,
            "subject": self.subject,
            "message-id": self.message_id,
        }[name]

    def anywhere(self) -> str:
        return "\n".join((self.subject, self.sender, self.recipients, self.text))


@dataclass(frozen=True)
class Term:
    field: str | None  # None: free text; "is": read status
    value: str
    negated: bool = False


# A word, or a quoted phrase with an optional negation and field prefix (subject:"a b").
_TOKEN = re.compile(r'[-!]?(?:[\w-]+:)?"[^"]*"|\S+')


def _split(query: str) -> list[str]:
    return [t.replace('"', "") if t.endswith('"') else t for t in _TOKEN.findall(query)]


def parse(query: str) -> list[Term]:
    terms: list[Term] = []
    for raw in _split(query):
        negated = raw[:1] in "-!" and len(raw) > 1
        word = raw[1:] if negated else raw
        name, sep, value = word.partition(":")
        name = name.lower()
        if sep and (name in FIELDS or name == "is") and value:
            terms.append(Term(name, value.lower(), negated))
        else:
            terms.append(Term(None, word.lower(), negated))
    return terms


def matcher(query: str) -> Callable[[Searchable, bool], bool]:
    """A predicate over (a message's searchable text, whether it was read)."""
    terms = parse(query)

    def matches(item: Searchable, read: bool) -> bool:
        for term in terms:
            if term.field == "is":
                hit = read if term.value == "read" else not read
            elif term.field is None:
                hit = term.value in item.anywhere()
            else:
                hit = term.value in item.field(term.field)
            if hit == term.negated:
                return False
        return True

    return matches
