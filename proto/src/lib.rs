//! ramkv's wire protocol, in one place for every program that speaks it.
//!
//! Every message on a connection is one **frame**: a 4-byte big-endian length,
//! then that many bytes holding one protobuf message from `ramkv.proto`
//! ([`Request`] from client to server, [`Response`] back). The types are
//! generated here once, so the server, the client library and the load
//! generator share them instead of each compiling its own copy.

use bytes::{BufMut, BytesMut};

#[allow(missing_docs, clippy::all)]
mod generated {
    include!(concat!(env!("OUT_DIR"), "/ramkv.v1.rs"));
}

pub use generated::*;

/// Bytes in a frame header: the body's length, a big-endian `u32`.
pub const HEADER_LEN: usize = 4;

/// A message too long for the 4-byte length header (4 GiB or more).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameTooLarge(pub usize);

impl std::fmt::Display for FrameTooLarge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "a {}-byte message does not fit in one frame", self.0)
    }
}

impl std::error::Error for FrameTooLarge {}

/// Appends `msg` to `out` as one frame; `out` grows as needed. Fails, leaving
/// `out` unchanged, only for a message of 4 GiB or more.
pub fn encode_frame<M: prost::Message>(msg: &M, out: &mut BytesMut) -> Result<(), FrameTooLarge> {
    let len = msg.encoded_len();
    let header = u32::try_from(len).map_err(|_| FrameTooLarge(len))?;
    out.reserve(HEADER_LEN + len);
    out.put_u32(header);
    // Cannot fail: the capacity was reserved above.
    let _ = msg.encode(out);
    Ok(())
}

/// The encoded size of `msg` as a frame, header included.
pub fn frame_len<M: prost::Message>(msg: &M) -> usize {
    HEADER_LEN + msg.encoded_len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn a_frame_is_a_length_then_the_message() {
        let req = Request {
            id: 7,
            op: Some(request::Op::Ping(Ping::default())),
        };
        let mut out = BytesMut::new();
        encode_frame(&req, &mut out).unwrap();
        assert_eq!(out.len(), frame_len(&req));
        assert_eq!(out[..4], (req.encoded_len() as u32).to_be_bytes());
        assert_eq!(Request::decode(&out[4..]).unwrap(), req);
    }
}
