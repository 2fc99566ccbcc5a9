"""The static HTML report with the evaluation's figures (`write_report`)."""

from spanomaly.report.html import write_report

__all__ = ["write_report"]
