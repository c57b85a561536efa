//! The reply path: each connection's outbound buffer, and the obligation to
//! answer every admitted request exactly once.
//!
//! Whoever finishes a request (a worker, or the thread that read it) encodes
//! the response straight into the connection's [`ReplySink`] and, if the
//! buffer was empty and the dispatcher task that owns the socket is waiting,
//! wakes it. That task swaps the whole buffer out and writes it in one
//! `write`, so every reply that became ready meanwhile goes out together.
//! The two buffers are reused, so steady state allocates nothing.
//!
//! **A wake-up only for a dispatcher that waits.** The dispatcher announces
//! that it is about to wait, then looks for replies once more; a pusher
//! counts its reply, then looks for the announcement. Both steps are
//! sequentially consistent, so at least one side sees the other: either the
//! dispatcher finds the reply, or the pusher wakes it. A reply pushed while
//! the dispatcher is busy (always so when it runs requests itself) costs no
//! wake-up at all.
//!
//! **The reply obligation is a value.** Every admitted request travels with a
//! [`Responder`]. Using it sends the response; dropping it unused — a
//! panicking handler, a task shed or torn down with the pool — sends the
//! service's INTERNAL answer instead. So no connection can wait forever for a
//! reply that will never come.
//!
//! **Shutdown arrives the same way.** [`ReplySink::request_stop`] sets a flag
//! that the dispatcher task finds where it looks for replies, and wakes it,
//! so a connection's wait needs no shutdown branch of its own, polled every
//! round.
//!
//! **Reply memory is bounded.** At admission the dispatcher reserves the
//! service's bound on the reply's size against the connection's
//! `max_outbound`, and stops admitting while reserved plus unwritten bytes
//! exceed it; the reservation turns into the reply's real size when it is
//! encoded, and that is released when it is written.

use std::marker::PhantomData;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use atomic_waker::AtomicWaker;
use bytes::BytesMut;
use parking_lot::Mutex;

use super::service::{Rejection, Service};

/// Above this, a write buffer that grew for large replies is not kept.
const KEEP_BUFFER: usize = 64 * 1024;

#[derive(Default)]
struct Pending {
    buf: BytesMut,
    replies: usize,
}

/// Where the replies of one connection wait for its dispatcher to write them.
#[derive(Default)]
pub struct ReplySink {
    pending: Mutex<Pending>,
    /// The dispatcher task to wake, registered while it waits.
    waker: AtomicWaker,
    /// Replies pushed and not yet taken (`pending.replies`, readable
    /// without the lock).
    queued: AtomicUsize,
    /// Bytes encoded and not yet taken (`pending.buf.len()`, likewise).
    encoded: AtomicUsize,
    /// The dispatcher is about to wait, or waits, for a reply.
    waiting: AtomicBool,
    /// Bytes reserved at admission for replies not yet encoded.
    reserved: AtomicUsize,
    /// Set when the connection is gone: replies still being computed for it
    /// are dropped instead of encoded.
    closed: AtomicBool,
    /// Set when the server shuts down, until the dispatcher task takes it.
    stop: AtomicBool,
}

impl ReplySink {
    fn lock(&self) -> parking_lot::MutexGuard<'_, Pending> {
        self.pending.lock()
    }

    /// Reserves `n` bytes for a reply to come (see [`Responder`]).
    pub fn reserve(&self, n: usize) {
        self.reserved.fetch_add(n, Ordering::Relaxed);
    }

    /// Encodes `response` (for the request tagged `tag`) into the pending
    /// buffer, releases the reservation made for it, and wakes the writer if
    /// the buffer was empty. An encoder that fails or panics leaves the
    /// buffer as it was, and the service's INTERNAL answer is sent instead.
    fn push<S: Service>(&self, response: &S::Response, tag: Option<S::Tag>, reserved: usize) {
        if self.closed.load(Ordering::Relaxed) {
            self.reserved.fetch_sub(reserved, Ordering::Relaxed);
            return;
        }
        let mut p = self.lock();
        let was_empty = p.replies == 0;
        let before = p.buf.len();
        let encoded = catch_unwind(AssertUnwindSafe(|| S::encode(response, &mut p.buf)));
        if !matches!(encoded, Ok(Ok(()))) {
            p.buf.truncate(before);
            tracing::error!("a response could not be encoded; answering INTERNAL");
            let fallback = S::reject(tag, &Rejection::Internal);
            let retry = catch_unwind(AssertUnwindSafe(|| S::encode(&fallback, &mut p.buf)));
            if !matches!(retry, Ok(Ok(()))) {
                // Even the error reply does not encode: nothing can be said.
                p.buf.truncate(before);
            }
        }
        p.replies += 1;
        self.encoded
            .fetch_add(p.buf.len() - before, Ordering::Relaxed);
        self.queued.fetch_add(1, Ordering::SeqCst);
        drop(p);
        self.reserved.fetch_sub(reserved, Ordering::Relaxed);
        if was_empty && self.waiting.load(Ordering::SeqCst) {
            // If the dispatcher has not registered its waker yet, it checks
            // `queued` after registering, and finds this reply: never lost.
            self.waker.wake();
        }
    }

    /// Sends an answer that needs no reservation (one the connection itself
    /// produced: a decode error, a refusal, a timeout).
    pub fn push_now<S: Service>(&self, response: &S::Response, tag: Option<S::Tag>) {
        self.push::<S>(response, tag, 0);
    }

    /// Swaps the pending replies into `out` (which must be empty, and whose
    /// capacity is handed back for reuse) and returns how many there were.
    pub fn take(&self, out: &mut BytesMut) -> usize {
        debug_assert!(out.is_empty());
        if out.capacity() > KEEP_BUFFER {
            // It grew for a large reply: do not keep it for good.
            *out = BytesMut::new();
        }
        if self.queued.load(Ordering::Relaxed) == 0 {
            return 0; // nothing to swap: skip the lock
        }
        let mut p = self.lock();
        std::mem::swap(&mut p.buf, out);
        self.encoded.store(0, Ordering::Relaxed);
        self.queued.store(0, Ordering::Relaxed);
        std::mem::take(&mut p.replies)
    }

    /// Whether replies wait to be taken.
    pub fn has_replies(&self) -> bool {
        self.queued.load(Ordering::Relaxed) > 0
    }

    /// Bytes of replies encoded and not yet taken, plus those reserved for
    /// replies to come: what `max_outbound` bounds.
    pub fn outbound_bytes(&self) -> usize {
        self.encoded.load(Ordering::Relaxed) + self.reserved.load(Ordering::Relaxed)
    }

    /// Completes once a reply is waiting to be taken, or a stop was
    /// requested and not yet taken. Announces the wait
    /// first (see the module documentation), and withdraws it when the
    /// future completes or is dropped.
    pub fn ready(&self) -> Ready<'_> {
        Ready { sink: self }
    }

    /// Tells the connection's task that the server shuts down, and wakes it
    /// if it waits (see [`ReplySink::take_stop`]).
    pub fn request_stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        self.waker.wake();
    }

    /// True once after [`ReplySink::request_stop`]: the caller stops
    /// admitting. (Taken, so that a later wait does not end at once again.)
    pub fn take_stop(&self) -> bool {
        self.stop.load(Ordering::Relaxed) && self.stop.swap(false, Ordering::Relaxed)
    }

    /// Marks the connection gone; later pushes are dropped.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Relaxed);
        let mut p = self.lock();
        p.buf = BytesMut::new();
        p.replies = 0;
        self.encoded.store(0, Ordering::Relaxed);
        self.queued.store(0, Ordering::Relaxed);
    }
}

/// The future [`ReplySink::ready`] returns. Polling it announces the wait,
/// registers the task's waker, then looks for a reply or a stop request: one
/// that comes after the announcement either is seen here or wakes the waker
/// registered.
pub struct Ready<'a> {
    sink: &'a ReplySink,
}

impl std::future::Future for Ready<'_> {
    type Output = ();

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        let sink = self.sink;
        sink.waiting.store(true, Ordering::SeqCst);
        sink.waker.register(cx.waker());
        if sink.queued.load(Ordering::SeqCst) > 0 || sink.stop.load(Ordering::SeqCst) {
            sink.waiting.store(false, Ordering::Relaxed);
            return std::task::Poll::Ready(());
        }
        std::task::Poll::Pending
    }
}

impl Drop for Ready<'_> {
    fn drop(&mut self) {
        self.sink.waiting.store(false, Ordering::Relaxed);
    }
}

/// The obligation to answer one admitted request. See the module documentation.
///
/// Kept small: it travels inside every queued task, and a task over 128
/// bytes is moved with a `memcpy` call, three times per request.
pub struct Responder<S: Service> {
    sink: std::sync::Arc<ReplySink>,
    tag: S::Tag,
    /// Bytes reserved on the sink for the reply (at most `max_frame`, < 4 GiB).
    reserved: u32,
    /// Set once the answer is sent, so dropping the responder sends nothing.
    answered: bool,
    _service: PhantomData<fn() -> S>,
}

impl<S: Service> Responder<S> {
    /// The responder for a request tagged `tag`, with `reserved` bytes
    /// (under 4 GiB) already reserved on `sink` for its reply.
    pub fn new(sink: std::sync::Arc<ReplySink>, tag: S::Tag, reserved: u32) -> Self {
        Responder {
            sink,
            tag,
            reserved,
            answered: false,
            _service: PhantomData,
        }
    }

    /// Whether replies on its connection wait to be written.
    pub fn replies_waiting(&self) -> bool {
        self.sink.has_replies()
    }

    /// Sends the response.
    pub fn respond(mut self, response: &S::Response) {
        self.answered = true;
        let (tag, reserved) = (Some(self.tag), self.reserved as usize);
        self.sink.push::<S>(response, tag, reserved);
    }

    /// Sends the service's answer for a request the runtime did not run.
    pub fn reject(mut self, why: &Rejection) {
        self.answered = true;
        let (tag, reserved) = (Some(self.tag), self.reserved as usize);
        self.sink.push::<S>(&S::reject(tag, why), tag, reserved);
    }
}

impl<S: Service> Drop for Responder<S> {
    fn drop(&mut self) {
        if !self.answered {
            let tag = Some(self.tag);
            let answer = S::reject(tag, &Rejection::Internal);
            self.sink.push::<S>(&answer, tag, self.reserved as usize);
        }
    }
}
