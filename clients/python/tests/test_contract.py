"""The client against the server's own description of its API (`/openapi.json`): every
route has a method that calls it, every schema a dataclass with exactly its fields. A
route or a field added to the server fails here until the client has it too."""

from __future__ import annotations

import dataclasses
import inspect
import re
from typing import Any, Dict, Iterator, Set

import httpx
import pytest

from conftest import DevServer
from pii_vault import AsyncClient, AuditHead, Client, TokenizeItem, VaultError
from pii_vault._routes import ROUTES, SCHEMAS

HTTP_METHODS = {"get", "put", "post", "delete", "patch", "head", "options"}
TOKEN = "tok_abcdefghijklmnopqrstuvwxyz234567"

# Arguments to call each method with, once, against a recording transport.
ARGS: Dict[str, tuple] = {
    "tokenize": ([TokenizeItem("s", "f", "v")],),
    "detokenize": ([TOKEN], "support"),
    "rectify": (TOKEN, "v"),
    "delete": (TOKEN,),
    "erase": ("s",),
    "export": ("s",),
    "record_consent": ("s", "marketing", True),
    "consents": ("s",),
    "lookup": ("s",),
    "whoami": (),
    "purposes": (),
    "audit_events": (),
    "audit_head": (),
    "inventory": (),
    "verify_audit": (AuditHead(seq=1, mac="0" * 64),),
    "keys": (),
    "rotate": (),
    "retire_keys": (),
    "create_backup": (),
    "backups": (),
    "health": (),
    "ready": (),
    "openapi": (),
}


@pytest.fixture(scope="module")
def document(server: DevServer) -> Dict[str, Any]:
    with server.client() as client:
        return client.openapi()


def test_every_documented_route_is_in_the_table_and_back(document: Dict[str, Any]):
    documented = {
        (method.upper(), path)
        for path, item in document["paths"].items()
        for method in item
        if method in HTTP_METHODS
    }
    assert sorted(documented - ROUTES.keys()) == [], "routes the client has no method for"
    assert sorted(ROUTES.keys() - documented) == [], "routes the server does not document"


def public_methods(cls: type) -> Set[str]:
    return {n for n, f in inspect.getmembers(cls, inspect.isfunction) if not n.startswith("_")}


def test_both_clients_have_the_same_methods():
    routed = {route.method for route in ROUTES.values()}
    assert routed <= public_methods(Client)
    assert public_methods(Client) - {"close"} == public_methods(AsyncClient) - {"aclose"}
    assert set(ARGS) == routed


def route_pattern(path: str) -> "re.Pattern[str]":
    return re.compile(re.sub(r"\\\{[a-z_]+\\\}", "[^/]+", re.escape(path)) + "$")


def refuse(request: httpx.Request) -> httpx.Response:
    return httpx.Response(418, json={"error": {"code": "stub", "message": "recorded"}})


@pytest.mark.parametrize("key", sorted(ROUTES), ids=lambda k: f"{k[0]} {k[1]}" if isinstance(k, tuple) else k)
def test_each_method_calls_its_route(key):
    method, path = key
    seen = []
    transport = httpx.MockTransport(lambda r: (seen.append(r), refuse(r))[1])
    with Client("https://vault.test", "k", transport=transport) as client:
        try:
            getattr(client, ROUTES[key].method)(*ARGS[ROUTES[key].method])
        except VaultError:
            pass
    assert seen, f"{ROUTES[key].method} sent nothing"
    first = seen[0]
    assert first.method == method and route_pattern(path).match(first.url.path), (first.method, first.url.path)


@pytest.mark.anyio
async def test_async_methods_call_the_same_routes():
    for (method, path), route in sorted(ROUTES.items()):
        seen = []
        transport = httpx.MockTransport(lambda r: (seen.append(r), refuse(r))[1])
        async with AsyncClient("https://vault.test", "k", transport=transport) as client:
            try:
                await getattr(client, route.method)(*ARGS[route.method])
            except VaultError:
                pass
        assert seen and seen[0].method == method and route_pattern(path).match(seen[0].url.path), route


def inline_objects(node: Any, path: str) -> Iterator[str]:
    """The paths (as `SCHEMAS` spells them) of `node` and every object inside it."""
    if not isinstance(node, dict):
        return
    if "properties" in node:
        yield path
        for name, prop in node["properties"].items():
            yield from inline_objects(prop, f"{path}.{name}")
    if "items" in node:
        yield from inline_objects(node["items"], f"{path}[]")
    for i, branch in enumerate(node.get("oneOf", [])):
        yield from inline_objects(branch, f"{path}.oneOf[{i}]")


def resolve(document: Dict[str, Any], path: str) -> Dict[str, Any]:
    name, *steps = path.split(".")
    node = document["components"]["schemas"][name]
    for step in steps:
        branch = re.fullmatch(r"oneOf\[(\d+)\]", step)
        if branch:
            node = node["oneOf"][int(branch.group(1))]
            continue
        prop = step.replace("[]", "")
        if prop:
            node = node["properties"][prop]
        for _ in range(step.count("[]")):
            node = node["items"]
    return node


def test_every_schema_has_a_dataclass_and_back(document: Dict[str, Any]):
    schemas = document["components"]["schemas"]
    objects = {p for name, schema in schemas.items() for p in inline_objects(schema, name)}
    assert sorted(objects - SCHEMAS.keys()) == [], "schemas the client has no dataclass for"
    assert sorted(SCHEMAS.keys() - objects) == [], "dataclasses for schemas the server does not document"


@pytest.mark.parametrize("path", sorted(SCHEMAS))
def test_each_dataclass_has_exactly_the_schema_fields(document: Dict[str, Any], path: str):
    schema = resolve(document, path)
    fields = dataclasses.fields(SCHEMAS[path])
    properties = set(schema["properties"])
    names = {f.name for f in fields}
    assert sorted(properties - names) == [], f"fields {SCHEMAS[path].__name__} lacks"
    assert sorted(names - properties) == [], f"fields of {SCHEMAS[path].__name__} the schema lacks"
    # A field the client cannot do without must be one the server always sends.
    needed = {
        f.name for f in fields if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    }
    assert sorted(needed - set(schema.get("required", []))) == [], "required here, optional in the schema"
