"""The SMTP client of delivery: routing, connections, per-destination connection limits."""
