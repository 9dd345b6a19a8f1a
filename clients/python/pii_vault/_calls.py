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


# Exactly the shapes the server issues (vault-core's `Token::from_str`): digits (the
# `digits` and `luhn` formats), `tok_` and 32 lowercase base32 characters, and that at
# example.net (the `email` format).
_TOKEN = re.compile(r"[0-9]{1,32}|tok_[a-z2-7]{32}(@example\.net)?")


def token_path(token: str) -> str:
    """The path of a token's resource. Only what the server issues as a token goes into
    a URL: a name, an address or a phone number passed by mistake must never end up in
    an access log. The message never quotes the argument."""
    if not isinstance(token, str):
        raise TypeError("a token is a str")
    # fullmatch: not even a trailing newline, which `$` would let through.
    if _TOKEN.fullmatch(token) is None:
        raise ValueError("not a token (digits, tok_ and 32 base32 characters, or that at example.net)")
    return "/v1/tokens/" + quote(token, safe="")  # `@` as %40


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
# Failures before any of the request was sent: the server never saw it. After the
# others (a read or write failing, a read timing out, the connection dropped) it may
# have carried the request out.
NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


def retry_wait(call: Call[Any], attempt: int, policy: RetryPolicy, response: Optional[httpx.Response]) -> Optional[float]:
    """Seconds to wait before sending `call` again, or None to stop here. `response` is
    None after a (retriable) connection failure."""
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


class Attempts(Generic[T]):
    """One call's attempts: what came of the last one, whether to send the call again,
    and its result. The clients record each attempt with `answered` or `lost`, then ask
    `wait()`, and once it is None return `result()`."""

    def __init__(self, call: Call[T], policy: RetryPolicy) -> None:
        self.call = call
        self.policy = policy
        # Attempts made before the last one.
        self.earlier = 0
        self.response: Optional[httpx.Response] = None
        self.failure: Optional[TransportError] = None
        self.retriable = False
        # Whether the last attempt may have been carried out although its answer says
        # nothing of it; and whether one of the earlier ones may have been.
        self.may_have_run = False
        self.earlier_may_have_run = False

    def answered(self, response: httpx.Response) -> None:
        self.response, self.failure = response, None
        # A 429 refuses the request before any work; a 503 does not say how far it got.
        self.may_have_run = response.status_code == 503

    def lost(self, exc: httpx.HTTPError) -> None:
        """An attempt that got no answer. Nothing of `exc` is kept: its text and its
        request can hold the API key, a subject id or a value."""
        self.response, self.failure = None, transport_error(exc)
        self.retriable = isinstance(exc, RETRIABLE_TRANSPORT)
        self.may_have_run = self.retriable and not isinstance(exc, NOT_SENT)

    def wait(self) -> Optional[float]:
        """Seconds to wait before the next attempt, or None: the last one is the result."""
        if self.failure is not None and not self.retriable:
            return None
        wait = retry_wait(self.call, self.earlier, self.policy, self.response)
        if wait is not None:
            self.earlier += 1
            self.earlier_may_have_run = self.earlier_may_have_run or self.may_have_run
        return wait

    def result(self) -> T:
        """The last attempt's result, or the error it ended with. Raised here, outside
        any `except` block, the error has no `__context__` (nor `__cause__`)."""
        if self.failure is not None:
            raise self.failure
        assert self.response is not None
        return result(self.call, self.response, self.earlier_may_have_run)


def result(call: Call[T], response: httpx.Response, earlier_may_have_run: bool = False) -> T:
    """The call's result from its (last) answer, or the error it carries.
    `earlier_may_have_run`: an earlier attempt's outcome is unknown (its connection was
    lost after sending, or it was answered 503)."""
    status = response.status_code
    if call.probe:
        return call.parse(status == 200)
    if status == 204:
        return call.parse(None)
    if 200 <= status < 300:
        data = _json(response)
        try:
            return call.parse(data)
        except DecodeError as e:
            e.status = status
            raise
    if status == 404 and call.method == "DELETE" and earlier_may_have_run:
        # An earlier attempt may have deleted the record, its answer lost. Not after a
        # 429 only: that attempt was refused before it ran, and the token is unknown.
        return call.parse(None)
    raise api_error(response)


_NOT_JSON = object()


def _json(response: httpx.Response) -> Any:
    # The JSONDecodeError holds the whole answer (`doc`): not even as a `__context__`.
    try:
        data = response.json()
    except ValueError:
        data = _NOT_JSON
    if data is _NOT_JSON:
        raise DecodeError("the answer is not JSON", status=response.status_code)
    return data


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


# What each failure means, first match wins. The message is built from these and from
# exception *types* only: an exception's text can quote the request (h11 quotes an
# illegal header value, the API key included).
_TRANSPORT_FAILURES: Tuple[Tuple[type, str], ...] = (
    (httpx.ConnectTimeout, "timed out connecting to the server"),
    (httpx.ConnectError, "could not connect to the server (refused, unreachable, or the TLS handshake failed)"),
    (httpx.ReadTimeout, "timed out waiting for the answer"),
    (httpx.WriteTimeout, "timed out sending the request"),
    (httpx.PoolTimeout, "timed out waiting for a free connection"),
    (httpx.TimeoutException, "timed out"),
    (httpx.RemoteProtocolError, "the server closed the connection or broke the HTTP protocol"),
    (httpx.LocalProtocolError, "the request could not be sent as valid HTTP"),
    (httpx.ReadError, "the connection failed while reading the answer"),
    (httpx.WriteError, "the connection failed while sending the request"),
    (httpx.ProxyError, "the proxy failed"),
    (httpx.UnsupportedProtocol, "unsupported URL scheme"),
    (httpx.DecodingError, "the answer's content encoding could not be decoded"),
)


def transport_error(exc: BaseException) -> TransportError:
    """A `TransportError` that names the failure by its type (and the type of what
    caused it, e.g. `SSLCertVerificationError`, `ConnectionRefusedError`), never by its
    text."""
    what = next((text for kind, text in _TRANSPORT_FAILURES if isinstance(exc, kind)), "the request failed")
    root = _root_cause(exc)
    because = f" ({type(root).__name__})" if root is not None else ""
    return TransportError("transport", f"{type(exc).__name__}{because}: {what}")


def _root_cause(exc: BaseException) -> Optional[BaseException]:
    """The first exception down the chain that is not httpx's or httpcore's own."""
    seen = {id(exc)}
    node: Optional[BaseException] = exc
    while node is not None and len(seen) < 16:
        node = node.__cause__ or node.__context__
        if node is None or id(node) in seen:
            return None
        seen.add(id(node))
        if type(node).__module__.split(".")[0] not in ("httpx", "httpcore"):
            return node
    return None


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

