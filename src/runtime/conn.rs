//! One connection, as a state machine that does no I/O: framing, admission
//! and backpressure, the deadlines, the in-flight and reply accounting, and
//! the decision to close. The dispatcher (tokio), the thread-per-connection
//! driver (blocking) and the fuzz target all drive this one type, so every
//! architecture frames, admits, times out and closes the same way.
//!
//! ```text
//!   bytes read ──▶ Framer ──frames──▶ Service::admit ──▶ run (lb: queue; else in place)
//!                    │                      │ answers at once (decode error, AUTH)
//!   deadline  ◀── partial frame?            ▼
//!   (frame / idle)                     ReplySink ──▶ take_replies ──▶ written by the driver
//! ```
//!
//! Admission stops at `max_in_flight` requests, or when the replies owed
//! (encoded, or reserved for at admission) reach `max_outbound`; the driver
//! then stops reading, and TCP pushes back on the client. It always admits
//! one request when none is in flight, so a single reply larger than the
//! budget cannot deadlock a connection.
//!
//! **The frame timeout** runs while an incomplete frame is buffered and the
//! connection is being read: from the first byte of that frame (its length
//! prefix included), not restarted by later bytes, and reset only when a
//! frame completes.
//!
//! **Closing.** Once the connection must close (the peer finished, shutdown,
//! an oversize frame, a frame timeout, a refused authentication, the idle
//! timeout) it reads no more. Requests already read are still answered when
//! the peer finished or the server shuts down (they were read, so they are
//! owed), but not after an oversize frame or a refusal, since the stream can
//! no longer be trusted. [`Conn::finished`] turns true only when every reply
//! it owes has been taken for writing. The driver then writes them,
//! half-closes, and reads and discards input until the peer closes or
//! `linger` passes, so the kernel does not reset the connection and discard
//! replies still queued.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;

use super::Limits;
use super::exec::NotNow;
use super::frame::{Framer, RequestBudget, TooLarge};
use super::reply::{ReplySink, Responder};
use super::service::{Admission, Rejection, Service};

/// Why a connection closes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Close {
    /// The peer closed its side.
    PeerDone,
    /// The server is shutting down.
    Shutdown,
    /// A length prefix over `max_frame`.
    FrameTooLarge,
    /// A frame left unfinished for `frame_timeout`.
    FrameTimeout,
    /// The service answered and asked to close (a refused authentication).
    Refused,
    /// Nothing read and nothing owed for `idle_timeout`.
    IdleTimeout,
}

/// Which deadline [`Conn::deadline`] returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Timer {
    /// The incomplete frame must be complete by then.
    Frame,
    /// The connection is closed if still idle then.
    Idle,
}

/// One connection's state. See the module documentation.
pub struct Conn<S: Service> {
    framer: Framer,
    /// The memory budget shared by every connection's partial frames.
    budget: Arc<RequestBudget>,
    session: S::Session,
    sink: Arc<ReplySink>,
    /// Requests admitted, and answers given at admission, whose replies have
    /// not yet been taken for writing.
    in_flight: usize,
    /// `Some` once the connection must close.
    closing: Option<Close>,
    /// When the incomplete frame now buffered began to arrive, while read.
    partial_since: Option<Instant>,
    /// When something was last read or a reply taken for writing.
    last_active: Instant,
    /// An admitted request handed back to run after the replies waiting
    /// are written (see [`NotNow`]); boxed, as it is rare.
    held: Option<Box<NotNow<S>>>,
}

impl<S: Service> Conn<S> {
    /// A new connection, accepted at `now`.
    pub fn new(limits: &Limits, budget: Arc<RequestBudget>, now: Instant) -> Self {
        Self::with_sink(limits, budget, now, Arc::default())
    }

    /// A new connection whose replies go to `sink` (made before the
    /// connection, so that its dispatcher can reach it to stop it).
    pub fn with_sink(
        limits: &Limits,
        budget: Arc<RequestBudget>,
        now: Instant,
        sink: Arc<ReplySink>,
    ) -> Self {
        Conn {
            framer: Framer::new(limits.max_frame),
            budget,
            session: S::Session::default(),
            sink,
            in_flight: 0,
            closing: None,
            partial_since: None,
            last_active: now,
            held: None,
        }
    }

    /// Why it closes, once it must.
    pub fn closing(&self) -> Option<Close> {
        self.closing
    }

    fn close(&mut self, why: Close) {
        self.closing.get_or_insert(why);
        self.partial_since = None;
    }

    /// True while frames already read may still be admitted: open, or
    /// closing because the peer finished or the server shuts down.
    fn admitting(&self) -> bool {
        matches!(self.closing, None | Some(Close::PeerDone | Close::Shutdown))
    }

    /// True when admission must wait: at the in-flight cap, or with the
    /// replies owed at the outbound budget (unless nothing is in flight).
    fn paused(&self, limits: &Limits) -> bool {
        self.in_flight >= limits.max_in_flight
            || (self.in_flight > 0 && self.sink.outbound_bytes() >= limits.max_outbound)
    }

    /// Queues an answer given without running anything.
    fn answer(&mut self, response: &S::Response) {
        self.in_flight += 1;
        self.sink.push_now::<S>(response, None);
    }

    /// Admits every complete frame it may, in order: each goes through
    /// [`Service::admit`], and what must run is handed to `run` with its
    /// responder (the reply's size bound already reserved). `run` may hand
    /// a request back ([`NotNow`]: the replies waiting must go out first);
    /// admission then stops and `admit` returns true: write the replies,
    /// then call it again without waiting for input, and the request is
    /// offered first.
    pub fn admit(
        &mut self,
        svc: &S,
        limits: &Limits,
        now: Instant,
        mut run: impl FnMut(S::Request, Responder<S>) -> Result<(), NotNow<S>>,
    ) -> bool {
        if self.held.is_some() && !self.run_held(&mut run) {
            return true;
        }
        let mut completed = false;
        // The cheap test first: most rounds end on an empty buffer.
        while self.held.is_none()
            && self.framer.has_partial()
            && self.admitting()
            && !self.paused(limits)
        {
            let frame = match self.framer.next_frame() {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(TooLarge { announced }) => {
                    let why = Rejection::FrameTooLarge {
                        announced,
                        limit: limits.max_frame,
                    };
                    self.answer(&S::reject(None, &why));
                    self.close(Close::FrameTooLarge);
                    break;
                }
            };
            completed = true;
            match svc.admit(frame, &mut self.session) {
                Admission::Run {
                    request,
                    tag,
                    reply_bound,
                } => {
                    // A reply is bounded by max_frame, under 4 GiB.
                    let bound = reply_bound.min(u32::MAX as usize) as u32;
                    self.in_flight += 1;
                    self.sink.reserve(bound as usize);
                    let responder = Responder::new(self.sink.clone(), tag, bound);
                    if let Err(back) = run(request, responder) {
                        self.hold(back);
                    }
                }
                Admission::Reply(r) => self.answer(&r),
                Admission::ReplyThenClose(r) => {
                    self.answer(&r);
                    self.close(Close::Refused);
                }
            }
        }
        if completed {
            // A frame completed: whatever is left started after it.
            self.partial_since = None;
        }
        if self.framer.has_partial() && self.reading(limits) {
            self.partial_since.get_or_insert(now);
        } else {
            // Nothing incomplete, or the server is not reading (paused,
            // closing): the client is not late.
            self.partial_since = None;
        }
        self.held.is_some()
    }

    /// True when [`Conn::admit`] may have something to do without more
    /// input: a request held back, or bytes buffered (a frame to admit, or a
    /// partial one whose timeout must start now that admission may resume).
    /// A driver that has just written replies calls `admit` again only then,
    /// rather than after every write.
    pub fn may_admit(&self) -> bool {
        self.held.is_some() || self.framer.has_partial()
    }

    /// Keeps a request handed back until the replies waiting are written.
    #[cold]
    fn hold(&mut self, back: NotNow<S>) {
        self.held = Some(Box::new(back));
    }

    /// Offers the request held back again; false if it is handed back again.
    #[cold]
    fn run_held(
        &mut self,
        run: &mut impl FnMut(S::Request, Responder<S>) -> Result<(), NotNow<S>>,
    ) -> bool {
        let Some(held) = self.held.take() else {
            return true;
        };
        let (request, responder) = *held;
        match run(request, responder) {
            Ok(()) => true,
            Err(back) => {
                self.hold(back);
                false
            }
        }
    }

    /// True when the driver should read more.
    fn reading(&self, limits: &Limits) -> bool {
        self.closing.is_none() && !self.paused(limits)
    }

    /// The buffer to read into, when the connection should be read and the
    /// shared request budget allows; `None` otherwise.
    pub fn read_buf(&mut self, limits: &Limits) -> Option<&mut BytesMut> {
        if !self.reading(limits) || !self.framer.reserve(&self.budget) {
            return None;
        }
        Some(self.framer.read_buf())
    }

    /// The framer to read into with [`Framer::poll_fill`], when the
    /// connection should be read now and can be: a partly received frame
    /// needs room in the connection's own buffer, which the shared request
    /// budget must allow. `None` otherwise.
    pub fn input(&mut self, limits: &Limits) -> Option<&mut Framer> {
        let can = self.reading(limits)
            && (!self.framer.has_partial() || self.framer.reserve(&self.budget));
        can.then_some(&mut self.framer)
    }

    /// `n` bytes were read into [`Conn::read_buf`] at `now`.
    pub fn on_read(&mut self, n: usize, now: Instant) {
        if n > 0 {
            self.last_active = now;
        }
    }

    /// A write of replies ended at `now`: the idle clock restarts from
    /// there, not from when they were taken, since a slow reader can make a
    /// write take longer than the idle timeout.
    pub fn on_written(&mut self, now: Instant) {
        self.last_active = now;
    }

    /// The peer closed its side. The requests it sent are still answered;
    /// a partial frame at the end is dropped when the connection ends.
    pub fn on_eof(&mut self) {
        self.close(Close::PeerDone);
    }

    /// Stops admitting: the server is shutting down.
    pub fn shutdown(&mut self) {
        self.close(Close::Shutdown);
    }

    /// Takes every reply ready into `out` for writing; returns how many.
    pub fn take_replies(&mut self, out: &mut BytesMut, now: Instant) -> usize {
        let n = self.sink.take(out);
        if n > 0 {
            self.in_flight -= n.min(self.in_flight);
            self.last_active = now;
        }
        n
    }

    /// Before the connection waits: gives back read memory it no longer
    /// needs (the shared chunk, a buffer grown for a large frame).
    pub fn settle(&mut self) {
        self.framer.settle(&self.budget);
    }

    /// The next deadline, if one runs: the frame timeout while a frame is
    /// incomplete, the idle timeout while nothing is buffered or owed.
    pub fn deadline(&self, limits: &Limits) -> Option<(Instant, Timer)> {
        self.timer(limits)
            .map(|(since, limit, timer)| (since + limit, timer))
    }

    /// How long from `now` until [`Conn::deadline`]; zero once it passed.
    pub fn time_left(&self, limits: &Limits, now: Instant) -> Option<Duration> {
        let (since, limit, _) = self.timer(limits)?;
        // A timer that started at `now` itself (the idle clock, just after
        // a request) has its whole limit left: no clock arithmetic.
        if since == now {
            return Some(limit);
        }
        Some((since + limit).saturating_duration_since(now))
    }

    /// The timer that runs, if one does: since when, and for how long.
    fn timer(&self, limits: &Limits) -> Option<(Instant, Duration, Timer)> {
        if self.closing.is_some() {
            return None;
        }
        if let Some(t) = self.partial_since {
            return Some((t, limits.frame_timeout, Timer::Frame));
        }
        (self.in_flight == 0 && !self.framer.has_partial()).then_some((
            self.last_active,
            limits.idle_timeout,
            Timer::Idle,
        ))
    }

    /// A deadline from [`Conn::deadline`] passed at `now`: the connection
    /// closes (with an answer, for a frame timeout). A deadline that has
    /// since moved (more was read) is ignored.
    pub fn on_deadline(&mut self, limits: &Limits, now: Instant) {
        match self.deadline(limits) {
            Some((at, Timer::Frame)) if now >= at => {
                let why = Rejection::FrameTimeout {
                    limit: limits.frame_timeout,
                };
                self.answer(&S::reject(None, &why));
                self.close(Close::FrameTimeout);
            }
            Some((at, Timer::Idle)) if now >= at => self.close(Close::IdleTimeout),
            _ => {}
        }
    }

    /// True once the connection must close and every reply it owes has been
    /// taken for writing: the driver writes them, then closes gracefully.
    pub fn finished(&self) -> bool {
        self.closing.is_some()
            && self.in_flight == 0
            && !(self.admitting() && self.framer.has_complete())
    }

    /// Requests and answers owed.
    #[cfg(test)]
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }
}

impl<S: Service> Drop for Conn<S> {
    /// However the connection ends (closed, or its task aborted at the drain
    /// timeout), replies still being computed for it are dropped, and its
    /// read memory goes back to the shared budget.
    fn drop(&mut self) {
        if self.framer.has_partial() {
            tracing::debug!(
                bytes = self.framer.buffered(),
                "connection ended mid-frame; partial frame dropped"
            );
        }
        self.sink.close();
        self.framer.clear(&self.budget);
    }
}

/// Feeds `input` to one connection of `svc`, `chunk` bytes per read,
/// running what it admits in place, then closes the peer's side; returns
/// every byte the server would write, and why the connection closed. The
/// fuzz target's entry point: it drives this state machine and the real
/// executor, not a copy of them.
pub fn drive<S: Service>(
    svc: &S,
    limits: &Limits,
    input: &[u8],
    chunk: usize,
) -> (Vec<u8>, Option<Close>) {
    let metrics = super::metrics::Metrics::new(1, 1);
    let exec: super::exec::Exec<S> = super::exec::Exec::Inline;
    let runtime = |_: &mut Vec<(String, u64)>| {};
    let exec_ctx = super::service::ExecContext {
        slot: 0,
        runtime: &runtime,
    };
    let budget = Arc::new(RequestBudget::new(limits.max_request_memory));
    let mut conn = Conn::<S>::new(limits, budget, Instant::now());
    let (mut written, mut out) = (Vec::new(), BytesMut::new());
    let mut step = |conn: &mut Conn<S>| {
        let mut more = true;
        while more {
            let now = Instant::now();
            let round = super::exec::Round::new(now);
            more = conn.admit(svc, limits, now, |r, responder| {
                exec.submit(svc, &metrics, &exec_ctx, r, responder, &round)
            });
            conn.take_replies(&mut out, now);
            written.extend_from_slice(&out);
            out.clear();
        }
    };
    for piece in input.chunks(chunk.max(1)) {
        step(&mut conn);
        let Some(buf) = conn.read_buf(limits) else {
            break;
        };
        buf.extend_from_slice(piece);
        conn.on_read(piece.len(), Instant::now());
    }
    step(&mut conn);
    conn.on_eof();
    step(&mut conn);
    (written, conn.closing())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::service::{EncodeError, ExecContext};
    use bytes::{BufMut, Bytes};
    use std::time::Duration;

    /// A service whose frames are their own requests: "close" is refused and
    /// closes, "bad" is answered at admission, anything else runs and is
    /// echoed. Responses are frames of their text.
    struct Echo;

    impl Service for Echo {
        type Request = Bytes;
        type Response = Bytes;
        type Session = ();
        type Tag = ();

        fn admit(&self, frame: Bytes, _: &mut ()) -> Admission<Self> {
            match &frame[..] {
                b"close" => Admission::ReplyThenClose(Bytes::from_static(b"refused")),
                b"bad" => Admission::Reply(Bytes::from_static(b"invalid")),
                _ => Admission::Run {
                    reply_bound: frame.len() + 4,
                    request: frame,
                    tag: (),
                },
            }
        }

        fn execute(&self, r: Bytes, _: &ExecContext<'_>) -> Bytes {
            r
        }

        fn encode(r: &Bytes, out: &mut BytesMut) -> Result<(), EncodeError> {
            out.put_u32(r.len() as u32);
            out.put_slice(r);
            Ok(())
        }

        fn reject(_: Option<()>, why: &Rejection) -> Bytes {
            Bytes::from(why.to_string())
        }

        fn figures(&self, _: &mut Vec<(String, u64)>) {}
    }

    fn limits() -> Limits {
        Limits {
            max_frame: 64,
            max_in_flight: 3,
            max_outbound: 1 << 20,
            frame_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(10),
            ..Limits::default()
        }
    }

    fn conn(now: Instant) -> Conn<Echo> {
        Conn::new(&limits(), Arc::new(RequestBudget::new(1 << 20)), now)
    }

    fn framed(body: &[u8]) -> Vec<u8> {
        let mut v = (body.len() as u32).to_be_bytes().to_vec();
        v.extend_from_slice(body);
        v
    }

    /// Feeds `bytes` as one read at `now` and admits, keeping the responders.
    fn feed(c: &mut Conn<Echo>, bytes: &[u8], now: Instant, held: &mut Vec<Responder<Echo>>) {
        let l = limits();
        if !bytes.is_empty() {
            let buf = c.read_buf(&l).expect("reading");
            buf.extend_from_slice(bytes);
            c.on_read(bytes.len(), now);
        }
        c.admit(&Echo, &l, now, |req, responder| {
            let _ = req;
            held.push(responder);
            Ok(())
        });
    }

    /// The bodies of the replies written so far.
    fn replies(c: &mut Conn<Echo>) -> Vec<String> {
        let mut out = BytesMut::new();
        c.take_replies(&mut out, Instant::now());
        let mut v = Vec::new();
        while out.len() >= 4 {
            let n = u32::from_be_bytes([out[0], out[1], out[2], out[3]]) as usize;
            let body = out.split_to(4 + n);
            v.push(String::from_utf8_lossy(&body[4..]).into_owned());
        }
        v
    }

    #[test]
    fn a_request_handed_back_stops_admission_and_is_offered_first_next_time() {
        let t0 = Instant::now();
        let mut c = conn(t0);
        let l = limits();
        let bytes: Vec<u8> = ["a", "b", "c"]
            .iter()
            .flat_map(|b| framed(b.as_bytes()))
            .collect();
        let buf = c.read_buf(&l).expect("reading");
        buf.extend_from_slice(&bytes);
        c.on_read(bytes.len(), t0);
        let mut seen = Vec::new();
        // "a" runs and answers at once; "b" finds its reply waiting and is
        // handed back: admission stops before "c".
        let more = c.admit(&Echo, &l, t0, |req, responder| {
            let waiting = responder.replies_waiting();
            seen.push((String::from_utf8_lossy(&req).into_owned(), waiting));
            if waiting {
                return Err((req, responder));
            }
            responder.respond(&req);
            Ok(())
        });
        assert!(more, "call again after writing");
        assert_eq!(seen, [("a".into(), false), ("b".into(), true)]);
        assert_eq!(replies(&mut c), ["a"]);
        seen.clear();
        let more = c.admit(&Echo, &l, t0, |req, responder| {
            seen.push((
                String::from_utf8_lossy(&req).into_owned(),
                responder.replies_waiting(),
            ));
            responder.respond(&req);
            Ok(())
        });
        assert!(!more);
        assert_eq!(seen, [("b".into(), false), ("c".into(), true)], "b first");
        assert_eq!(replies(&mut c), ["b", "c"]);
    }

    #[test]
    fn admission_stops_at_the_in_flight_cap_and_resumes_as_replies_go() {
        let t0 = Instant::now();
        let mut c = conn(t0);
        let mut held = Vec::new();
        let bytes: Vec<u8> = (0..5)
            .flat_map(|i| framed(format!("r{i}").as_bytes()))
            .collect();
        feed(&mut c, &bytes, t0, &mut held);
        assert_eq!(held.len(), 3, "the cap is 3");
        assert!(c.read_buf(&limits()).is_none(), "paused: no reading");
        for (r, body) in held.drain(..).zip(["r0", "r1", "r2"]) {
            r.respond(&Bytes::from(body));
        }
        assert_eq!(replies(&mut c), ["r0", "r1", "r2"]);
        feed(&mut c, &[], t0, &mut held);
        assert_eq!(
            held.len(),
            2,
            "the rest admitted once the replies were taken"
        );
    }

    #[test]
    fn requests_read_before_a_shutdown_or_the_peers_close_are_still_answered() {
        // Five requests read, the cap at three: at shutdown the two held
        // back were read, so they are owed, and are admitted as room frees.
        for close in [Close::Shutdown, Close::PeerDone] {
            let t0 = Instant::now();
            let mut c = conn(t0);
            let mut held = Vec::new();
            let bytes: Vec<u8> = (0..5)
                .flat_map(|i| framed(format!("r{i}").as_bytes()))
                .collect();
            feed(&mut c, &bytes, t0, &mut held);
            match close {
                Close::Shutdown => c.shutdown(),
                _ => c.on_eof(),
            }
            assert_eq!(held.len(), 3);
            for r in held.drain(..) {
                r.respond(&Bytes::from_static(b"x"));
            }
            assert_eq!(replies(&mut c).len(), 3);
            assert!(!c.finished(), "{close:?}: two requests read are still owed");
            feed(&mut c, &[], t0, &mut held);
            assert_eq!(held.len(), 2, "{close:?}");
            for r in held.drain(..) {
                r.respond(&Bytes::from_static(b"x"));
            }
            assert_eq!(replies(&mut c).len(), 2);
            assert!(c.finished());
        }
    }

    #[test]
    fn a_dropped_responder_still_answers() {
        let t0 = Instant::now();
        let mut c = conn(t0);
        let mut held = Vec::new();
        feed(&mut c, &framed(b"x"), t0, &mut held);
        drop(held); // a panic, a shed task, a torn-down pool
        assert_eq!(replies(&mut c), [Rejection::Internal.to_string()]);
        assert_eq!(c.in_flight(), 0);
    }

    #[test]
    fn the_frame_timeout_runs_from_the_first_byte_and_is_not_restarted() {
        let t0 = Instant::now();
        let l = limits();
        let mut c = conn(t0);
        let mut held = Vec::new();
        // A complete length prefix, then silence: the frame has started.
        feed(&mut c, &8u32.to_be_bytes()[..2], t0, &mut held);
        assert_eq!(c.deadline(&l), Some((t0 + l.frame_timeout, Timer::Frame)));
        // More of it later does not move the deadline.
        feed(
            &mut c,
            &8u32.to_be_bytes()[2..],
            t0 + Duration::from_millis(600),
            &mut held,
        );
        assert_eq!(c.deadline(&l), Some((t0 + l.frame_timeout, Timer::Frame)));
        c.on_deadline(&l, t0 + l.frame_timeout);
        assert_eq!(c.closing(), Some(Close::FrameTimeout));
        assert!(replies(&mut c)[0].contains("incomplete frame"));
        assert!(c.finished());
    }

    #[test]
    fn a_completed_frame_resets_the_frame_clock_for_the_next() {
        let t0 = Instant::now();
        let l = limits();
        let mut c = conn(t0);
        let mut held = Vec::new();
        feed(&mut c, &framed(b"abc")[..5], t0, &mut held);
        let later = t0 + Duration::from_millis(900);
        let mut rest = framed(b"abc")[5..].to_vec();
        rest.extend_from_slice(&framed(b"next")[..3]);
        feed(&mut c, &rest, later, &mut held);
        assert_eq!(held.len(), 1);
        assert_eq!(
            c.deadline(&l),
            Some((later + l.frame_timeout, Timer::Frame))
        );
    }

    #[test]
    fn idle_runs_only_with_nothing_buffered_or_owed() {
        let t0 = Instant::now();
        let l = limits();
        let mut c = conn(t0);
        assert_eq!(c.deadline(&l), Some((t0 + l.idle_timeout, Timer::Idle)));
        let mut held = Vec::new();
        feed(&mut c, &framed(b"slow"), t0, &mut held);
        assert_eq!(c.deadline(&l), None, "a request in flight is not idleness");
        c.on_deadline(&l, t0 + l.idle_timeout * 2);
        assert_eq!(c.closing(), None);
    }

    #[test]
    fn an_oversize_prefix_answers_then_closes_after_earlier_replies() {
        let t0 = Instant::now();
        let mut c = conn(t0);
        let mut held = Vec::new();
        let mut bytes = framed(b"first");
        bytes.extend_from_slice(&1000u32.to_be_bytes());
        feed(&mut c, &bytes, t0, &mut held);
        assert_eq!(c.closing(), Some(Close::FrameTooLarge));
        assert!(!c.finished(), "the first request is still owed its reply");
        held.pop().unwrap().respond(&Bytes::from_static(b"first"));
        let r = replies(&mut c);
        assert!(
            r[0].contains("exceeds the 64-byte limit") && r[1] == "first",
            "{r:?}"
        );
        assert!(c.finished());
    }

    #[test]
    fn a_refusal_answers_and_closes_and_nothing_after_it_is_admitted() {
        let t0 = Instant::now();
        let mut c = conn(t0);
        let mut held = Vec::new();
        let bytes = [framed(b"bad"), framed(b"close"), framed(b"never")].concat();
        feed(&mut c, &bytes, t0, &mut held);
        assert!(held.is_empty());
        assert_eq!(replies(&mut c), ["invalid", "refused"]);
        assert_eq!(c.closing(), Some(Close::Refused));
        assert!(c.finished());
    }
}
