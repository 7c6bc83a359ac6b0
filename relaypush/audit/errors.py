"""Errors raised by the audit trail.

AuditError
├── AuditKeyError      a signing or public key is not 32 bytes in hex
├── ExportFormatError  a line of an export file is not an exported event
├── ImportRefused      the target log is not empty, or would not reproduce the export's positions
└── QueryError         a history or state query names something that cannot be asked for
"""

from __future__ import annotations

__all__ = ["AuditError", "AuditKeyError", "ExportFormatError", "ImportRefused", "QueryError"]


class AuditError(Exception):
    """Root of every error raised by :mod:`relaypush.audit`."""


class AuditKeyError(AuditError):
    """A key setting or argument is not an Ed25519 key in 64 hex digits."""


class ExportFormatError(AuditError):
    """An export file holds a line that is not an exported event."""

    def __init__(self, line: int, why: str) -> None:
        self.line = line
        super().__init__(f"line {line}: {why}")


class ImportRefused(AuditError):
    """An import would not reproduce the export: the log is not empty, or positions moved."""


class QueryError(AuditError):
    """A query is malformed: ``field`` names the argument at fault."""

    def __init__(self, field: str, why: str) -> None:
        self.field = field
        self.why = why
        super().__init__(f"{field}: {why}")
