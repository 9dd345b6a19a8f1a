//! SIGTERM under load: in-flight requests finish, the vault closes cleanly, and no
//! acknowledged write is lost (checked after a restart on the same directory).

mod common;

use std::time::Duration;

use common::{Server, TestResult};
use vault_client::api::{DetokenizeResult, TokenizeItem};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_under_load_loses_no_acknowledged_write() -> TestResult {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let mut server = Server::start_dev(&data)?;
    let client = vault_client::Client::builder(&server.url)
        .api_key(&server.api_key)
        .ca_cert_file(&server.ca_cert)?
        .retry(vault_client::RetryPolicy {
            max_retries: 0,
            ..Default::default()
        })
        .build()?;

    let mut workers = Vec::new();
    for w in 0..16 {
        let client = client.clone();
        workers.push(tokio::spawn(async move {
            let mut acknowledged = Vec::new();
            for n in 0.. {
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
                    }
                    // The server answered with an error: during a graceful shutdown
                    // that must not happen to a request it accepted.
                    Err(e) if e.status().is_some() => return Err(format!("answered {e}")),
                    // Refused or cut connection: the write was not acknowledged.
                    Err(_) => break,
                }
            }
            Ok(acknowledged)
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let status = tokio::task::block_in_place(|| server.terminate())?;
    assert!(status.success(), "exit status {status:?}");
    let log = server.log_text();
    assert!(log.contains("SIGTERM"), "{log}");
    assert!(
        log.contains("vault closed"),
        "the vault was closed cleanly: {log}"
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

    let server = Server::start_dev(&data)?;
    let client = server.admin()?;
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
    Ok(())
}
