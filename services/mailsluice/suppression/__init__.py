"""The suppression list: the compacted topic mailsluice.suppressions, held in memory."""

from mailsluice.suppression.store import (
    SuppressionStore,
    add_suppression,
    apply_record,
    remove_suppression,
)

__all__ = ["SuppressionStore", "add_suppression", "apply_record", "remove_suppression"]
