"""`Client` (sync) and `AsyncClient`: one method per route, the same in both.

Each method builds its request in `_calls` and sends it here; only sending, waiting
between retries and the export's paging loop differ between the two.
"""

from __future__ import annotations

import os
import re
import ssl
import time
from typing import Any, Dict, Iterable, List, Optional, Type, TypeVar, Union

import anyio
import httpx

from . import _calls as calls
from ._calls import Call, RetryPolicy
from ._errors import VaultError
from ._models import (
    AuditCheck,
    AuditEvent,
    AuditHead,
    Backup,
    Backups,
    DetokenizeResult,
    ErasureReceipt,
    Inventory,
    KeyRetirement,
    KeyStatus,
    PurposeInfo,
    SubjectConsents,
    SubjectExport,
    SubjectOverview,
    TokenizeItem,
    WhoAmI,
)

__all__ = ["AsyncClient", "Client"]

__version__ = "0.1.0"

T = TypeVar("T")
C = TypeVar("C", bound="_Settings")

# What an API key may hold: visible ASCII, no space. Anything else would be refused by
# h11 when sending, in an error message that quotes the header: the key itself.
_API_KEY = re.compile(r"[\x21-\x7e]+")


def _check_api_key(api_key: Optional[str]) -> None:
    """Refuses a key that cannot be a header value. Nothing is stripped: a key with a
    stray newline is a mistake to fix where it comes from. The message never quotes it."""
    if api_key is None:
        return
    if not isinstance(api_key, str):
        raise TypeError("the API key must be a str")
    if _API_KEY.fullmatch(api_key) is None:
        raise ValueError(
            "the API key must be visible ASCII characters only, without spaces or line breaks"
            " (check for a trailing newline where it was read from)"
        )


class _Settings:
    """Construction, shared by both clients."""

    def __init__(
        self,
        base_url: str,
        api_key: Optional[str],
        *,
        ca_cert: Optional[Union[str, os.PathLike[str]]] = None,
        timeout: float = 10.0,
        retries: int = 3,
        danger_allow_plain_http: bool = False,
        transport: Any = None,
    ) -> None:
        """`base_url` like `https://127.0.0.1:8200`; `api_key` sent as a bearer token;
        `ca_cert` a PEM file to verify the server against (else the system's roots);
        `timeout` seconds per attempt; `retries` of idempotent calls after the first
        attempt. `danger_allow_plain_http` accepts `http://`: keys, subject ids and
        values then cross the network in the clear. `transport` is an httpx transport
        to send through (tests), which verifies the server itself: it does not go with
        `ca_cert`."""
        scheme = httpx.URL(base_url).scheme
        if scheme != "https" and not (scheme == "http" and danger_allow_plain_http):
            raise ValueError("the vault address must start with https:// (http:// only with danger_allow_plain_http)")
        _check_api_key(api_key)
        if transport is not None and ca_cert is not None:
            # The transport's own TLS settings would apply, the CA silently ignored.
            raise ValueError("give ca_cert= or transport= (whose TLS settings verify the server), not both")
        self.base_url = base_url.rstrip("/")
        self._policy = RetryPolicy(retries=retries)
        headers = {"user-agent": f"pii-vault-python/{__version__}"}
        if api_key is not None:
            headers["authorization"] = f"Bearer {api_key}"
        verify: Union[bool, ssl.SSLContext] = True
        if ca_cert is not None:
            verify = ssl.create_default_context(cafile=os.fspath(ca_cert))
        self._http_args: Dict[str, Any] = dict(
            base_url=self.base_url,
            headers=headers,
            verify=verify,
            timeout=timeout,
            # A redirect would send bodies (subject ids, values) somewhere else.
            follow_redirects=False,
            transport=transport,
        )

    @classmethod
    def from_env(cls: Type[C], **options: Any) -> C:
        """A client from `VAULT_ADDR`, `VAULT_API_KEY` and `VAULT_CACERT` (a PEM file),
        as `vaultctl` reads them; `options` as for the constructor (with `transport=`,
        pass `ca_cert=None` too if `VAULT_CACERT` is set)."""
        addr = os.environ.get("VAULT_ADDR")
        if not addr:
            raise ValueError("VAULT_ADDR is not set (e.g. https://127.0.0.1:8200)")
        options.setdefault("ca_cert", os.environ.get("VAULT_CACERT") or None)
        return cls(addr, os.environ.get("VAULT_API_KEY"), **options)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.base_url!r})"


class Client(_Settings):
    """A client of one vault server over `httpx.Client`. Use it as a context manager,
    or `close()` it."""

    def __init__(self, base_url: str, api_key: Optional[str], **options: Any) -> None:
        super().__init__(base_url, api_key, **options)
        self._http = httpx.Client(**self._http_args)

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _send(self, call: Call[T]) -> T:
        attempts = calls.Attempts(call, self._policy)
        while True:
            try:
                response = self._http.request(call.method, call.path, **call.request_args())
            except httpx.HTTPError as exc:
                # Neither chained nor quoted: its text can hold the request's headers.
                attempts.lost(exc)
            else:
                attempts.answered(response)
            wait = attempts.wait()
            if wait is None:
                return attempts.result()
            time.sleep(wait)

    def tokenize(self, items: Iterable[TokenizeItem]) -> List[str]:
        """Tokenizes values, all-or-nothing: one token per item, in order. Not retried."""
        return self._send(calls.tokenize(items))

    def detokenize(self, tokens: Iterable[str], purpose: str) -> List[DetokenizeResult]:
        """Turns tokens back into values for `purpose`: one result per token, in order,
        a `DetokenizedValue` or a `DetokenizeFailure`."""
        return self._send(calls.detokenize(tokens, purpose))

    def rectify(self, token: str, value: str) -> None:
        """Replaces the value behind `token`; the token stays."""
        self._send(calls.rectify(token, value))

    def delete(self, token: str) -> None:
        """Deletes the record behind `token`."""
        self._send(calls.delete(token))

    def erase(self, subject: str) -> ErasureReceipt:
        """Erases a subject (right to be forgotten). Not retried."""
        return self._send(calls.erase(subject))

    def export(self, subject: str) -> SubjectExport:
        """Everything the vault holds about a subject, every page of it."""
        pages = calls.ExportPages(subject)
        call = pages.next_call()
        while call is not None:
            try:
                pages.add(self._send(call))
            except VaultError as error:
                pages.failed(error)
            call = pages.next_call()
        return pages.result()

    def record_consent(self, subject: str, purpose: str, granted: bool, source: Optional[str] = None) -> None:
        """Records a grant (`granted=True`) or withdrawal of consent to `purpose`. Not retried."""
        self._send(calls.record_consent(subject, purpose, granted, source))

    def consents(self, subject: str) -> SubjectConsents:
        """A subject's consents: state and history per purpose."""
        return self._send(calls.consents(subject))

    def lookup(self, subject: str) -> SubjectOverview:
        """What the vault holds about a subject, without the values (audited as a lookup)."""
        return self._send(calls.lookup(subject))

    def whoami(self) -> WhoAmI:
        """The calling key's name, scopes and purposes."""
        return self._send(calls.whoami())

    def purposes(self) -> List[PurposeInfo]:
        """The declared purposes."""
        return self._send(calls.purposes())

    def audit_events(self, after: Optional[int] = None, limit: int = 100) -> List[AuditEvent]:
        """Up to `limit` (1–1000) audit events after sequence number `after`."""
        return self._send(calls.audit_events(after, limit))

    def audit_head(self) -> AuditHead:
        """The audit trail's end now, to keep outside the vault."""
        return self._send(calls.audit_head())

    def verify_audit(self, expected_head: Optional[AuditHead] = None) -> AuditCheck:
        """Checks the audit trail, and whether it still holds `expected_head`."""
        return self._send(calls.verify_audit(expected_head))

    def inventory(self) -> Inventory:
        """The record of processing (GDPR Art. 30)."""
        return self._send(calls.inventory())

    def keys(self) -> KeyStatus:
        """Key versions, rotation and purge progress."""
        return self._send(calls.keys())

    def rotate(self) -> KeyStatus:
        """Starts a key-encryption-key rotation. Not retried."""
        return self._send(calls.rotate())

    def retire_keys(self) -> KeyRetirement:
        """Finishes the rotation under way and retires the old KEK versions."""
        return self._send(calls.retire_keys())

    def create_backup(self) -> Backup:
        """Takes a backup now. Not retried."""
        return self._send(calls.create_backup())

    def backups(self) -> Backups:
        """The kept backups."""
        return self._send(calls.backups())

    def health(self) -> bool:
        """Whether the server is up (`/healthz` answers 200)."""
        return self._send(calls.health())

    def ready(self) -> bool:
        """Whether the server is ready (`/readyz` answers 200; 503 once shutting down)."""
        return self._send(calls.ready())

    def openapi(self) -> Dict[str, Any]:
        """The server's OpenAPI document."""
        return self._send(calls.openapi())


class AsyncClient(_Settings):
    """A client of one vault server over `httpx.AsyncClient`: `Client`'s methods, awaited.
    Use it as an async context manager, or `await aclose()` it."""

    def __init__(self, base_url: str, api_key: Optional[str], **options: Any) -> None:
        super().__init__(base_url, api_key, **options)
        self._http = httpx.AsyncClient(**self._http_args)

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _send(self, call: Call[T]) -> T:
        attempts = calls.Attempts(call, self._policy)
        while True:
            try:
                response = await self._http.request(call.method, call.path, **call.request_args())
            except httpx.HTTPError as exc:
                attempts.lost(exc)
            else:
                attempts.answered(response)
            wait = attempts.wait()
            if wait is None:
                return attempts.result()
            # anyio, as httpx: asyncio or trio alike.
            await anyio.sleep(wait)

    async def tokenize(self, items: Iterable[TokenizeItem]) -> List[str]:
        return await self._send(calls.tokenize(items))

    async def detokenize(self, tokens: Iterable[str], purpose: str) -> List[DetokenizeResult]:
        return await self._send(calls.detokenize(tokens, purpose))

    async def rectify(self, token: str, value: str) -> None:
        await self._send(calls.rectify(token, value))

    async def delete(self, token: str) -> None:
        await self._send(calls.delete(token))

    async def erase(self, subject: str) -> ErasureReceipt:
        return await self._send(calls.erase(subject))

    async def export(self, subject: str) -> SubjectExport:
        pages = calls.ExportPages(subject)
        call = pages.next_call()
        while call is not None:
            try:
                pages.add(await self._send(call))
            except VaultError as error:
                pages.failed(error)
            call = pages.next_call()
        return pages.result()

    async def record_consent(self, subject: str, purpose: str, granted: bool, source: Optional[str] = None) -> None:
        await self._send(calls.record_consent(subject, purpose, granted, source))

    async def consents(self, subject: str) -> SubjectConsents:
        return await self._send(calls.consents(subject))

    async def lookup(self, subject: str) -> SubjectOverview:
        return await self._send(calls.lookup(subject))

    async def whoami(self) -> WhoAmI:
        return await self._send(calls.whoami())

    async def purposes(self) -> List[PurposeInfo]:
        return await self._send(calls.purposes())

    async def audit_events(self, after: Optional[int] = None, limit: int = 100) -> List[AuditEvent]:
        return await self._send(calls.audit_events(after, limit))

    async def audit_head(self) -> AuditHead:
        return await self._send(calls.audit_head())

    async def verify_audit(self, expected_head: Optional[AuditHead] = None) -> AuditCheck:
        return await self._send(calls.verify_audit(expected_head))

    async def inventory(self) -> Inventory:
        return await self._send(calls.inventory())

    async def keys(self) -> KeyStatus:
        return await self._send(calls.keys())

    async def rotate(self) -> KeyStatus:
        return await self._send(calls.rotate())

    async def retire_keys(self) -> KeyRetirement:
        return await self._send(calls.retire_keys())

    async def create_backup(self) -> Backup:
        return await self._send(calls.create_backup())

    async def backups(self) -> Backups:
        return await self._send(calls.backups())

    async def health(self) -> bool:
        return await self._send(calls.health())

    async def ready(self) -> bool:
        return await self._send(calls.ready())

    async def openapi(self) -> Dict[str, Any]:
        return await self._send(calls.openapi())
