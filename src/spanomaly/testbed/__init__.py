"""The testbed: a traced movie and book encyclopedia with load, faults and ground truth.

It stands outside spanomaly's data flow (tests/test_layering.py): it imports no stage and
talks to spanomaly only over OTLP/HTTP; ground truth leaves through JSON-lines files that
`spanomaly testbed run` (cli.py) stores at the end of a run.

Modules: services (the FastAPI apps, one OS process per instance), instrumentation (the
OpenTelemetry SDK set-up), agent (psutil monitoring exported as OTLP metrics), proxy
(fault-injecting TCP proxies), load (open-loop workload), faults (schedule and injection),
supervisor (process groups, cleanup), run (the whole run).
"""
