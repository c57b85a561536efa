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

use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::{Bytes, BytesMut};

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

/// One connection's incoming bytes and the frames in them.
#[derive(Debug)]
pub struct Framer {
    buf: BytesMut,
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
            max_frame,
            charged: 0,
        }
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
    pub fn next_frame(&mut self) -> Result<Option<Bytes>, TooLarge> {
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
        let _ = frame.split_to(HEADER_LEN);
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
}
