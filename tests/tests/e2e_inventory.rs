//! Format-preserving tokens and the data inventory through the HTTPS API and
//! `vaultctl`, against a server process in `--dev` mode.

mod common;

use std::process::Command;

use common::{Server, TestResult, VAULTCTL};
use vault_client::api::{DetokenizeResult, TokenFormat, TokenizeItem};

fn vaultctl(server: &Server, args: &[&str]) -> TestResult<(i32, String, String)> {
    let output = Command::new(VAULTCTL)
        .args(args)
        .env("VAULT_ADDR", &server.url)
        .env("VAULT_API_KEY", &server.api_key)
        .env("VAULT_CACERT", &server.ca_cert)
        .output()?;
    Ok((
        output.status.code().unwrap_or(-1),
        String::from_utf8(output.stdout)?,
        String::from_utf8(output.stderr)?,
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn format_tokens_fit_their_columns_over_https() -> TestResult {
    let dir = tempfile::tempdir()?;
    let server = Server::start_dev(&dir.path().join("data"))?;
    let client = server.admin()?;
    let tokens = client
        .tokenize(vec![
            TokenizeItem::new("c-1", "card", "4111111111111111").format(TokenFormat::Luhn),
            TokenizeItem::new("c-1", "account", "00012345").format(TokenFormat::Digits),
            TokenizeItem::new("c-1", "email", "carol@mail.example").format(TokenFormat::Email),
        ])
        .await?;
    assert_eq!(tokens[0].len(), 16);
    assert!(tokens[0].ends_with("1111") && tokens[0] != "4111111111111111");
    assert!(tokens[1].len() == 8 && tokens[1].bytes().all(|b| b.is_ascii_digit()));
    assert!(tokens[2].ends_with("@example.net"));
    let back = client.detokenize(&tokens, "support").await?;
    let values: Vec<Option<&str>> = back
        .iter()
        .map(|r| match r {
            DetokenizeResult::Value { value, .. } => Some(value.expose()),
            _ => None,
        })
        .collect();
    assert_eq!(
        values,
        [
            Some("4111111111111111"),
            Some("00012345"),
            Some("carol@mail.example")
        ]
    );
    // Rectify and delete through their routes, the e-mail form escaped in the path.
    client.rectify(&tokens[2], "carol.new@mail.example").await?;
    client.delete(&tokens[1]).await?;
    let back = client.detokenize(&tokens[1..], "support").await?;
    assert!(matches!(
        &back[0],
        DetokenizeResult::Error {
            error: vault_client::api::ItemError::NotFound,
            ..
        }
    ));
    assert!(matches!(
        &back[1],
        DetokenizeResult::Value { value, .. } if value.expose() == "carol.new@mail.example"
    ));
    // A value that does not fit its format: 400 naming the item, nothing stored.
    let http = server.raw()?;
    let response = http
        .post(format!("{}/v1/tokenize", server.url))
        .bearer_auth(&server.api_key)
        .json(&serde_json::json!({"items": [
            {"subject": "c-2", "field": "card", "value": "4111", "format": "digits"},
            {"subject": "c-2", "field": "card", "value": "41x1", "format": "digits"}
        ]}))
        .send()
        .await?;
    assert_eq!(response.status().as_u16(), 400);
    let body: serde_json::Value = response.json().await?;
    assert_eq!(body["error"]["code"], "invalid_item");
    assert_eq!(body["error"]["item"], 1);
    let response = http
        .post(format!("{}/v1/tokenize", server.url))
        .bearer_auth(&server.api_key)
        .json(&serde_json::json!({"items": [
            {"subject": "c-2", "field": "card", "value": "4111", "format": "hex"}
        ]}))
        .send()
        .await?;
    assert_eq!(response.status().as_u16(), 400);
    // The 1-digit space: 9 tokens, then 409.
    let mut codes = Vec::new();
    for i in 0..10 {
        let response = http
            .post(format!("{}/v1/tokenize", server.url))
            .bearer_auth(&server.api_key)
            .json(&serde_json::json!({"items": [
                {"subject": format!("d-{i}"), "field": "digit", "value": "5", "format": "digits"}
            ]}))
            .send()
            .await?;
        codes.push(response.status().as_u16());
        if response.status().as_u16() == 409 {
            let body: serde_json::Value = response.json().await?;
            assert_eq!(body["error"]["code"], "token_space_exhausted");
        }
    }
    assert_eq!(codes, [200, 200, 200, 200, 200, 200, 200, 200, 200, 409]);
    // vaultctl asks for a format too.
    let (code, out, err) = vaultctl(
        &server,
        &[
            "tokenize",
            "--subject",
            "c-3",
            "--field",
            "card",
            "--value",
            "5500005555555559",
            "--format",
            "luhn",
        ],
    )?;
    assert_eq!(code, 0, "{err}");
    let out: serde_json::Value = serde_json::from_str(&out)?;
    assert!(
        out["tokens"][0]
            .as_str()
            .is_some_and(|t| t.ends_with("5559") && t.len() == 16)
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_inventory_counts_what_the_vault_holds_and_vaultctl_renders_it() -> TestResult {
    let dir = tempfile::tempdir()?;
    let server = Server::start_dev(&dir.path().join("data"))?;
    let client = server.admin()?;
    let mut items = Vec::new();
    for i in 0..30 {
        items.push(TokenizeItem::new(
            format!("s-{i}"),
            "email",
            format!("p{i}@mail.example"),
        ));
        if i % 3 == 0 {
            items.push(TokenizeItem::new(
                format!("s-{i}"),
                "phone",
                "+44 20 7946 0958",
            ));
        }
    }
    let tokens = client.tokenize(items).await?;
    client.delete(&tokens[1]).await?; // s-0's phone
    client.erase("s-5").await?;
    let inventory = client.inventory().await?;
    let field = |name: &str| inventory.fields.iter().find(|f| f.field == name).cloned();
    let email = field("email").ok_or("email listed")?;
    assert_eq!((email.records, email.subjects), (29, 29));
    let phone = field("phone").ok_or("phone listed")?;
    assert_eq!((phone.records, phone.subjects), (9, 9));
    assert!(email.oldest_record_day.is_some());
    let support = email
        .purposes
        .iter()
        .find(|p| p.purpose == "support")
        .ok_or("support reads email")?;
    assert_eq!(support.basis, "legitimate_interests");
    assert!(
        email
            .purposes
            .iter()
            .any(|p| p.purpose == "analytics" && p.masked)
    );
    assert_eq!(inventory.records, 38);
    assert_eq!(inventory.subjects, 29);
    assert_eq!(inventory.erased_subjects, 1);
    assert_eq!(inventory.kek_versions, [1]);

    let (code, json, err) = vaultctl(&server, &["inventory", "--format", "json"])?;
    assert_eq!(code, 0, "{err}");
    let json: serde_json::Value = serde_json::from_str(&json)?;
    assert_eq!(json["records"], 38);
    let (code, table, err) = vaultctl(&server, &["inventory"])?;
    assert_eq!(code, 0, "{err}");
    assert!(
        table.starts_with("# Record of processing activities (GDPR Art. 30)"),
        "{table}"
    );
    let row = table
        .lines()
        .find(|l| l.starts_with("| email |"))
        .ok_or("an email row")?;
    assert!(row.starts_with("| email | 29 | 29 | "), "{row}");
    assert!(row.contains("until deleted or erased"), "{row}");
    assert!(row.contains("support (legitimate interests)"), "{row}");
    assert!(table.contains("- Data subjects erased: 1"), "{table}");
    // Counts only: no value and no subject id in the answer.
    for secret in ["p7@mail.example", "s-7", "7946"] {
        assert!(!table.contains(secret) && !json.to_string().contains(secret));
    }
    // After a restart the counts are the same.
    drop(server);
    let server = Server::start_dev(&dir.path().join("data"))?;
    let again = server.admin()?.inventory().await?;
    assert_eq!(again.fields, inventory.fields);
    assert_eq!(again.records, 38);
    Ok(())
}
