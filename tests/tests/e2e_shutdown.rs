//! SIGTERM under load: in-flight requests finish, the vault closes cleanly, and no
//! acknowledged write is lost (checked after a restart on the same directory).

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{KeySpec, Launch, Server, TestResult, metric, write_config};
use vault_client::api::{DetokenizeResult, TokenizeItem};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_under_load_loses_no_acknowledged_write() -> TestResult {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let spec = [KeySpec {
        name: "svc",
        scopes: &["tokenize", "detokenize"],
        purposes: &["check"],
    }];
    // Limits that let one request carry 128 MiB: it is still being served when the
    // signal comes.
    let limits = "[limits]\nmax_body_bytes = 268435456\nmax_value_bytes = 1048576\n";
    let (config, ca, secrets) = write_config(dir.path(), &spec, limits)?;
    let mut server = Server::start(Launch::config(&data, &config, &ca))?;
    let client = vault_client::Client::builder(&server.url)
        .api_key(&secrets["svc"])
        .ca_cert_file(&server.ca_cert)?
        .retry(vault_client::RetryPolicy {
            max_retries: 0,
            ..Default::default()
        })
        .build()?;

    // Writes acknowledged so far, by all the workers; whether they are to hold off
    // for a moment, and how many are between that check and their answer.
    let acked = Arc::new(AtomicUsize::new(0));
    let hold = Arc::new(AtomicBool::new(false));
    let busy = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for w in 0..16 {
        let (client, acked) = (client.clone(), acked.clone());
        let (hold, busy) = (hold.clone(), busy.clone());
        workers.push(tokio::spawn(async move {
            let mut acknowledged = Vec::new();
            for n in 0.. {
                // Counted busy before looking at `hold`: whoever sets it and then
                // sees no one busy knows that no request of a worker is in flight.
                let in_flight = Busy::enter(&busy);
                if hold.load(Ordering::SeqCst) {
                    drop(in_flight);
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    continue;
                }
                let items: Vec<_> = (0..10)
                    .map(|i| {
                        TokenizeItem::new(
                            format!("s-{w}-{}", n % 7),
                            "email",
                            format!("{w}/{n}/{i}"),
                        )
                    })
                    .collect();
                match client.tokenize(items).await {
                    Ok(tokens) => {
                        for (i, token) in tokens.into_iter().enumerate() {
                            acknowledged.push((token, format!("{w}/{n}/{i}")));
                        }
                        acked.fetch_add(10, Ordering::SeqCst);
                    }
                    // The server answered with an error: during a graceful shutdown
                    // that must not happen to a request it accepted.
                    Err(e) if e.status().is_some() => return Err(format!("answered {e}")),
                    // Refused connection, or one closed after its last answer: the
                    // write was not acknowledged. (The large request below checks
                    // that an accepted request is not cut.)
                    Err(_) => break,
                }
            }
            Ok(acknowledged)
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while acked.load(Ordering::SeqCst) < 100 {
        // A worker that ended early has failed: its join below says why.
        if Instant::now() > deadline || workers.iter().any(|w| w.is_finished()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // A large request, in flight when the signal comes: to see it arrive, the
    // workers hold off until the server counts it among the requests in flight
    // (scrapes, on their own listener, are not counted).
    hold.store(true, Ordering::SeqCst);
    let deadline = Instant::now() + Duration::from_secs(60);
    while busy.load(Ordering::SeqCst) > 0 {
        if Instant::now() > deadline {
            return Err("the workers did not hold off".into());
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let big = "l".repeat(1 << 20);
    let items: Vec<_> = (0..128)
        .map(|i| TokenizeItem::new(format!("long-{i}"), "blob", big.as_str()))
        .collect();
    let body = serde_json::to_vec(&vault_client::api::TokenizeRequest { items })?;
    let raw = server.raw()?;
    let request = raw
        .post(format!("{}/v1/tokenize", server.url))
        .bearer_auth(&secrets["svc"])
        .header("content-type", "application/json")
        .body(body);
    let long = tokio::spawn(async move {
        let started = Instant::now();
        let answer = match request.send().await {
            Ok(response) if response.status().is_success() => response
                .json::<vault_client::api::TokenizeResponse>()
                .await
                .map(|r| r.tokens)
                .map_err(|e| e.to_string()),
            Ok(response) => Err(format!("answered {}", response.status())),
            Err(e) => Err(format!("{e:?}")),
        };
        (answer, started, Instant::now())
    });
    let metrics = server.raw()?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let page = server.metrics_page(&metrics).await?;
        if metric(&page, "vault_http_requests_in_flight") >= Some(1.0) {
            break;
        }
        if long.is_finished() || Instant::now() > deadline {
            return Err("the large request was never seen in flight".into());
        }
    }
    // Encrypting and syncing 128 MiB keeps it in flight across the signal.
    hold.store(false, Ordering::SeqCst);
    let signalled = Instant::now();
    let status = tokio::task::block_in_place(|| server.terminate())?;
    assert!(status.success(), "exit status {status:?}");
    let log = server.log_text();
    assert!(log.contains("SIGTERM"), "{log}");
    assert!(
        log.contains("vault closed"),
        "the vault was closed cleanly: {log}"
    );

    let (long_tokens, started, answered) = long.await?;
    let long_tokens = long_tokens.map_err(|e| {
        format!(
            "the in-flight request was cut: {e:?} after {:?}; log: {log}",
            signalled.elapsed()
        )
    })?;
    assert!(
        started < signalled && answered > signalled,
        "the large request was in flight when SIGTERM came (answered {:?} after it)",
        answered.checked_duration_since(signalled)
    );
    let mut acknowledged = Vec::new();
    for worker in workers {
        acknowledged.extend(worker.await??);
    }
    assert!(
        acknowledged.len() >= 100,
        "load ran: {}",
        acknowledged.len()
    );
    // Every answered request is in the access log, the last ones too, though the
    // server writes its lines in batches.
    let logged = log
        .lines()
        .filter(|l| l.contains("\"route\":\"/v1/tokenize\",\"status\":200"))
        .count();
    assert!(
        logged > acknowledged.len() / 10,
        "{logged} tokenize requests logged for {} acknowledged ones and the large one",
        acknowledged.len() / 10
    );

    let server =
        Server::start(Launch::config(&data, &config, &ca).log_to(dir.path().join("2.log")))?;
    let client = server.client(&secrets["svc"])?;
    for chunk in acknowledged.chunks(500) {
        let tokens: Vec<String> = chunk.iter().map(|(t, _)| t.clone()).collect();
        let back = client.detokenize(&tokens, "check").await?;
        for (result, (token, value)) in back.iter().zip(chunk) {
            match result {
                DetokenizeResult::Value { value: got, .. } => {
                    assert_eq!(got.expose(), value, "{token}")
                }
                DetokenizeResult::Error { error, .. } => {
                    return Err(format!("acknowledged {token} lost: {error:?}").into());
                }
            }
        }
    }
    for chunk in long_tokens.chunks(8) {
        let back = client.detokenize(chunk, "check").await?;
        for result in &back {
            assert!(
                matches!(result, DetokenizeResult::Value { value, .. } if value.expose() == big),
                "a value of the large request was lost"
            );
        }
    }
    Ok(())
}

/// Counts a worker busy until dropped.
struct Busy<'a>(&'a AtomicUsize);

impl<'a> Busy<'a> {
    fn enter(count: &'a AtomicUsize) -> Busy<'a> {
        count.fetch_add(1, Ordering::SeqCst);
        Busy(count)
    }
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}
