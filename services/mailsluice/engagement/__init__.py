"""Engagement, shared: the unengaged-address policy (pure) and the in-memory view of the
compacted topic mailsluice.engagement that ingest and the API grade messages by."""
