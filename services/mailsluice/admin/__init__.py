"""Operator tools: one module per `mailsluice` command that is not a service."""
