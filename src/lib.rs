//! ramkv: an RPC runtime that load-balances messages, not connections, and
//! the key-value service it was built for.
//!
//! ```text
//!  clients ──TCP──▶ acceptor ─────────────┐ (lb: one dispatcher accepts and deals
//!                                         │  connections round-robin; inline: each
//!                                         ▼  accepts on a shared or reuseport socket)
//!                  dispatcher threads (tokio current_thread; each owns its sockets)
//!                    │ TLS: the new socket ─▶ handshake threads (SCHED_IDLE) ─▶ back
//!                    │                 read ─▶ Conn: frames ─▶ Service::admit
//!                    │                                         │ answers at once
//!                    ├─ lb ─────▶ shared queue (bounded) ──┐   │ (decode error, AUTH)
//!                    │            worker threads ◀─────────┘   │
//!                    │              Service::execute           │
//!                    │              Responder ─▶ ReplySink ◀───┘
//!                    └─ inline, and lb's quick requests while no worker is ready:
//!                       Service::execute on the dispatcher itself
//!                  dispatcher ◀─ wake ─ ReplySink: one write for every ready reply
//!
//!  thread-per-conn: acceptor thread ─▶ one blocking thread per connection,
//!                   driving the same Conn and running requests in place
//!  admin thread:    HTTP /metrics and /health (hyper), off the request path
//! ```
//!
//! # Layout
//! - [`runtime`](ServerBuilder): the mechanism, generic over any [`Service`].
//!   `runtime/conn.rs` is one connection's state machine (framing, admission,
//!   backpressure, deadlines, the graceful close), driven by
//!   `dispatcher.rs` (tokio) and `blocking.rs` (thread per connection);
//!   `exec.rs` decides where a request runs, `pool.rs` is the worker pool,
//!   `reply.rs` the reply path and the reply obligation, `frame.rs` the
//!   framing, `listen.rs` the sockets, `metrics.rs` and `admin.rs` what it
//!   reports, `tls.rs` and `thread.rs` the rest.
//! - [`kv`]: the key-value service, one file per operation under `kv/ops/`,
//!   the store in `kv/store.rs`.
//!
//! The request path, from socket to store and back: `dispatcher.rs`
//! (`serve`) → `conn.rs` (`admit`) → `kv/mod.rs` (`admit`) → `exec.rs`
//! (`submit`) → `pool.rs` → `exec.rs` (`run`) → `kv/ops/get.rs` →
//! `kv/store.rs` → `reply.rs` (`Responder::respond`) → `dispatcher.rs`.

#![warn(missing_docs)]

pub mod kv;
mod runtime;

pub use runtime::service::{Admission, EncodeError, ExecContext, Rejection, Service};
pub use runtime::{
    Arch, ConnInfo, Limits, Server, ServerBuilder, StartError, WorkerPolicy, process_cpu_us,
};

/// The version and the commit this server was built from (`-dirty` when the
/// tree had uncommitted changes), as `--version` and the startup log show it.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("RAMKV_COMMIT"),
    ")"
);

/// Not part of the API: what the repository's own fuzz target and
/// benchmarks reach into (the real connection state machine, the latency
/// histogram). It may change at any time.
#[doc(hidden)]
pub mod internals {
    pub use crate::runtime::conn::{Close, drive};
    pub use crate::runtime::metrics::LatencyHistogram;
}
