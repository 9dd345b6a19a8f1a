"""Errors carry the server's codes; no repr or message holds a value or a subject id."""

from __future__ import annotations

import dataclasses
import traceback

import httpx
import pytest

from conftest import DevServer, Stub
from pii_vault import (
    AsyncClient,
    AuthError,
    Client,
    DecodeError,
    ErasureReceipt,
    Sensitive,
    SubjectConsents,
    TokenizeItem,
    TransportError,
    VaultError,
)

VALUE = "alice.secret@example.com"
# An API key as the dev server issues them (`pvk_` and hex), for the tests that must
# not find it anywhere.
SECRET_KEY = "pvk_" + "5ec7e7" * 10 + "abcd"
TOKEN = "tok_abcdefghijklmnopqrstuvwxyz234567"


def test_bad_token_is_invalid_token(client: Client):
    with pytest.raises(VaultError) as raised:
        client.detokenize(["tok_valid_looking_but_not", "not a token"], "support")
    error = raised.value
    assert (error.status, error.code) == (400, "invalid_token")
    assert error.item is not None


def test_wrong_key_is_unauthenticated(server: DevServer):
    with server.client() as good, Client(server.url, "pvk_" + "0" * 64, ca_cert=server.ca_cert) as bad:
        assert good.purposes()
        with pytest.raises(AuthError) as raised:
            bad.purposes()
    assert (raised.value.status, raised.value.code) == (401, "unauthenticated")
    # The code is the one of the x-vault-error header too.
    answer = httpx.get(f"{server.url}/v1/purposes", verify=server.ssl_context())
    assert answer.status_code == 401
    assert answer.headers["x-vault-error"] == answer.json()["error"]["code"] == "unauthenticated"


def test_unknown_purpose(client: Client, subject: str):
    [token] = client.tokenize([TokenizeItem(subject, "email", VALUE)])
    with pytest.raises(VaultError) as raised:
        client.detokenize([token], "no-such-purpose")
    assert (raised.value.status, raised.value.code) == (400, "unknown_purpose")


def test_the_server_certificate_is_verified(server: DevServer):
    # Without the dev CA the self-signed certificate is refused.
    with Client(server.url, server.api_key, retries=0) as client:
        with pytest.raises(TransportError) as raised:
            client.purposes()
    assert raised.value.code == "transport" and raised.value.status is None
    # The failure's type, and its cause's, say what went wrong.
    assert raised.value.message.startswith("ConnectError (SSLCertVerificationError): ")


def test_arguments_are_refused_before_sending(server: DevServer):
    with pytest.raises(ValueError, match="https"):
        Client(server.url.replace("https://", "http://"), server.api_key)
    with server.client() as client:
        # A value passed where a token goes must never reach a URL (or a log).
        for not_a_token in (VALUE, "alice@example.net", "../admin/keys", "", "tok_x@example.org"):
            with pytest.raises(ValueError) as raised:
                client.rectify(not_a_token, "x")
            assert VALUE not in str(raised.value)
        with pytest.raises(TypeError):
            client.detokenize("tok_abc", "support")  # a string, not a list of tokens
    with pytest.raises(ValueError):
        TokenizeItem("s", "f", "v", format="card")


NOT_TOKENS = [
    # Names
    "Smith",
    "Smith_John",
    "tok_smith",
    # E-mail addresses, also at the token domain or with a token-like local part
    VALUE,
    "smith@example.net",
    "TOK_ABCDEFGHIJKLMNOPQRSTUVWXYZ234567@example.net",
    TOKEN + "@example.org",
    TOKEN + "@EXAMPLE.NET",
    TOKEN + "@example.net.evil",
    TOKEN + "@example_net",
    # Phone numbers
    "+33612345678",
    "+33 6 12 34 56 78",
    "06 12 34 56 78",
    "06-12-34-56-78",
    "(555) 123-4567",
    # Digits, but not as issued
    "1" * 33,
    "١٢٣",  # Arabic-Indic digits: `str.isdigit()` but not [0-9]
    "123\n",
    " 123",
    # tok_ with the wrong length or alphabet
    "tok_",
    TOKEN[:-1],
    TOKEN + "a",
    TOKEN.upper(),
    "tok_" + "a" * 31 + "1",
    "tok_" + "a" * 31 + "8",
    "tok_" + "a" * 31 + "_",
    "tok_" + "a" * 31 + "é",
    TOKEN + "\n",
    TOKEN + " ",
    "TOK_" + TOKEN[4:],
    # Paths and other text
    "../admin/keys",
    TOKEN + "/../../admin/keys",
    TOKEN + "?x=1",
    "",
]


@pytest.mark.parametrize("not_a_token", NOT_TOKENS)
def test_only_issued_token_shapes_go_into_a_url(not_a_token: str):
    seen = []
    transport = httpx.MockTransport(lambda r: (seen.append(r), httpx.Response(204))[1])
    with Client("https://vault.test", "k", transport=transport) as client:
        with pytest.raises(ValueError) as refused:
            client.rectify(not_a_token, "x")
        with pytest.raises(ValueError) as reference:
            client.delete("-")
        # One message for every refusal: it quotes none.
        assert str(refused.value) == str(reference.value)
        with pytest.raises(ValueError):
            client.delete(not_a_token)
    assert seen == [], "sent before refusing"


@pytest.mark.anyio
async def test_async_client_refuses_them_too():
    seen = []
    transport = httpx.MockTransport(lambda r: (seen.append(r), httpx.Response(204))[1])
    async with AsyncClient("https://vault.test", "k", transport=transport) as client:
        for not_a_token in NOT_TOKENS:
            with pytest.raises(ValueError):
                await client.delete(not_a_token)
    assert seen == []


@pytest.mark.parametrize(
    "token, path",
    [
        ("4111111111111111", "4111111111111111"),
        ("1", "1"),
        ("9" * 32, "9" * 32),
        (TOKEN, TOKEN),
        ("tok_" + "z7" * 16, "tok_" + "z7" * 16),
        (TOKEN + "@example.net", TOKEN + "%40example.net"),
    ],
)
def test_issued_token_shapes_are_sent(token: str, path: str):
    seen = []
    transport = httpx.MockTransport(lambda r: (seen.append(r), httpx.Response(204))[1])
    with Client("https://vault.test", "k", transport=transport) as client:
        client.rectify(token, "x")
        client.delete(token)
    assert [(r.method, r.url.raw_path.decode()) for r in seen] == [
        ("PUT", "/v1/tokens/" + path),
        ("DELETE", "/v1/tokens/" + path),
    ]


@pytest.mark.parametrize(
    "bad_key",
    [
        SECRET_KEY + "\n",
        SECRET_KEY + "\r\n",
        SECRET_KEY + " ",
        " " + SECRET_KEY,
        SECRET_KEY[:10] + "\t" + SECRET_KEY[10:],
        SECRET_KEY + "\x00",
        SECRET_KEY + "\x7f",
        SECRET_KEY + "é",
        SECRET_KEY + "\u00a0",
        "",
    ],
)
@pytest.mark.parametrize("kind", [Client, AsyncClient])
def test_an_api_key_that_is_no_header_value_is_refused_at_construction(kind: type, bad_key: str):
    with pytest.raises(ValueError) as raised:
        kind("https://vault.test", bad_key)
    error = raised.value
    texts = [str(error), repr(error), "".join(traceback.format_exception(type(error), error, error.__traceback__))]
    # Refused, never stripped and used; and never quoted.
    for text in texts:
        assert SECRET_KEY not in text and SECRET_KEY[:12] not in text
    assert error.__cause__ is None and error.__context__ is None


def test_api_key_errors_come_from_the_environment_too(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("VAULT_ADDR", "https://vault.test")
    monkeypatch.setenv("VAULT_API_KEY", SECRET_KEY + "\n")
    monkeypatch.delenv("VAULT_CACERT", raising=False)
    with pytest.raises(ValueError) as raised:
        Client.from_env()
    assert SECRET_KEY not in str(raised.value)


def assert_no_key(error: BaseException) -> None:
    """Neither the error nor anything it links to names the key."""
    assert error.__cause__ is None and error.__context__ is None
    texts = [
        str(error),
        repr(error),
        str(getattr(error, "message", "")),
        "".join(traceback.format_exception(type(error), error, error.__traceback__)),
    ]
    for text in texts:
        assert SECRET_KEY not in text and SECRET_KEY[4:16] not in text, text


def test_an_illegal_header_value_does_not_leak_the_key(stub: Stub):
    """h11 quotes the header it refuses; none of that reaches the error."""
    stub.will_answer((200, {}, {"purposes": []}))
    with Client(stub.url, SECRET_KEY, danger_allow_plain_http=True) as client:
        # What a key with a trailing newline would have become before the check.
        client._http.headers["authorization"] = f"Bearer {SECRET_KEY}\n"
        with pytest.raises(TransportError) as raised:
            client.purposes()
    error = raised.value
    assert error.code == "transport" and error.status is None
    assert "LocalProtocolError" in error.message
    assert_no_key(error)
    assert stub.seen == []


def leaking(exception: type):
    """A transport that fails as httpx does, quoting the request's headers."""

    def handle(request: httpx.Request) -> httpx.Response:
        raise exception(f"failed: {request.headers['authorization']!r}", request=request)

    return httpx.MockTransport(handle)


@pytest.mark.parametrize(
    "exception",
    [httpx.LocalProtocolError, httpx.ReadError, httpx.RemoteProtocolError, httpx.ConnectError, httpx.ReadTimeout],
)
def test_transport_errors_name_the_failure_by_type_only(exception: type):
    # `detokenize` is retried after a lost connection: the last attempt's error counts.
    with Client("https://vault.test", SECRET_KEY, transport=leaking(exception), retries=1) as client:
        with pytest.raises(TransportError) as raised:
            client.detokenize([TOKEN], "support")
        assert_no_key(raised.value)
        assert exception.__name__ in raised.value.message
        # Not retried, and raised the same way.
        with pytest.raises(TransportError) as raised:
            client.erase("s")
        assert_no_key(raised.value)


@pytest.mark.anyio
async def test_async_transport_errors_name_the_failure_by_type_only():
    async with AsyncClient("https://vault.test", SECRET_KEY, transport=leaking(httpx.ReadError), retries=1) as client:
        with pytest.raises(TransportError) as raised:
            await client.keys()
    assert_no_key(raised.value)
    assert raised.value.message.startswith("ReadError:")


def test_an_answer_that_is_no_json_is_not_chained():
    # The JSON error would hold the whole answer, and the answer can hold values.
    transport = httpx.MockTransport(lambda r: httpx.Response(200, text=f"not json: {VALUE}"))
    with Client("https://vault.test", "k", transport=transport) as client:
        with pytest.raises(DecodeError) as raised:
            client.detokenize([TOKEN], "support")
    error = raised.value
    assert error.__cause__ is None and error.__context__ is None
    assert VALUE not in "".join(traceback.format_exception(type(error), error, error.__traceback__))


def test_a_transport_goes_without_ca_cert(server: DevServer, monkeypatch: pytest.MonkeyPatch):
    for kind in (Client, AsyncClient):
        with pytest.raises(ValueError, match="ca_cert"):
            kind(server.url, server.api_key, ca_cert=server.ca_cert, transport=httpx.HTTPTransport())
    monkeypatch.setenv("VAULT_ADDR", server.url)
    monkeypatch.setenv("VAULT_API_KEY", server.api_key)
    monkeypatch.setenv("VAULT_CACERT", server.ca_cert)
    transport = httpx.HTTPTransport(verify=server.ssl_context())
    with pytest.raises(ValueError, match="ca_cert"):
        Client.from_env(transport=transport)
    with Client.from_env(transport=transport, ca_cert=None) as client:
        assert client.purposes()


def test_from_env(server: DevServer, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("VAULT_ADDR", server.url)
    monkeypatch.setenv("VAULT_API_KEY", server.api_key)
    monkeypatch.setenv("VAULT_CACERT", server.ca_cert)
    with Client.from_env() as client:
        assert client.purposes()
    monkeypatch.delenv("VAULT_ADDR")
    with pytest.raises(ValueError, match="VAULT_ADDR"):
        Client.from_env()


def test_reprs_hold_no_personal_data(client: Client, subject: str):
    item = TokenizeItem(subject, "email", VALUE)
    texts = [repr(item)]
    tokens = client.tokenize([item])
    client.record_consent(subject, "marketing", True, source=VALUE)
    texts.append(repr(client.detokenize(tokens, "support")))
    texts.append(repr(client.export(subject)))
    texts.append(repr(client.lookup(subject)))
    consents = client.consents(subject)
    texts.append(repr(consents))
    # An error about an item: a subject id with a space at its end is refused.
    with pytest.raises(VaultError) as raised:
        client.tokenize([TokenizeItem(subject + " ", "email", VALUE)])
    assert raised.value.code == "invalid_item" and raised.value.item == 0
    texts += [repr(raised.value), str(raised.value), repr(client)]
    texts.append(repr(client.erase(subject)))
    for text in texts:
        assert VALUE not in text and subject not in text, text
    # The values are still there to read.
    assert consents.subject == subject and isinstance(consents.subject, Sensitive)
    assert str(consents.consents[0].history[0].source) == VALUE


def test_models_ignore_unknown_fields_and_require_theirs():
    receipt = {"subject_ref": None, "erased_at": 1, "records": 0, "purge": {"state": "not_needed"}}
    parsed = ErasureReceipt.from_json({**receipt, "from_a_newer_server": [1, 2]})
    assert parsed.backups == () and parsed.purge.state == "not_needed"
    with pytest.raises(DecodeError) as raised:
        ErasureReceipt.from_json({k: v for k, v in receipt.items() if k != "records"})
    assert "records" in str(raised.value)
    with pytest.raises(DecodeError):
        ErasureReceipt.from_json({**receipt, "records": "many"})
    with pytest.raises(DecodeError):
        SubjectConsents.from_json({"subject": VALUE, "consents": [{"purpose": "p"}]})
    with pytest.raises(dataclasses.FrozenInstanceError):
        parsed.records = 5  # type: ignore[misc]
