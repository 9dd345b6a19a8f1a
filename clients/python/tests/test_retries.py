"""The retry policy, against a stub that answers what a test tells it to (a real vault
answers 429 and 503 only under load): only idempotent calls are sent again, only after
429, 503 or a lost connection, and only for as long as `Retry-After` allows."""

from __future__ import annotations

import socket
from typing import List

import httpx
import pytest

from conftest import Answer, Counting, Stub, error
from pii_vault import AsyncClient, Client, NotFound, RateLimited, TokenizeItem, TransportError, VaultError

TOKEN = "tok_abcdefghijklmnopqrstuvwxyz234567"
EMAIL_TOKEN = TOKEN + "@example.net"


def stub_client(stub: Stub, retries: int = 3) -> Client:
    return Client(stub.url, "pvk_test", danger_allow_plain_http=True, retries=retries)


NOT_RETRIED = {
    "tokenize": lambda c: c.tokenize([TokenizeItem("s", "f", "v")]),
    "erase": lambda c: c.erase("s"),
    "rotate": lambda c: c.rotate(),
    "record_consent": lambda c: c.record_consent("s", "marketing", True),
    "create_backup": lambda c: c.create_backup(),
}


@pytest.mark.parametrize("name", sorted(NOT_RETRIED))
@pytest.mark.parametrize("answer", [error(503, "storage_unavailable", **{"retry-after": "0"}), error(429, "overloaded")])
def test_non_idempotent_calls_are_sent_once(stub: Stub, name: str, answer: Answer):
    stub.will_answer(answer)
    with stub_client(stub) as client, pytest.raises(VaultError) as raised:
        NOT_RETRIED[name](client)
    assert len(stub.seen) == 1
    assert raised.value.status == answer[0] and raised.value.code == answer[1]["x-vault-error"]


def test_idempotent_calls_are_retried_on_503(stub: Stub):
    stub.will_answer(error(503, "storage_unavailable", **{"retry-after": "0"}))
    with stub_client(stub, retries=3) as client, pytest.raises(VaultError) as raised:
        client.detokenize(["tok_a"], "support")
    assert len(stub.seen) == 4 and raised.value.code == "storage_unavailable"


def test_a_retry_that_succeeds_returns_the_answer(stub: Stub):
    stub.will_answer(error(429, "overloaded"), error(503, "conflict"), (200, {}, {"purposes": []}))
    with stub_client(stub) as client:
        assert client.purposes() == []
    assert stub.seen == [("GET", "/v1/purposes")] * 3


def test_retry_after_is_honoured_or_ends_the_call(stub: Stub):
    stub.will_answer(error(429, "rate_limited", **{"retry-after": "0"}))
    with stub_client(stub, retries=2) as client, pytest.raises(RateLimited) as raised:
        client.keys()
    assert len(stub.seen) == 3 and raised.value.retry_after == 0

    # Longer than the longest backoff: the caller decides.
    stub.seen.clear()
    stub.will_answer(error(429, "rate_limited", **{"retry-after": "60"}))
    with stub_client(stub) as client, pytest.raises(RateLimited) as raised:
        client.keys()
    assert len(stub.seen) == 1 and raised.value.retry_after == 60


@pytest.mark.parametrize("answer", [error(503, "timeout"), error(500, "internal"), error(400, "invalid_item")])
def test_other_failures_are_not_retried(stub: Stub, answer: Answer):
    # A 503 `timeout` would only time out again, the first attempt's work still running.
    stub.will_answer(answer)
    with stub_client(stub) as client, pytest.raises(VaultError):
        client.detokenize(["tok_a"], "support")
    assert len(stub.seen) == 1


NOT_FOUND = error(404, "not_found")


@pytest.mark.parametrize(
    "first",
    [error(503, "storage_unavailable"), None],
    ids=["503", "connection dropped"],
)
def test_a_delete_whose_outcome_was_unknown_then_404_succeeds(stub: Stub, first: Answer):
    # The first attempt may have deleted the record, its answer lost.
    stub.will_answer(first, NOT_FOUND)
    with stub_client(stub) as client:
        client.delete(EMAIL_TOKEN)
    assert stub.seen == [("DELETE", "/v1/tokens/" + EMAIL_TOKEN.replace("@", "%40"))] * 2


@pytest.mark.parametrize(
    "earlier",
    [[error(429, "overloaded")], [error(429, "rate_limited", **{"retry-after": "0"})] * 2],
    ids=["429", "429 twice"],
)
def test_a_delete_refused_with_429_then_404_is_not_found(stub: Stub, earlier: List[Answer]):
    # A 429 refuses the request before it runs: the 404 is the token's own.
    stub.will_answer(*earlier, NOT_FOUND)
    with stub_client(stub) as client, pytest.raises(NotFound) as raised:
        client.delete(TOKEN)
    assert raised.value.code == "not_found" and len(stub.seen) == len(earlier) + 1


def test_a_404_after_429_then_503_is_success(stub: Stub):
    # One earlier attempt of unknown outcome is enough, wherever it came.
    stub.will_answer(error(429, "overloaded"), error(503, "storage_unavailable"), NOT_FOUND)
    with stub_client(stub) as client:
        client.delete(TOKEN)
    assert len(stub.seen) == 3


def test_a_404_on_the_first_attempt_is_not_found(stub: Stub):
    stub.will_answer(NOT_FOUND)
    with stub_client(stub) as client, pytest.raises(NotFound):
        client.delete(TOKEN)
    assert len(stub.seen) == 1


def test_a_delete_after_a_failed_connect_then_404_is_not_found():
    # A connection that was never made sent nothing: the 404 is the token's own.
    answers = iter([httpx.ConnectError("refused"), NOT_FOUND])

    def handle(request: httpx.Request) -> httpx.Response:
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        status, headers, body = answer
        return httpx.Response(status, headers=headers, json=body)

    with Client("https://vault.test", "k", transport=httpx.MockTransport(handle)) as client:
        with pytest.raises(NotFound):
            client.delete(TOKEN)


@pytest.mark.anyio
async def test_async_delete_counts_404_the_same_way(stub: Stub):
    async with AsyncClient(stub.url, "k", danger_allow_plain_http=True) as client:
        stub.will_answer(error(429, "overloaded"), NOT_FOUND)
        with pytest.raises(NotFound):
            await client.delete(TOKEN)
        stub.seen.clear()
        stub.will_answer(None, NOT_FOUND)
        await client.delete(TOKEN)
        assert len(stub.seen) == 2


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_connection_failures_retry_idempotent_calls_only():
    url = f"http://127.0.0.1:{closed_port()}"
    for call, attempts in ((lambda c: c.audit_head(), 3), (lambda c: c.erase("s"), 1)):
        counting = Counting(httpx.HTTPTransport())
        with Client(url, "k", danger_allow_plain_http=True, retries=2, transport=counting) as client:
            with pytest.raises(TransportError):
                call(client)
        assert len(counting.seen) == attempts


@pytest.mark.anyio
async def test_async_client_retries_the_same_way(stub: Stub):
    stub.will_answer(error(503, "storage_unavailable"))
    async with AsyncClient(stub.url, "k", danger_allow_plain_http=True, retries=2) as client:
        with pytest.raises(VaultError):
            await client.inventory()
        assert len(stub.seen) == 3
        with pytest.raises(VaultError):
            await client.tokenize([TokenizeItem("s", "f", "v")])
        assert len(stub.seen) == 4
