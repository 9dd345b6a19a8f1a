"""Request bodies and answer envelopes: the wire schemas that are no public model.

They are dataclasses like the models so that the contract test checks them against
the server's OpenAPI document too: a body key this client sends is a field here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Optional, Tuple

from ._models import (
    AuditEvent,
    Backup,
    DetokenizeResult,
    PurposeInfo,
    Sensitive,
    TokenizeItem,
    _Model,
    detokenize_result,
)
from ._errors import DecodeError


def to_json(body: Any) -> Any:
    """A request dataclass as JSON, leaving out absent (None) optional fields."""
    if dataclasses.is_dataclass(body):
        return {
            f.name: to_json(getattr(body, f.name))
            for f in dataclasses.fields(body)
            if getattr(body, f.name) is not None
        }
    if isinstance(body, (list, tuple)):
        return [to_json(x) for x in body]
    return body


# --- Requests --------------------------------------------------------------------------


@dataclass(frozen=True)
class TokenizeRequest(_Model):
    items: Tuple[TokenizeItem, ...]


@dataclass(frozen=True)
class DetokenizeRequest(_Model):
    tokens: Tuple[str, ...]
    purpose: str


@dataclass(frozen=True)
class RectifyRequest(_Model):
    value: Sensitive


@dataclass(frozen=True)
class SubjectRequest(_Model):
    subject: Sensitive


@dataclass(frozen=True)
class ExportRequest(_Model):
    subject: Sensitive
    cursor: Optional[str] = None
    limit: Optional[int] = None


@dataclass(frozen=True)
class ConsentRequest(_Model):
    subject: Sensitive
    purpose: str
    granted: bool
    source: Optional[Sensitive] = None


@dataclass(frozen=True)
class ExpectedHead(_Model):
    seq: int
    mac: str


@dataclass(frozen=True)
class VerifyRequest(_Model):
    expected_head: Optional[ExpectedHead] = None


# --- Answer envelopes ------------------------------------------------------------------


@dataclass(frozen=True)
class TokenizeResponse(_Model):
    tokens: Tuple[str, ...]


@dataclass(frozen=True)
class DetokenizeResponse(_Model):
    results: Tuple[DetokenizeResult, ...]

    @classmethod
    def from_json(cls, data: Any) -> "DetokenizeResponse":
        results = data.get("results") if isinstance(data, dict) else None
        if not isinstance(results, list):
            raise DecodeError("DetokenizeResponse: missing field 'results'")
        return cls(tuple(detokenize_result(r) for r in results))


@dataclass(frozen=True)
class Purposes(_Model):
    purposes: Tuple[PurposeInfo, ...]


@dataclass(frozen=True)
class AuditEvents(_Model):
    events: Tuple[AuditEvent, ...]


@dataclass(frozen=True)
class BackupCreated(_Model):
    backup: Backup


@dataclass(frozen=True)
class ErrorDetail(_Model):
    code: str
    message: str
    item: Optional[int] = None


@dataclass(frozen=True)
class ErrorBody(_Model):
    error: ErrorDetail
