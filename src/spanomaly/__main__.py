"""`python -m spanomaly` runs the CLI."""

from spanomaly.cli import main

main()
