"""What a call can raise. Never personal data: the server's messages quote no input,
and this client never puts a request's subject ids or values into an error."""

from __future__ import annotations

from typing import Optional

__all__ = [
    "AuthError",
    "DecodeError",
    "ExportChanged",
    "Gone",
    "NotFound",
    "RateLimited",
    "TransportError",
    "VaultError",
]


class VaultError(Exception):
    """An error answer of the server, or a call that failed on the way.

    `code` is the server's stable `error.code` (also its `x-vault-error` header) to
    branch on, or one of this client's own: `transport`, `unexpected_answer`,
    `export_changed`. `status` is None when no answer came back; `item` names the
    offending batch item.
    """

    def __init__(
        self,
        code: str,
        message: str,
        *,
        status: Optional[int] = None,
        item: Optional[int] = None,
        request_id: Optional[str] = None,
    ) -> None:
        super().__init__(code, message)
        self.code = code
        self.message = message
        self.status = status
        self.item = item
        # The server's x-request-id: its log has the details under it.
        self.request_id = request_id

    def __str__(self) -> str:
        where = f" (item {self.item})" if self.item is not None else ""
        prefix = f"{self.status} " if self.status is not None else ""
        return f"{prefix}{self.code}: {self.message}{where}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}(status={self.status!r}, code={self.code!r}, item={self.item!r})"


class AuthError(VaultError):
    """401 (`unauthenticated`) or 403 (`forbidden`, `purpose_not_allowed`)."""


class NotFound(VaultError):
    """404: no record for the token (`not_found`)."""


class Gone(VaultError):
    """410: the token's subject was erased (`erased`) or the record expired (`expired`)."""


class RateLimited(VaultError):
    """429 (`overloaded`, `rate_limited`); `retry_after` in seconds when the server said."""

    def __init__(
        self,
        code: str,
        message: str,
        *,
        status: Optional[int] = None,
        item: Optional[int] = None,
        request_id: Optional[str] = None,
        retry_after: Optional[float] = None,
    ) -> None:
        super().__init__(code, message, status=status, item=item, request_id=request_id)
        self.retry_after = retry_after


class TransportError(VaultError):
    """The server could not be reached, or the connection failed (`transport`)."""


class DecodeError(VaultError):
    """The server's answer was not what this client expects (`unexpected_answer`)."""

    def __init__(self, message: str, *, status: Optional[int] = None) -> None:
        super().__init__("unexpected_answer", message, status=status)


class ExportChanged(VaultError):
    """The subject was erased and stored afresh between two pages of an export: the
    pages describe different subject instances. Export again."""

    def __init__(self) -> None:
        super().__init__("export_changed", "the subject changed during a paged export; export again")


def error_class(status: int) -> type:
    """The family of an HTTP error status."""
    if status in (401, 403):
        return AuthError
    return {404: NotFound, 410: Gone, 429: RateLimited}.get(status, VaultError)
