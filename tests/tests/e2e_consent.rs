//! Purposes, consent and masked views through the server: declared in the
//! configuration, enforced per token, visible in exports.

mod common;

use common::{KeySpec, Launch, SERVER, Server, TestResult, write_config};
use vault_client::api::{DetokenizeResult, ItemError, TokenizeItem};

const PURPOSES: &str = r#"
[[purposes]]
name = "billing"
basis = "contract"
fields = ["email", "iban"]

[[purposes]]
name = "newsletter"
basis = "consent"
fields = ["email"]

[[purposes]]
name = "analytics"
basis = "legitimate_interests"
masked = true

[masks]
email = "email"
iban = "last:4"
"*" = "hidden"
"#;

fn outcome(result: &DetokenizeResult) -> Result<(String, bool), ItemError> {
    match result {
        DetokenizeResult::Value { value, masked, .. } => Ok((value.expose().to_owned(), *masked)),
        DetokenizeResult::Error { error, .. } => Err(*error),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purposes_consent_and_masks_over_https() -> TestResult {
    let dir = tempfile::tempdir()?;
    let specs = [
        KeySpec {
            name: "app",
            scopes: &[
                "tokenize",
                "detokenize",
                "consent",
                "export",
                "audit",
                "erase",
            ],
            purposes: &["billing", "newsletter", "analytics"],
        },
        KeySpec {
            name: "mailer",
            scopes: &["detokenize"],
            purposes: &["newsletter"],
        },
    ];
    let masked_key = "[[api_keys]]\nname = \"support-desk\"\nhash = \"HASH\"\nscopes = [\"detokenize\"]\npurposes = [\"billing\"]\nmasked = true\n";
    let (support_key, support_hash) = vault_server::auth::generate_key()?;
    let extra = format!(
        "{PURPOSES}{}",
        masked_key.replace("HASH", &support_hash.to_string())
    );
    let (config, ca, secrets) = write_config(dir.path(), &specs, &extra)?;
    let server = Server::start(Launch::config(&dir.path().join("data"), &config, &ca))?;
    let app = server.client(&secrets["app"])?;
    let mailer = server.client(&secrets["mailer"])?;
    let support = server.client(&support_key)?;

    let purposes = app.purposes().await?;
    let names: Vec<_> = purposes
        .purposes
        .iter()
        .map(|p| (p.name.as_str(), p.basis.as_str()))
        .collect();
    assert_eq!(
        names,
        [
            ("analytics", "legitimate_interests"),
            ("billing", "contract"),
            ("newsletter", "consent")
        ]
    );

    let tokens = app
        .tokenize(vec![
            TokenizeItem::new("cust-1", "email", "jane.doe@example.com"),
            TokenizeItem::new("cust-1", "iban", "FR7630006000011234567890189"),
            TokenizeItem::new("cust-1", "phone", "+33 1 23 45 67 89"),
        ])
        .await?;

    // Contract basis: no consent needed; the purpose covers email and IBAN only.
    let billing = app.detokenize(&tokens, "billing").await?;
    let got: Vec<_> = billing.iter().map(outcome).collect();
    assert_eq!(
        got,
        [
            Ok(("jane.doe@example.com".to_owned(), false)),
            Ok(("FR7630006000011234567890189".to_owned(), false)),
            Err(ItemError::Forbidden)
        ]
    );

    // Consent basis: refused until granted, and again right after a withdrawal.
    let first = mailer.detokenize(&tokens[..1], "newsletter").await?;
    assert_eq!(outcome(&first[0]), Err(ItemError::NoConsent));
    app.record_consent("cust-1", "newsletter", true, Some("signup-form"))
        .await?;
    let second = mailer.detokenize(&tokens[..1], "newsletter").await?;
    assert_eq!(
        outcome(&second[0]),
        Ok(("jane.doe@example.com".to_owned(), false))
    );
    app.record_consent("cust-1", "newsletter", false, Some("unsubscribe"))
        .await?;
    let third = mailer.detokenize(&tokens[..1], "newsletter").await?;
    assert_eq!(outcome(&third[0]), Err(ItemError::NoConsent));
    // The mailer may not use another purpose.
    let err = mailer
        .detokenize(&tokens, "billing")
        .await
        .err()
        .ok_or("allowed")?;
    assert_eq!(
        (err.status(), err.code()),
        (Some(403), Some("purpose_not_allowed"))
    );

    // A masked purpose, and a key limited to masked views: never the full value.
    let analytics = app.detokenize(&tokens, "analytics").await?;
    let got: Vec<_> = analytics.iter().map(outcome).collect();
    assert_eq!(
        got,
        [
            Ok(("j***@example.com".to_owned(), true)),
            Ok(("***0189".to_owned(), true)),
            Ok(("***".to_owned(), true))
        ]
    );
    let desk = support.detokenize(&tokens, "billing").await?;
    let got: Vec<_> = desk.iter().map(outcome).collect();
    assert_eq!(
        got,
        [
            Ok(("j***@example.com".to_owned(), true)),
            Ok(("***0189".to_owned(), true)),
            Err(ItemError::Forbidden)
        ]
    );

    // The ledger, in the consents view and in the export.
    let consents = app.consents("cust-1").await?;
    assert_eq!(consents.consents.len(), 1);
    let newsletter = &consents.consents[0];
    assert!(!newsletter.granted);
    let history: Vec<_> = newsletter
        .history
        .iter()
        .map(|c| (c.granted, c.source.as_ref().map(|s| s.expose().to_owned())))
        .collect();
    assert_eq!(
        history,
        [
            (true, Some("signup-form".to_owned())),
            (false, Some("unsubscribe".to_owned()))
        ]
    );
    let export = app.export("cust-1").await?;
    assert_eq!(export.consents, consents.consents);
    // The access report (Art. 15(1)(c)): who did what, for which purpose, when.
    let log: Vec<_> = export
        .access_log
        .iter()
        .map(|e| {
            let purpose = e.purpose.as_deref().unwrap_or("-");
            (
                e.actor.as_str(),
                e.action.as_str(),
                purpose,
                e.outcome.as_str(),
            )
        })
        .collect();
    let billing = ("app", "detokenize", "billing", "ok");
    let analytics = ("app", "detokenize", "analytics", "ok");
    let desk = ("support-desk", "detokenize", "billing", "ok");
    let newsletter = ("mailer", "detokenize", "newsletter", "ok");
    let refused = ("mailer", "detokenize", "newsletter", "no_consent");
    assert_eq!(
        log,
        [
            ("app", "tokenize", "-", "ok"),
            billing,
            billing,
            ("app", "detokenize", "billing", "forbidden"),
            refused,
            ("app", "consent_granted", "newsletter", "ok"),
            newsletter,
            ("app", "consent_withdrawn", "newsletter", "ok"),
            refused,
            analytics,
            analytics,
            analytics,
            desk,
            desk,
            ("support-desk", "detokenize", "billing", "forbidden"),
            ("app", "consents_read", "-", "ok"),
        ]
    );
    assert!(export.access_log.windows(2).all(|w| w[0].seq < w[1].seq));

    // The audit trail: every token of every detokenization, by key name, no data.
    let trail = app.audit_events(None, 1000).await?;
    let mailer_events: Vec<_> = trail
        .events
        .iter()
        .filter(|e| e.actor == "mailer")
        .map(|e| (e.outcome.as_str(), e.purpose.as_deref()))
        .collect();
    assert_eq!(
        mailer_events,
        [
            ("no_consent", Some("newsletter")),
            ("ok", Some("newsletter")),
            ("no_consent", Some("newsletter"))
        ]
    );
    let desk: Vec<_> = trail
        .events
        .iter()
        .filter(|e| e.actor == "support-desk")
        .map(|e| e.outcome.as_str())
        .collect();
    assert_eq!(desk, ["ok", "ok", "forbidden"]);
    let text = serde_json::to_string(&trail)?;
    for secret in ["jane.doe", "FR76", "cust-1", "+33"] {
        assert!(!text.contains(secret), "the audit trail holds {secret}");
    }
    let receipt = app.erase("cust-1").await?;
    let erased_at = receipt.audit_event.ok_or("no audit event in the receipt")?;
    let page = app.audit_events(Some(erased_at - 1), 1).await?;
    assert_eq!(page.events[0].action, "erase");
    assert_eq!(page.events[0].actor, "app");
    let check = app.verify_audit().await?;
    assert!(check.ok && check.events == erased_at + 1, "{check:?}");
    // Reading the trail needs the audit scope.
    let err = mailer.verify_audit().await.err().ok_or("allowed")?;
    assert_eq!(err.status(), Some(403));

    // Consent only for the key's own purposes, and only where the basis is consent.
    let err = app
        .record_consent("cust-1", "lottery", true, None)
        .await
        .err()
        .ok_or("accepted")?;
    assert_eq!(
        (err.status(), err.code()),
        (Some(403), Some("purpose_not_allowed"))
    );
    let err = app
        .record_consent("cust-1", "billing", true, None)
        .await
        .err()
        .ok_or("accepted")?;
    assert_eq!(
        (err.status(), err.code()),
        (Some(409), Some("not_consent_based"))
    );
    Ok(())
}

#[test]
fn a_key_naming_an_undeclared_purpose_is_a_misconfiguration() -> TestResult {
    let dir = tempfile::tempdir()?;
    let spec = [KeySpec {
        name: "svc",
        scopes: &["detokenize"],
        purposes: &["billing"],
    }];
    let (config, _, _) = write_config(dir.path(), &spec, "")?;
    let text = std::fs::read_to_string(&config)?
        .replace("name = \"billing\"\nbasis", "name = \"invoicing\"\nbasis");
    std::fs::write(&config, text)?;
    let output = std::process::Command::new(SERVER)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .args(["--listen", "127.0.0.1:0", "--config"])
        .arg(&config)
        .output()?;
    assert_eq!(output.status.code(), Some(2));
    let err = String::from_utf8(output.stderr)?;
    assert!(err.contains("not declared"), "{err}");
    Ok(())
}
