"""Mailsluice: a Kubernetes-native mail transfer agent."""

__version__ = "0.1.0"
