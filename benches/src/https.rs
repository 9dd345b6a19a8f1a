//! What the HTTPS benchmarks share: their client (one keep-alive HTTP/1.1
//! connection per worker, over rustls), the servers they stand beside the vault
//! (axum over axum-server + rustls with ring, the vault server's TLS
//! configuration), and the workload (request bodies, and loading a vault over HTTP
//! with batch tokenize).

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::json;
use vault_client::api::{DetokenizeRequest, TokenizeItem, TokenizeRequest, TokenizeResponse};

use crate::Res;
use crate::load::Rng;

/// Bytes per value.
pub const VALUE_LEN: usize = 100;
/// Records per data subject when loading.
pub const RECORDS_PER_SUBJECT: usize = 10;
/// Items per batch tokenize when loading.
pub const LOAD_BATCH: usize = 1000;
/// Batches loaded at a time: 64 concurrent 1 000-item batches queue past the server's
/// 10 s request timeout once RocksDB starts compacting.
pub const LOAD_CONNECTIONS: usize = 8;
/// The purpose detokenize asks for (declared with every field allowed).
pub const PURPOSE: &str = "support";

/// One client per worker: HTTP/1.1, one keep-alive connection each.
pub fn https_client(ca_pem: &[u8]) -> Res<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca_pem)?)
        .http1_only()
        .pool_max_idle_per_host(1)
        .timeout(Duration::from_secs(60))
        .build()?)
}

/// POSTs a JSON body; the answer's body when the status is 2xx.
pub async fn post(
    client: &reqwest::Client,
    url: &str,
    key: &str,
    body: Vec<u8>,
) -> Result<axum::body::Bytes, String> {
    let response = client
        .post(url)
        .bearer_auth(key)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body)
        .send()
        .await
        .map_err(|e| format!("transport: {e}"))?;
    let status = response.status();
    let body = response
        .bytes()
        .await
        .map_err(|e| format!("reading the body: {e}"))?;
    if status.is_success() {
        Ok(body)
    } else {
        Err(format!(
            "status {status}: {}",
            String::from_utf8_lossy(&body[..body.len().min(300)])
        ))
    }
}

/// Whether `needle` occurs in `haystack`.
pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Serves `app` for a child role until the process ends.
pub fn serve_role(role: &str, cert: &str, key: &str, app: axum::Router) -> ExitCode {
    let served = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(Into::into)
        .and_then(|runtime| runtime.block_on(serve_tls(Path::new(cert), Path::new(key), app)));
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{role} role: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Serves `app` over TLS on a loopback port, as vault-server does; prints
/// `{"url": …}` once listening.
pub async fn serve_tls(cert: &Path, key: &Path, app: axum::Router) -> Res<()> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};

    let certs = CertificateDer::pem_file_iter(cert)?.collect::<Result<Vec<_>, _>>()?;
    let key = PrivateKeyDer::from_pem_file(key)?;
    // As vault-server's serve::tls_config: ring, TLS 1.2 + 1.3, h2 and HTTP/1.1.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let config = axum_server::tls_rustls::RustlsConfig::from_config(Arc::new(tls));
    let server = axum_server::from_tcp_rustls(listener, config)?;
    println!(
        "{}",
        json!({ "url": format!("https://127.0.0.1:{}", addr.port()) })
    );
    server.serve(app.into_make_service()).await?;
    Ok(())
}

/// The loaded subjects are `subj-0` … `subj-{subjects-1}`.
pub fn subject_id(i: usize) -> String {
    format!("subj-{i}")
}

/// The field of the `i`-th loaded record.
pub fn field_name(i: usize) -> String {
    format!("field{}", i % RECORDS_PER_SUBJECT)
}

/// A tokenize of one random value for one of the loaded subjects.
pub fn tokenize_body(rng: &mut Rng, subjects: usize) -> Vec<u8> {
    let request = TokenizeRequest {
        items: vec![TokenizeItem::new(
            subject_id(rng.below(subjects)),
            "note",
            rng.alnum(VALUE_LEN),
        )],
    };
    serde_json::to_vec(&request).expect("a tokenize request serialises")
}

/// A detokenize of one of `tokens`, for [`PURPOSE`].
pub fn detokenize_body(rng: &mut Rng, tokens: &[String]) -> Vec<u8> {
    let request = DetokenizeRequest {
        tokens: vec![tokens[rng.below(tokens.len())].clone()],
        purpose: PURPOSE.to_owned(),
    };
    serde_json::to_vec(&request).expect("a detokenize request serialises")
}

/// Loads `records` records ([`RECORDS_PER_SUBJECT`] per subject, values of
/// [`VALUE_LEN`] bytes) with batch tokenize, [`LOAD_CONNECTIONS`] batches at a
/// time; the tokens.
pub async fn load_vault(
    ca_pem: &[u8],
    url: &str,
    key: &Arc<str>,
    records: usize,
) -> Res<Vec<String>> {
    let batches = records.div_ceil(LOAD_BATCH);
    let next = Arc::new(AtomicUsize::new(0));
    let url: Arc<str> = format!("{url}/v1/tokenize").into();
    let mut workers = Vec::new();
    for w in 0..LOAD_CONNECTIONS {
        let client = https_client(ca_pem)?;
        let next = next.clone();
        let url = url.clone();
        let key = key.clone();
        workers.push(tokio::spawn(async move {
            let mut rng = Rng::new(w as u64);
            let mut tokens = Vec::new();
            loop {
                let batch = next.fetch_add(1, Ordering::Relaxed);
                if batch >= batches {
                    break;
                }
                let range = batch * LOAD_BATCH..((batch + 1) * LOAD_BATCH).min(records);
                let items: Vec<TokenizeItem> = range
                    .clone()
                    .map(|i| {
                        TokenizeItem::new(
                            subject_id(i / RECORDS_PER_SUBJECT),
                            field_name(i),
                            rng.alnum(VALUE_LEN),
                        )
                    })
                    .collect();
                let body = serde_json::to_vec(&TokenizeRequest { items })
                    .map_err(|e| format!("serialising a batch: {e}"))?;
                let answer = post(&client, &url, &key, body)
                    .await
                    .map_err(|e| format!("loading batch {batch}: {e}"))?;
                let answer: TokenizeResponse = serde_json::from_slice(&answer)
                    .map_err(|e| format!("loading batch {batch}: the answer: {e}"))?;
                if answer.tokens.len() != range.len() {
                    return Err(format!(
                        "batch {batch}: {} tokens for {} items",
                        answer.tokens.len(),
                        range.len()
                    ));
                }
                tokens.extend(answer.tokens);
            }
            Ok::<_, String>(tokens)
        }));
    }
    let mut tokens = Vec::with_capacity(records);
    for worker in workers {
        tokens.extend(worker.await??);
    }
    Ok(tokens)
}
