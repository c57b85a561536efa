//! ramkv: a key-value RPC server that load-balances messages, not connections.
//!
//! ```text
//!   clients ──TCP──▶ dispatcher threads (tokio current_thread, own every socket)
//!                      read → split frames (wire) → decode Request
//!                      │ Executor::submit
//!                      ├─ lb:     push Task ──▶ TaskQueue (crossbeam Injector)
//!                      │                         │ batch steal / steal from peers
//!                      │          worker threads ◀┘ pinned, spin then park
//!                      │            Service::execute ──▶ Store
//!                      │            encode Response ──▶ ReplySink (per connection)
//!                      └─ inline: Service::execute on the dispatcher itself
//!                    dispatcher ◀── wake ── ReplySink: one write for all ready replies
//! ```
//!
//! # Layout
//! - [`wire`]: frames and protobuf messages; the only place bytes become requests.
//! - [`dispatcher`]: socket-owning threads: accept, read, frame, write replies.
//! - [`arch`]: execution strategies, one per architecture (lb, inline,
//!   thread-per-connection), behind the [`arch::Executor`] trait.
//! - [`queue`]: the work-stealing queue and the spin-then-park workers.
//! - [`reply`]: each connection's outbound buffer, filled by workers.
//! - [`service`]: what each operation does, its limits and statuses.
//! - [`store`]: the concurrent map with versions and memory accounting.
//! - [`config`]: flags and defaults; [`metrics`]: counters read by STATS
//!   and served by [`admin`] at `/metrics`.
//! - [`auth`]: the optional shared-secret gate in front of every connection;
//!   [`tls`]: optional TLS, terminated on the dispatchers.
//! - [`server`]: assembles and starts it all, and shuts it down gracefully.

#![warn(missing_docs)]

pub mod admin;
pub mod arch;
pub mod auth;
pub mod config;
pub mod dispatcher;
pub mod metrics;
pub mod queue;
pub mod reply;
pub mod server;
pub mod service;
pub mod store;
pub mod thread;
pub mod tls;
pub mod wire;

pub use config::{Arch, Config, WorkerPolicy};

/// The version and the commit this server was built from (`-dirty` when the
/// tree had uncommitted changes), as `--version` and the startup log show it.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("RAMKV_COMMIT"),
    ")"
);
pub use server::{ServerHandle, StartError, start};
