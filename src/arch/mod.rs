//! The execution strategies that make ramkv's five architectures.
//!
//! Dispatchers (see [`crate::dispatcher`]) read and frame requests the same
//! way in every mode and hand each decoded request to an [`Executor`]:
//! - [`lb::PoolExecutor`] queues it for the work-stealing worker pool;
//! - [`inline::InlineExecutor`] runs it on the dispatcher thread itself.
//!
//! [`thread_per_conn`] has no dispatchers at all: a blocking thread per
//! connection reads, executes and writes.

pub mod inline;
pub mod lb;
pub mod thread_per_conn;

use std::sync::Arc;

use crate::reply::ReplySink;
use crate::wire::Request;

/// Runs or queues a decoded request; the reply goes to the connection's sink.
pub trait Executor: Send + Sync {
    /// `dispatcher` is the index of the calling dispatcher thread.
    fn submit(&self, req: Request, sink: &Arc<ReplySink>, dispatcher: usize);
}
