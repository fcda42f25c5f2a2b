//! The operator view (`tracker ... --http ADDR`): `/metrics`, `/status` and
//! `/status.json`, served read-only by one thread of its own.
//!
//! Why a thread and not the event loop: building the page runs SQL counts and
//! group-bys over the whole cache and probes the other trackers; in the loop
//! that would delay every client request behind it. The thread has its own
//! mio loop ([`crate::http`]), its own read-only SQLite connection
//! ([`crate::status`]) and reads the loop's counters from shared atomics
//! ([`crate::metrics`]), so the loop never waits for it. The status is
//! gathered at most once per [`STATUS_MAX_AGE`], however often it is asked for.

use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::http::{HttpLimits, HttpServer, Request, Response, Routes};
use crate::metrics::{self, Metrics};
use crate::status::{Status, StatusConfig, StatusSource};
use crate::status_html;

/// How long a gathered status is served before it is gathered again.
pub const STATUS_MAX_AGE: Duration = Duration::from_secs(1);

/// The operator view's routes.
pub struct OperatorRoutes {
    source: StatusSource,
    metrics: Arc<Metrics>,
    cached: Option<(Instant, Status)>,
}

impl OperatorRoutes {
    pub fn new(cfg: StatusConfig, metrics: Arc<Metrics>) -> OperatorRoutes {
        OperatorRoutes {
            source: StatusSource::new(cfg),
            metrics,
            cached: None,
        }
    }

    fn status(&mut self) -> Result<&Status, Response> {
        let fresh = matches!(&self.cached, Some((at, _)) if at.elapsed() < STATUS_MAX_AGE);
        if !fresh {
            let raft = self.metrics.raft.latest();
            let status = self
                .source
                .gather(crate::unix_ms(), raft.as_ref())
                .map_err(unavailable)?;
            self.cached = Some((Instant::now(), status));
        }
        self.cached
            .as_ref()
            .map(|(_, s)| s)
            .ok_or_else(|| Response::text(500, "no status"))
    }
}

fn unavailable(e: impl std::fmt::Display) -> Response {
    log::warn!("operator view: {e}");
    Response::text(503, e.to_string())
}

impl Routes for OperatorRoutes {
    fn respond(&mut self, req: &Request) -> Response {
        self.metrics.http_requests.inc();
        match req.path.as_str() {
            "/metrics" => match self.source.gauges(crate::unix_ms()) {
                Ok(gauges) => Response::new(
                    200,
                    "text/plain; version=0.0.4; charset=utf-8",
                    metrics::render(&self.metrics, &gauges),
                ),
                Err(e) => unavailable(e),
            },
            "/" | "/status" => match self.status() {
                Ok(s) => Response::new(200, "text/html; charset=utf-8", status_html::render(s)),
                Err(resp) => resp,
            },
            "/status.json" => match self.status() {
                Ok(s) => match serde_json::to_vec_pretty(s) {
                    Ok(body) => Response::new(200, "application/json", body),
                    Err(e) => Response::text(500, format!("cannot encode the status: {e}")),
                },
                Err(resp) => resp,
            },
            _ => Response::text(404, "not found: try /status, /status.json or /metrics"),
        }
    }
}

/// Binds `addr` and serves the operator view from a new thread. Returns the
/// bound address (the port may have been 0).
pub fn start(
    addr: &str,
    cfg: StatusConfig,
    metrics: Arc<Metrics>,
    shutdown: Arc<AtomicBool>,
) -> std::io::Result<SocketAddr> {
    let listener = std::net::TcpListener::bind(addr)?;
    let local = listener.local_addr()?;
    let routes = OperatorRoutes::new(cfg, metrics);
    let mut server = HttpServer::new(listener, routes, HttpLimits::default(), shutdown)?;
    std::thread::Builder::new()
        .name("http".into())
        .spawn(move || server.run())?;
    Ok(local)
}
