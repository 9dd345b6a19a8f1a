//! API keys and scopes over TLS: every route × a key without its scope → 403, no key
//! or a wrong key → 401; purposes; root-key sources; misconfiguration refused before
//! anything listens; plain HTTP only when asked for by its insecure name.

mod common;

use std::process::Command;

use common::{KeySpec, Launch, SCOPES, SERVER, Server, TestResult, metric, write_config};
use reqwest::Method;

/// One request per (route, method), and the scope it needs.
fn routes(token: &str) -> Vec<(&'static str, Method, String, Option<serde_json::Value>)> {
    use serde_json::json;
    vec![
        (
            "tokenize",
            Method::POST,
            "/v1/tokenize".into(),
            Some(json!({"items":[{"subject":"s-1","field":"email","value":"v"}]})),
        ),
        (
            "tokenize_deterministic",
            Method::POST,
            "/v1/tokenize".into(),
            Some(
                json!({"items":[{"subject":"s-1","field":"email","value":"d","deterministic":true}]}),
            ),
        ),
        (
            "detokenize",
            Method::POST,
            "/v1/detokenize".into(),
            Some(json!({"tokens":[token],"purpose":"support"})),
        ),
        (
            "rectify",
            Method::PUT,
            format!("/v1/tokens/{token}"),
            Some(json!({"value":"new"})),
        ),
        (
            "delete",
            Method::DELETE,
            format!("/v1/tokens/{token}"),
            None,
        ),
        (
            "erase",
            Method::POST,
            "/v1/subjects/erase".into(),
            Some(json!({"subject":"s-1"})),
        ),
        (
            "export",
            Method::POST,
            "/v1/subjects/export".into(),
            Some(json!({"subject":"s-1"})),
        ),
        (
            "consent",
            Method::POST,
            "/v1/subjects/consent".into(),
            Some(json!({"subject":"s-1","purpose":"support","granted":true})),
        ),
        (
            "consent",
            Method::POST,
            "/v1/subjects/consents".into(),
            Some(json!({"subject":"s-1"})),
        ),
        ("audit", Method::GET, "/v1/audit?limit=10".into(), None),
        ("audit", Method::POST, "/v1/audit/verify".into(), None),
        ("audit", Method::GET, "/v1/inventory".into(), None),
        (
            "export",
            Method::POST,
            "/v1/subjects/lookup".into(),
            Some(json!({"subject":"s-1"})),
        ),
        ("admin", Method::POST, "/v1/admin/rotate".into(), None),
        ("admin", Method::GET, "/v1/admin/keys".into(), None),
    ]
}

async fn send(
    http: &reqwest::Client,
    server: &Server,
    key: Option<&str>,
    method: &Method,
    path: &str,
    body: &Option<serde_json::Value>,
) -> TestResult<(u16, serde_json::Value)> {
    let mut request = http.request(method.clone(), format!("{}{path}", server.url));
    if let Some(key) = key {
        request = request.header("authorization", key);
    }
    if let Some(body) = body {
        request = request.json(body);
    }
    let response = request.send().await?;
    let status = response.status().as_u16();
    let text = response.text().await?;
    let json = if text.is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_str(&text)?
    };
    Ok((status, json))
}

async fn keys_written(http: &reqwest::Client, server: &Server) -> TestResult<f64> {
    let page = server.metrics_page(http).await?;
    metric(&page, "vault_storage_keys_written_total").ok_or_else(|| "no metric".into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_needs_its_scope_and_a_valid_key() -> TestResult {
    let dir = tempfile::tempdir()?;
    let all_but: Vec<(String, Vec<&str>)> = SCOPES
        .iter()
        .map(|missing| {
            (
                format!("all-but-{missing}"),
                SCOPES.iter().copied().filter(|s| s != missing).collect(),
            )
        })
        .collect();
    let mut specs: Vec<KeySpec<'_>> = all_but
        .iter()
        .map(|(name, scopes)| KeySpec {
            name,
            scopes,
            purposes: &["support"],
        })
        .collect();
    specs.push(KeySpec {
        name: "full",
        scopes: &SCOPES,
        purposes: &["support"],
    });
    // A consent-based purpose, so that the consent route has something to record.
    // Thousands of wrong keys are sent on purpose: no address throttling here.
    let purposes = "[[purposes]]\nname = \"support\"\nbasis = \"consent\"\n\
                    [limits]\nfailed_auth_burst = 1000000\n";
    let (config, ca, secrets) = write_config(dir.path(), &specs, purposes)?;
    let data = dir.path().join("data");
    let server = Server::start(Launch::config(&data, &config, &ca))?;
    let http = server.raw()?;
    let full = format!("Bearer {}", secrets["full"]);

    let (status, body) = send(
        &http,
        &server,
        Some(&full),
        &Method::POST,
        "/v1/tokenize",
        &Some(serde_json::json!({"items":[{"subject":"s-1","field":"email","value":"v"}]})),
    )
    .await?;
    assert_eq!(status, 200, "{body}");
    let token = body["tokens"][0].as_str().ok_or("no token")?.to_owned();
    let written = keys_written(&http, &server).await?;

    let wrong_keys = [
        None,
        Some(
            "Bearer pvk_0000000000000000000000000000000000000000000000000000000000000000"
                .to_owned(),
        ),
        Some(format!("Basic {}", secrets["full"])),
        Some(format!(
            "Bearer {}",
            vault_server::auth::KeyHash::of(&secrets["full"])
        )),
        Some("Bearer".to_owned()),
    ];
    for (scope, method, path, body) in routes(&token) {
        let missing = format!("Bearer {}", secrets[&format!("all-but-{scope}")]);
        let (status, answer) = send(&http, &server, Some(&missing), &method, &path, &body).await?;
        assert_eq!(status, 403, "{method} {path} without {scope}: {answer}");
        assert_eq!(answer["error"]["code"], "forbidden");
        for wrong in &wrong_keys {
            let (status, answer) =
                send(&http, &server, wrong.as_deref(), &method, &path, &body).await?;
            assert_eq!(status, 401, "{method} {path} with {wrong:?}: {answer}");
            assert_eq!(answer["error"]["code"], "unauthenticated");
        }
    }
    assert_eq!(
        keys_written(&http, &server).await?,
        written,
        "refused requests wrote nothing"
    );

    // A purpose the key is not given.
    let (status, answer) = send(
        &http,
        &server,
        Some(&full),
        &Method::POST,
        "/v1/detokenize",
        &Some(serde_json::json!({"tokens":[token],"purpose":"marketing"})),
    )
    .await?;
    assert_eq!(
        (status, &answer["error"]["code"]),
        (403, &"purpose_not_allowed".into())
    );

    // The same routes with the right scope pass (in an order where each succeeds).
    for (_, method, path, body) in routes(&token) {
        let (status, answer) = send(&http, &server, Some(&full), &method, &path, &body).await?;
        assert!(
            (200..300).contains(&status),
            "{method} {path}: {status} {answer}"
        );
    }

    // The purpose list needs a valid key, and no particular scope.
    for wrong in &wrong_keys {
        let (status, _) = send(
            &http,
            &server,
            wrong.as_deref(),
            &Method::GET,
            "/v1/purposes",
            &None,
        )
        .await?;
        assert_eq!(status, 401, "/v1/purposes with {wrong:?}");
    }
    let only_admin = format!("Bearer {}", secrets["all-but-tokenize"]);
    let (status, answer) = send(
        &http,
        &server,
        Some(&only_admin),
        &Method::GET,
        "/v1/purposes",
        &None,
    )
    .await?;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["purposes"][0]["name"], "support");

    // Public routes need no key.
    for path in ["/healthz", "/readyz", "/openapi.json"] {
        let response = http.get(format!("{}{path}", server.url)).send().await?;
        assert_eq!(response.status().as_u16(), 200, "{path}");
    }
    // The metrics (counts of subjects and erasures) are not on the API's listener,
    // with or without a key, but on the metrics listener (loopback by default).
    let url = format!("{}/metrics", server.url);
    let anonymous = http.get(&url).send().await?;
    assert_eq!(
        anonymous.status().as_u16(),
        401,
        "an unknown path, to anyone"
    );
    let keyed = http
        .get(&url)
        .header("authorization", &only_admin)
        .send()
        .await?;
    assert_eq!(keyed.status().as_u16(), 404);
    assert!(server.metrics_url.starts_with("http://127.0.0.1:"));
    let page = server.metrics_page(&http).await?;
    assert!(page.contains("vault_deks{kek_version="), "{page}");
    Ok(())
}

/// A key over its rate limit is answered 429 with `Retry-After`, a batch costs its
/// items, and an address that keeps failing to authenticate is refused even with a
/// good key until its budget refills; the access log names the client address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_per_key_and_failed_authentications_per_address() -> TestResult {
    let dir = tempfile::tempdir()?;
    let spec = [
        KeySpec {
            name: "slow",
            scopes: &["tokenize"],
            purposes: &[],
        },
        KeySpec {
            name: "free",
            scopes: &["tokenize"],
            purposes: &[],
        },
    ];
    let (config, ca, secrets) = write_config(
        dir.path(),
        &spec,
        "[limits]\nfailed_auth_burst = 5\nfailed_auth_per_sec = 0.5\n",
    )?;
    let text = std::fs::read_to_string(&config)?.replace(
        "name = \"slow\"\n",
        "name = \"slow\"\nrate_per_sec = 1\nburst = 3\n",
    );
    std::fs::write(&config, text)?;
    let server = Server::start(Launch::config(&dir.path().join("data"), &config, &ca))?;
    let http = server.raw()?;
    let item = serde_json::json!({"subject": "s-1", "field": "email", "value": "v"});
    let tokenize = |key: &str, n: usize| {
        let body = serde_json::json!({ "items": vec![item.clone(); n] });
        http.post(format!("{}/v1/tokenize", server.url))
            .bearer_auth(key)
            .json(&body)
            .send()
    };
    let (slow, free) = (&secrets["slow"], &secrets["free"]);

    // The burst of 3: a batch of 2, then 1, then nothing.
    assert_eq!(tokenize(slow, 2).await?.status().as_u16(), 200);
    assert_eq!(tokenize(slow, 1).await?.status().as_u16(), 200);
    let refused = tokenize(slow, 1).await?;
    assert_eq!(refused.status().as_u16(), 429);
    let retry: u64 = refused.headers()["retry-after"].to_str()?.parse()?;
    assert!((1..=2).contains(&retry), "{retry}");
    let body: serde_json::Value = refused.json().await?;
    assert_eq!(body["error"]["code"], "rate_limited");
    // Another key is not held back by it.
    assert_eq!(tokenize(free, 50).await?.status().as_u16(), 200);
    // Once the time it named has passed, the key is served again.
    tokio::time::sleep(std::time::Duration::from_secs(retry)).await;
    assert_eq!(tokenize(slow, 1).await?.status().as_u16(), 200);
    assert_eq!(tokenize(slow, 1).await?.status().as_u16(), 429);
    // A batch above the burst is served once the bucket is full, not never.
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    assert_eq!(tokenize(slow, 5).await?.status().as_u16(), 200);

    // Requests without any credential guess nothing: refused, and not counted.
    for _ in 0..10 {
        let anonymous = http
            .post(format!("{}/v1/tokenize", server.url))
            .json(&serde_json::json!({ "items": [item.clone()] }))
            .send()
            .await?;
        assert_eq!(anonymous.status().as_u16(), 401);
    }
    // Five wrong keys use this address's budget; the sixth wrong key is refused
    // with 429, while a good key from the same address (a proxy, a NAT) is
    // still served.
    for _ in 0..5 {
        let wrong = tokenize("pvk_not-a-key", 1).await?;
        assert_eq!(wrong.status().as_u16(), 401);
    }
    let blocked = tokenize("pvk_not-a-key", 1).await?;
    assert_eq!(blocked.status().as_u16(), 429);
    assert!(blocked.headers().contains_key("retry-after"));
    assert_eq!(tokenize(free, 1).await?.status().as_u16(), 200);
    // At 0.5 a second, one more attempt after two seconds.
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    assert_eq!(tokenize("pvk_not-a-key", 1).await?.status().as_u16(), 401);

    let log = server.log_text_once(|log| log.matches("\"status\":429").count() >= 3);
    let line = log
        .lines()
        .find(|l| l.contains("\"status\":429") && l.contains("\"key\":\"slow\""))
        .ok_or("no log line for the rate-limited request")?;
    assert!(line.contains("\"client\":\"127.0.0.1\""), "{line}");
    assert!(line.contains("\"error\":\"rate_limited\""), "{line}");
    Ok(())
}

fn free_port() -> TestResult<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Runs the server expecting it to refuse to start: (exit code, stderr), and checks
/// that it never printed its address, which it does once it listens. (Connecting to
/// the port after it exited would prove nothing: another test's server may have
/// been given the port since.)
fn refused(
    data: &std::path::Path,
    args: &[&str],
    envs: &[(&str, &str)],
) -> TestResult<(i32, String)> {
    let port = free_port()?;
    let output = Command::new(SERVER)
        .arg("--data-dir")
        .arg(data)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(args)
        .envs(envs.iter().copied())
        .output()?;
    // The server prints its address only once it listens: a refused start prints
    // nothing on stdout.
    assert!(
        output.stdout.is_empty(),
        "it got as far as listening: {}",
        String::from_utf8_lossy(&output.stdout)
    );
    Ok((
        output.status.code().unwrap_or(-1),
        String::from_utf8(output.stderr)?,
    ))
}

#[test]
fn misconfiguration_ends_before_anything_listens() -> TestResult {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let spec = [KeySpec {
        name: "svc",
        scopes: &["tokenize"],
        purposes: &[],
    }];
    let (config, _, _) = write_config(dir.path(), &spec, "")?;
    let good = std::fs::read_to_string(&config)?;

    let (code, err) = refused(&data, &[], &[])?;
    assert_eq!(code, 2);
    assert!(err.contains("--config FILE or --dev"), "{err}");

    let cases: [(&str, String, &str); 5] = [
        (
            "no tls",
            good[good.find("[root_key]").unwrap_or(0)..].to_owned(),
            "no [tls]",
        ),
        (
            "unknown scope",
            good.replace("\"tokenize\"", "\"tokenise\""),
            "unknown scope",
        ),
        (
            "typo",
            format!("{good}[limits]\nmax_batchh = 3\n"),
            "unknown field",
        ),
        (
            "missing env root key",
            good.replace("file = \"root.key\"", "env = \"VAULT_TEST_NO_SUCH_VAR\""),
            "VAULT_TEST_NO_SUCH_VAR",
        ),
        ("not toml", "this is = = not toml".to_owned(), "bad.toml"),
    ];
    for (name, text, expected) in cases {
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, &text)?;
        let path = path.display().to_string();
        let (code, err) = refused(&data, &["--config", &path], &[])?;
        assert_eq!(code, 2, "{name}: {err}");
        assert!(err.contains(expected), "{name}: {err}");
        assert!(
            err.starts_with("vault-server: "),
            "{name}: one clear line: {err}"
        );
    }

    // A certificate and a key that do not belong together.
    let other_dir = dir.path().join("other-tls");
    std::fs::create_dir_all(&other_dir)?;
    let (_, other_key) = common::write_tls(&other_dir)?;
    let mismatched = good.replace(
        &format!("{}", dir.path().join("key.pem").display()),
        &format!("{}", other_key.display()),
    );
    assert_ne!(mismatched, good);
    let path = dir.path().join("mismatched.toml");
    std::fs::write(&path, mismatched)?;
    let (code, err) = refused(&data, &["--config", &path.display().to_string()], &[])?;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("do not fit"), "{err}");

    // A vault made with one root key refuses another, before listening.
    let other = good.replace("file = \"root.key\"", "file = \"other.key\"");
    std::fs::write(dir.path().join("other.key"), "77".repeat(32))?;
    {
        use std::os::unix::fs::PermissionsExt;
        let private = std::fs::Permissions::from_mode(0o600);
        std::fs::set_permissions(dir.path().join("other.key"), private)?;
    }
    let first = Server::start(Launch::config(&data, &config, dir.path()))?;
    drop(first);
    let path = dir.path().join("other.toml");
    std::fs::write(&path, other)?;
    let (code, err) = refused(&data, &["--config", &path.display().to_string()], &[])?;
    assert_eq!(code, 2);
    assert!(err.contains("root key does not open"), "{err}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_server_on_the_same_vault_is_refused() -> TestResult {
    let dir = tempfile::tempdir()?;
    let base = dir.path().canonicalize()?;
    let data = base.join("data");
    let spec = [KeySpec {
        name: "svc",
        scopes: &["tokenize", "detokenize"],
        purposes: &["support"],
    }];
    let (config, ca, keys) = write_config(&base, &spec, "")?;
    let first = Server::start(Launch::config(&data, &config, &ca))?;
    let client = first.client(&keys["svc"])?;
    let token = client
        .tokenize_one("s-1", "email", "first@example.com")
        .await?;

    // Named through a symlink (the server resolves --data-dir; the vault's lock
    // does not depend on it).
    let link = base.join("link");
    std::os::unix::fs::symlink(&data, &link)?;
    let (code, err) = refused(&link, &["--config", &config.display().to_string()], &[])?;
    assert_one_line_already_open(code, &err);

    // In --dev mode too, with no development banner before the refusal.
    let dev_data = base.join("dev-data");
    let dev = Server::start_dev(&dev_data)?;
    let (code, err) = refused(&dev_data, &["--dev"], &[])?;
    assert_one_line_already_open(code, &err);

    // The first servers never noticed.
    let answer = client.detokenize(&[token], "support").await?;
    assert!(
        matches!(&answer[0], vault_client::api::DetokenizeResult::Value { value, .. }
            if value.expose() == "first@example.com"),
        "{answer:?}"
    );
    dev.admin()?
        .tokenize_one("s-2", "email", "dev@example.com")
        .await?;
    Ok(())
}

fn assert_one_line_already_open(code: i32, err: &str) {
    assert_eq!(code, 2, "{err}");
    assert!(
        err.starts_with("vault-server: ") && err.trim_end().lines().count() == 1,
        "one line: {err}"
    );
    assert!(err.contains("already open"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn root_key_from_env_or_passphrase_and_plain_http_only_when_named_insecure() -> TestResult {
    let dir = tempfile::tempdir()?;
    let spec = [KeySpec {
        name: "svc",
        scopes: &["tokenize", "detokenize"],
        purposes: &["support"],
    }];
    let (config, ca, secrets) = write_config(dir.path(), &spec, "")?;
    let good = std::fs::read_to_string(&config)?;

    // Root key in an environment variable (hex).
    let env_config = dir.path().join("env.toml");
    std::fs::write(
        &env_config,
        good.replace("file = \"root.key\"", "env = \"VAULT_ROOT_KEY\""),
    )?;
    let data = dir.path().join("env-data");
    let server = Server::start(
        Launch::config(&data, &env_config, &ca).env("VAULT_ROOT_KEY", &"3c".repeat(32)),
    )?;
    let client = server.client(&secrets["svc"])?;
    let token = client.tokenize_one("s", "email", "e@example.com").await?;
    drop(server);
    // The same vault refuses a different key from the same variable.
    let (code, err) = refused(
        &data,
        &["--config", &env_config.display().to_string()],
        &[("VAULT_ROOT_KEY", &"3d".repeat(32))],
    )?;
    assert_eq!(code, 2, "{err}");
    let server = Server::start(
        Launch::config(&data, &env_config, &ca).env("VAULT_ROOT_KEY", &"3c".repeat(32)),
    )?;
    let back = server
        .client(&secrets["svc"])?
        .detokenize(&[token], "support")
        .await?;
    assert!(matches!(
        &back[0],
        vault_client::api::DetokenizeResult::Value { .. }
    ));
    drop(server);

    // A passphrase in an environment variable (Argon2id).
    let pass_config = dir.path().join("pass.toml");
    std::fs::write(
        &pass_config,
        good.replace(
            "file = \"root.key\"",
            "passphrase_env = \"VAULT_PASSPHRASE\"",
        ),
    )?;
    let server = Server::start(
        Launch::config(&dir.path().join("pass-data"), &pass_config, &ca)
            .env("VAULT_PASSPHRASE", "correct horse battery staple"),
    )?;
    server
        .client(&secrets["svc"])?
        .tokenize_one("s", "email", "x")
        .await?;
    drop(server);

    // Plain HTTP: only with insecure_plain_http = true, and it says so.
    let start = good.find("[root_key]").ok_or("no root_key")?;
    let plain = format!("insecure_plain_http = true\n{}", &good[start..]);
    let plain_config = dir.path().join("plain.toml");
    std::fs::write(&plain_config, plain)?;
    let data = dir.path().join("plain-data");
    let mut launch = Launch::config(&data, &plain_config, &ca);
    launch.ca_cert = None;
    let server = Server::start(launch)?;
    assert!(server.url.starts_with("http://"), "{}", server.url);
    server
        .client(&secrets["svc"])?
        .tokenize_one("s", "email", "x")
        .await?;
    assert!(server.log_text().contains("INSECURE"));
    Ok(())
}
