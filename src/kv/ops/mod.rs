//! One file per operation: what it does to the store, the limits it checks
//! and the status it answers with. A new op is a new file here, a field in
//! `proto/ramkv.proto`, and one line in [`run`].

mod delete;
mod get;
mod multi_get;
mod multi_put;
mod ping;
mod put;
mod spin;
mod stats;

use ramkv_proto::{Response, Status, request::Op, response::Result as Res};

use super::{KvService, Reply, error_response};
use crate::runtime::service::ExecContext;

/// A refused request: the status and message of its answer.
pub struct Reject(pub Status, pub String);

/// What an op produces: its response, or why it was refused.
pub type Outcome = Result<Reply, Reject>;

/// Runs one request. The id is set on the response by the caller.
pub(super) fn run(svc: &KvService, id: u64, op: Option<Op>, ctx: &ExecContext<'_>) -> Reply {
    let outcome = match op {
        None => Err(Reject(
            Status::InvalidRequest,
            "request has no operation set".into(),
        )),
        Some(Op::Get(g)) => get::run(svc, g),
        Some(Op::Put(p)) => put::run(svc, p),
        Some(Op::Delete(d)) => delete::run(svc, d),
        Some(Op::MultiGet(m)) => multi_get::run(svc, m),
        Some(Op::MultiPut(m)) => multi_put::run(svc, m),
        Some(Op::Ping(p)) => ping::run(p),
        Some(Op::Stats(_)) => stats::run(svc, ctx),
        Some(Op::Spin(s)) => spin::run(svc, s),
        // Admission answers AUTH itself; one that arrives here is harmless.
        Some(Op::Auth(_)) => Ok(error_response(id, Status::Ok, "").into()),
    };
    outcome.unwrap_or_else(|Reject(status, message)| error_response(id, status, message).into())
}

/// A successful response carrying `result`.
fn ok(result: Res) -> Outcome {
    Ok(Response {
        id: 0,
        status: Status::Ok as i32,
        message: String::new(),
        result: Some(result),
    }
    .into())
}

/// A key must be non-empty and within `--max-key`.
fn check_key(svc: &KvService, key: &[u8]) -> Result<(), Reject> {
    if key.is_empty() {
        return Err(Reject(
            Status::InvalidRequest,
            "key must not be empty".into(),
        ));
    }
    if key.len() > svc.opts.max_key {
        return Err(Reject(
            Status::TooLarge,
            format!(
                "key of {} bytes exceeds the limit of {} (--max-key)",
                key.len(),
                svc.opts.max_key
            ),
        ));
    }
    Ok(())
}

/// A value must be within `--max-value` (empty values are fine).
fn check_value(svc: &KvService, value: &[u8]) -> Result<(), Reject> {
    if value.len() > svc.opts.max_value {
        return Err(Reject(
            Status::TooLarge,
            format!(
                "value of {} bytes exceeds the limit of {} (--max-value)",
                value.len(),
                svc.opts.max_value
            ),
        ));
    }
    Ok(())
}

/// A VERSION_MISMATCH answer; `current` (inside `result`) tells the client
/// what to retry its compare-and-set with.
fn version_mismatch(expected: Option<u64>, current: u64, result: Res) -> Outcome {
    Ok(Response {
        id: 0,
        status: Status::VersionMismatch as i32,
        message: format!(
            "expected version {}, current is {current}",
            expected.unwrap_or(0)
        ),
        result: Some(result),
    }
    .into())
}
