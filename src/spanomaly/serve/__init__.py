"""serve stage: the OTLP/HTTP collector and the JSON API (one ASGI app)."""
