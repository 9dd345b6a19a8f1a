"""Every route of the API and the client method that calls it, whether the call may be
retried, and which dataclass each schema of the OpenAPI document is.

The contract test checks both tables against the server's `/openapi.json` in both
directions, so a route or a field added to the server fails it until the client has it.
"""

from __future__ import annotations

from typing import Dict, NamedTuple, Tuple

from . import _models as m
from . import _wire as w


class Route(NamedTuple):
    """The client method of a route, and whether it is sent again after a 429, a 503
    or a lost connection (whose outcome, but for the 429's, is unknown)."""

    method: str
    retry: bool


ROUTES: Dict[Tuple[str, str], Route] = {
    # A random token issued twice is two records.
    ("POST", "/v1/tokenize"): Route("tokenize", retry=False),
    ("POST", "/v1/detokenize"): Route("detokenize", retry=True),
    ("PUT", "/v1/tokens/{token}"): Route("rectify", retry=True),
    ("DELETE", "/v1/tokens/{token}"): Route("delete", retry=True),
    # A retry after a lost answer would get a `not_needed` receipt, hiding the real one.
    ("POST", "/v1/subjects/erase"): Route("erase", retry=False),
    ("POST", "/v1/subjects/export"): Route("export", retry=True),
    # A repeated grant would add a second event to the consent history.
    ("POST", "/v1/subjects/consent"): Route("record_consent", retry=False),
    ("POST", "/v1/subjects/consents"): Route("consents", retry=True),
    ("POST", "/v1/subjects/lookup"): Route("lookup", retry=True),
    ("GET", "/v1/whoami"): Route("whoami", retry=True),
    ("GET", "/v1/purposes"): Route("purposes", retry=True),
    ("GET", "/v1/audit"): Route("audit_events", retry=True),
    ("GET", "/v1/audit/head"): Route("audit_head", retry=True),
    ("GET", "/v1/inventory"): Route("inventory", retry=True),
    ("POST", "/v1/audit/verify"): Route("verify_audit", retry=True),
    # A second attempt could start a second rotation.
    ("POST", "/v1/admin/rotate"): Route("rotate", retry=False),
    ("GET", "/v1/admin/keys"): Route("keys", retry=True),
    # A second call retires nothing more.
    ("POST", "/v1/admin/keys/retire"): Route("retire_keys", retry=True),
    # A second attempt would take a second backup.
    ("POST", "/v1/admin/backups"): Route("create_backup", retry=False),
    ("GET", "/v1/admin/backups"): Route("backups", retry=True),
    # Probes answer what is true now: one attempt.
    ("GET", "/healthz"): Route("health", retry=False),
    ("GET", "/readyz"): Route("ready", retry=False),
    ("GET", "/openapi.json"): Route("openapi", retry=True),
}

# Schema → dataclass. A top-level name is `components.schemas.NAME`; a dotted path goes
# into an inline object: `.prop` a property, `[]` an array's items, `.oneOf[i]` a branch.
SCHEMAS: Dict[str, type] = {
    "TokenizeRequest": w.TokenizeRequest,
    "TokenizeItem": m.TokenizeItem,
    "TokenizeResponse": w.TokenizeResponse,
    "DetokenizeRequest": w.DetokenizeRequest,
    "DetokenizeResponse": w.DetokenizeResponse,
    "DetokenizeResponse.results[].oneOf[0]": m.DetokenizedValue,
    "DetokenizeResponse.results[].oneOf[1]": m.DetokenizeFailure,
    "AuditEvents": w.AuditEvents,
    "AuditEvent": m.AuditEvent,
    "AuditCheck": m.AuditCheck,
    "AuditHead": m.AuditHead,
    "Inventory": m.Inventory,
    "Inventory.fields[]": m.FieldInventory,
    "Inventory.fields[].purposes[]": m.FieldPurpose,
    "Inventory.backups.oneOf[1]": m.InventoryBackups,
    "VerifyRequest": w.VerifyRequest,
    "VerifyRequest.expected_head": w.ExpectedHead,
    "RectifyRequest": w.RectifyRequest,
    "ConsentRequest": w.ConsentRequest,
    "Consent": m.Consent,
    "Consent.history[]": m.ConsentChange,
    "SubjectConsents": m.SubjectConsents,
    "Purposes": w.Purposes,
    "Purposes.purposes[]": m.PurposeInfo,
    "SubjectRequest": w.SubjectRequest,
    "SubjectOverview": m.SubjectOverview,
    "SubjectOverview.records[]": m.RecordInfo,
    "WhoAmI": m.WhoAmI,
    "ExportRequest": w.ExportRequest,
    "ErasureReceipt": m.ErasureReceipt,
    "ErasureReceipt.purge": m.Purge,
    "SubjectExport": m.SubjectExport,
    "SubjectExport.records[]": m.ExportedRecord,
    "KeyStatus": m.KeyStatus,
    "KeyStatus.versions[]": m.KekVersion,
    "KeyRetirement": m.KeyRetirement,
    "Backup": m.Backup,
    "BackupCreated": w.BackupCreated,
    "Backups": m.Backups,
    "Error": w.ErrorBody,
    "Error.error": w.ErrorDetail,
}
