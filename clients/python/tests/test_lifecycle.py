"""The client against a real server: a subject's whole life, sync and async, then
consent, audit, inventory and the admin routes."""

from __future__ import annotations

import pytest

from conftest import Counting, DevServer, export_page_default
import httpx

from pii_vault import (
    AuditEvent,
    Client,
    DetokenizedValue,
    DetokenizeFailure,
    Gone,
    NotFound,
    TokenizeItem,
    VaultError,
)

CARD = "4111111111111111"
EXPORT_PAGE = export_page_default()


def luhn_valid(digits: str) -> bool:
    total = 0
    for i, d in enumerate(reversed(digits)):
        n = int(d) * (2 if i % 2 else 1)
        total += n - 9 if n > 9 else n
    return total % 10 == 0


def items_of(subject: str):
    """Three values in the three token shapes, then more notes than one export page holds."""
    notes = [TokenizeItem(subject, "note", f"note {i}") for i in range(EXPORT_PAGE + 10)]
    return [
        TokenizeItem(subject, "email", "alice@example.com"),
        TokenizeItem(subject, "card", CARD, format="luhn"),
        TokenizeItem(subject, "contact", "alice@example.com", format="email"),
        *notes,
    ]


def check_tokens(tokens):
    email, card, contact = tokens[:3]
    assert email.startswith("tok_")
    assert card.isdigit() and len(card) == len(CARD) and card != CARD
    assert card.endswith(CARD[-4:]) and luhn_valid(card)
    assert contact.startswith("tok_") and contact.endswith("@example.net")


def check_export(export, tokens, seen):
    assert export.next_cursor is None
    assert {r.token for r in export.records} == set(tokens)
    assert len(export.records) == len(tokens) > EXPORT_PAGE
    # More than one page was asked for.
    assert sum(1 for s in seen if s == ("POST", "/v1/subjects/export")) >= 2
    assert any(e.action == "tokenize" for e in export.access_log)


def test_lifecycle_sync(server: DevServer, subject: str):
    counting = Counting(httpx.HTTPTransport(verify=server.ssl_context()))
    with Client(server.url, server.api_key, transport=counting) as client:
        tokens = client.tokenize(items_of(subject))
        check_tokens(tokens)
        email, card, contact = tokens[:3]

        results = client.detokenize([email, card, contact], "support")
        assert all(isinstance(r, DetokenizedValue) for r in results)
        assert [r.value for r in results] == ["alice@example.com", CARD, "alice@example.com"]
        assert [r.field for r in results] == ["email", "card", "contact"]

        # The e-mail token's `@` goes into the path, escaped.
        client.rectify(contact, "bob@example.com")
        assert ("PUT", "/v1/tokens/" + contact.replace("@", "%40")) in counting.seen
        [rectified] = client.detokenize([contact], "support")
        assert rectified.value == "bob@example.com"

        client.delete(card)
        [deleted] = client.detokenize([card], "support")
        assert isinstance(deleted, DetokenizeFailure) and deleted.error == "not_found"
        with pytest.raises(NotFound) as raised:
            client.delete(card)
        assert raised.value.code == "not_found" and raised.value.status == 404

        kept = [t for t in tokens if t != card]
        check_export(client.export(subject), kept, counting.seen)

        receipt = client.erase(subject)
        assert receipt.records == len(kept)
        assert receipt.purge.state == "done" and receipt.subject_ref
        after = client.detokenize([email, contact], "support")
        assert [(type(r), r.error) for r in after] == [(DetokenizeFailure, "erased")] * 2
        with pytest.raises(Gone) as raised:
            client.rectify(email, "carol@example.com")
        assert raised.value.code == "erased" and raised.value.status == 410
        assert client.erase(subject).purge.state == "not_needed"


@pytest.mark.anyio
async def test_lifecycle_async(server: DevServer, subject: str):
    counting = Counting(httpx.AsyncHTTPTransport(verify=server.ssl_context()))
    from pii_vault import AsyncClient

    async with AsyncClient(server.url, server.api_key, transport=counting) as client:
        tokens = await client.tokenize(items_of(subject))
        check_tokens(tokens)
        email, card, contact = tokens[:3]

        results = await client.detokenize([email, card, contact], "support")
        assert [r.value for r in results] == ["alice@example.com", CARD, "alice@example.com"]

        await client.rectify(contact, "bob@example.com")
        [rectified] = await client.detokenize([contact], "support")
        assert rectified.value == "bob@example.com"

        await client.delete(card)
        [deleted] = await client.detokenize([card], "support")
        assert isinstance(deleted, DetokenizeFailure) and deleted.error == "not_found"

        kept = [t for t in tokens if t != card]
        check_export(await client.export(subject), kept, counting.seen)

        receipt = await client.erase(subject)
        assert receipt.records == len(kept) and receipt.purge.state == "done"
        after = await client.detokenize([email, contact], "support")
        assert [r.error for r in after] == ["erased", "erased"]
        with pytest.raises(Gone):
            await client.delete(email)


def test_consent_grant_and_withdrawal(client: Client, subject: str):
    [token] = client.tokenize([TokenizeItem(subject, "email", "dana@example.com")])
    [refused] = client.detokenize([token], "marketing")
    assert refused.error == "no_consent"

    client.record_consent(subject, "marketing", True, source="signup form")
    [granted] = client.detokenize([token], "marketing")
    assert granted.value == "dana@example.com"

    client.record_consent(subject, "marketing", False)
    [withdrawn] = client.detokenize([token], "marketing")
    assert withdrawn.error == "no_consent"

    answer = client.consents(subject)
    assert answer.subject == subject
    [consent] = answer.consents
    assert consent.purpose == "marketing" and consent.granted is False
    assert [c.granted for c in consent.history] == [True, False]
    assert consent.history[0].source == "signup form" and consent.history[1].source is None

    # Consent is only for consent-based purposes.
    with pytest.raises(VaultError) as raised:
        client.record_consent(subject, "billing", True)
    assert raised.value.code == "not_consent_based" and raised.value.status == 409


@pytest.mark.anyio
async def test_consent_async(server: DevServer, subject: str):
    async with server.async_client() as client:
        await client.record_consent(subject, "marketing", True)
        [consent] = (await client.consents(subject)).consents
        assert consent.granted and len(consent.history) == 1


def test_audit_head_and_verify(client: Client, subject: str):
    client.tokenize([TokenizeItem(subject, "email", "erin@example.com")])
    head = client.audit_head()
    assert head.seq is not None and head.mac is not None and len(head.mac) == 64

    check = client.verify_audit()
    assert check.ok and check.events >= 1 and check.first_bad is None
    anchored = client.verify_audit(head)
    assert anchored.ok and anchored.anchor == "contained"

    events = client.audit_events(limit=5)
    assert 1 <= len(events) <= 5 and all(isinstance(e, AuditEvent) for e in events)
    [last] = client.audit_events(after=head.seq - 1, limit=1)
    assert last.seq == head.seq and last.action == "tokenize" and last.subject


def test_inventory(client: Client, subject: str):
    client.tokenize([TokenizeItem(subject, "phone", "+33 6 12 34 56 78")])
    inventory = client.inventory()
    phone = next(f for f in inventory.fields if f.field == "phone")
    assert phone.records >= 1 and phone.subjects >= 1 and phone.oldest_record_day
    assert {p.purpose for p in phone.purposes} >= {"support", "billing"}
    assert inventory.records >= phone.records and inventory.active_kek_version in inventory.kek_versions


def test_lookup_and_whoami(client: Client, subject: str):
    tokens = client.tokenize([TokenizeItem(subject, "email", "fay@example.com"), TokenizeItem(subject, "city", "Lyon")])
    overview = client.lookup(subject)
    assert overview.subject == subject and overview.subject_ref and not overview.more_records
    assert {(r.token, r.field) for r in overview.records} == set(zip(tokens, ["email", "city"]))
    assert any(e.action == "tokenize" for e in overview.access_log)
    me = client.whoami()
    assert me.name == "dev-admin" and "tokenize" in me.scopes and me.purposes is None and not me.masked


def test_admin_routes(client: Client):
    assert client.health() and client.ready()
    purposes = {p.name: p for p in client.purposes()}
    assert purposes["marketing"].basis == "consent" and purposes["analytics"].masked

    backup = client.create_backup()
    listed = client.backups()
    assert backup.id in [b.id for b in listed.backups]

    before = client.keys()
    rotated = client.rotate()
    assert rotated.active_version > before.active_version
    retired = client.retire_keys()
    assert retired.keys.active_version == rotated.active_version
    assert all(v.version == retired.keys.active_version for v in retired.keys.versions)
