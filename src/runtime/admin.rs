//! The admin endpoint: `GET /metrics` in the Prometheus text format,
//! `GET /health`, and `GET /connections` (each open connection's peer,
//! dispatcher and age), over HTTP on a thread of its own.
//!
//! HTTP is hyper's, and each connection is its own task, so a slow or idle
//! client cannot delay a scrape. The exposition is prometheus-client's: the
//! figures STATS returns, grouped into families with their labels, and the
//! queueing delay and service time as real histograms (cumulative `le`
//! buckets from 1 µs to 10 s), which aggregate across servers with
//! `histogram_quantile`, unlike quantiles since start. `/health` answers 200
//! while the server serves, and 503 once it is shutting down, so a load
//! balancer stops sending it new connections.

use std::borrow::Cow;
use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

use super::Figures;

/// Every figure as `(name, value)`: the runtime's and the service's.
pub type Collect = Arc<dyn Fn(&mut Vec<(String, u64)>) + Send + Sync>;

/// The running admin endpoint.
pub struct Admin {
    addr: SocketAddr,
    stop: CancellationToken,
    draining: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

impl Admin {
    /// Binds `addr` and serves until [`Admin::stop`].
    pub fn start(addr: SocketAddr, collect: Collect, figures: Arc<Figures>) -> io::Result<Admin> {
        let listener = std::net::TcpListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let stop = CancellationToken::new();
        let draining = Arc::new(AtomicBool::new(false));
        let state = Arc::new(State {
            collect,
            figures,
            draining: draining.clone(),
        });
        let token = stop.clone();
        let thread = std::thread::Builder::new()
            .name("ramkv-admin".into())
            .spawn(move || rt.block_on(serve(listener, state, token)))?;
        Ok(Admin {
            addr,
            stop,
            draining,
            thread,
        })
    }

    /// Where it listens.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// From now on `/health` answers 503.
    pub fn draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    /// Stops the thread.
    pub fn stop(self) {
        self.stop.cancel();
        let _ = self.thread.join();
    }
}

struct State {
    collect: Collect,
    figures: Arc<Figures>,
    draining: Arc<AtomicBool>,
}

async fn serve(listener: std::net::TcpListener, state: Arc<State>, stop: CancellationToken) {
    let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
        tracing::error!("the admin endpoint cannot use its socket");
        return;
    };
    loop {
        let stream = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        let state = state.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| answer(req, state.clone()));
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(5))
                .serve_connection(TokioIo::new(stream), svc);
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "admin connection failed");
            }
        });
    }
}

fn text(status: StatusCode, body: String, content_type: &str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    if let Ok(v) = content_type.parse() {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    r
}

/// What prometheus-client's text encoder writes (it ends with `# EOF`).
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

async fn answer(
    req: Request<Incoming>,
    state: Arc<State>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    const PLAIN: &str = "text/plain; charset=utf-8";
    if req.method() != Method::GET {
        return Ok(text(
            StatusCode::METHOD_NOT_ALLOWED,
            "use GET /metrics, GET /health or GET /connections\n".into(),
            PLAIN,
        ));
    }
    Ok(match req.uri().path() {
        "/metrics" => match exposition(&state) {
            Ok(body) => text(StatusCode::OK, body, OPENMETRICS),
            Err(_) => text(
                StatusCode::INTERNAL_SERVER_ERROR,
                "cannot encode the metrics\n".into(),
                PLAIN,
            ),
        },
        "/health" if state.draining.load(Ordering::Relaxed) => {
            text(StatusCode::SERVICE_UNAVAILABLE, "draining\n".into(), PLAIN)
        }
        "/health" => text(StatusCode::OK, "ok\n".into(), PLAIN),
        "/connections" => text(
            StatusCode::OK,
            super::roster::render(state.figures.connections()),
            PLAIN,
        ),
        _ => text(
            StatusCode::NOT_FOUND,
            "served here: /metrics, /health and /connections\n".into(),
            PLAIN,
        ),
    })
}

/// The Prometheus text exposition of every figure.
fn exposition(state: &State) -> Result<String, std::fmt::Error> {
    let mut flat = Vec::new();
    (state.collect)(&mut flat);
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Snapshot {
        flat,
        histograms: state.figures.histograms(),
    }));
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &registry)?;
    Ok(out)
}

/// One scrape's figures.
#[derive(Debug)]
struct Snapshot {
    flat: Vec<(String, u64)>,
    histograms: Vec<super::metrics::Histogram>,
}

/// Writes one counter or gauge value.
fn sample(m: &mut MetricEncoder<'_>, kind: MetricType, value: u64) -> Result<(), std::fmt::Error> {
    match kind {
        MetricType::Counter => m.encode_counter::<NoLabelSet, _, u64>(&value, None),
        _ => m.encode_gauge(&(value as i64)),
    }
}

/// A sample's labels.
type Labels = Vec<(Cow<'static, str>, Cow<'static, str>)>;

/// `name{a="x",b="y"}` split into the name and its labels.
fn split_labels(s: &str) -> (&str, Labels) {
    let Some((name, rest)) = s.split_once('{') else {
        return (s, Vec::new());
    };
    let labels = rest
        .trim_end_matches('}')
        .split(',')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| {
            (
                Cow::Owned(k.to_string()),
                Cow::Owned(v.trim_matches('"').to_string()),
            )
        })
        .collect();
    (name, labels)
}

impl Collector for Snapshot {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        // Families in first-seen order, each with every labelled sample.
        let mut families: Vec<(&str, Vec<(Labels, u64)>)> = Vec::new();
        for (full, value) in &self.flat {
            let (name, labels) = split_labels(full);
            // STATS carries the histograms as quantiles; here they are buckets.
            if self
                .histograms
                .iter()
                .any(|h| name.starts_with(h.stats_prefix))
            {
                continue;
            }
            match families.iter_mut().find(|(n, _)| *n == name) {
                Some((_, samples)) => samples.push((labels, *value)),
                None => families.push((name, vec![(labels, *value)])),
            }
        }
        for (name, samples) in &families {
            let counter = name.strip_suffix("_total");
            let (family, kind) = match counter {
                Some(base) => (base, MetricType::Counter),
                None => (*name, MetricType::Gauge),
            };
            let mut metric = encoder.encode_descriptor(family, "", None, kind)?;
            for (labels, value) in samples {
                if labels.is_empty() {
                    sample(&mut metric, kind, *value)?;
                } else {
                    let labels: &[(Cow<'static, str>, Cow<'static, str>)] = labels;
                    sample(&mut metric.encode_family(&labels)?, kind, *value)?;
                }
            }
        }
        for h in &self.histograms {
            let mut metric =
                encoder.encode_descriptor(h.name, h.help, None, MetricType::Histogram)?;
            metric.encode_histogram::<NoLabelSet>(h.sum_seconds, h.count, &h.buckets, None)?;
        }
        Ok(())
    }
}
