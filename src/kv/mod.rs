//! The key-value service: ramkv's first service on the runtime.
//!
//! A frame body is one protobuf `ramkv.v1.Request` (`proto/ramkv.proto`);
//! the answer is one `ramkv.v1.Response` carrying the same id ([`Reply`]).
//!
//! - Admission ([`KvService`]'s [`Service::admit`]) decodes the request and
//!   applies the authentication gate: on a connection that must authenticate,
//!   anything but a correct AUTH is answered UNAUTHENTICATED and closes it.
//!   AUTH is answered there and then; every other op is run.
//! - Each op lives in [`ops`], one file per op, so a new op is one new file
//!   and one line in the dispatch table.
//! - [`store`] is the map itself; `metrics` counts requests by op and status.

mod auth;
mod metrics;
pub mod ops;
mod reply;
pub mod store;

use std::path::PathBuf;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use prost::Message;
use ramkv_proto::{Request, Response, Status, request::Op};

use crate::runtime::service::{Admission, EncodeError, ExecContext, Rejection, Service};
use auth::Authenticator;
use metrics::KvMetrics;
pub use reply::Reply;
use store::Store;

/// The largest PUT value a dispatcher copies into the store itself (see
/// `is_quick`): 16 KiB copies in about a microsecond.
const QUICK_PUT_BYTES: usize = 16 * 1024;

/// What the key-value service accepts, and how much it may store.
#[derive(Clone, Debug)]
pub struct KvOptions {
    /// Largest key, in bytes.
    pub max_key: usize,
    /// Largest value, in bytes.
    pub max_value: usize,
    /// Largest reply frame the service builds (a MULTI_GET over it is
    /// refused with TOO_LARGE). The server sets it to its `max_frame`.
    pub max_reply: usize,
    /// Memory the store may hold (keys, values, per-entry overhead).
    pub max_memory: u64,
    /// The longest benchmark SPIN accepted; `None` refuses the op.
    pub max_spin: Option<Duration>,
    /// Require every connection to authenticate with the token in this file.
    pub auth_token_file: Option<PathBuf>,
}

impl Default for KvOptions {
    fn default() -> Self {
        KvOptions {
            max_key: 4 << 10,
            max_value: 1 << 20,
            max_reply: 4 << 20,
            max_memory: 1 << 30,
            max_spin: None,
            auth_token_file: None,
        }
    }
}

/// Why the key-value service could not be created.
#[derive(Debug, thiserror::Error)]
pub enum KvError {
    /// The options contradict each other; the message says how.
    #[error("{0}")]
    Options(String),
    /// The token file could not be read.
    #[error("cannot read --auth-token-file {path}: {source}")]
    TokenFile {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// Per-connection state: whether it has authenticated.
#[derive(Default)]
pub struct Session {
    authed: bool,
}

/// The key-value service.
pub struct KvService {
    store: Store,
    opts: KvOptions,
    auth: Authenticator,
    metrics: KvMetrics,
}

impl KvService {
    /// A service over an empty store.
    pub fn new(opts: KvOptions) -> Result<Self, KvError> {
        if opts.max_key == 0 || opts.max_reply < 64 {
            return Err(KvError::Options(
                "--max-key must be at least 1 byte and --max-frame at least 64".into(),
            ));
        }
        if opts.max_key > opts.max_reply || opts.max_value > opts.max_reply {
            return Err(KvError::Options(format!(
                "--max-key ({}) and --max-value ({}) must not exceed --max-frame ({}): such a key or value could never be sent",
                opts.max_key, opts.max_value, opts.max_reply
            )));
        }
        let auth = match &opts.auth_token_file {
            Some(path) => Authenticator::from_file(path).map_err(|source| KvError::TokenFile {
                path: path.clone(),
                source,
            })?,
            None => Authenticator::open(),
        };
        Ok(KvService {
            store: Store::new(opts.max_memory),
            opts,
            auth,
            metrics: KvMetrics::default(),
        })
    }

    /// The store, for inspection in-process.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The most bytes the reply to `req` can take, encoded as a frame.
    fn reply_bound(&self, req: &Request) -> usize {
        // Header, id, status, and room for an error message.
        const BASE: usize = 256;
        BASE + match &req.op {
            Some(Op::Get(_)) => self.opts.max_value + 32,
            Some(Op::MultiGet(_) | Op::Stats(_)) => self.opts.max_reply,
            Some(Op::MultiPut(m)) => m.entries.len() * 11,
            Some(Op::Ping(p)) => p.payload.len() + 16,
            _ => 0,
        }
        .min(self.opts.max_reply)
    }
}

/// A response with only an id, a status and a message: the shape of every error.
pub fn error_response(id: u64, status: Status, message: impl Into<String>) -> Response {
    Response {
        id,
        status: status as i32,
        message: message.into(),
        result: None,
    }
}

/// Reads the request id from the front of a damaged frame. Encoders write
/// fields in tag order, so field 1 (a varint) comes first when present.
fn leading_id(mut frame: &[u8]) -> u64 {
    const ID_KEY: u64 = 1 << 3; // field 1, wire type 0 (varint)
    match prost::encoding::decode_varint(&mut frame) {
        Ok(ID_KEY) => prost::encoding::decode_varint(&mut frame).unwrap_or(0),
        _ => 0,
    }
}

impl Service for KvService {
    type Request = Request;
    type Response = Reply;
    type Session = Session;
    type Tag = u64;

    fn admit(&self, frame: Bytes, session: &mut Session) -> Admission<Self> {
        let must_auth = self.auth.required() && !session.authed;
        let req = match Request::decode(frame.clone()) {
            Ok(req) => req,
            Err(e) => {
                let id = leading_id(&frame);
                self.metrics.count_invalid(Status::InvalidRequest);
                return match must_auth {
                    true => Admission::ReplyThenClose(auth::refusal(id).into()),
                    false => Admission::Reply(
                        error_response(
                            id,
                            Status::InvalidRequest,
                            format!("request does not decode as ramkv.v1.Request: {e}"),
                        )
                        .into(),
                    ),
                };
            }
        };
        if let Some(Op::Auth(a)) = &req.op {
            return match self.auth.check(&a.token) {
                true => {
                    session.authed = true;
                    self.metrics.count(&req.op, Status::Ok);
                    Admission::Reply(error_response(req.id, Status::Ok, "").into())
                }
                false => {
                    session.authed = false;
                    self.metrics.count(&req.op, Status::Unauthenticated);
                    Admission::ReplyThenClose(auth::wrong_token(req.id).into())
                }
            };
        }
        if must_auth {
            self.metrics.count(&req.op, Status::Unauthenticated);
            return Admission::ReplyThenClose(auth::refusal(req.id).into());
        }
        Admission::Run {
            tag: req.id,
            reply_bound: self.reply_bound(&req),
            request: req,
        }
    }

    fn execute(&self, req: Request, ctx: &ExecContext<'_>) -> Reply {
        let (id, op) = (req.id, req.op);
        let kind = metrics::op_index(op.as_ref());
        let mut reply = ops::run(self, id, op, ctx);
        reply.set_id(id);
        self.metrics.count_index(ctx.slot, kind, reply.status());
        reply
    }

    /// Single-key reads and writes and PING: a hash, a shard lock and a
    /// copy. A PUT or PING copies its payload, so only small ones; MULTI_*,
    /// STATS (it gathers every figure) and SPIN go to the pool. A GET's
    /// value size is not known before the lookup, so a GET of a large value
    /// is quick too (its reply is copied on the dispatcher).
    fn is_quick(&self, req: &Request) -> bool {
        match &req.op {
            Some(Op::Get(_) | Op::Delete(_)) => true,
            Some(Op::Put(p)) => p.value.len() <= QUICK_PUT_BYTES,
            Some(Op::Ping(p)) => p.payload.len() <= QUICK_PUT_BYTES,
            _ => false,
        }
    }

    fn encode(reply: &Reply, out: &mut BytesMut) -> Result<(), EncodeError> {
        reply.encode(out)
    }

    fn reject(tag: Option<u64>, why: &Rejection) -> Reply {
        let status = match why {
            Rejection::Overloaded | Rejection::TooManyConnections { .. } => Status::Overloaded,
            Rejection::Internal => Status::Internal,
            Rejection::FrameTooLarge { .. } => Status::TooLarge,
            Rejection::FrameTimeout { .. } => Status::InvalidRequest,
        };
        error_response(tag.unwrap_or(0), status, why.to_string()).into()
    }

    fn figures(&self, out: &mut Vec<(String, u64)>) {
        self.metrics.figures(out);
        out.push(("ramkv_store_keys".into(), self.store.len() as u64));
        out.push(("ramkv_store_memory_bytes".into(), self.store.memory_used()));
        out.push((
            "ramkv_store_memory_limit_bytes".into(),
            self.store.memory_limit(),
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ramkv_proto as pb;

    fn frame(req: &Request) -> Bytes {
        req.encode_to_vec().into()
    }

    fn svc(auth: Option<&str>) -> KvService {
        let mut s = KvService::new(KvOptions::default()).unwrap();
        if let Some(t) = auth {
            s.auth = Authenticator::with_token(t.as_bytes());
        }
        s
    }

    fn answer(a: Admission<KvService>) -> (Response, bool) {
        match a {
            Admission::Reply(Reply::Message(r)) => (r, false),
            Admission::ReplyThenClose(Reply::Message(r)) => (r, true),
            _ => panic!("expected an answer"),
        }
    }

    #[test]
    fn before_authentication_everything_but_auth_is_refused_and_closes() {
        let s = svc(Some("s3cret"));
        let mut session = Session::default();
        // Undecodable bytes on an unauthenticated connection: refused, closed.
        let (r, close) = answer(s.admit(Bytes::from_static(&[0xff, 0xff]), &mut session));
        assert_eq!((r.status, close), (Status::Unauthenticated as i32, true));
        let ping = Request {
            id: 2,
            op: Some(Op::Ping(pb::Ping::default())),
        };
        let (r, close) = answer(s.admit(frame(&ping), &mut session));
        assert_eq!(
            (r.id, r.status, close),
            (2, Status::Unauthenticated as i32, true)
        );
        let auth = |t: &str| Request {
            id: 3,
            op: Some(Op::Auth(pb::Auth {
                token: Bytes::copy_from_slice(t.as_bytes()),
            })),
        };
        let (r, close) = answer(s.admit(frame(&auth("guess")), &mut session));
        assert_eq!((r.status, close), (Status::Unauthenticated as i32, true));
        assert!(!r.message.contains("guess") && !r.message.contains("s3cret"));
        let (r, close) = answer(s.admit(frame(&auth("s3cret")), &mut session));
        assert_eq!((r.id, r.status, close), (3, Status::Ok as i32, false));
        assert!(matches!(
            s.admit(frame(&ping), &mut session),
            Admission::Run { tag: 2, .. }
        ));
        // Once authenticated, an undecodable frame is only INVALID_REQUEST.
        let (r, close) = answer(s.admit(Bytes::from_static(&[0x08, 7, 0x12, 100]), &mut session));
        assert_eq!(
            (r.id, r.status, close),
            (7, Status::InvalidRequest as i32, false)
        );
    }

    #[test]
    fn auth_when_the_server_requires_none_is_a_harmless_ok() {
        let s = svc(None);
        let req = Request {
            id: 9,
            op: Some(Op::Auth(pb::Auth::default())),
        };
        let (r, close) = answer(s.admit(frame(&req), &mut Session::default()));
        assert_eq!((r.status, close), (Status::Ok as i32, false));
    }

    #[test]
    fn the_real_connection_answers_every_frame_in_order() {
        // Through the runtime's own connection state machine, in 3-byte
        // reads: a PUT, a frame that does not decode, a GET.
        let s = svc(None);
        let put = Request {
            id: 1,
            op: Some(Op::Put(pb::Put {
                key: "k".into(),
                value: "v".into(),
                expected_version: None,
            })),
        };
        let get = Request {
            id: 3,
            op: Some(Op::Get(pb::Get { key: "k".into() })),
        };
        let mut input = Vec::new();
        for body in [put.encode_to_vec(), vec![0xff, 0xff], get.encode_to_vec()] {
            input.extend_from_slice(&(body.len() as u32).to_be_bytes());
            input.extend_from_slice(&body);
        }
        let limits = crate::Limits::default();
        let (out, closed) = crate::runtime::conn::drive(&s, &limits, &input, 3);
        let mut out = BytesMut::from(&out[..]);
        let mut replies = Vec::new();
        while out.len() >= 4 {
            let n = u32::from_be_bytes([out[0], out[1], out[2], out[3]]) as usize;
            let body = out.split_to(4 + n);
            replies.push(Response::decode(&body[4..]).unwrap());
        }
        let got: Vec<(u64, i32)> = replies.iter().map(|r| (r.id, r.status)).collect();
        assert_eq!(
            got,
            [
                (1, Status::Ok as i32),
                (0, Status::InvalidRequest as i32),
                (3, Status::Ok as i32)
            ]
        );
        assert_eq!(closed, Some(crate::runtime::conn::Close::PeerDone));
    }

    #[test]
    fn options_that_cannot_work_are_refused() {
        let too_big = KvOptions {
            max_value: 8 << 20,
            ..KvOptions::default()
        };
        let err = KvService::new(too_big).err().expect("refused").to_string();
        assert!(
            err.contains("--max-value") && err.contains("--max-frame"),
            "{err}"
        );
    }
}
