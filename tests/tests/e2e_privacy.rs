//! No personal data leaves where it should not: the server runs at the most verbose
//! log level; distinctive subject ids and values go through every route, including
//! failing requests; none of them may appear in the log, in an error body or in the
//! metrics. Issued tokens and API keys must not be in the log either.

mod common;

use common::{Server, TestResult};
use reqwest::Method;
use serde_json::json;

/// A distinctive string nothing else could contain.
fn canary(kind: &str) -> TestResult<String> {
    let mut raw = [0u8; 8];
    getrandom_fill(&mut raw)?;
    let hex: String = raw.iter().map(|b| format!("{b:02x}")).collect();
    Ok(format!("{kind}{hex}"))
}

fn getrandom_fill(buf: &mut [u8]) -> TestResult {
    use std::io::Read;
    std::fs::File::open("/dev/urandom")?.read_exact(buf)?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_personal_data_in_logs_errors_or_metrics() -> TestResult {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let launch = common::Launch::dev(&data).env("RUST_LOG", "trace");
    let server = Server::start(launch)?;
    let http = server.raw()?;
    let auth = format!("Bearer {}", server.api_key);

    let subject = canary("subj")?;
    let value = canary("valu")?;
    let other_subject = canary("subj")?;
    let new_value = canary("newv")?;
    let in_path = canary("path")?;
    let source = canary("srce")?;
    let mut canaries = vec![
        subject.clone(),
        value.clone(),
        other_subject.clone(),
        new_value.clone(),
        in_path.clone(),
        source.clone(),
    ];

    let mut error_bodies = Vec::new();
    let mut tokens: Vec<String> = Vec::new();
    let mut send = async |method: Method,
                          path: String,
                          body: Option<String>,
                          key: Option<&str>|
           -> TestResult<serde_json::Value> {
        let mut request = http.request(method, format!("{}{path}", server.url));
        if let Some(key) = key {
            request = request.header("authorization", key);
        }
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body);
        }
        let response = request.send().await?;
        let status = response.status();
        let text = response.text().await?;
        if !status.is_success() {
            error_bodies.push(text.clone());
        }
        Ok(if text.is_empty() || !status.is_success() {
            serde_json::Value::Null
        } else {
            serde_json::from_str(&text)?
        })
    };
    let key = Some(auth.as_str());

    // Successful calls.
    let answer = send(
        Method::POST,
        "/v1/tokenize".into(),
        Some(
            json!({"items":[
                {"subject": subject, "field": "email", "value": value},
                {"subject": other_subject, "field": "name", "value": value, "deterministic": true}
            ]})
            .to_string(),
        ),
        key,
    )
    .await?;
    for token in answer["tokens"].as_array().ok_or("no tokens")? {
        tokens.push(token.as_str().ok_or("token")?.to_owned());
    }
    send(
        Method::POST,
        "/v1/detokenize".into(),
        Some(json!({"tokens": tokens, "purpose": "support"}).to_string()),
        key,
    )
    .await?;
    send(
        Method::PUT,
        format!("/v1/tokens/{}", tokens[0]),
        Some(json!({"value": new_value}).to_string()),
        key,
    )
    .await?;
    send(
        Method::POST,
        "/v1/subjects/export".into(),
        Some(json!({"subject": subject}).to_string()),
        key,
    )
    .await?;

    // Consent, with a source (caller text) and the subject.
    send(
        Method::POST,
        "/v1/subjects/consent".into(),
        Some(
            json!({"subject": subject, "purpose": "marketing", "granted": true, "source": source})
                .to_string(),
        ),
        key,
    )
    .await?;
    send(
        Method::POST,
        "/v1/subjects/consents".into(),
        Some(json!({"subject": subject}).to_string()),
        key,
    )
    .await?;
    send(
        Method::POST,
        "/v1/detokenize".into(),
        Some(json!({"tokens": tokens, "purpose": "marketing"}).to_string()),
        key,
    )
    .await?;

    // Failing calls, each carrying personal data somewhere.
    let big = format!("{value}{}", "x".repeat(70 * 1024));
    let failing: Vec<(Method, String, String)> = vec![
        (Method::POST, "/v1/tokenize".into(), json!({"items":[{"subject": subject, "field": "email", "value": big}]}).to_string()),
        (Method::POST, "/v1/tokenize".into(), json!({"items":[{"subject": subject, "field": format!("bad field {value}"), "value": value}]}).to_string()),
        (Method::POST, "/v1/tokenize".into(), json!({"items":[{"subject": subject, "field": "email", "value": 12345}]}).to_string()),
        (Method::POST, "/v1/tokenize".into(), json!({"items":[{"subject": 7, "field": "email", "value": value}]}).to_string()),
        (Method::POST, "/v1/tokenize".into(), json!({"items":[{"subject": subject, "field": "email", "value": value, value.clone(): subject}]}).to_string()),
        (Method::POST, "/v1/tokenize".into(), format!("{{\"items\":[{{\"subject\":\"{subject}\",\"value\":\"{value}\"")),
        (Method::POST, "/v1/tokenize".into(), json!({"items":[{"subject": format!("{subject}\u{7}"), "field": "email", "value": value}]}).to_string()),
        (Method::POST, "/v1/detokenize".into(), json!({"tokens": tokens, "purpose": subject}).to_string()),
        (Method::POST, "/v1/detokenize".into(), json!({"tokens": [value], "purpose": "support"}).to_string()),
        (Method::POST, "/v1/detokenize".into(), json!({"tokens": [tokens[0]], "purpose": "support", subject.clone(): value}).to_string()),
        (Method::PUT, format!("/v1/tokens/{in_path}"), json!({"value": value}).to_string()),
        (Method::PUT, format!("/v1/tokens/{}", tokens[1]), json!({"value": value}).to_string()),
        (Method::PUT, format!("/v1/tokens/{}", tokens[0]), json!({"value": [value]}).to_string()),
        (Method::DELETE, format!("/v1/tokens/{in_path}"), String::new()),
        (Method::POST, "/v1/subjects/export".into(), json!({"subject": format!("{subject}\n")}).to_string()),
        (Method::POST, "/v1/subjects/export".into(), json!({"subject": subject.repeat(40)}).to_string()),
        (Method::POST, "/v1/subjects/erase".into(), json!({"subject": subject, "why": value}).to_string()),
        (Method::POST, format!("/v1/{in_path}"), json!({"subject": subject}).to_string()),
        (Method::GET, "/v1/tokenize".into(), String::new()),
        (Method::POST, "/v1/subjects/consent".into(), json!({"subject": subject, "purpose": "billing", "granted": true, "source": source}).to_string()),
        (Method::POST, "/v1/subjects/consent".into(), json!({"subject": subject, "purpose": value, "granted": true}).to_string()),
        (Method::POST, "/v1/subjects/consent".into(), json!({"subject": subject, "purpose": "marketing", "granted": "yes", "source": source}).to_string()),
    ];
    for (method, path, body) in failing {
        let body = (!body.is_empty()).then_some(body);
        send(method.clone(), path.clone(), body.clone(), key).await?;
        // The same with no key and with a wrong key.
        send(method.clone(), path.clone(), body.clone(), None).await?;
        send(method, path, body, Some("Bearer pvk_wrong")).await?;
    }
    // Erase last: the subject was live for every call above.
    send(
        Method::POST,
        "/v1/subjects/erase".into(),
        Some(json!({"subject": subject}).to_string()),
        key,
    )
    .await?;
    send(
        Method::POST,
        "/v1/detokenize".into(),
        Some(json!({"tokens": tokens, "purpose": "support"}).to_string()),
        key,
    )
    .await?;
    assert!(
        error_bodies.len() >= 40,
        "the failing requests failed: {}",
        error_bodies.len()
    );

    let metrics = server.metrics_page(&http).await?;
    assert!(metrics.contains("vault_http_requests_total"), "{metrics}");
    // Lines leave in order: once the last request's is written, all are.
    // A last request that nothing else makes (scrapes are not in the access log).
    http.get(format!("{}/readyz", server.url)).send().await?;
    let log = server.log_text_once(|log| log.contains("\"route\":\"/readyz\""));
    assert!(
        log.len() > 10_000,
        "a trace-level log was written ({} bytes)",
        log.len()
    );
    assert!(
        log.contains("\"route\":\"/v1/tokens/{token}\""),
        "access log names routes by template"
    );
    assert!(
        log.contains("\"key\":\"dev-admin\""),
        "access log names the caller's key"
    );

    canaries.extend(tokens.iter().cloned());
    canaries.push(server.api_key.clone());
    for canary in &canaries {
        let leak = log.lines().find(|line| line.contains(canary.as_str()));
        assert!(leak.is_none(), "the log holds {canary}: {leak:?}");
        assert!(
            !metrics.contains(canary.as_str()),
            "the metrics hold {canary}"
        );
    }
    for body in &error_bodies {
        for canary in &canaries[..6] {
            assert!(
                !body.contains(canary.as_str()),
                "an error body holds {canary}: {body}"
            );
        }
    }
    Ok(())
}
