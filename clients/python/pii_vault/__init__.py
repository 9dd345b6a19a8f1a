"""Client of the pii-vault HTTP API (v1).

    from pii_vault import Client, TokenizeItem
    with Client.from_env() as vault:
        [token] = vault.tokenize([TokenizeItem("customer-42", "email", "alice@example.com")])

Subject ids and values travel only in request bodies, and are `Sensitive` in answers:
their `repr` is redacted, as is every model's and error's.
"""

from ._client import AsyncClient, Client, __version__
from ._errors import (
    AuthError,
    DecodeError,
    ExportChanged,
    Gone,
    NotFound,
    RateLimited,
    TransportError,
    VaultError,
)
from ._models import (
    AuditCheck,
    AuditEvent,
    AuditHead,
    Backup,
    Backups,
    Consent,
    ConsentChange,
    DetokenizedValue,
    DetokenizeFailure,
    DetokenizeResult,
    ErasureReceipt,
    ExportedRecord,
    FieldInventory,
    FieldPurpose,
    Inventory,
    InventoryBackups,
    KekVersion,
    KeyRetirement,
    KeyStatus,
    PurposeInfo,
    Purge,
    RecordInfo,
    Sensitive,
    SubjectConsents,
    SubjectExport,
    SubjectOverview,
    TokenizeItem,
    WhoAmI,
)

__all__ = [
    # Clients
    "AsyncClient",
    "Client",
    # Requests and answers
    "AuditCheck",
    "AuditEvent",
    "AuditHead",
    "Backup",
    "Backups",
    "Consent",
    "ConsentChange",
    "DetokenizedValue",
    "DetokenizeFailure",
    "DetokenizeResult",
    "ErasureReceipt",
    "ExportedRecord",
    "FieldInventory",
    "FieldPurpose",
    "Inventory",
    "InventoryBackups",
    "KekVersion",
    "KeyRetirement",
    "KeyStatus",
    "PurposeInfo",
    "Purge",
    "RecordInfo",
    "Sensitive",
    "SubjectConsents",
    "SubjectExport",
    "SubjectOverview",
    "TokenizeItem",
    "WhoAmI",
    # Errors
    "AuthError",
    "DecodeError",
    "ExportChanged",
    "Gone",
    "NotFound",
    "RateLimited",
    "TransportError",
    "VaultError",
    "__version__",
]
