"""Tenants: who sends through Mailsluice, with their API keys, SMTP users, pools, sender
domains, quotas and webhooks. Shared by the HTTP API, ingest, the webhook sender and the
operator, which renders SendingTenant resources into the same file."""
