//! The reply path: each connection's outbound buffer.
//!
//! A worker encodes its response straight into the connection's pending
//! buffer and, if the buffer was empty, wakes the dispatcher task that owns
//! the socket. That task swaps the whole buffer out and writes it with one
//! `write`, so every reply that became ready meanwhile goes out together.
//! The two buffers are reused, so steady state allocates nothing.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::BytesMut;
use tokio::sync::Notify;

use crate::wire::{Response, encode_response};

#[derive(Default)]
struct Pending {
    buf: BytesMut,
    replies: usize,
}

/// Where the replies of one connection wait for its dispatcher to write them.
#[derive(Default)]
pub struct ReplySink {
    pending: Mutex<Pending>,
    ready: Notify,
    /// Set when the connection is gone: replies still being computed for it
    /// are dropped instead of encoded.
    closed: AtomicBool,
}

impl ReplySink {
    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Encodes `resp` into the pending buffer; wakes the writer if it was empty.
    pub fn push(&self, resp: &Response) {
        if self.closed.load(Ordering::Relaxed) {
            return;
        }
        let mut p = self.lock();
        let was_empty = p.replies == 0;
        encode_response(resp, &mut p.buf);
        p.replies += 1;
        drop(p);
        if was_empty {
            // Stores a permit when the writer is not waiting yet: never lost.
            self.ready.notify_one();
        }
    }

    /// Swaps the pending replies into `out` (which must be empty, and whose
    /// capacity is handed back for reuse) and returns how many there were.
    pub fn take(&self, out: &mut BytesMut) -> usize {
        debug_assert!(out.is_empty());
        let mut p = self.lock();
        std::mem::swap(&mut p.buf, out);
        std::mem::take(&mut p.replies)
    }

    /// Bytes waiting to be written.
    pub fn pending_bytes(&self) -> usize {
        self.lock().buf.len()
    }

    /// Completes once a reply has been pushed since the last wake-up.
    pub async fn ready(&self) {
        self.ready.notified().await
    }

    /// Marks the connection gone; later pushes are dropped.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Relaxed);
        let mut p = self.lock();
        p.buf = BytesMut::new();
        p.replies = 0;
    }
}
