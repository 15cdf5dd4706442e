"""What every service shows operators: endpoints, logs, the metric catalogue, dashboards."""
