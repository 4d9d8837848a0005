"""The one error family library code raises; the CLI turns each into a one-line message."""

from __future__ import annotations


class HubbenchError(Exception):
    """Base class: the message must say what was wrong and where, in one line."""

    exit_code: int = 2


class ConfigError(HubbenchError):
    """An impossible or unknown model / mixer configuration."""


class UnavailableError(HubbenchError):
    """A requested backend or device is not available here (becomes a `skipped` row)."""


class SuiteError(HubbenchError):
    """A suite file or CLI override that cannot be parsed or validated."""


class StoreError(HubbenchError):
    """Results that cannot be read or written (missing run, schema mismatch, unwritable dir)."""


class ReportError(HubbenchError):
    """A report, plot or gate whose input is unusable (exit 2)."""
