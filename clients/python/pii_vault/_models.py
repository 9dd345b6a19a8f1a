"""The answers of the vault's HTTP API (v1) as frozen dataclasses, and `Sensitive`.

Parsing follows the Rust client (`vault_client::api`): unknown fields in an answer are
ignored, so a newer server can add some; a missing required field, or one of the wrong
type, raises `DecodeError`. Subject ids and values are `Sensitive`, whose `repr` is
redacted, so a model's `repr` never shows personal data.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple, Type, TypeVar, Union

from ._errors import DecodeError

__all__ = [
    "AuditCheck",
    "AuditEvent",
    "AuditHead",
    "Backup",
    "Backups",
    "Consent",
    "ConsentChange",
    "DetokenizeFailure",
    "DetokenizeResult",
    "DetokenizedValue",
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
]


class Sensitive(str):
    """Personal data (a subject id or a value): an ordinary `str` whose `repr` is
    redacted, so that a stray `repr()`, log line or traceback cannot leak it."""

    __slots__ = ()

    def __repr__(self) -> str:
        return f"<redacted: {len(self)} chars>"


M = TypeVar("M", bound="_Model")

# Per class, its fields' resolved types (the annotations are strings).
_HINTS: Dict[type, Dict[str, Any]] = {}


class _Model:
    """Base of every wire dataclass: `from_json` built from the type hints."""

    @classmethod
    def from_json(cls: Type[M], data: Any) -> M:
        """Parses a decoded JSON object; raises `DecodeError` if it does not fit."""
        model: M = _decode(cls, data, cls.__name__)
        return model


def _decode(kind: Any, data: Any, where: str) -> Any:
    """`data` as `kind`; `where` names the spot in error messages (never a value)."""
    origin = typing.get_origin(kind)
    if origin is Union:
        options = typing.get_args(kind)
        if data is None and type(None) in options:
            return None
        # Optional[X] only: the unions of this API are decided by hand.
        (inner,) = [o for o in options if o is not type(None)]
        return _decode(inner, data, where)
    if origin is tuple:
        if not isinstance(data, list):
            raise DecodeError(f"{where}: expected a list")
        (inner, _) = typing.get_args(kind)
        return tuple(_decode(inner, x, f"{where}[]") for x in data)
    if isinstance(kind, type) and issubclass(kind, _Model):
        if not isinstance(data, dict):
            raise DecodeError(f"{where}: expected an object")
        hints = _HINTS.get(kind)
        if hints is None:
            hints = _HINTS[kind] = typing.get_type_hints(kind)
        values = {}
        for f in dataclasses.fields(typing.cast(Any, kind)):
            if f.name in data:
                values[f.name] = _decode(hints[f.name], data[f.name], f"{where}.{f.name}")
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise DecodeError(f"{where}: missing field {f.name!r}")
        return kind(**values)
    if kind is Sensitive:
        if not isinstance(data, str):
            raise DecodeError(f"{where}: expected a string")
        return Sensitive(data)
    # bool is an int in Python, and an int is not a bool: check the exact type.
    if kind in (str, bool) and type(data) is not kind:
        raise DecodeError(f"{where}: expected {kind.__name__}")
    if kind is int and type(data) is not int:
        raise DecodeError(f"{where}: expected int")
    return data


# --- Requests' items -----------------------------------------------------------------

TOKEN_FORMATS = ("digits", "luhn", "email")


@dataclass(frozen=True)
class TokenizeItem(_Model):
    """One value to tokenize. `format`: `digits`, `luhn`, `email` or None for the opaque
    `tok_…` form; `deterministic` asks for the same token for the same (subject, field,
    value), and goes only with `email` among the formats."""

    subject: Sensitive
    field: str
    value: Sensitive
    deterministic: bool = False
    format: Optional[str] = None

    def __post_init__(self) -> None:
        # Plain strings are wrapped so that the item's repr stays redacted.
        object.__setattr__(self, "subject", Sensitive(self.subject))
        object.__setattr__(self, "value", Sensitive(self.value))
        if self.format is not None and self.format not in TOKEN_FORMATS:
            raise ValueError(f"format must be one of {', '.join(TOKEN_FORMATS)}")


# --- Detokenize ----------------------------------------------------------------------


@dataclass(frozen=True)
class DetokenizedValue(_Model):
    """A token's field and value (`masked`: the value is a masked view)."""

    token: str
    field: str
    value: Sensitive
    masked: bool = False


@dataclass(frozen=True)
class DetokenizeFailure(_Model):
    """Why a token has no value: `not_found`, `erased`, `integrity`, `not_text`,
    `forbidden`, `no_consent`, `expired` (or a newer server's own)."""

    token: str
    error: str


DetokenizeResult = Union[DetokenizedValue, DetokenizeFailure]


def detokenize_result(data: Any) -> DetokenizeResult:
    """One element of `results`: an untagged union, told apart by its `error` key."""
    if isinstance(data, dict) and "error" in data:
        return DetokenizeFailure.from_json(data)
    return DetokenizedValue.from_json(data)


# --- Erasure, export, consent ---------------------------------------------------------


@dataclass(frozen=True)
class Purge(_Model):
    """Where the removal of an erased subject's bytes stands: `state` is `done` (with
    `at`), `pending` (with `due_by`) or `not_needed`; times in ms since the epoch."""

    state: str
    at: Optional[int] = None
    due_by: Optional[int] = None


@dataclass(frozen=True)
class ErasureReceipt(_Model):
    """Proof of an erasure; names nobody. `subject_ref` is None when no subject had the id."""

    subject_ref: Optional[str]
    erased_at: int
    records: int
    purge: Purge
    audit_event: Optional[int] = None
    backups: Tuple[str, ...] = ()
    in_backups_until: Optional[int] = None


@dataclass(frozen=True)
class ConsentChange(_Model):
    """One grant or withdrawal (`at`: ms since the epoch; `source` as the caller said)."""

    granted: bool
    at: int
    source: Optional[Sensitive] = None


@dataclass(frozen=True)
class Consent(_Model):
    """A subject's consent to one purpose: the current state, since when, and its history."""

    purpose: str
    granted: bool
    since: int
    history: Tuple[ConsentChange, ...]


@dataclass(frozen=True)
class SubjectConsents(_Model):
    """Answer to `consents(subject)`."""

    subject: Sensitive
    consents: Tuple[Consent, ...]


@dataclass(frozen=True)
class AuditEvent(_Model):
    """One audit event; no personal data (`subject` is a key-derived reference)."""

    seq: int
    at: int
    actor: str
    action: str
    outcome: str
    records: int
    purpose: Optional[str] = None
    subject: Optional[str] = None


@dataclass(frozen=True)
class ExportedRecord(_Model):
    """One record of an export (`value` None for a binary value)."""

    token: str
    field: str
    value: Optional[Sensitive]
    created_at: int


@dataclass(frozen=True)
class SubjectExport(_Model):
    """Everything the vault holds about a subject. `export()` follows the pages, so its
    answer holds every record and event and has `next_cursor` None."""

    subject: Sensitive
    exported_at: int
    records: Tuple[ExportedRecord, ...]
    consents: Tuple[Consent, ...] = ()
    access_log: Tuple[AuditEvent, ...] = ()
    subject_ref: Optional[str] = None
    next_cursor: Optional[str] = None


@dataclass(frozen=True)
class RecordInfo(_Model):
    """A record of a `SubjectOverview`: no value."""

    token: str
    field: str
    created_at: int


@dataclass(frozen=True)
class SubjectOverview(_Model):
    """What the vault holds about a subject, without the values: the first records
    (`more_records` if there are more), consents, the latest events of its access log
    (`more_events` if there are older ones), backups that hold it."""

    subject: Sensitive
    subject_ref: Optional[str]
    records: Tuple[RecordInfo, ...]
    more_records: bool
    consents: Tuple[Consent, ...]
    access_log: Tuple[AuditEvent, ...]
    more_events: bool
    backups: Tuple[str, ...]


# --- Purposes, audit, inventory --------------------------------------------------------


@dataclass(frozen=True)
class PurposeInfo(_Model):
    """A declared purpose: lawful basis, the fields it may reveal (None: all), masked."""

    name: str
    basis: str
    fields: Optional[Tuple[str, ...]]
    masked: bool


@dataclass(frozen=True)
class WhoAmI(_Model):
    """The calling key: its name, scopes, purposes (None: any), whether it sees masked values."""

    name: str
    scopes: Tuple[str, ...]
    purposes: Optional[Tuple[str, ...]]
    masked: bool


@dataclass(frozen=True)
class AuditHead(_Model):
    """The audit trail's end, to keep outside the vault; both None while it is empty."""

    seq: Optional[int]
    mac: Optional[str]


@dataclass(frozen=True)
class AuditCheck(_Model):
    """Result of `verify_audit`: `anchor` says whether an expected head is still held
    (`contained`, `truncated`, `rolled_back`, `pruned`)."""

    ok: bool
    events: int
    first_bad: Optional[int] = None
    problem: Optional[str] = None
    anchor: Optional[str] = None


@dataclass(frozen=True)
class FieldPurpose(_Model):
    """A purpose that may read a field."""

    purpose: str
    basis: str
    masked: bool


@dataclass(frozen=True)
class FieldInventory(_Model):
    """One field of the inventory: counts, oldest record's day, retention, purposes."""

    field: str
    records: int
    subjects: int
    oldest_record_day: Optional[int]
    retention_seconds: Optional[int]
    purposes: Tuple[FieldPurpose, ...]


@dataclass(frozen=True)
class InventoryBackups(_Model):
    """The backups part of the inventory."""

    kept: int
    latest_at: Optional[int]
    holding_erased: int
    erasures_in_backups_until: Optional[int]


@dataclass(frozen=True)
class Inventory(_Model):
    """The record of processing (GDPR Art. 30): counts only."""

    taken_at: int
    fields: Tuple[FieldInventory, ...]
    records: int
    subjects: int
    erased_subjects: int
    pending_purges: int
    active_kek_version: int
    kek_versions: Tuple[int, ...]
    backups: Optional[InventoryBackups]


# --- Keys and backups ----------------------------------------------------------------


@dataclass(frozen=True)
class KekVersion(_Model):
    """One key-encryption-key version and how many subject keys it wraps."""

    version: int
    active: bool
    deks: int


@dataclass(frozen=True)
class KeyStatus(_Model):
    """Key versions, rotation and purge progress."""

    active_version: int
    versions: Tuple[KekVersion, ...]
    rotation_in_progress: bool
    pending_purges: int
    background_error: Optional[str] = None


@dataclass(frozen=True)
class KeyRetirement(_Model):
    """The KEK versions just retired, and the key status after."""

    retired: Tuple[int, ...]
    keys: KeyStatus


@dataclass(frozen=True)
class Backup(_Model):
    """One backup (`path`: its directory on the server)."""

    id: str
    created_at: int
    path: str
    records: int
    bytes: int


@dataclass(frozen=True)
class Backups(_Model):
    """The kept backups, and how long erased subjects live on in them."""

    backups: Tuple[Backup, ...]
    erasures_in_backups_until: Optional[int]
    holding_erased: int
    backups_until_clean: int
