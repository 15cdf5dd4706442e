"""Grafana dashboards generated from code (see build.py)."""
