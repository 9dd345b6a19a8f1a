//! Serving: TLS (or explicitly insecure plain HTTP) on a bound listener, graceful
//! shutdown on SIGTERM/SIGINT, and closing the vault once in-flight work is done.

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum_server::Handle;
use axum_server::tls_rustls::RustlsConfig;
use vault_core::Vault;

use crate::api::{self, AppState};
use crate::auth::ApiKeys;
use crate::config::{ConfigError, LimitsConfig};

/// Builds the rustls server configuration (ring provider, TLS 1.2 and 1.3, h2 and
/// HTTP/1.1 by ALPN).
pub(crate) fn tls_config(
    cert_pem: &[u8],
    key_pem: &[u8],
) -> Result<rustls::ServerConfig, ConfigError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| ConfigError::new("the TLS certificate is not PEM"))?;
    let key = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|_| ConfigError::new("the TLS key is not a PEM private key"))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ConfigError::new(format!("TLS: {e}")))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| ConfigError::new(format!("the TLS certificate and key do not fit: {e}")))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// How long a client may take to send a request's headers (slow-header clients
/// would otherwise hold connections forever: the request timeout starts after them).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long closing waits for vault calls still running after the drain.
const CLOSE_WAIT: Duration = Duration::from_secs(10);

/// Serves until SIGTERM or SIGINT, then drains in-flight requests, and closes the
/// vault. `listener` is already bound (so the caller could report the address);
/// `tls` is `None` only for the explicitly insecure plain-HTTP mode.
pub async fn serve(
    vault: Vault,
    keys: ApiKeys,
    limits: LimitsConfig,
    tls: Option<Arc<rustls::ServerConfig>>,
    listener: TcpListener,
    metrics_listener: Option<TcpListener>,
    audit_head_every: Option<Duration>,
) -> std::io::Result<()> {
    let vault = Arc::new(vault);
    if let Some(every) = audit_head_every {
        tokio::spawn(log_audit_head(Arc::downgrade(&vault), every));
    }
    let state = AppState::new(vault.clone(), keys, limits);
    let app = api::router(state.clone());
    let metrics = match metrics_listener {
        Some(listener) => {
            listener.set_nonblocking(true)?;
            let listener = tokio::net::TcpListener::from_std(listener)?;
            let app = api::metrics_router(state.clone());
            Some(tokio::spawn(async move {
                if let Err(e) = axum::serve(listener, app).await {
                    tracing::error!(error = %e, "the metrics listener failed");
                }
            }))
        }
        None => None,
    };
    let handle: Handle<SocketAddr> = Handle::new();
    // In-flight requests get their whole timeout to finish, and a little more.
    let grace = Duration::from_millis(limits.request_timeout_ms) + Duration::from_secs(5);
    tokio::spawn(shutdown_on_signal(state.clone(), handle.clone(), grace));

    let mut server = axum_server::from_tcp(listener)?.handle(handle);
    server
        .http_builder()
        .http1()
        .header_read_timeout(Some(HEADER_READ_TIMEOUT));
    server
        .http_builder()
        .http2()
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(20));
    let served = match tls {
        Some(config) => {
            server
                .acceptor(axum_server::tls_rustls::RustlsAcceptor::new(
                    RustlsConfig::from_config(config),
                ))
                .serve(app.into_make_service_with_connect_info::<SocketAddr>())
                .await
        }
        None => {
            server
                .serve(app.into_make_service_with_connect_info::<SocketAddr>())
                .await
        }
    };
    // The metrics listener holds the vault too: it stops before the vault closes.
    if let Some(metrics) = metrics {
        metrics.abort();
        let _ = metrics.await;
    }
    drop(state);
    close_vault(vault, CLOSE_WAIT).await;
    crate::access_log::flush();
    served
}

/// Logs the audit trail's head now and every `every`, for a log shipper to keep
/// outside the vault (`POST /v1/audit/verify` then checks the trail still holds
/// it). Stops when the vault is closed.
async fn log_audit_head(vault: std::sync::Weak<Vault>, every: Duration) {
    let mut ticks = tokio::time::interval(every);
    loop {
        ticks.tick().await;
        let Some(vault) = vault.upgrade() else {
            return;
        };
        match tokio::task::spawn_blocking(move || vault.audit_head()).await {
            Ok(Ok(Some(head))) => tracing::info!(
                audit_head_seq = head.seq,
                audit_head_mac = %hex(&head.mac),
                "audit head"
            ),
            Ok(Ok(None)) => tracing::info!(audit_head_seq = 0, "audit head: the trail is empty"),
            Ok(Err(e)) => tracing::error!(error = %e, "cannot read the audit head"),
            Err(_) => return,
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

async fn shutdown_on_signal(state: Arc<AppState>, handle: Handle<SocketAddr>, grace: Duration) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; stop the server with SIGKILL");
        return;
    };
    let name = tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    };
    tracing::info!(
        signal = name,
        grace_ms = u64::try_from(grace.as_millis()).unwrap_or(u64::MAX),
        "shutting down: finishing in-flight requests"
    );
    state.stop_accepting();
    handle.graceful_shutdown(Some(grace));
}

/// Waits for calls still running on the blocking pool (a timed-out request's call
/// keeps running) to release the vault, then closes it: worker stopped, WAL synced.
async fn close_vault(vault: Arc<Vault>, wait: Duration) {
    let deadline = Instant::now() + wait;
    let mut vault = vault;
    loop {
        match Arc::try_unwrap(vault) {
            Ok(owned) => {
                match tokio::task::spawn_blocking(move || owned.close()).await {
                    Ok(Ok(())) => tracing::info!("vault closed"),
                    Ok(Err(e)) => tracing::error!(error = %e, "closing the vault failed"),
                    Err(_) => tracing::error!("closing the vault did not complete"),
                }
                return;
            }
            Err(shared) if Instant::now() < deadline => {
                vault = shared;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(_) => {
                // Every acknowledged write is already synced; dropping is safe.
                tracing::warn!(
                    "vault calls still running at exit; the vault is dropped without close"
                );
                return;
            }
        }
    }
}
