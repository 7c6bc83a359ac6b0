"""The audit trail: history, time travel, exports, and tamper evidence for the event log.

- :mod:`~relaypush.audit.history`: the events of a client, a notification, a tenant or the log,
  filtered and paged, tokens shown as fingerprints; ``follow_history`` streams new ones.
- :mod:`~relaypush.audit.state`: a client's state at a position or a time.
- :mod:`~relaypush.audit.export`: JSON Lines exports, and their import into an empty log.
- :mod:`~relaypush.audit.chain`, :mod:`~relaypush.audit.chainer`, :mod:`~relaypush.audit.verify`:
  the hash chain over the log, the signed checkpoints appended behind the writers, and the
  verification of both, live or offline from an export with the public key alone.
- :mod:`~relaypush.audit.cli`: the ``relaypush audit`` commands.
"""

from relaypush.audit.chain import GENESIS, ChainWindow, checkpoint_message, leaf, next_link
from relaypush.audit.chainer import Chainer, decode_checkpoint
from relaypush.audit.errors import (
    AuditError,
    AuditKeyError,
    ExportFormatError,
    ImportRefused,
    QueryError,
)
from relaypush.audit.export import (
    RECORDED_AT_HEADER,
    export_line,
    export_log,
    import_export,
    read_export,
    recorded_time,
)
from relaypush.audit.history import (
    HistoryEntry,
    HistoryPage,
    HistoryQuery,
    follow_history,
    history,
    history_page,
)
from relaypush.audit.keys import PublicKey, SigningKey, generate_signing_key, public_key_from_hex
from relaypush.audit.state import ClientFold, ClientSnapshot, client_state_at, parse_at
from relaypush.audit.verify import Break, BreakKind, ChainVerifier, VerifyReport, verify

__all__ = [
    "GENESIS",
    "RECORDED_AT_HEADER",
    "AuditError",
    "AuditKeyError",
    "Break",
    "BreakKind",
    "ChainVerifier",
    "ChainWindow",
    "Chainer",
    "ClientFold",
    "ClientSnapshot",
    "ExportFormatError",
    "HistoryEntry",
    "HistoryPage",
    "HistoryQuery",
    "ImportRefused",
    "PublicKey",
    "QueryError",
    "SigningKey",
    "VerifyReport",
    "checkpoint_message",
    "client_state_at",
    "decode_checkpoint",
    "export_line",
    "export_log",
    "follow_history",
    "generate_signing_key",
    "history",
    "history_page",
    "import_export",
    "leaf",
    "next_link",
    "parse_at",
    "public_key_from_hex",
    "read_export",
    "recorded_time",
    "verify",
]
