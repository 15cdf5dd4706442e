"""Open and click tracking shared by the stages: rewriting a message's HTML parts. Pure."""

from mailsluice.tracking.rewrite import Rewritten, Unchanged, rewrite

__all__ = ["Rewritten", "Unchanged", "rewrite"]
