"""Consent shared by the stages: unsubscribe tokens, their keys and settings, and the
List-Unsubscribe header fields (RFC 2369, RFC 8058)."""
