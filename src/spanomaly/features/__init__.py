"""features stage: traces to event sequences (and, later, instance windows and graphs)."""
