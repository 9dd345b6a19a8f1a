"""The retry policy, against a stub that answers what a test tells it to (a real vault
answers 429 and 503 only under load): only idempotent calls are sent again, only after
429, 503 or a lost connection, and only for as long as `Retry-After` allows."""

from __future__ import annotations

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Dict, Iterator, List, Tuple

import httpx
import pytest

from conftest import Counting
from pii_vault import AsyncClient, Client, RateLimited, TokenizeItem, TransportError, VaultError

Answer = Tuple[int, Dict[str, str], dict]


class Stub:
    """Answers each request with the next of `answers` (the last one repeats)."""

    def __init__(self) -> None:
        self.answers: List[Answer] = []
        self.seen: List[Tuple[str, str]] = []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def answer(self) -> None:
                self.rfile.read(int(self.headers.get("content-length") or 0))
                stub.seen.append((self.command, self.path))
                status, headers, body = stub.answers[min(len(stub.seen), len(stub.answers)) - 1]
                data = json.dumps(body).encode()
                self.send_response(status)
                for name, value in {"content-type": "application/json", **headers}.items():
                    self.send_header(name, value)
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_DELETE = answer

            def log_message(self, *args) -> None:
                pass

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.http.server_address[1]}"

    def will_answer(self, *answers: Answer) -> None:
        self.answers = list(answers)


def error(status: int, code: str, **headers: str) -> Answer:
    return status, {"x-vault-error": code, **headers}, {"error": {"code": code, "message": "stub"}}


@pytest.fixture
def stub() -> Iterator[Stub]:
    stub = Stub()
    thread = threading.Thread(target=stub.http.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield stub
    stub.http.shutdown()
    stub.http.server_close()


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


def test_a_delete_whose_answer_was_lost_succeeds(stub: Stub):
    stub.will_answer(error(503, "storage_unavailable"), error(404, "not_found"))
    with stub_client(stub) as client:
        client.delete("tok_abc@example.net")
    assert stub.seen == [("DELETE", "/v1/tokens/tok_abc%40example.net")] * 2


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
