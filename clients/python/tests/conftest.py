"""A real `vault-server --dev` for the tests, started once per session.

The server prints one JSON line on stdout once it listens, as the Rust end-to-end
tests read it (tests/tests/common/mod.rs): `url`, and in dev mode `ca_cert` (the
self-signed certificate to trust) and `api_key` (an admin key with every scope).
"""

from __future__ import annotations

import json
import os
import queue
import re
import ssl
import subprocess
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, List, Tuple

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


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


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
