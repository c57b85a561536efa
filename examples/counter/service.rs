//! A counter service: the smallest complete service on the ramkv runtime,
//! and the example the README's "Writing your own service" walks through.
//! It speaks its own binary protocol, no protobuf, to show that the runtime
//! knows nothing of what a frame means.
//!
//! Every frame is ramkv's: a 4-byte big-endian length, then the body.
//!
//! - request body, 17 bytes: `id: u64 | op: u8 | counter: u64` (big-endian;
//!   op 0 reads the counter, op 1 adds one to it)
//! - response body, 17 bytes: `id: u64 | status: u8 | value: u64`
//!
//! A response carries its request's id (0 when the runtime answers the
//! connection as a whole, or the request was too short to have one).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use ramkv::{Admission, EncodeError, ExecContext, Rejection, Service};

/// Bytes in a request body and in a response body.
pub const BODY_LEN: usize = 17;

/// A response's status byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Status {
    Ok = 0,
    /// Not 17 bytes, an unknown op, or no such counter.
    BadRequest = 1,
    /// The runtime's queue was full; retry later.
    Overloaded = 2,
    /// The handler failed.
    Internal = 3,
    /// The runtime is closing the connection (frame too large, frame
    /// timeout, too many connections).
    Closing = 4,
}

/// A request that passed admission.
pub struct Request {
    id: u64,
    counter: usize,
    add: bool,
}

/// What a request produced.
pub struct Response {
    pub id: u64,
    pub status: Status,
    pub value: u64,
}

/// A fixed set of counters, shared by every thread without a lock.
pub struct Counters {
    values: Vec<AtomicU64>,
    bad_requests: AtomicU64,
}

impl Counters {
    pub fn new(count: usize) -> Self {
        Counters {
            values: (0..count).map(|_| AtomicU64::new(0)).collect(),
            bad_requests: AtomicU64::new(0),
        }
    }

    fn refuse(&self, id: u64) -> Admission<Self> {
        self.bad_requests.fetch_add(1, Relaxed);
        Admission::Reply(Response {
            id,
            status: Status::BadRequest,
            value: 0,
        })
    }
}

impl Service for Counters {
    type Request = Request;
    type Response = Response;
    /// No per-connection state: no authentication, nothing remembered.
    type Session = ();
    /// The request id, which the runtime keeps to answer a request it
    /// could not run.
    type Tag = u64;

    /// Runs on the thread that read the frame: parse and check, nothing more.
    fn admit(&self, mut frame: Bytes, _: &mut ()) -> Admission<Self> {
        if frame.len() != BODY_LEN {
            let id = if frame.len() >= 8 { frame.get_u64() } else { 0 };
            return self.refuse(id);
        }
        let (id, op, counter) = (frame.get_u64(), frame.get_u8(), frame.get_u64());
        let counter = match usize::try_from(counter) {
            Ok(c) if c < self.values.len() && op <= 1 => c,
            _ => return self.refuse(id),
        };
        Admission::Run {
            request: Request {
                id,
                counter,
                add: op == 1,
            },
            tag: id,
            // Every response is the same size: this is exact.
            reply_bound: 4 + BODY_LEN,
        }
    }

    /// Runs on a worker (lb), a dispatcher (inline) or the connection's
    /// thread (thread-per-conn).
    fn execute(&self, r: Request, _: &ExecContext<'_>) -> Response {
        let cell = &self.values[r.counter];
        let value = if r.add {
            cell.fetch_add(1, Relaxed) + 1
        } else {
            cell.load(Relaxed)
        };
        Response {
            id: r.id,
            status: Status::Ok,
            value,
        }
    }

    fn encode(r: &Response, out: &mut BytesMut) -> Result<(), EncodeError> {
        out.put_u32(BODY_LEN as u32);
        out.put_u64(r.id);
        out.put_u8(r.status as u8);
        out.put_u64(r.value);
        Ok(())
    }

    fn reject(tag: Option<u64>, why: &Rejection) -> Response {
        let status = match why {
            Rejection::Overloaded => Status::Overloaded,
            Rejection::Internal => Status::Internal,
            _ => Status::Closing,
        };
        Response {
            id: tag.unwrap_or(0),
            status,
            value: 0,
        }
    }

    fn figures(&self, out: &mut Vec<(String, u64)>) {
        out.push(("counter_counters".into(), self.values.len() as u64));
        out.push((
            "counter_bad_requests_total".into(),
            self.bad_requests.load(Relaxed),
        ));
    }
}
