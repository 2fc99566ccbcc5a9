"""Exceptions raised by spanomaly.

    SpanomalyError                 every error of ours; the CLI prints str(e) on one line
    ├── InputError                 bad user input: a file, record, field or option (exit 2)
    │   ├── FormatError            a file that is not in the format it claims or seems to be
    │   └── NotFoundError          a named finding, trace or model is not there (HTTP 404)
    ├── StoreError                 the store cannot be opened, read or written (exit 1)
    │   └── StoreLockedError       another process holds the store open for writing
    ├── ModelError                 a model directory is missing, broken or incompatible
    └── ClusterError               the Dask cluster cannot be reached or a task failed on it

Messages name the file, line or field, and are one line long.
"""

from __future__ import annotations


class SpanomalyError(Exception):
    """Base of every spanomaly error."""

    exit_code = 1


class InputError(SpanomalyError):
    """Bad input from the user: a file, a record, a field or an option."""

    exit_code = 2


class FormatError(InputError):
    """A file whose content does not match its format."""


class NotFoundError(InputError):
    """A finding, trace or model that the user named is not there."""


class StoreError(SpanomalyError):
    """The store cannot be opened, read or written."""


class StoreLockedError(StoreError):
    """Another process holds the store open for writing."""


class ModelError(SpanomalyError):
    """A model directory is missing, broken or written by an incompatible version."""


class ClusterError(SpanomalyError):
    """The Dask scheduler cannot be reached, or a task failed on a worker."""
