//! The admin HTTP listener (127.0.0.1:9090 by default): `/metrics` in the Prometheus text
//! exposition (prometheus-client), `/healthz` (the process answers), `/readyz` (the queue,
//! dockerd and the state directory are usable) and `/v1/status` (JSON: allocs, execs, draining).
//! docs/operations.md lists every metric.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Request, Response, StatusCode};
use tokio_util::sync::CancellationToken;

use crate::docker::ContainerRuntime;
use crate::pool::Pool;

pub use crate::metrics::Metrics;

/// What the listener reads.
#[derive(Debug, Clone)]
pub struct AdminState {
    /// The agent's id.
    pub agent_id: String,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// The pool.
    pub pool: Pool,
    /// The engine (pinged by `/readyz`).
    pub runtime: Arc<dyn ContainerRuntime>,
    /// Whether the queue is connected (kept by the backend).
    pub queue_ok: Arc<AtomicBool>,
    /// Set while draining.
    pub draining: CancellationToken,
    /// The state directory (probed by `/readyz`).
    pub state_dir: PathBuf,
    /// The agent's repository root, for its gauges.
    pub repo: Option<PathBuf>,
}

impl AdminState {
    /// Every readiness check, with whether it passed.
    pub async fn readiness(&self) -> Vec<(&'static str, bool)> {
        let engine = matches!(
            tokio::time::timeout(Duration::from_secs(2), self.runtime.ping()).await,
            Ok(Ok(()))
        );
        let probe = self.state_dir.join(".readyz");
        let state = std::fs::write(&probe, b"ok").is_ok() && std::fs::remove_file(&probe).is_ok();
        vec![
            ("queue", self.queue_ok.load(Ordering::SeqCst)),
            ("dockerd", engine),
            ("state_dir", state),
            ("not_draining", !self.draining.is_cancelled()),
        ]
    }

    async fn status(&self) -> serde_json::Value {
        let allocs = self.pool.allocs().await;
        let list: Vec<serde_json::Value> = allocs
            .iter()
            .map(|a| {
                let execs: Vec<serde_json::Value> = a
                    .exec_states()
                    .iter()
                    .map(|(id, state)| serde_json::json!({"id": id, "state": state.name()}))
                    .collect();
                serde_json::json!({"alloc": a.inspect(), "execs": execs})
            })
            .collect();
        serde_json::json!({
            "agent": self.agent_id,
            "draining": self.draining.is_cancelled(),
            "resources": self.pool.resources(),
            "allocs": list,
        })
    }
}

fn reply(code: StatusCode, ctype: &str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = code;
    if let Ok(v) = ctype.parse() {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    r
}

async fn route(
    st: Arc<AdminState>,
    req: Request<hyper::body::Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if req.method() != hyper::Method::GET {
        return Ok(reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "GET only\n".into(),
        ));
    }
    Ok(match req.uri().path() {
        "/metrics" => {
            st.metrics.readiness(&st.readiness().await);
            reply(
                StatusCode::OK,
                "text/plain; version=0.0.4; charset=utf-8",
                st.metrics.render(&st.pool, st.repo.clone()).await,
            )
        }
        "/healthz" => reply(StatusCode::OK, "text/plain", "ok\n".into()),
        "/readyz" => {
            let checks = st.readiness().await;
            let ok = checks.iter().all(|(_, ok)| *ok);
            let body = checks
                .iter()
                .map(|(n, ok)| format!("{n} {}\n", if *ok { "ok" } else { "FAIL" }))
                .collect::<String>();
            let code = if ok {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            reply(code, "text/plain", body)
        }
        "/v1/status" => reply(
            StatusCode::OK,
            "application/json",
            st.status().await.to_string(),
        ),
        _ => reply(StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
    })
}

/// Serves the admin endpoints on `addr` until `stop`; returns the bound address.
///
/// # Errors
/// The address cannot be bound.
pub async fn serve(
    addr: SocketAddr,
    st: AdminState,
    stop: CancellationToken,
) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let st = Arc::new(st);
    tracing::info!(addr = %bound, "Admin listener up (/metrics, /healthz, /readyz, /v1/status).");
    tokio::spawn(async move {
        loop {
            let (conn, _) = tokio::select! {
                () = stop.cancelled() => return,
                c = listener.accept() => match c {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(error = %crate::error::chain(&e), "Admin accept failed.");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let st = st.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| route(st.clone(), req));
                let io = hyper_util::rt::TokioIo::new(conn);
                if let Err(e) = hyper::server::conn::http1::Builder::new()
                    .serve_connection(io, svc)
                    .await
                {
                    tracing::debug!(error = %crate::error::chain(&e), "Admin connection ended.");
                }
            });
        }
    });
    Ok(bound)
}
