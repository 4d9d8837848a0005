"""The one error family library code raises; the CLI turns each into a one-line message."""

from __future__ import annotations

from collections.abc import Iterable


class HubbenchError(Exception):
    """Base class: the message must say what was wrong and where, in one line."""

    exit_code: int = 2


class ConfigError(HubbenchError):
    """An impossible or unknown model / mixer / run configuration.

    `fields` names the config fields the problem is about, so a suite can point at the lines
    that set them without parsing the message.
    """

    def __init__(self, message: str, fields: Iterable[str] = ()) -> None:
        super().__init__(message)
        self.fields = tuple(fields)


class UnavailableError(HubbenchError):
    """A requested backend or device is not available here (becomes a `skipped` row)."""


class SuiteError(HubbenchError):
    """A suite file or CLI override that cannot be parsed or validated."""


class StoreError(HubbenchError):
    """Results that cannot be read or written (missing run, schema mismatch, unwritable dir)."""


class SchemaError(HubbenchError):
    """A row that does not match the results schema: a bug where the row is made, never input."""


class ReportError(HubbenchError):
    """A report, plot or gate whose input is unusable (exit 2)."""
