"""The client against the server's own description of its API (`/openapi.json`): every
route has a method that calls it, every schema a dataclass with exactly its fields. A
route or a field added to the server fails here until the client has it too; a field
the server may leave out or send as null must be Optional, and one that carries personal
data `Sensitive`."""

from __future__ import annotations

import dataclasses
import inspect
import re
import typing
from typing import Any, Dict, Iterator, Set, Tuple

import httpx
import pytest

from conftest import DevServer
from pii_vault import AsyncClient, AuditHead, Client, Sensitive, TokenizeItem, VaultError
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


def test_the_document_is_valid_openapi_3_1(document: Dict[str, Any]):
    # The server's own /openapi.json, checked by a validator we did not write.
    from openapi_spec_validator import OpenAPIV31SpecValidator, validate

    assert document["openapi"].startswith("3.1")
    validate(document, cls=OpenAPIV31SpecValidator)


def test_the_public_document_is_valid_and_names_no_purpose(server: DevServer, document: Dict[str, Any]):
    # Without a key the document states a purpose's shape, not this server's names
    # (which GET /v1/purposes shows only to a key); the rest is the same.
    from openapi_spec_validator import OpenAPIV31SpecValidator, validate

    public = httpx.get(f"{server.url}/openapi.json", verify=server.ssl_context()).json()
    validate(public, cls=OpenAPIV31SpecValidator)
    schemas = public["components"]["schemas"]
    for name in ("DetokenizeRequest", "ConsentRequest"):
        purpose = schemas[name]["properties"]["purpose"]
        assert "enum" not in purpose and "pattern" in purpose
        assert "enum" in document["components"]["schemas"][name]["properties"]["purpose"]
    assert public["paths"].keys() == document["paths"].keys()


def examples(document: Dict[str, Any]) -> Iterator[Tuple[str, Any, Any]]:
    """Every example in the document: where, its schema, and the example."""
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if not isinstance(operation, dict) or "responses" not in operation:
                continue
            where = f"{method.upper()} {path}"
            for parameter in operation.get("parameters", []):
                if "example" in parameter:
                    yield f"{where} ?{parameter['name']}", parameter["schema"], parameter["example"]
            for media in operation.get("requestBody", {}).get("content", {}).values():
                if "example" in media:
                    yield f"{where} request", media["schema"], media["example"]
            for status, response in operation["responses"].items():
                for media in response.get("content", {}).values():
                    if "example" in media:
                        yield f"{where} {status}", media["schema"], media["example"]


def test_every_example_fits_its_schema(document: Dict[str, Any]):
    # Examples are what a reader copies first: each must be valid where it stands.
    from jsonschema import Draft202012Validator
    seen = 0
    for where, schema, example in examples(document):
        # The document as the root, so that its "#/components/…" references resolve;
        # its other keys are not schema keywords and are ignored.
        validator = Draft202012Validator({**document, "x-example-schema": schema, "$ref": "#/x-example-schema"})
        errors = [e.message for e in validator.iter_errors(example)]
        assert not errors, f"{where}: {errors}"
        seen += 1
    # Every operation with a body has a request example, every success an answer's.
    bodies = sum(
        1
        for item in document["paths"].values()
        for operation in item.values()
        if isinstance(operation, dict) and "requestBody" in operation
    )
    assert seen >= bodies + 14, seen


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


def deref(document: Dict[str, Any], node: Dict[str, Any]) -> Dict[str, Any]:
    while "$ref" in node:
        node = document["components"]["schemas"][node["$ref"].rsplit("/", 1)[-1]]
    return node


def allows_null(document: Dict[str, Any], node: Dict[str, Any]) -> bool:
    """Whether a schema admits null: `type` is or includes "null", `nullable` (OpenAPI
    3.0), or a `oneOf`/`anyOf` branch admits it."""
    node = deref(document, node)
    kind = node.get("type")
    if kind == "null" or (isinstance(kind, list) and "null" in kind) or node.get("nullable") is True:
        return True
    return any(allows_null(document, branch) for key in ("oneOf", "anyOf") for branch in node.get(key, []))


def accepts_none(hint: Any) -> bool:
    return hint is Any or (typing.get_origin(hint) is typing.Union and type(None) in typing.get_args(hint))


def test_allows_null_reads_the_ways_a_schema_says_so():
    document: Dict[str, Any] = {"components": {"schemas": {"N": {"type": ["integer", "null"]}}}}
    assert allows_null(document, {"type": ["string", "null"]})
    assert allows_null(document, {"type": "null"})
    assert allows_null(document, {"oneOf": [{"type": "null"}, {"type": "object"}]})
    assert allows_null(document, {"anyOf": [{"type": "string"}, {"$ref": "#/components/schemas/N"}]})
    assert allows_null(document, {"type": "string", "nullable": True})
    assert not allows_null(document, {"type": "string"})
    assert not allows_null(document, {"enum": ["a", "b"]})
    assert accepts_none(typing.Optional[Sensitive]) and not accepts_none(Sensitive)


@pytest.mark.parametrize("path", sorted(SCHEMAS))
def test_fields_the_server_may_omit_or_null_accept_none(document: Dict[str, Any], path: str):
    schema = resolve(document, path)
    cls = SCHEMAS[path]
    hints = typing.get_type_hints(cls)
    required = set(schema.get("required", []))
    wrong = []
    for f in dataclasses.fields(cls):
        prop = schema["properties"].get(f.name)
        if prop is None:
            continue  # test_each_dataclass_has_exactly_the_schema_fields says so
        if allows_null(document, prop):
            # null is a value of its own: no default stands in for it.
            if not accepts_none(hints[f.name]):
                wrong.append(f"{f.name}: the schema allows null")
        elif f.name not in required and not accepts_none(hints[f.name]):
            # Absent, it is None; unless the schema says what absent means and the
            # dataclass has that very default (`masked`: false).
            if "default" not in prop or f.default != prop["default"]:
                wrong.append(f"{f.name}: not required, without the schema's default")
    assert wrong == [], f"{cls.__name__} fields that must be Optional"


# Properties that carry personal data: subject ids, values, consent sources. The
# audit event's `subject` is a reference derived from the subject's key, not the id.
PERSONAL_PROPERTIES = {"subject", "value", "source"}
NOT_PERSONAL: Set[Tuple[str, str]] = {("AuditEvent", "subject")}


def personal_fields(document: Dict[str, Any]) -> Iterator[Tuple[str, str]]:
    for path in sorted(SCHEMAS):
        for name in resolve(document, path)["properties"]:
            if name in PERSONAL_PROPERTIES and (path, name) not in NOT_PERSONAL:
                yield path, name


def without_optional(hint: Any) -> Any:
    if typing.get_origin(hint) is typing.Union:
        rest = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(rest) == 1:
            return rest[0]
    return hint


def test_personal_data_is_sensitive(document: Dict[str, Any]):
    found = list(personal_fields(document))
    # The check is not vacuous: requests and answers both have such fields.
    assert {("TokenizeItem", "value"), ("SubjectConsents", "subject"), ("ConsentRequest", "source")} <= set(found)
    assert ("Consent.history[]", "source") in found and ("SubjectExport.records[]", "value") in found
    wrong = [
        f"{SCHEMAS[path].__name__}.{name}"
        for path, name in found
        if without_optional(typing.get_type_hints(SCHEMAS[path])[name]) is not Sensitive
    ]
    assert wrong == [], "personal data not typed Sensitive (its repr would show it)"
    # And the one exception is still what it says.
    assert "reference" in resolve(document, "AuditEvent")["properties"]["subject"].get("description", "")
