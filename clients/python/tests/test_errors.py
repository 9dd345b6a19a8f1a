"""Errors carry the server's codes; no repr or message holds a value or a subject id."""

from __future__ import annotations

import dataclasses

import httpx
import pytest

from conftest import DevServer
from pii_vault import (
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
