//! Bad input on every route gets the documented status and code, the server keeps
//! serving, and nothing stored changes. Plus the limits that protect the server:
//! load shedding (429) and the request timeout (503).

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{KeySpec, Launch, SCOPES as ALL, Server, TestResult, metric, write_config};
use reqwest::Method;
use serde_json::json;
use vault_client::api::{DetokenizeResult, TokenizeItem};

struct Case {
    name: &'static str,
    method: Method,
    path: String,
    body: Vec<u8>,
    status: u16,
    code: &'static str,
    item: Option<usize>,
}

fn case(
    name: &'static str,
    method: Method,
    path: &str,
    body: impl Into<Vec<u8>>,
    (status, code): (u16, &'static str),
) -> Case {
    Case {
        name,
        method,
        path: path.to_owned(),
        body: body.into(),
        status,
        code,
        item: None,
    }
}

fn at(mut c: Case, item: usize) -> Case {
    c.item = Some(item);
    c
}

fn item(subject: &str, field: &str, value: &str) -> serde_json::Value {
    json!({"subject": subject, "field": field, "value": value})
}

fn body(value: serde_json::Value) -> Vec<u8> {
    value.to_string().into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_on_every_route_changes_nothing() -> TestResult {
    let dir = tempfile::tempdir()?;
    let spec = [KeySpec {
        name: "full",
        scopes: &ALL,
        purposes: &["support"],
    }];
    let limits = "[limits]\nmax_body_bytes = 65536\nmax_value_bytes = 1024\nmax_batch = 10\n";
    let (config, ca, secrets) = write_config(dir.path(), &spec, limits)?;
    let server = Server::start(Launch::config(&dir.path().join("data"), &config, &ca))?;
    let client = server.client(&secrets["full"])?;
    let http = server.raw()?;
    let auth = format!("Bearer {}", secrets["full"]);

    let tokens = client
        .tokenize(vec![
            TokenizeItem::new("customer-1", "email", "one@example.com"),
            TokenizeItem::new("customer-1", "name", "One"),
            TokenizeItem::new("customer-2", "email", "two@example.com").deterministic(),
        ])
        .await?;
    let deleted = client.tokenize_one("customer-1", "phone", "+1 555").await?;
    client.delete(&deleted).await?;
    let export_before = serde_json::to_string(&client.export("customer-1").await?.records)?;
    // The export's audit event is staged and moved into the trail within 100 ms;
    // reading the trail moves it now, so that it is not counted as a later write.
    client.audit_events(None, 1).await?;
    let written_before = metric(
        &server.metrics_page(&http).await?,
        "vault_storage_keys_written_total",
    )
    .ok_or("metric")?;

    let t0 = tokens[0].as_str();
    let ok_item = item("customer-1", "email", "x@example.com");
    let eleven: Vec<_> = (0..11).map(|_| ok_item.clone()).collect();
    let big_value = "v".repeat(1025);
    let huge_body = format!(
        "{{\"items\":[{{\"subject\":\"s\",\"field\":\"f\",\"value\":\"{}\"}}]}}",
        "v".repeat(70_000)
    );
    let foreign_token = "tok_aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    let bad = (400, "malformed_request");
    let invalid = (400, "invalid_item");
    let cases = vec![
        // tokenize
        case(
            "not json",
            Method::POST,
            "/v1/tokenize",
            "{\"items\":[",
            bad,
        ),
        case("not an object", Method::POST, "/v1/tokenize", "[1,2]", bad),
        // serde fills a struct from an array too; the API takes objects only.
        case(
            "the fields as an array",
            Method::POST,
            "/v1/subjects/erase",
            body(json!(["customer-1"])),
            bad,
        ),
        case("an array", Method::POST, "/v1/audit/verify", "[]", bad),
        case("empty body", Method::POST, "/v1/tokenize", "", bad),
        case(
            "items not a list",
            Method::POST,
            "/v1/tokenize",
            body(json!({"items": "x"})),
            bad,
        ),
        case(
            "unknown top field",
            Method::POST,
            "/v1/tokenize",
            body(json!({"items": [ok_item], "x": 1})),
            bad,
        ),
        at(
            case(
                "unknown item field",
                Method::POST,
                "/v1/tokenize",
                body(
                    json!({"items": [ok_item, ok_item, {"subject":"s","field":"f","value":"v","extra":true}]}),
                ),
                bad,
            ),
            2,
        ),
        at(
            case(
                "value not a string",
                Method::POST,
                "/v1/tokenize",
                body(json!({"items": [ok_item, {"subject":"s","field":"f","value":5}]})),
                bad,
            ),
            1,
        ),
        at(
            case(
                "missing value",
                Method::POST,
                "/v1/tokenize",
                body(json!({"items": [{"subject":"s","field":"f"}]})),
                bad,
            ),
            0,
        ),
        case(
            "no items",
            Method::POST,
            "/v1/tokenize",
            body(json!({"items": []})),
            invalid,
        ),
        case(
            "batch over the limit",
            Method::POST,
            "/v1/tokenize",
            body(json!({"items": eleven})),
            (413, "batch_too_large"),
        ),
        at(
            case(
                "value over the limit",
                Method::POST,
                "/v1/tokenize",
                body(json!({"items": [ok_item, item("s", "f", &big_value)]})),
                (413, "value_too_large"),
            ),
            1,
        ),
        case(
            "body over the limit",
            Method::POST,
            "/v1/tokenize",
            huge_body.clone(),
            (413, "body_too_large"),
        ),
        at(
            case(
                "bad field name",
                Method::POST,
                "/v1/tokenize",
                body(json!({"items": [ok_item, ok_item, item("s", "e mail", "v")]})),
                invalid,
            ),
            2,
        ),
        at(
            case(
                "empty subject",
                Method::POST,
                "/v1/tokenize",
                body(json!({"items": [item("", "f", "v")]})),
                invalid,
            ),
            0,
        ),
        at(
            case(
                "control character in subject",
                Method::POST,
                "/v1/tokenize",
                body(json!({"items": [item("a\u{0}b", "f", "v")]})),
                invalid,
            ),
            0,
        ),
        at(
            case(
                "subject too long",
                Method::POST,
                "/v1/tokenize",
                body(json!({"items": [item(&"s".repeat(257), "f", "v")]})),
                invalid,
            ),
            0,
        ),
        // detokenize
        case("not json", Method::POST, "/v1/detokenize", "nope", bad),
        case(
            "missing purpose",
            Method::POST,
            "/v1/detokenize",
            body(json!({"tokens": [t0]})),
            bad,
        ),
        case(
            "unknown field",
            Method::POST,
            "/v1/detokenize",
            body(json!({"tokens": [t0], "purpose": "support", "why": 1})),
            bad,
        ),
        at(
            case(
                "token not a string",
                Method::POST,
                "/v1/detokenize",
                body(json!({"tokens": [t0, 7], "purpose": "support"})),
                bad,
            ),
            1,
        ),
        case(
            "bad purpose",
            Method::POST,
            "/v1/detokenize",
            body(json!({"tokens": [t0], "purpose": "Sales Team"})),
            (400, "invalid_purpose"),
        ),
        at(
            case(
                "malformed token",
                Method::POST,
                "/v1/detokenize",
                body(json!({"tokens": [t0, "tok_x"], "purpose": "support"})),
                (400, "invalid_token"),
            ),
            1,
        ),
        at(
            case(
                "malformed token after a repeated one",
                Method::POST,
                "/v1/detokenize",
                body(json!({"tokens": [t0, t0, "tok_x"], "purpose": "support"})),
                (400, "invalid_token"),
            ),
            2,
        ),
        case(
            "no tokens",
            Method::POST,
            "/v1/detokenize",
            body(json!({"tokens": [], "purpose": "support"})),
            invalid,
        ),
        case(
            "too many tokens",
            Method::POST,
            "/v1/detokenize",
            body(json!({"tokens": vec![t0; 11], "purpose": "support"})),
            (413, "batch_too_large"),
        ),
        case(
            "body over the limit",
            Method::POST,
            "/v1/detokenize",
            huge_body.clone(),
            (413, "body_too_large"),
        ),
        // rectify
        case(
            "malformed token",
            Method::PUT,
            "/v1/tokens/tok_x",
            body(json!({"value": "v"})),
            (400, "invalid_token"),
        ),
        // A token's shape, but not this vault's: no record, as for a deleted one.
        case(
            "another vault's token",
            Method::PUT,
            &format!("/v1/tokens/{foreign_token}"),
            body(json!({"value": "v"})),
            (404, "not_found"),
        ),
        case(
            "deleted token",
            Method::PUT,
            &format!("/v1/tokens/{deleted}"),
            body(json!({"value": "v"})),
            (404, "not_found"),
        ),
        case(
            "unknown field",
            Method::PUT,
            &format!("/v1/tokens/{t0}"),
            body(json!({"value": "v", "old": "x"})),
            bad,
        ),
        case(
            "value not a string",
            Method::PUT,
            &format!("/v1/tokens/{t0}"),
            body(json!({"value": null})),
            bad,
        ),
        case(
            "value over the limit",
            Method::PUT,
            &format!("/v1/tokens/{t0}"),
            body(json!({"value": big_value})),
            (413, "value_too_large"),
        ),
        case(
            "empty value",
            Method::PUT,
            &format!("/v1/tokens/{t0}"),
            body(json!({"value": ""})),
            invalid,
        ),
        case(
            "deterministic token",
            Method::PUT,
            &format!("/v1/tokens/{}", tokens[2]),
            body(json!({"value": "v"})),
            (409, "deterministic_token"),
        ),
        case(
            "body over the limit",
            Method::PUT,
            &format!("/v1/tokens/{t0}"),
            huge_body.clone(),
            (413, "body_too_large"),
        ),
        // delete
        case(
            "malformed token",
            Method::DELETE,
            "/v1/tokens/not-a-token",
            "",
            (400, "invalid_token"),
        ),
        case(
            "deleted token",
            Method::DELETE,
            &format!("/v1/tokens/{deleted}"),
            "",
            (404, "not_found"),
        ),
        case(
            "another vault's token",
            Method::DELETE,
            &format!("/v1/tokens/{foreign_token}"),
            "",
            (404, "not_found"),
        ),
        // erase and export
        case("not json", Method::POST, "/v1/subjects/erase", "{", bad),
        case(
            "unknown field",
            Method::POST,
            "/v1/subjects/erase",
            body(json!({"subject": "customer-1", "all": true})),
            bad,
        ),
        case(
            "subject not a string",
            Method::POST,
            "/v1/subjects/erase",
            body(json!({"subject": ["customer-1"]})),
            bad,
        ),
        case(
            "empty subject",
            Method::POST,
            "/v1/subjects/erase",
            body(json!({"subject": ""})),
            invalid,
        ),
        case(
            "subject too long",
            Method::POST,
            "/v1/subjects/erase",
            body(json!({"subject": "s".repeat(300)})),
            invalid,
        ),
        case("not json", Method::POST, "/v1/subjects/export", "]", bad),
        case(
            "missing subject",
            Method::POST,
            "/v1/subjects/export",
            body(json!({})),
            bad,
        ),
        case(
            "control character",
            Method::POST,
            "/v1/subjects/export",
            body(json!({"subject": "customer-1\n"})),
            invalid,
        ),
        // Subject ids that look like another: refused on every subject route, so
        // that erasing the visible spelling cannot miss the data.
        at(
            case(
                "trailing space in subject",
                Method::POST,
                "/v1/tokenize",
                body(json!({"items": [item("customer-1 ", "f", "v")]})),
                invalid,
            ),
            0,
        ),
        case(
            "zero-width space in subject",
            Method::POST,
            "/v1/subjects/erase",
            body(json!({"subject": "customer\u{200B}-1"})),
            invalid,
        ),
        case(
            "leading space in subject",
            Method::POST,
            "/v1/subjects/export",
            body(json!({"subject": " customer-1"})),
            invalid,
        ),
        case(
            "byte-order mark in subject",
            Method::POST,
            "/v1/subjects/consents",
            body(json!({"subject": "\u{FEFF}customer-1"})),
            invalid,
        ),
        case(
            "direction override in subject",
            Method::POST,
            "/v1/subjects/consent",
            body(json!({"subject": "customer\u{202E}-1", "purpose": "support", "granted": true})),
            invalid,
        ),
        // routes and methods
        case(
            "unknown route",
            Method::POST,
            "/v1/tokenise",
            body(json!({})),
            (404, "no_route"),
        ),
        case("bad audit query", Method::GET, "/v1/audit?after=x", "", bad),
        case(
            "audit limit over 1000",
            Method::GET,
            "/v1/audit?limit=5000",
            "",
            bad,
        ),
        case(
            "unknown audit parameter",
            Method::GET,
            "/v1/audit?subject=x",
            "",
            bad,
        ),
        case(
            "wrong method",
            Method::GET,
            "/v1/tokenize",
            "",
            (405, "method_not_allowed"),
        ),
        case(
            "wrong method",
            Method::DELETE,
            "/v1/subjects/erase",
            "",
            (405, "method_not_allowed"),
        ),
    ];
    // The document this server serves must list every refusal below, status and
    // code, under its operation.
    let document: serde_json::Value = http
        .get(format!("{}/openapi.json", server.url))
        .send()
        .await?
        .json()
        .await?;
    for c in &cases {
        let path = c.path.split('?').next().unwrap_or_default();
        let template = if path.starts_with("/v1/tokens/") {
            "/v1/tokens/{token}"
        } else {
            path
        };
        let method = c.method.as_str().to_lowercase();
        // 405 and 404 `no_route`: no operation to list them under.
        if let Some(operation) = document["paths"][template].get(method.as_str()) {
            let codes = &operation["responses"][c.status.to_string()]["content"]["application/json"]
                ["schema"]["properties"]["error"]["properties"]["code"]["enum"];
            assert!(
                codes
                    .as_array()
                    .is_some_and(|codes| codes.iter().any(|code| code == c.code)),
                "{} {} {}: {} {} is not in the document ({codes})",
                c.method,
                c.path,
                c.name,
                c.status,
                c.code
            );
        } else if document["paths"].get(template).is_some() {
            assert_eq!(c.status, 405, "{} {}: no operation", c.method, c.path);
        } else {
            assert_eq!(c.code, "no_route", "{} {}: no route", c.method, c.path);
        }
    }
    for c in &cases {
        let response = http
            .request(c.method.clone(), format!("{}{}", server.url, c.path))
            .header("authorization", &auth)
            .header("content-type", "application/json")
            .body(c.body.clone())
            .send()
            .await?;
        let status = response.status().as_u16();
        let text = response.text().await?;
        let answer: serde_json::Value = serde_json::from_str(&text)
            .map_err(|_| format!("{} {} {}: not JSON: {text}", c.method, c.path, c.name))?;
        assert_eq!(
            (status, answer["error"]["code"].as_str()),
            (c.status, Some(c.code)),
            "{} {} {}: {answer}",
            c.method,
            c.path,
            c.name
        );
        assert!(
            answer["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty())
        );
        assert_eq!(
            answer["error"]["item"].as_u64(),
            c.item.map(|i| i as u64),
            "{} {}: the item index: {answer}",
            c.path,
            c.name
        );
    }

    // Still serving, and nothing stored changed.
    let (live, ready) = client.health().await?;
    assert!(live && ready);
    let written_after = metric(
        &server.metrics_page(&http).await?,
        "vault_storage_keys_written_total",
    )
    .ok_or("metric")?;
    assert_eq!(
        written_after, written_before,
        "a refused request wrote to the vault"
    );
    let back = client.detokenize(&tokens, "support").await?;
    let values: Vec<_> = back
        .iter()
        .map(|r| match r {
            DetokenizeResult::Value { value, .. } => Some(value.expose().to_owned()),
            DetokenizeResult::Error { .. } => None,
        })
        .collect();
    assert_eq!(
        values,
        [
            Some("one@example.com".to_owned()),
            Some("One".to_owned()),
            Some("two@example.com".to_owned())
        ]
    );
    let export_after = serde_json::to_string(&client.export("customer-1").await?.records)?;
    assert_eq!(export_after, export_before);

    // Another vault's token has a token's shape: a read answers it per item, as a
    // token with no record, beside the others (and audits it like one).
    let response = http
        .post(format!("{}/v1/detokenize", server.url))
        .header("authorization", &auth)
        .header("content-type", "application/json")
        .body(body(
            json!({"tokens": [t0, foreign_token], "purpose": "support"}),
        ))
        .send()
        .await?;
    assert_eq!(response.status().as_u16(), 200);
    let answer: serde_json::Value = response.json().await?;
    assert_eq!(answer["results"][0]["value"], "one@example.com");
    assert_eq!(
        answer["results"][1],
        json!({"token": foreign_token, "error": "not_found"})
    );

    // A subject id is known by its NFC form: "é" decomposed names the subject the
    // composed spelling does.
    let decomposed = client
        .tokenize_one("jose\u{0301}", "email", "jose@example.com")
        .await?;
    let records = client.export("jos\u{e9}").await?.records;
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].token, decomposed);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn over_the_concurrency_limit_requests_are_shed_with_429() -> TestResult {
    let dir = tempfile::tempdir()?;
    let spec = [KeySpec {
        name: "full",
        scopes: &ALL,
        purposes: &["support"],
    }];
    let limits = "[limits]\nmax_concurrent_requests = 1\n";
    let (config, ca, secrets) = write_config(dir.path(), &spec, limits)?;
    let server = Server::start(Launch::config(&dir.path().join("data"), &config, &ca))?;
    // No retries: the test wants to see the 429s.
    let client = vault_client::Client::builder(&server.url)
        .api_key(&secrets["full"])
        .ca_cert_file(&server.ca_cert)?
        .retry(vault_client::RetryPolicy {
            max_retries: 0,
            ..Default::default()
        })
        .build()?;
    let client = Arc::new(client);
    let mut tasks = Vec::new();
    for t in 0..24 {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let items: Vec<_> = (0..200)
                .map(|i| TokenizeItem::new(format!("s-{t}-{i}"), "email", "v@example.com"))
                .collect();
            client.tokenize(items).await
        }));
    }
    let (mut ok, mut shed) = (0, 0);
    for task in tasks {
        match task.await? {
            Ok(_) => ok += 1,
            Err(e) if e.status() == Some(429) && e.code() == Some("overloaded") => shed += 1,
            Err(e) => return Err(format!("unexpected: {e}").into()),
        }
    }
    assert!(ok >= 1 && shed >= 1, "ok {ok}, shed {shed}");

    // The client retries idempotent calls (detokenize) through the 429s: every call
    // succeeds, and the server's metrics show that some were shed first.
    let tokens = client
        .tokenize(vec![TokenizeItem::new("r", "email", "r@example.com")])
        .await;
    let tokens = match tokens {
        Ok(tokens) => tokens,
        Err(_) => {
            client
                .tokenize(vec![TokenizeItem::new("r", "email", "r@example.com")])
                .await?
        }
    };
    let retrying = Arc::new(
        vault_client::Client::builder(&server.url)
            .api_key(&secrets["full"])
            .ca_cert_file(&server.ca_cert)?
            .retry(vault_client::RetryPolicy {
                // About 45 s of retrying at most: the 24 calls are served one at a
                // time, and each can take tens of milliseconds on a busy machine.
                max_retries: 200,
                initial_backoff: std::time::Duration::from_millis(5),
                max_backoff: std::time::Duration::from_millis(300),
            })
            .build()?,
    );
    let mut tasks = Vec::new();
    for _ in 0..24 {
        let client = retrying.clone();
        let tokens = vec![tokens[0].clone(); 500];
        tasks.push(tokio::spawn(async move {
            client.detokenize(&tokens, "support").await
        }));
    }
    for task in tasks {
        let results = task.await??;
        assert!(
            matches!(&results[0], DetokenizeResult::Value { value, .. } if value.expose() == "r@example.com")
        );
    }
    let page = server.metrics_page(&server.raw()?).await?;
    let shed_detokenize = metric(
        &page,
        "vault_http_requests_total{route=\"/v1/detokenize\",method=\"POST\",status=\"429\"}",
    )
    .unwrap_or(0.0);
    assert!(
        shed_detokenize >= 1.0,
        "no detokenize was shed, so no retry was tested: {page}"
    );
    // Health probes are never shed, and the server recovers.
    let (live, ready) = client.health().await?;
    assert!(live && ready);
    client.tokenize_one("after", "email", "v").await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_over_the_timeout_gets_503() -> TestResult {
    let dir = tempfile::tempdir()?;
    let spec = [KeySpec {
        name: "full",
        scopes: &ALL,
        purposes: &["support"],
    }];
    let data = dir.path().join("data");
    let limits = "[limits]\nmax_body_bytes = 16777216\nmax_value_bytes = 1048576\n";
    let (config, ca, secrets) = write_config(dir.path(), &spec, limits)?;
    // Load 200 MiB of values under the default timeout…
    let mut server = Server::start(Launch::config(&data, &config, &ca))?;
    let client = server.client(&secrets["full"])?;
    let big = "x".repeat(1 << 20);
    let mut tokens = Vec::new();
    for batch in 0..20 {
        let items: Vec<_> = (0..10)
            .map(|i| TokenizeItem::new(format!("s-{batch}-{i}"), "blob", big.as_str()))
            .collect();
        tokens.extend(client.tokenize(items).await?);
    }
    assert!(server.terminate()?.success());
    // …then read them back in one request, with a 100 ms timeout: decrypting and
    // encoding 200 MiB takes far longer.
    let text = std::fs::read_to_string(&config)?
        .replace("[limits]\n", "[limits]\nrequest_timeout_ms = 100\n");
    std::fs::write(&config, text)?;
    let server =
        Server::start(Launch::config(&data, &config, &ca).log_to(dir.path().join("2.log")))?;
    let client = vault_client::Client::builder(&server.url)
        .api_key(&secrets["full"])
        .ca_cert_file(&server.ca_cert)?
        .retry(vault_client::RetryPolicy {
            max_retries: 0,
            ..Default::default()
        })
        .build()?;
    let err = client
        .detokenize(&tokens, "support")
        .await
        .err()
        .ok_or("finished within 100 ms")?;
    assert_eq!(
        (err.status(), err.code()),
        (Some(503), Some("timeout")),
        "{err}"
    );
    // Small requests still pass, once the server has caught up: the first write
    // after the restart may wait for the replayed 200 MiB to be flushed (every read
    // is an audited write), and the timed-out read may still hold a core.
    let deadline = Instant::now() + Duration::from_secs(120);
    let back = loop {
        match client.detokenize(&tokens[..1], "support").await {
            Ok(back) => break back,
            Err(e) if e.code() == Some("timeout") && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => return Err(e.into()),
        }
    };
    assert!(
        matches!(&back[0], DetokenizeResult::Value { value, .. } if value.expose().len() == 1 << 20)
    );
    Ok(())
}

/// An export page over the answer cap is refused with 413 `response_too_large`; the
/// client then asks for smaller pages, down to what fits, and gets every record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_too_large_for_one_answer_comes_in_smaller_pages() -> TestResult {
    let dir = tempfile::tempdir()?;
    let spec = [KeySpec {
        name: "full",
        scopes: &ALL,
        purposes: &["support"],
    }];
    let limits = "[limits]\nmax_response_bytes = 1024\n";
    let (config, ca, secrets) = write_config(dir.path(), &spec, limits)?;
    let server = Server::start(Launch::config(&dir.path().join("data"), &config, &ca))?;
    let client = server.client(&secrets["full"])?;
    let items = (0..10)
        .map(|i| TokenizeItem::new("wordy", "note", format!("{i:03}{}", "w".repeat(297))))
        .collect();
    let tokens = client.tokenize(items).await?;

    let whole_page = client.export_page("wordy", None, None).await;
    assert_eq!(
        whole_page
            .err()
            .and_then(|e| e.code().map(str::to_owned))
            .as_deref(),
        Some("response_too_large")
    );
    let export = client.export("wordy").await?;
    let mut exported: Vec<String> = export.records.iter().map(|r| r.token.clone()).collect();
    exported.sort_unstable();
    let mut expected = tokens.clone();
    expected.sort_unstable();
    assert_eq!(exported, expected, "every record, once");
    Ok(())
}
