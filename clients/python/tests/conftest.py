"""A real `vault-server --dev` for the tests, started once per session.

The server prints one JSON line on stdout once it listens, as the Rust end-to-end
tests read it (tests/tests/common/mod.rs): `url`, and in dev mode `ca_cert` (the
self-signed certificate to trust) and `api_key` (an admin key with every scope).
"""

from __future__ import annotations

import importlib.util
import json
import os
import queue
import re
import ssl
import subprocess
import threading
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

import httpx
import pytest

from pii_vault import AsyncClient, Client

REPO = Path(__file__).resolve().parent.parent.parent.parent


@dataclass(frozen=True)
class DevServer:
    url: str
    api_key: str
    ca_cert: str
    log: Path

    def client(self, **options) -> Client:
        return Client(self.url, self.api_key, ca_cert=self.ca_cert, **options)

    def async_client(self, **options) -> AsyncClient:
        return AsyncClient(self.url, self.api_key, ca_cert=self.ca_cert, **options)

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=self.ca_cert)


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevServer]:
    binary = Path(os.environ.get("VAULT_SERVER_BIN") or REPO / "target" / "debug" / "vault-server")
    if not binary.is_file():
        pytest.fail(f"no server binary at {binary}: run `cargo build -p vault-server` or set VAULT_SERVER_BIN")
    root = tmp_path_factory.mktemp("vault")
    log_path = root / "server.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [str(binary), "--data-dir", str(root / "data"), "--listen", "127.0.0.1:0", "--metrics-listen", "off", "--dev"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=log,
            env={**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "info")},
        )
    try:
        lines: "queue.Queue[bytes]" = queue.Queue()

        def read_stdout() -> None:
            assert process.stdout is not None
            lines.put(process.stdout.readline())
            # Keep draining so the server never blocks on a full pipe.
            for _ in process.stdout:
                pass

        threading.Thread(target=read_stdout, daemon=True).start()
        try:
            line = lines.get(timeout=120)
        except queue.Empty:
            line = b""
        if not line.strip():
            pytest.fail(f"the server did not start; its log:\n{log_path.read_text(errors='replace')}")
        info = json.loads(line)
        yield DevServer(url=info["url"], api_key=info["api_key"], ca_cert=info["ca_cert"], log=log_path)
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture
def client(server: DevServer) -> Iterator[Client]:
    with server.client() as c:
        yield c


@pytest.fixture
def subject() -> str:
    """A fresh data subject per test, so that tests sharing the server do not meet."""
    return f"customer-{uuid.uuid4().hex[:12]}"


@pytest.fixture(
    params=[
        "asyncio",
        pytest.param(
            "trio",
            marks=pytest.mark.skipif(importlib.util.find_spec("trio") is None, reason="trio is not installed"),
        ),
    ]
)
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """The async tests run under asyncio, and under trio too where it is installed."""
    return request.param


# A stub's answer: (status, headers, JSON body), or None to drop the connection
# without answering (after reading the whole request).
Answer = Optional[Tuple[int, Dict[str, str], dict]]


class Stub:
    """A plain-HTTP server that answers each request with the next of `answers` (the
    last one repeats): the 429s, 503s and lost connections a real vault gives only
    under load."""

    def __init__(self) -> None:
        self.answers: List[Answer] = []
        self.seen: List[Tuple[str, str]] = []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def answer(self) -> None:
                self.rfile.read(int(self.headers.get("content-length") or 0))
                stub.seen.append((self.command, self.path))
                answer = stub.answers[min(len(stub.seen), len(stub.answers)) - 1]
                if answer is None:
                    self.close_connection = True
                    return
                status, headers, body = answer
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


class Counting(httpx.BaseTransport, httpx.AsyncBaseTransport):
    """A transport that records (method, path as sent, still escaped) of every request
    it passes on."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.seen: List[Tuple[str, str]] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.seen.append(sent(request))
        return self.inner.handle_request(request)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.seen.append(sent(request))
        return await self.inner.handle_async_request(request)

    def close(self) -> None:
        self.inner.close()

    async def aclose(self) -> None:
        await self.inner.aclose()


def sent(request: httpx.Request) -> Tuple[str, str]:
    return request.method, request.url.raw_path.decode().partition("?")[0]


def export_page_default() -> int:
    """`[limits] export_page`'s default, as the server's configuration code sets it."""
    text = (REPO / "vault-server" / "src" / "config.rs").read_text()
    found = re.search(r"^\s*export_page: (\d+),", text, re.MULTILINE)
    assert found, "export_page's default not found in vault-server/src/config.rs"
    return int(found.group(1))
