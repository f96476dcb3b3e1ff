"""Statistics and Prometheus metrics, fed by core events."""
