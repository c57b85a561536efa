//! Request execution: what each operation does to the store, the limits it
//! checks, and the status it answers with. Every architecture calls
//! [`Service::execute`]; only who calls it, and on which thread, differs.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::config::Config;
use crate::metrics::{ExecStats, Metrics, op_index};
use crate::store::{Store, StoreError};
use crate::wire::pb::{self, request::Op, response::Result as Res};
use crate::wire::{Request, Response, Status, error_response};

/// Size limits checked before anything touches the store.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Largest key, in bytes (`--max-key`).
    pub max_key: usize,
    /// Largest value, in bytes (`--max-value`).
    pub max_value: usize,
    /// Largest frame, which bounds MULTI_GET replies too.
    pub max_frame: usize,
    /// Longest SPIN; `None` when the op is disabled.
    pub max_spin: Option<Duration>,
}

impl Limits {
    /// The limits a server configuration sets.
    pub fn from_config(cfg: &Config) -> Self {
        Limits {
            max_key: cfg.max_key as usize,
            max_value: cfg.max_value as usize,
            max_frame: cfg.max_frame as usize,
            max_spin: cfg
                .enable_spin_op
                .then(|| Duration::from_micros(cfg.spin_op_max_us)),
        }
    }
}

/// Gauges a STATS reply includes that the service cannot see by itself,
/// such as the depth of the lb queue.
pub type ExtraGauges = Box<dyn Fn() -> Vec<(String, u64)> + Send + Sync>;

/// The store plus the rules for using it over the protocol.
pub struct Service {
    store: Store,
    limits: Limits,
    metrics: Arc<Metrics>,
    extra_gauges: OnceLock<ExtraGauges>,
}

/// A rejected request: the status and message of its reply.
struct Reject(Status, String);

impl Service {
    /// A service over an empty store.
    pub fn new(store: Store, limits: Limits, metrics: Arc<Metrics>) -> Self {
        Service {
            store,
            limits,
            metrics,
            extra_gauges: OnceLock::new(),
        }
    }

    /// Registers gauges for STATS replies; only the first registration counts.
    pub fn set_extra_gauges(&self, gauges: ExtraGauges) {
        let _ = self.extra_gauges.set(gauges);
    }

    /// The store, for tests and diagnostics.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Executes one request and counts it in `stats`. A panic inside becomes
    /// an INTERNAL reply, so one bad request cannot take a thread down.
    pub fn execute(&self, req: Request, stats: &ExecStats) -> Response {
        let id = req.id;
        let op = op_index(req.op.as_ref());
        let resp = guarded(id, || self.run(req));
        stats.count(op, resp.status);
        resp
    }

    fn check_key(&self, key: &[u8]) -> Result<(), Reject> {
        if key.is_empty() {
            return Err(Reject(
                Status::InvalidRequest,
                "key must not be empty".into(),
            ));
        }
        if key.len() > self.limits.max_key {
            return Err(Reject(
                Status::TooLarge,
                format!(
                    "key of {} bytes exceeds the limit of {} (--max-key)",
                    key.len(),
                    self.limits.max_key
                ),
            ));
        }
        Ok(())
    }

    fn check_value(&self, value: &[u8]) -> Result<(), Reject> {
        if value.len() > self.limits.max_value {
            return Err(Reject(
                Status::TooLarge,
                format!(
                    "value of {} bytes exceeds the limit of {} (--max-value)",
                    value.len(),
                    self.limits.max_value
                ),
            ));
        }
        Ok(())
    }

    fn run(&self, req: Request) -> Result<Response, Reject> {
        let ok = |result| {
            Ok(Response {
                id: req.id,
                status: Status::Ok as i32,
                message: String::new(),
                result: Some(result),
            })
        };
        match req.op {
            None => Err(Reject(
                Status::InvalidRequest,
                "request has no operation set".into(),
            )),
            Some(Op::Get(g)) => {
                self.check_key(&g.key)?;
                match self.store.get(&g.key) {
                    Some(e) => ok(Res::Get(pb::GetResult {
                        value: e.value,
                        version: e.version,
                    })),
                    None => Ok(error_response(req.id, Status::NotFound, "")),
                }
            }
            Some(Op::Put(p)) => {
                self.check_key(&p.key)?;
                self.check_value(&p.value)?;
                match self.store.put(&p.key, &p.value, p.expected_version) {
                    Ok(version) => ok(Res::Put(pb::PutResult { version })),
                    Err(StoreError::VersionMismatch { current }) => Ok(version_mismatch(
                        req.id,
                        p.expected_version,
                        current,
                        Res::Put(pb::PutResult { version: current }),
                    )),
                    Err(e @ StoreError::OutOfMemory { .. }) => {
                        Err(Reject(Status::OutOfMemory, e.to_string()))
                    }
                }
            }
            Some(Op::Delete(d)) => {
                self.check_key(&d.key)?;
                match self.store.delete(&d.key, d.expected_version) {
                    Ok(Some(version)) => ok(Res::Delete(pb::DeleteResult { version })),
                    Ok(None) => Ok(error_response(req.id, Status::NotFound, "")),
                    Err(StoreError::VersionMismatch { current }) => Ok(version_mismatch(
                        req.id,
                        d.expected_version,
                        current,
                        Res::Delete(pb::DeleteResult { version: current }),
                    )),
                    Err(e) => Err(Reject(Status::Internal, e.to_string())),
                }
            }
            Some(Op::MultiGet(m)) => {
                let mut items = Vec::with_capacity(m.keys.len());
                // Reply size so far, kept under the frame limit.
                let mut size = 64usize;
                for key in &m.keys {
                    self.check_key(key)?;
                    let item = match self.store.get(key) {
                        Some(e) => pb::MultiGetItem {
                            found: true,
                            value: e.value,
                            version: e.version,
                        },
                        None => pb::MultiGetItem {
                            found: false,
                            value: Bytes::new(),
                            version: 0,
                        },
                    };
                    size += item.value.len() + 24;
                    if size > self.limits.max_frame {
                        return Err(Reject(
                            Status::TooLarge,
                            format!(
                                "reply would exceed the {}-byte frame limit; ask for fewer keys",
                                self.limits.max_frame
                            ),
                        ));
                    }
                    items.push(item);
                }
                ok(Res::MultiGet(pb::MultiGetResult { items }))
            }
            Some(Op::MultiPut(m)) => {
                for e in &m.entries {
                    self.check_key(&e.key)?;
                    self.check_value(&e.value)?;
                }
                let mut versions = Vec::with_capacity(m.entries.len());
                for e in &m.entries {
                    match self.store.put(&e.key, &e.value, None) {
                        Ok(v) => versions.push(v),
                        Err(err) => {
                            return Ok(Response {
                                id: req.id,
                                status: Status::OutOfMemory as i32,
                                message: format!(
                                    "stored {} of {} entries, then: {err}",
                                    versions.len(),
                                    m.entries.len()
                                ),
                                result: Some(Res::MultiPut(pb::MultiPutResult { versions })),
                            });
                        }
                    }
                }
                ok(Res::MultiPut(pb::MultiPutResult { versions }))
            }
            Some(Op::Ping(p)) => ok(Res::Ping(pb::PingResult { payload: p.payload })),
            // Authentication is decided per connection before requests get
            // here; an AUTH that arrives is one the connection accepted.
            Some(Op::Auth(_)) => Ok(error_response(req.id, Status::Ok, "")),
            Some(Op::Stats(_)) => ok(Res::Stats(pb::StatsResult {
                metrics: self.stats(),
            })),
            Some(Op::Spin(s)) => {
                let Some(max) = self.limits.max_spin else {
                    return Err(Reject(
                        Status::InvalidRequest,
                        "SPIN is a benchmark op; start the server with --enable-spin-op".into(),
                    ));
                };
                let d = Duration::from_nanos(s.nanos);
                if d > max {
                    return Err(Reject(
                        Status::InvalidRequest,
                        format!("SPIN of {d:?} exceeds the limit of {max:?} (--spin-op-max-us)"),
                    ));
                }
                if s.sleep {
                    // The executing thread blocks, as a handler waiting on
                    // I/O would: in lb a worker, in inline the dispatcher
                    // itself, in thread-per-conn the connection's thread.
                    std::thread::sleep(d);
                } else {
                    spin_for(d);
                }
                ok(Res::Spin(pb::SpinResult {}))
            }
        }
    }

    /// Every figure STATS reports, as (name, value): the metrics, the
    /// store's gauges and any registered extras.
    pub fn figures(&self) -> Vec<(String, u64)> {
        let mut all = self.metrics.snapshot();
        all.push(("ramkv_store_keys".into(), self.store.len() as u64));
        all.push(("ramkv_store_memory_bytes".into(), self.store.memory_used()));
        all.push((
            "ramkv_store_memory_limit_bytes".into(),
            self.store.memory_limit(),
        ));
        if let Some(g) = self.extra_gauges.get() {
            all.extend(g());
        }
        all
    }

    fn stats(&self) -> Vec<pb::Metric> {
        self.figures()
            .into_iter()
            .map(|(name, value)| pb::Metric { name, value })
            .collect()
    }
}

/// A VERSION_MISMATCH reply; `current` (inside `result`) tells the client
/// what to retry its compare-and-set with.
fn version_mismatch(id: u64, expected: Option<u64>, current: u64, result: Res) -> Response {
    Response {
        id,
        status: Status::VersionMismatch as i32,
        message: format!(
            "expected version {}, current is {current}",
            expected.unwrap_or(0)
        ),
        result: Some(result),
    }
}

/// Runs one request body; a rejection becomes its error reply and a panic
/// an INTERNAL one, so the calling thread always gets a reply to send.
fn guarded(id: u64, body: impl FnOnce() -> Result<Response, Reject>) -> Response {
    let mut resp = match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(r)) => r,
        Ok(Err(Reject(status, msg))) => error_response(id, status, msg),
        Err(_) => {
            tracing::error!(id, "request handler panicked");
            error_response(
                id,
                Status::Internal,
                "internal error while executing the request",
            )
        }
    };
    resp.id = id;
    resp
}

/// Busy-waits, as a CPU-bound request would.
fn spin_for(d: Duration) {
    let start = Instant::now();
    while start.elapsed() < d {
        std::hint::spin_loop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panicking_handler_becomes_an_internal_reply() {
        let resp = guarded(42, || panic!("bug in a handler"));
        assert_eq!((resp.id, resp.status), (42, Status::Internal as i32));
        assert!(
            !resp.message.contains("bug in a handler"),
            "internals stay in the log"
        );
        let resp = guarded(7, || Err(Reject(Status::TooLarge, "big".into())));
        assert_eq!(
            (resp.id, resp.status, resp.message.as_str()),
            (7, Status::TooLarge as i32, "big")
        );
    }
}
