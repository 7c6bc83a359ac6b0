"""Errors of tenant management that are not the client's fault.

    Exception
     └── TenancyError                      root of relaypush.tenancy's own errors
          ├── CredentialStorageNotConfigured  no key or no database for sealed credentials -> 503
          └── CredentialStoreUnavailable      PostgreSQL cannot be reached or failed       -> 503

What a client did wrong is a ``relaypush.domain.errors.InvalidRequest`` (400) and an unknown
tenant a ``relaypush.domain.tenants.TenantNotFound`` (404); a sealed credential that does not
open is a ``relaypush.sealing.CredentialKeyError``.
"""

from __future__ import annotations

__all__ = ["CredentialStorageNotConfigured", "CredentialStoreUnavailable", "TenancyError"]


class TenancyError(Exception):
    """Root of relaypush.tenancy's own errors."""


class CredentialStorageNotConfigured(TenancyError):
    """Credentials cannot be stored: ``RELAYPUSH_CREDENTIALS_KEY`` or the database is missing."""


class CredentialStoreUnavailable(TenancyError):
    """The credential table cannot be reached, or a statement on it failed."""
