"""spanomaly: anomalies and their root causes in microservices, from traces, metrics and logs."""

__version__ = "0.1.0"
