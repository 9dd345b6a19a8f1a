"""What the sync and the async client share: one `Call` per route (path, body, how to
read the answer), the retry policy, answers turned into results or errors, and the
paging of an export. The clients only send."""

from __future__ import annotations

import dataclasses
import math
import random
import re
from dataclasses import dataclass
from typing import Any, Callable, Dict, Generic, Iterable, List, Optional, Tuple, TypeVar
from urllib.parse import quote

import httpx

from . import _wire as w
from ._errors import DecodeError, ExportChanged, RateLimited, TransportError, VaultError, error_class
from ._models import (
    AuditCheck,
    AuditEvent,
    AuditHead,
    Backup,
    Backups,
    DetokenizeResult,
    ErasureReceipt,
    ExportedRecord,
    Inventory,
    KeyRetirement,
    KeyStatus,
    PurposeInfo,
    Sensitive,
    SubjectConsents,
    SubjectExport,
    SubjectOverview,
    TokenizeItem,
    WhoAmI,
)
from ._routes import ROUTES

T = TypeVar("T")


@dataclass(frozen=True)
class Call(Generic[T]):
    """One request: `route` is the key into `ROUTES`, `path` the route filled in."""

    method: str
    route: str
    parse: Callable[[Any], T]
    path: str = ""
    body: Any = None
    params: Optional[Dict[str, Any]] = None
    # A probe's `parse` gets whether the status is 200, and other statuses raise nothing.
    probe: bool = False

    @property
    def retry(self) -> bool:
        return ROUTES[(self.method, self.route)].retry

    def request_args(self) -> Dict[str, Any]:
        args: Dict[str, Any] = {"params": self.params}
        if self.body is not None:
            args["json"] = w.to_json(self.body)
        return args


def _nothing(_: Any) -> None:
    return None


def _call(method: str, route: str, parse: Callable[[Any], T], **kw: Any) -> Call[T]:
    return Call(method, route, parse, path=kw.pop("path", route), **kw)


def _list_of(items: Any, kind: type, what: str) -> Tuple[Any, ...]:
    # A lone string would otherwise be sent as a list of its characters.
    if isinstance(items, (str, bytes)):
        raise TypeError(f"{what} must be a list of {kind.__name__}, not one string")
    listed: Tuple[Any, ...] = tuple(items)
    if not all(isinstance(i, kind) for i in listed):
        raise TypeError(f"{what} must be a list of {kind.__name__}")
    return listed


# --- One builder per route -------------------------------------------------------------


def tokenize(items: Iterable[TokenizeItem]) -> Call[List[str]]:
    body = w.TokenizeRequest(_list_of(items, TokenizeItem, "items"))
    return _call("POST", "/v1/tokenize", lambda d: list(w.TokenizeResponse.from_json(d).tokens), body=body)


def detokenize(tokens: Iterable[str], purpose: str) -> Call[List[DetokenizeResult]]:
    body = w.DetokenizeRequest(_list_of(tokens, str, "tokens"), purpose)
    return _call("POST", "/v1/detokenize", lambda d: list(w.DetokenizeResponse.from_json(d).results), body=body)


def rectify(token: str, value: str) -> Call[None]:
    body = w.RectifyRequest(Sensitive(value))
    return _call("PUT", "/v1/tokens/{token}", _nothing, path=token_path(token), body=body)


def delete(token: str) -> Call[None]:
    return _call("DELETE", "/v1/tokens/{token}", _nothing, path=token_path(token))


def erase(subject: str) -> Call[ErasureReceipt]:
    body = w.SubjectRequest(Sensitive(subject))
    return _call("POST", "/v1/subjects/erase", ErasureReceipt.from_json, body=body)


def export_page(subject: str, cursor: Optional[str], limit: Optional[int]) -> Call[SubjectExport]:
    body = w.ExportRequest(Sensitive(subject), cursor, limit)
    return _call("POST", "/v1/subjects/export", SubjectExport.from_json, body=body)


def record_consent(subject: str, purpose: str, granted: bool, source: Optional[str]) -> Call[None]:
    body = w.ConsentRequest(Sensitive(subject), purpose, granted, None if source is None else Sensitive(source))
    return _call("POST", "/v1/subjects/consent", _nothing, body=body)


def consents(subject: str) -> Call[SubjectConsents]:
    body = w.SubjectRequest(Sensitive(subject))
    return _call("POST", "/v1/subjects/consents", SubjectConsents.from_json, body=body)


def lookup(subject: str) -> Call[SubjectOverview]:
    body = w.SubjectRequest(Sensitive(subject))
    return _call("POST", "/v1/subjects/lookup", SubjectOverview.from_json, body=body)


def whoami() -> Call[WhoAmI]:
    return _call("GET", "/v1/whoami", WhoAmI.from_json)


def purposes() -> Call[List[PurposeInfo]]:
    return _call("GET", "/v1/purposes", lambda d: list(w.Purposes.from_json(d).purposes))


def audit_events(after: Optional[int], limit: int) -> Call[List[AuditEvent]]:
    params: Dict[str, Any] = {"limit": limit}
    if after is not None:
        params["after"] = after
    return _call("GET", "/v1/audit", lambda d: list(w.AuditEvents.from_json(d).events), params=params)


def audit_head() -> Call[AuditHead]:
    return _call("GET", "/v1/audit/head", AuditHead.from_json)


def verify_audit(expected_head: Optional[AuditHead]) -> Call[AuditCheck]:
    body = None
    if expected_head is not None:
        if expected_head.seq is None or expected_head.mac is None:
            raise ValueError("the expected head is empty (taken from an empty trail)")
        body = w.VerifyRequest(w.ExpectedHead(expected_head.seq, expected_head.mac))
    return _call("POST", "/v1/audit/verify", AuditCheck.from_json, body=body)


def inventory() -> Call[Inventory]:
    return _call("GET", "/v1/inventory", Inventory.from_json)


def keys() -> Call[KeyStatus]:
    return _call("GET", "/v1/admin/keys", KeyStatus.from_json)


def rotate() -> Call[KeyStatus]:
    return _call("POST", "/v1/admin/rotate", KeyStatus.from_json)


def retire_keys() -> Call[KeyRetirement]:
    return _call("POST", "/v1/admin/keys/retire", KeyRetirement.from_json)


def create_backup() -> Call[Backup]:
    return _call("POST", "/v1/admin/backups", lambda d: w.BackupCreated.from_json(d).backup)


def backups() -> Call[Backups]:
    return _call("GET", "/v1/admin/backups", Backups.from_json)


def health() -> Call[bool]:
    return _call("GET", "/healthz", bool, probe=True)


def ready() -> Call[bool]:
    return _call("GET", "/readyz", bool, probe=True)


def openapi() -> Call[Dict[str, Any]]:
    return _call("GET", "/openapi.json", lambda d: d if isinstance(d, dict) else _bad("openapi"))


def _bad(what: str) -> Any:
    raise DecodeError(f"{what}: expected an object")


_TOKEN_WORD = re.compile(r"[A-Za-z0-9_]+")


def token_path(token: str) -> str:
    """The path of a token's resource. Only token-shaped text goes into a URL (`tok_…`,
    digits, or `tok_…@example.net` with its `@` escaped): a value passed by mistake must
    never end up in an access log."""
    if not isinstance(token, str):
        raise TypeError("a token is a str")
    local, at, domain = token.partition("@")
    ok = (
        0 < len(token) <= 96
        and _TOKEN_WORD.fullmatch(local) is not None
        and (not at or (domain == "example.net" and local.startswith("tok_")))
    )
    if not ok:
        raise ValueError("not a token")
    return "/v1/tokens/" + quote(token, safe="")


# --- Retries and answers ---------------------------------------------------------------


@dataclass(frozen=True)
class RetryPolicy:
    """Retries after the first attempt, from `initial_backoff` doubling up to
    `max_backoff` seconds; a longer `Retry-After` ends the call with its error."""

    retries: int = 3
    initial_backoff: float = 0.1
    max_backoff: float = 2.0

    def backoff(self, attempt: int) -> float:
        base = min(self.initial_backoff * 2.0 ** min(attempt, 16), self.max_backoff)
        # Jitter in [base/2, base]: clients retrying together spread out.
        return base * (0.5 + random.random() / 2)


# Failures after which an idempotent call may be sent again.
RETRIABLE_TRANSPORT = (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)


def retry_wait(call: Call[Any], attempt: int, policy: RetryPolicy, response: Optional[httpx.Response]) -> Optional[float]:
    """Seconds to wait before sending `call` again, or None to stop here. `response` is
    None after a connection failure."""
    if not call.retry or attempt >= policy.retries:
        return None
    if response is None:
        return policy.backoff(attempt)
    if response.status_code not in (429, 503):
        return None
    # A 503 that is the server's own timeout would only time out again, with the first
    # attempt's work still running.
    if response.headers.get("x-vault-error") == "timeout":
        return None
    after = retry_after(response)
    if after is not None and after > policy.max_backoff:
        return None
    return max(after or 0.0, policy.backoff(attempt))


def retry_after(response: httpx.Response) -> Optional[float]:
    try:
        seconds = float(response.headers["retry-after"])
    except (KeyError, ValueError):
        return None
    # Only a number of seconds: an HTTP date, NaN or a negative number is no advice.
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


def result(call: Call[T], response: httpx.Response, attempt: int) -> T:
    """The call's result from its (last) answer, or the error it carries."""
    status = response.status_code
    if call.probe:
        return call.parse(status == 200)
    if status == 204:
        return call.parse(None)
    if 200 <= status < 300:
        try:
            data = response.json()
        except ValueError:
            raise DecodeError("the answer is not JSON", status=status) from None
        try:
            return call.parse(data)
        except DecodeError as e:
            e.status = status
            raise
    if status == 404 and call.method == "DELETE" and attempt > 0:
        # An earlier attempt deleted the record and its answer was lost.
        return call.parse(None)
    raise api_error(response)


def api_error(response: httpx.Response) -> VaultError:
    status = response.status_code
    request_id = response.headers.get("x-request-id")
    try:
        detail = w.ErrorBody.from_json(response.json()).error
        code, message, item = detail.code, detail.message, detail.item
    except (ValueError, DecodeError):
        code = response.headers.get("x-vault-error", "unexpected_answer")
        message, item = "unexpected answer from the server", None
    kind = error_class(status)
    if kind is RateLimited:
        return RateLimited(code, message, status=status, item=item, request_id=request_id, retry_after=retry_after(response))
    error: VaultError = kind(code, message, status=status, item=item, request_id=request_id)
    return error


def transport_error(exc: Exception) -> TransportError:
    # httpx's message names the failure (refused, TLS, timeout), never the body.
    return TransportError("transport", f"{type(exc).__name__}: {exc}")


# --- Export paging ---------------------------------------------------------------------

# The page size asked for after the server's own page was too large (413).
EXPORT_PAGE_AFTER_413 = 64


class ExportPages:
    """Follows an export's `next_cursor` to the last page, as the Rust client does:
    pages must name the same subject instance, and a page the server finds too large
    is asked again with half the limit."""

    def __init__(self, subject: str) -> None:
        self.subject = Sensitive(subject)
        self.limit: Optional[int] = None
        self.first: Optional[SubjectExport] = None
        self.cursor: Optional[str] = None
        self.records: List[ExportedRecord] = []
        self.access_log: List[AuditEvent] = []

    def next_call(self) -> Optional[Call[SubjectExport]]:
        if self.first is not None and self.cursor is None:
            return None
        return export_page(self.subject, self.cursor, self.limit)

    def add(self, page: SubjectExport) -> None:
        if self.first is None:
            self.first = page
        elif page.subject_ref != self.first.subject_ref:
            raise ExportChanged()
        # A cursor that does not move would page forever.
        if page.next_cursor is not None and page.next_cursor == self.cursor:
            raise DecodeError("the export cursor did not move", status=200)
        self.records.extend(page.records)
        self.access_log.extend(page.access_log)
        self.cursor = page.next_cursor

    def failed(self, error: VaultError) -> None:
        """Shrinks the page after a 413, or raises `error`."""
        if error.code != "response_too_large" or self.limit == 1:
            raise error
        self.limit = EXPORT_PAGE_AFTER_413 if self.limit is None else max(1, self.limit // 2)

    def result(self) -> SubjectExport:
        assert self.first is not None  # next_call() asks for a first page before None
        return dataclasses.replace(
            self.first, records=tuple(self.records), access_log=tuple(self.access_log), next_cursor=None
        )

