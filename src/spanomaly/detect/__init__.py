"""detect stage: detectors of collective (trace) and, later, point (instance) anomalies."""
