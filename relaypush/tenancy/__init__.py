"""Tenants: their management API's logic, their credentials' checks, and sealed storage.

- :mod:`relaypush.tenancy.service`: create, read, delete tenants; set and remove credentials;
- :mod:`relaypush.tenancy.checks`: uploaded credentials are proven to work before they are kept;
- :mod:`relaypush.tenancy.store`: the sealed credentials in PostgreSQL, outside the read tables,
  sealed by :mod:`relaypush.sealing` (a neutral module: the client keys of
  :mod:`relaypush.privacy` use it too).
"""

from relaypush.sealing import Keyring, generate_key
from relaypush.tenancy.checks import ApnsForm, CredentialChecker
from relaypush.tenancy.errors import (
    CredentialStorageNotConfigured,
    CredentialStoreUnavailable,
    TenancyError,
)
from relaypush.tenancy.service import DefaultTenant, TenantConflict, TenantService, TenantView
from relaypush.tenancy.store import (
    PostgresCredentialStore,
    RotationReport,
    open_credential_store,
    rotate_key,
)

__all__ = [
    "ApnsForm",
    "CredentialChecker",
    "CredentialStorageNotConfigured",
    "CredentialStoreUnavailable",
    "DefaultTenant",
    "Keyring",
    "PostgresCredentialStore",
    "RotationReport",
    "TenancyError",
    "TenantConflict",
    "TenantService",
    "TenantView",
    "generate_key",
    "open_credential_store",
    "rotate_key",
]
