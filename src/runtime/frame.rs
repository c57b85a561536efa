//! Cutting a connection's byte stream into frames: a 4-byte big-endian
//! length, then that many bytes of body.
//!
//! Bytes are read into one buffer, and each complete frame is split off it
//! without a copy. The buffer never grows for a frame's *announced* length,
//! only for bytes that have arrived: a client that announces 4 MiB frames on
//! ten thousand connections and sends nothing more costs nothing. What a
//! connection does hold beyond one read chunk is charged to a
//! [`RequestBudget`] shared by all connections, so the total memory of
//! partially received requests is bounded too.
//!
//! **Idle connections hold no buffer.** A dispatcher's connection with no
//! frame partly received reads into its thread's shared chunk
//! ([`Framer::poll_fill`], which borrows it only while a read is polled):
//! the frames cut from those bytes share the chunk, and once they are taken
//! the connection keeps nothing. Only a partly received frame is copied into
//! a buffer of the connection's own ([`Framer::settle`]), so it pins its own
//! bytes and not the chunk. Ten thousand idle connections cost no read
//! memory at all; a busy dispatcher allocates one chunk per ~48 KiB read
//! across all its connections instead of one per connection.

use std::cell::RefCell;
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Poll, ready};

use bytes::{Buf, Bytes, BytesMut};

/// Bytes in a frame header.
pub const HEADER_LEN: usize = 4;

/// How much buffer a connection reads into at a time, and keeps without
/// charging the shared budget.
pub const READ_CHUNK: usize = 64 * 1024;

/// A length prefix over the limit. The stream cannot be resynchronised.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TooLarge {
    /// The length the prefix announced.
    pub announced: u64,
}

/// The memory that partially received requests may hold across every
/// connection, beyond one [`READ_CHUNK`] each (`max_request_memory`).
#[derive(Debug)]
pub struct RequestBudget {
    used: AtomicUsize,
    limit: usize,
}

impl RequestBudget {
    /// A budget of `limit` bytes.
    pub fn new(limit: usize) -> Self {
        RequestBudget {
            used: AtomicUsize::new(0),
            limit,
        }
    }

    /// Takes `n` bytes if they fit.
    fn try_take(&self, n: usize) -> bool {
        self.used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |u| {
                u.checked_add(n).filter(|&t| t <= self.limit)
            })
            .is_ok()
    }

    fn give_back(&self, n: usize) {
        self.used.fetch_sub(n, Ordering::Relaxed);
    }

    /// Bytes charged now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }
}

thread_local! {
    /// The thread's read chunk for connections with no partial frame.
    static CHUNK: RefCell<BytesMut> = RefCell::new(BytesMut::new());
}

/// One connection's incoming bytes and the frames in them.
#[derive(Debug)]
pub struct Framer {
    buf: BytesMut,
    /// `buf` was split off the thread's shared chunk (and pins it).
    in_chunk: bool,
    max_frame: usize,
    /// Capacity beyond READ_CHUNK charged to the shared budget.
    charged: usize,
}

impl Framer {
    /// A framer for frames of at most `max_frame` bytes. It holds no memory
    /// until something is read.
    pub fn new(max_frame: usize) -> Self {
        Framer {
            buf: BytesMut::new(),
            in_chunk: false,
            max_frame,
            charged: 0,
        }
    }

    /// Polls `read`, a read into the buffer it is given: the thread's
    /// shared chunk when no frame is partly received, else this
    /// connection's own buffer, which the caller has made room in with
    /// [`Framer::reserve`]. `read` must leave the buffer as it was when it
    /// returns `Pending`, as `poll_read` does.
    pub fn poll_fill(
        &mut self,
        read: impl FnOnce(&mut BytesMut) -> Poll<io::Result<usize>>,
    ) -> Poll<io::Result<usize>> {
        if !self.buf.is_empty() {
            return read(&mut self.buf);
        }
        CHUNK.with_borrow_mut(|chunk| {
            if chunk.capacity() - chunk.len() < READ_CHUNK / 4 {
                *chunk = BytesMut::with_capacity(READ_CHUNK);
            }
            let n = ready!(read(chunk))?;
            self.buf = chunk.split();
            self.in_chunk = true;
            Poll::Ready(Ok(n))
        })
    }

    /// Before the connection waits: lets go of the shared chunk (copying a
    /// partly received frame out of it), and of what [`Framer::shrink`]
    /// gives back.
    #[inline]
    pub fn settle(&mut self, budget: &RequestBudget) {
        // A blocking driver reads into the connection's own buffer, and
        // between its requests there is nearly always nothing to give back:
        // that check stays inline. (A dispatcher's read into the shared
        // chunk always has something to do here.)
        let spare = self.buf.is_empty() && (self.charged > 0 || self.buf.capacity() > READ_CHUNK);
        if self.in_chunk || spare {
            self.settle_now(budget);
        }
    }

    #[inline(never)]
    fn settle_now(&mut self, budget: &RequestBudget) {
        if std::mem::take(&mut self.in_chunk) {
            self.buf = match self.buf.is_empty() {
                true => BytesMut::new(),
                false => BytesMut::from(&self.buf[..]),
            };
        }
        self.shrink(budget);
    }

    /// Makes room to read into: at least a quarter chunk free, and for a
    /// frame being received, room for the part of it already announced, up
    /// to one more chunk. Growth past one chunk is charged to `budget`;
    /// `false` when the budget cannot cover it, and the caller should not read.
    pub fn reserve(&mut self, budget: &RequestBudget) -> bool {
        if self.buf.capacity() - self.buf.len() >= READ_CHUNK / 4 {
            return true;
        }
        let want = (self.buf.len() + READ_CHUNK).max(READ_CHUNK);
        let extra = want.saturating_sub(READ_CHUNK).saturating_sub(self.charged);
        if extra > 0 {
            if !budget.try_take(extra) {
                return false;
            }
            self.charged += extra;
        }
        self.buf.reserve(want - self.buf.len());
        true
    }

    /// The buffer to read into (after [`Framer::reserve`]).
    pub fn read_buf(&mut self) -> &mut BytesMut {
        &mut self.buf
    }

    /// Splits off the next complete frame's body, if one has arrived.
    #[inline]
    pub fn next_frame(&mut self) -> Result<Option<Bytes>, TooLarge> {
        // An empty buffer, the usual state after the last frame of a read,
        // is answered without a call.
        if self.buf.len() < HEADER_LEN {
            return Ok(None);
        }
        self.split_frame()
    }

    #[inline(never)]
    fn split_frame(&mut self) -> Result<Option<Bytes>, TooLarge> {
        let Some(header) = self.buf.get(..HEADER_LEN) else {
            return Ok(None);
        };
        let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
        if len > self.max_frame {
            return Err(TooLarge {
                announced: len as u64,
            });
        }
        if self.buf.len() < HEADER_LEN + len {
            return Ok(None);
        }
        let mut frame = self.buf.split_to(HEADER_LEN + len);
        // Skipping the prefix moves a pointer; splitting it off would make
        // (and drop) a second handle on the shared buffer.
        frame.advance(HEADER_LEN);
        Ok(Some(frame.freeze()))
    }

    /// True when a whole frame (of an acceptable size) is buffered.
    pub fn has_complete(&self) -> bool {
        self.buf.get(..HEADER_LEN).is_some_and(|h| {
            let len = u32::from_be_bytes([h[0], h[1], h[2], h[3]]) as usize;
            len <= self.max_frame && self.buf.len() >= HEADER_LEN + len
        })
    }

    /// True while part of a frame is buffered (after the complete ones are
    /// taken): the state in which the frame timeout runs.
    pub fn has_partial(&self) -> bool {
        !self.buf.is_empty()
    }

    /// Bytes buffered.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Drops what was read and gives the memory back, as a connection ends.
    pub fn clear(&mut self, budget: &RequestBudget) {
        self.buf = BytesMut::new();
        self.in_chunk = false;
        budget.give_back(std::mem::take(&mut self.charged));
    }

    /// When nothing is buffered, gives back what was charged, and a buffer
    /// that grew for a large frame: the next read starts from a fresh chunk.
    pub fn shrink(&mut self, budget: &RequestBudget) {
        if !self.buf.is_empty() {
            return;
        }
        budget.give_back(std::mem::take(&mut self.charged));
        if self.buf.capacity() > READ_CHUNK {
            self.buf = BytesMut::new();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(body: &[u8]) -> Vec<u8> {
        let mut f = (body.len() as u32).to_be_bytes().to_vec();
        f.extend_from_slice(body);
        f
    }

    #[test]
    fn frames_split_across_reads_come_out_whole() {
        let budget = RequestBudget::new(1 << 20);
        let mut f = Framer::new(1024);
        let bytes = [framed(b"one"), framed(b""), framed(b"three")].concat();
        for chunk in bytes.chunks(3) {
            assert!(f.reserve(&budget));
            f.read_buf().extend_from_slice(chunk);
        }
        let frames: Vec<Bytes> = std::iter::from_fn(|| f.next_frame().unwrap()).collect();
        assert_eq!(frames, [&b"one"[..], b"", b"three"]);
        assert!(!f.has_partial());
    }

    #[test]
    fn a_header_alone_is_a_partial_frame_and_reserves_nothing_for_its_body() {
        // A 4-byte prefix announcing 1 MiB, then nothing: the frame has
        // started (the timeout must run) but only a chunk is held.
        let budget = RequestBudget::new(0);
        let mut f = Framer::new(4 << 20);
        assert!(f.reserve(&budget));
        f.read_buf().extend_from_slice(&(1u32 << 20).to_be_bytes());
        assert_eq!(f.next_frame(), Ok(None));
        assert!(f.has_partial());
        assert!(f.read_buf().capacity() <= READ_CHUNK);
    }

    #[test]
    fn an_oversize_prefix_is_refused_before_its_body() {
        let mut f = Framer::new(1024);
        f.read_buf().extend_from_slice(&2048u32.to_be_bytes());
        assert_eq!(f.next_frame(), Err(TooLarge { announced: 2048 }));
    }

    /// Reads as much of `data` as the framer will take; returns how much.
    fn receive(f: &mut Framer, budget: &RequestBudget, data: &[u8]) -> usize {
        let mut got = 0;
        while got < data.len() && f.reserve(budget) {
            let room = f.read_buf().capacity() - f.read_buf().len();
            let n = room.min(data.len() - got);
            f.read_buf().extend_from_slice(&data[got..got + n]);
            got += n;
        }
        got
    }

    #[test]
    fn growth_past_a_chunk_is_charged_and_stops_at_the_budget() {
        // A frame of three chunks, and a shared budget of one chunk beyond
        // the first: the framer stops taking bytes before the whole frame.
        let mut data = ((3 * READ_CHUNK) as u32).to_be_bytes().to_vec();
        data.resize(HEADER_LEN + 3 * READ_CHUNK, 7);
        let budget = RequestBudget::new(READ_CHUNK);
        let mut f = Framer::new(8 * READ_CHUNK);
        let got = receive(&mut f, &budget, &data);
        assert!(
            got < data.len(),
            "held the whole frame on a one-chunk budget"
        );
        assert!(got >= READ_CHUNK, "held only {got} bytes");
        assert!(budget.used() <= READ_CHUNK);
        f.clear(&budget);
        assert_eq!(
            budget.used(),
            0,
            "a closed connection gives its charge back"
        );

        // With room enough, the frame arrives whole, and the charge goes back
        // once it is taken.
        let budget = RequestBudget::new(8 * READ_CHUNK);
        let mut f = Framer::new(8 * READ_CHUNK);
        assert_eq!(receive(&mut f, &budget, &data), data.len());
        assert!(budget.used() > 0);
        assert_eq!(
            f.next_frame().unwrap().map(|b| b.len()),
            Some(3 * READ_CHUNK)
        );
        f.shrink(&budget);
        assert_eq!(budget.used(), 0);
    }

    /// A read that delivers `data` (as a socket's `poll_read` would).
    fn deliver(data: &[u8]) -> impl FnOnce(&mut BytesMut) -> Poll<io::Result<usize>> + '_ {
        move |b| {
            b.extend_from_slice(data);
            Poll::Ready(Ok(data.len()))
        }
    }

    /// Unwraps a read that completed.
    fn done(p: Poll<io::Result<usize>>) -> usize {
        match p {
            Poll::Ready(Ok(n)) => n,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_connection_that_read_whole_frames_holds_no_buffer_while_it_waits() {
        let budget = RequestBudget::new(0);
        let mut f = Framer::new(1024);
        let bytes = [framed(b"one"), framed(b"two")].concat();
        assert_eq!(done(f.poll_fill(deliver(&bytes))), bytes.len());
        let frames: Vec<Bytes> = std::iter::from_fn(|| f.next_frame().unwrap()).collect();
        f.settle(&budget);
        assert_eq!(f.buf.capacity(), 0, "an idle connection kept a buffer");
        assert!(!f.in_chunk);
        // The frames outlive the connection's hold on the chunk.
        assert_eq!(frames, [&b"one"[..], b"two"]);
        // Connections on one thread share the chunk: a second one's bytes
        // land in the same allocation, after the first one's.
        let mut g = Framer::new(1024);
        done(g.poll_fill(deliver(&framed(b"three"))));
        let three = g.next_frame().unwrap().unwrap();
        assert_eq!(three, &b"three"[..]);
        let gap = three.as_ptr() as usize - frames[1].as_ptr() as usize;
        assert_eq!(gap, b"two".len() + HEADER_LEN, "not the same chunk");
    }

    #[test]
    fn a_partly_received_frame_moves_to_a_buffer_of_its_own() {
        let budget = RequestBudget::new(1 << 20);
        let mut f = Framer::new(1024);
        let whole = framed(b"whole");
        let split = framed(b"split across reads");
        let first = [&whole[..], &split[..7]].concat();
        done(f.poll_fill(deliver(&first)));
        assert_eq!(f.next_frame().unwrap().unwrap(), &b"whole"[..]);
        assert_eq!(f.next_frame(), Ok(None));
        f.settle(&budget);
        // Copied out: it holds its 7 bytes, not the shared chunk.
        assert!(!f.in_chunk);
        assert_eq!((f.buf.len(), f.buf.capacity()), (7, 7));
        assert!(f.has_partial());
        // The rest is read into the connection's own buffer.
        assert!(f.reserve(&budget));
        done(f.poll_fill(deliver(&split[7..])));
        assert!(!f.in_chunk);
        assert_eq!(f.next_frame().unwrap().unwrap(), &b"split across reads"[..]);
    }
}
