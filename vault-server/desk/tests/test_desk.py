"""The privacy desk in a real browser: Debian's Chromium, headless, driven by
Playwright, against a real vault-server over TLS on loopback.

Each step's screenshot goes to target/desk-screenshots (not committed). Every URL
the browser requested or navigated to is kept, and none may hold a subject id or a
value.
"""

import json
import os
import pathlib
import shutil
import ssl
import subprocess
import tempfile
import urllib.request

import pytest
from playwright.sync_api import expect, sync_playwright

REPO = pathlib.Path(__file__).resolve().parents[3]
SERVER = pathlib.Path(os.environ.get("VAULT_SERVER_BIN", REPO / "target/debug/vault-server"))
CHROMIUM = os.environ.get("VAULT_CHROMIUM", "/usr/bin/chromium")
SHOTS = REPO / "target/desk-screenshots"

SUBJECT = "desk-subject-7731"
EMAIL = "olivia.desk@mail.example"
PHONE = "+44 20 7946 0101"
SECRETS = [SUBJECT, EMAIL, PHONE, "olivia", "7946"]


def start(args, cwd):
    """Starts vault-server; returns the process and its start-up JSON line."""
    proc = subprocess.Popen(
        [str(SERVER), *args],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=open(os.path.join(cwd, "server.log"), "ab"),
        stdin=subprocess.DEVNULL,
        env={**os.environ, "RUST_LOG": "warn"},
    )
    line = proc.stdout.readline()
    if not line.strip():
        proc.kill()
        raise RuntimeError("vault-server did not start: see server.log")
    return proc, json.loads(line)


def stop(proc):
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()


def call(server, method, path, body=None, key=None):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(server["url"] + path, data=data, method=method)
    request.add_header("Authorization", "Bearer " + (key or server["officer"]))
    if data is not None:
        request.add_header("Content-Type", "application/json")
    context = ssl.create_default_context(cafile=server["ca_cert"])
    with urllib.request.urlopen(request, context=context) as response:
        text = response.read()
        if response.headers.get_content_type() != "application/json":
            return text.decode(), response.headers
        return (json.loads(text) if text else None), response.headers


def new_key(cwd):
    out = subprocess.run([str(SERVER), "new-api-key"], cwd=cwd, capture_output=True, check=True)
    return json.loads(out.stdout)


@pytest.fixture(scope="module")
def server():
    if not SERVER.exists():
        pytest.fail(f"{SERVER} is missing: build it with `cargo build -p vault-server`")
    work = tempfile.mkdtemp(prefix="desk-")
    data = os.path.join(work, "data")
    # --dev once, for a certificate and a root key file to configure with.
    proc, _ = start(["--data-dir", data, "--listen", "127.0.0.1:0", "--metrics-listen", "off", "--dev"], work)
    stop(proc)
    dev = os.path.join(data, "dev")
    officer, viewer = new_key(work), new_key(work)
    config = os.path.join(work, "vault.toml")
    with open(config, "w") as f:
        f.write(
            f"""
[tls]
cert = "{dev}/tls-cert.pem"
key = "{dev}/tls-key.pem"
[root_key]
file = "{dev}/root.key"
[backup]
dir = "{data}/backups"
[[purposes]]
name = "support"
basis = "legitimate_interests"
[[purposes]]
name = "newsletter"
basis = "consent"
[[purposes]]
name = "analytics"
basis = "legitimate_interests"
masked = true
[[api_keys]]
name = "officer"
hash = "{officer['hash']}"
scopes = ["tokenize", "detokenize", "export", "erase", "consent", "audit"]
purposes = ["*"]
[[api_keys]]
name = "viewer"
hash = "{viewer['hash']}"
scopes = ["tokenize"]
purposes = []
"""
        )
    proc, info = start(["--data-dir", data, "--listen", "127.0.0.1:0", "--metrics-listen", "off", "--config", config], work)
    server = {
        "url": info["url"],
        "ca_cert": os.path.join(dev, "tls-cert.pem"),
        "officer": officer["api_key"],
        "viewer": viewer["api_key"],
    }
    call(server, "POST", "/v1/tokenize", {"items": [
        {"subject": SUBJECT, "field": "email", "value": EMAIL},
        {"subject": SUBJECT, "field": "phone", "value": PHONE},
    ]})
    yield server
    stop(proc)
    shutil.rmtree(work, ignore_errors=True)


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            # This machine's network is closed: no background connections.
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        yield browser
        browser.close()


class Visits:
    """Every URL the page asked for or went to."""

    def __init__(self, page):
        self.urls = []
        page.on("request", lambda r: self.urls.append(r.url))
        page.on("framenavigated", lambda f: self.urls.append(f.url))

    def check(self):
        for url in self.urls:
            for secret in SECRETS:
                assert secret not in url, f"a subject id or value in a URL: {url}"


def shot(page, name):
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def sign_in(page, key):
    page.fill("#api-key", key)
    page.press("#api-key", "Enter")


def test_the_page_is_served_with_a_strict_policy(server):
    _, headers = call(server, "GET", "/desk/")
    policy = headers["Content-Security-Policy"]
    assert "default-src 'none'" in policy and "script-src 'self'" in policy
    assert "frame-ancestors 'none'" in policy
    assert headers["Cache-Control"] == "no-store"
    assert headers["Referrer-Policy"] == "no-referrer"


def test_a_privacy_officer_answers_requests(server, browser):
    context = browser.new_context(ignore_https_errors=True, accept_downloads=True)
    page = context.new_page()
    visits = Visits(page)
    errors = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.goto(server["url"] + "/desk/")
    expect(page.locator("#sign-in")).to_be_visible()
    shot(page, "01-sign-in")

    # A wrong key is refused.
    sign_in(page, "pvk_" + "0" * 64)
    expect(page.locator("#status")).to_contain_text("refused")
    expect(page.locator("#nav")).to_be_hidden()
    shot(page, "02-wrong-key")
    errors.clear()  # the refused key's 401 is expected

    sign_in(page, server["officer"])
    expect(page.locator("#who")).to_have_text("Signed in as officer")
    storage = page.evaluate("() => [localStorage.length, sessionStorage.length, document.cookie]")
    assert storage == [0, 0, ""], "the key is kept nowhere but in memory"

    # Look a subject up: records, values hidden.
    page.fill("#subject-id", SUBJECT)
    page.press("#subject-id", "Enter")
    rows = page.locator("#records tbody tr")
    expect(rows).to_have_count(2)
    expect(page.locator("#subject-shown")).to_have_text(SUBJECT)
    expect(page.locator("#records")).not_to_contain_text(EMAIL)
    shot(page, "03-lookup")

    # Reveal one value for a purpose.
    page.select_option("#reveal-purpose", "support")
    page.get_by_role("button", name="Reveal email").click()
    expect(page.locator("#records")).to_contain_text(EMAIL)
    expect(page.locator("#records")).not_to_contain_text(PHONE)
    shot(page, "04-reveal")

    # Export: a JSON file, and a printable page.
    with page.expect_download() as download:
        page.click("#export-json")
    exported = json.loads(pathlib.Path(download.value.path()).read_text())
    assert download.value.suggested_filename.startswith("export-")
    assert SUBJECT not in download.value.suggested_filename
    assert sorted(r["value"] for r in exported["records"]) == sorted([EMAIL, PHONE])
    page.click("#export-print")
    expect(page.locator("#print-view")).to_be_visible()
    expect(page.locator("#print-records")).to_contain_text(PHONE)
    expect(page.locator("#print-view")).not_to_contain_text(SUBJECT)
    shot(page, "05-printable-export")
    page.click("#print-close")

    # Consent: a grant for a consent-based purpose, with its source. A source is
    # counted in characters, as the vault counts it: 256 characters outside the
    # BMP (512 UTF-16 units) are taken, one more is refused before it is sent.
    page.select_option("#consent-purpose", "newsletter")
    page.check("input[name=consent-change][value=grant]")
    page.fill("#consent-source", "\U0001F4DD" * 257)
    page.click("#consent-form button[type=submit]")
    expect(page.locator("#status")).to_contain_text("more than 256 characters")
    page.fill("#consent-source", "\U0001F4DD" * 256)
    page.click("#consent-form button[type=submit]")
    expect(page.locator("#status")).to_contain_text("Consent granted")
    page.check("input[name=consent-change][value=grant]")
    page.fill("#consent-source", "desk test form")
    page.click("#consent-form button[type=submit]")
    expect(page.locator("#consents")).to_contain_text("granted")
    expect(page.locator("#consents")).to_contain_text("desk test form")
    expect(page.locator("#access-log")).to_contain_text("consent granted")
    shot(page, "06-consent")

    # The audit trail: recent events, verified.
    page.click("#nav-audit")
    page.click("#audit-refresh")
    expect(page.locator("#audit-events tbody tr").first).to_be_visible()
    expect(page.locator("#audit-events")).to_contain_text("lookup")
    page.click("#audit-verify")
    expect(page.locator("#audit-check")).to_contain_text("verifies")
    expect(page.locator("#audit-head")).to_contain_text("Head: event")
    shot(page, "07-audit")

    # Erasure: the id must be typed again; then the receipt.
    page.click("#nav-subject")
    page.click("#erase-start")
    page.fill("#erase-id", SUBJECT + "x")
    page.click("#erase-form button[type=submit]")
    expect(page.locator("#status")).to_contain_text("does not match")
    body, _ = call(server, "POST", "/v1/subjects/lookup", {"subject": SUBJECT})
    assert body["subject_ref"] is not None, "a mismatch erases nothing"
    page.fill("#erase-id", SUBJECT)
    page.click("#erase-form button[type=submit]")
    expect(page.locator("#receipt")).to_be_visible()
    expect(page.locator("#receipt-fields")).to_contain_text("Records")
    expect(page.locator("#records-empty")).to_be_visible()
    with page.expect_download() as download:
        page.click("#receipt-download")
    receipt = json.loads(pathlib.Path(download.value.path()).read_text())
    assert receipt["records"] == 2 and receipt["purge"]["state"] in ("pending", "done")
    shot(page, "08-erased")

    # A reload forgets the key.
    page.reload()
    expect(page.locator("#sign-in")).to_be_visible()
    expect(page.locator("#nav")).to_be_hidden()
    shot(page, "09-reloaded")

    # Signing out leaves nothing of what was shown in the page.
    sign_in(page, server["officer"])
    page.fill("#subject-id", "someone-else")
    page.press("#subject-id", "Enter")
    expect(page.locator("#status")).to_contain_text("holds nothing")
    page.click("#sign-out")
    expect(page.locator("#sign-in")).to_be_visible()
    assert "someone-else" not in page.content()
    assert page.input_value("#subject-id") == ""

    visits.check()
    assert page.url.endswith("/desk/")
    assert not errors, errors
    context.close()


def test_a_key_without_the_scopes_sees_no_buttons(server, browser):
    context = browser.new_context(ignore_https_errors=True)
    page = context.new_page()
    visits = Visits(page)
    page.goto(server["url"] + "/desk/")
    sign_in(page, server["viewer"])
    expect(page.locator("#who")).to_have_text("Signed in as viewer")
    expect(page.locator("#nav-subject")).to_be_hidden()
    expect(page.locator("#nav-audit")).to_be_hidden()
    expect(page.locator("#subject-view")).to_be_hidden()
    for button in ["#erase-start", "#export-json", "#consent-form"]:
        expect(page.locator(button)).to_be_hidden()
    shot(page, "10-no-scopes")
    visits.check()
    context.close()


def test_the_page_works_by_keyboard(server, browser):
    context = browser.new_context(ignore_https_errors=True)
    page = context.new_page()
    page.goto(server["url"] + "/desk/")
    # The key field has the focus; type, Enter; Tab to the subject field.
    page.keyboard.type(server["officer"])
    page.keyboard.press("Enter")
    expect(page.locator("#who")).to_be_visible()
    page.focus("#subject-id")
    page.keyboard.type("nobody-here")
    page.keyboard.press("Enter")
    expect(page.locator("#status")).to_contain_text("holds nothing")
    # Every input has a label.
    unlabelled = page.evaluate(
        """() => [...document.querySelectorAll('input:not([type=radio]), select')]
                 .filter(e => !document.querySelector(`label[for="${e.id}"]`))
                 .map(e => e.id)"""
    )
    assert unlabelled == []
    context.close()
