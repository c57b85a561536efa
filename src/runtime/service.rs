//! The boundary between the runtime and the services it runs.
//!
//! The runtime owns sockets, framing, limits, queues, threads and the reply
//! path; a service owns what a frame means. A service implements [`Service`]:
//!
//! - [`Service::admit`] turns a frame into a request to run, or answers it at
//!   once (a frame that does not decode, a refused authentication). It runs
//!   on the thread that read the frame, with the connection's own
//!   [`Service::Session`].
//! - [`Service::execute`] runs a request: on a worker (lb), on the
//!   dispatcher (inline) or on the connection's thread (thread-per-conn).
//! - [`Service::encode`] writes a response as one frame body.
//! - [`Service::reject`] is the response to a request the runtime could not
//!   run (overload, a handler that panicked) or to the connection itself (a
//!   frame too large, a frame timeout, too many connections).
//!
//! The runtime is generic over the service, so a request costs no dynamic
//! dispatch and no allocation at this boundary.

use std::time::Duration;

use bytes::{Bytes, BytesMut};

/// A service the runtime can serve. See the module documentation.
pub trait Service: Send + Sync + 'static {
    /// A request that passed admission, ready to run on any thread.
    type Request: Send + 'static;
    /// What running a request produces.
    type Response: Send + 'static;
    /// State kept per connection, such as whether it has authenticated.
    type Session: Default + Send + 'static;
    /// What a response must carry to be matched to its request (ramkv: the
    /// request id), kept by the runtime so it can answer a request it could
    /// not run.
    type Tag: Copy + Send + 'static;

    /// Turns one frame body into a request to run, or an answer.
    fn admit(&self, frame: Bytes, session: &mut Self::Session) -> Admission<Self>;

    /// Runs one request. A panic in here is caught: the runtime answers the
    /// request with `reject(.., Rejection::Internal)` and the thread goes on.
    fn execute(&self, request: Self::Request, ctx: &ExecContext<'_>) -> Self::Response;

    /// Appends `response` to `out` as one frame (length prefix included).
    fn encode(response: &Self::Response, out: &mut BytesMut) -> Result<(), EncodeError>;

    /// The answer to a request the runtime could not run (`tag` is its
    /// request's), or, with `tag` `None`, to the connection as a whole.
    fn reject(tag: Option<Self::Tag>, why: &Rejection) -> Self::Response;

    /// Whether `request` is quick: a few microseconds of work that does not
    /// block. Under lb, the dispatcher that read a quick request runs it
    /// itself when no worker is ready for it (the queue is empty and none is
    /// spinning), which spares the hand-off's two wake-ups (eRPC's
    /// foreground handlers, RAMCloud's inline PING). Anything long or
    /// variable must answer no: it would hold up every other connection of
    /// that dispatcher. A thread that runs requests in place (inline,
    /// thread-per-conn) also writes the replies it holds before it starts a
    /// request that is not quick, so they do not wait for it. The default is
    /// no.
    fn is_quick(&self, _request: &Self::Request) -> bool {
        false
    }

    /// The service's own figures for STATS and the admin endpoint, as
    /// Prometheus-style `(name, value)` pairs (labels in the name).
    fn figures(&self, out: &mut Vec<(String, u64)>);
}

/// What to do with an admitted frame.
pub enum Admission<S: Service + ?Sized> {
    /// Run it.
    Run {
        /// The request.
        request: S::Request,
        /// What its response must carry.
        tag: S::Tag,
        /// The most bytes its encoded response can take. The runtime reserves
        /// this against the connection's `max_outbound` until the response
        /// exists, so replies to requests already admitted cannot exceed it.
        reply_bound: usize,
    },
    /// Answer at once with this; the connection goes on.
    Reply(S::Response),
    /// Answer at once with this, then close the connection.
    ReplyThenClose(S::Response),
}

/// Why the runtime answers instead of the service.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// The request queue is full (lb's `queue_bound`).
    #[error("server overloaded: the request queue is full; retry later")]
    Overloaded,
    /// The handler panicked, or its response could not be encoded.
    #[error("internal error while executing the request")]
    Internal,
    /// A frame's length prefix announced more than `max_frame`. The stream
    /// can no longer be trusted, so the connection is closed.
    #[error(
        "frame of {announced} bytes exceeds the {limit}-byte limit (--max-frame); closing the connection"
    )]
    FrameTooLarge {
        /// The length the prefix announced.
        announced: u64,
        /// `max_frame`.
        limit: usize,
    },
    /// A frame that had started did not complete within `frame_timeout`.
    #[error(
        "incomplete frame: no complete frame within {limit:?} (--frame-timeout); closing the connection"
    )]
    FrameTimeout {
        /// `frame_timeout`.
        limit: Duration,
    },
    /// The server is at `max_connections`.
    #[error("too many connections (limit {limit}); try again later")]
    TooManyConnections {
        /// `max_connections`.
        limit: usize,
    },
}

/// A response that cannot be framed (over 4 GiB, or refused by its encoder).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("cannot encode the response: {0}")]
pub struct EncodeError(pub String);

/// What a service learns about the thread running a request.
pub struct ExecContext<'a> {
    /// Which executing thread this is (a worker, a dispatcher running
    /// requests inline, a connection thread): a small number, stable for the
    /// thread, for per-thread counters.
    pub slot: usize,
    /// The runtime's own figures, for a service that reports them (STATS).
    pub runtime: &'a CollectFigures<'a>,
}

/// Appends figures as `(name, value)` pairs, Prometheus-style names with
/// their labels.
pub type CollectFigures<'a> = dyn Fn(&mut Vec<(String, u64)>) + 'a;
