//! The wire format: 4-byte big-endian length-prefixed frames, each holding one
//! protobuf message from `proto/ramkv.proto`.
//!
//! This is the only module that knows how bytes on a socket become a
//! [`Request`] and how a [`Response`] becomes bytes, so every architecture
//! (load-balanced, inline, thread-per-connection) frames identically.

use bytes::{Bytes, BytesMut};
use prost::Message;
use tokio_util::codec::LengthDelimitedCodec;

/// The protobuf types (`ramkv.v1`), generated once in the `ramkv-proto` crate
/// and shared with the client; `proto/ramkv.proto` documents them.
pub use ramkv_proto as pb;
pub use ramkv_proto::{HEADER_LEN, Request, Response, Status, frame_len};

/// Builds the frame splitter. The codec rejects a frame whose header announces
/// more than `max_frame_len` bytes before allocating anything for it.
pub fn frame_codec(max_frame_len: usize) -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .big_endian()
        .length_field_length(HEADER_LEN)
        .max_frame_length(max_frame_len)
        .new_codec()
}

/// Why a frame whose framing was intact could not be turned into a request.
#[derive(Debug, thiserror::Error)]
#[error("request does not decode as ramkv.v1.Request: {source}")]
pub struct DecodeError {
    /// The request id, when at least that much of the frame was readable, so
    /// that the error reply can still be matched by the client.
    pub id: u64,
    #[source]
    source: prost::DecodeError,
}

/// Reads the request id from the front of a damaged frame. Encoders write
/// fields in tag order, so field 1 (a varint) comes first when present.
fn leading_id(mut frame: &[u8]) -> u64 {
    const ID_KEY: u64 = 1 << 3; // field 1, wire type 0 (varint)
    match prost::encoding::decode_varint(&mut frame) {
        Ok(ID_KEY) => prost::encoding::decode_varint(&mut frame).unwrap_or(0),
        _ => 0,
    }
}

/// Decodes one frame body (without its length header). `bytes` fields of the
/// result are zero-copy slices of `frame`.
pub fn decode_request(frame: Bytes) -> Result<Request, DecodeError> {
    Request::decode(frame.clone()).map_err(|source| DecodeError {
        id: leading_id(&frame),
        source,
    })
}

/// Appends `resp` as one frame to `out`. Every response the service builds is
/// bounded by `--max-frame` (at most 4 GiB), so the frame always fits; one
/// that did not would be replaced by an INTERNAL reply rather than cut short.
pub fn encode_response(resp: &Response, out: &mut BytesMut) {
    if let Err(e) = ramkv_proto::encode_frame(resp, out) {
        let fallback = error_response(resp.id, Status::Internal, e.to_string());
        // A short error message always fits.
        let _ = ramkv_proto::encode_frame(&fallback, out);
    }
}

/// A response with only an id, a status and a message: the shape of every error.
pub fn error_response(id: u64, status: Status, message: impl Into<String>) -> Response {
    Response {
        id,
        status: status as i32,
        message: message.into(),
        result: None,
    }
}

/// The frame a connection past `--max-connections` gets before it is closed.
pub fn too_many_connections_frame(limit: usize) -> BytesMut {
    let mut frame = BytesMut::new();
    let msg = format!("too many connections (limit {limit}); try again later");
    encode_response(&error_response(0, Status::Overloaded, msg), &mut frame);
    frame
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_util::codec::Decoder;

    #[test]
    fn frames_round_trip_through_the_codec() {
        let resp = error_response(7, Status::NotFound, "no such key");
        let mut buf = BytesMut::new();
        encode_response(&resp, &mut buf);
        encode_response(&resp, &mut buf);
        assert_eq!(buf.len(), 2 * frame_len(&resp));
        let mut codec = frame_codec(1024);
        for _ in 0..2 {
            let frame = codec.decode(&mut buf).unwrap().unwrap();
            assert_eq!(Response::decode(frame.freeze()).unwrap(), resp);
        }
        assert!(codec.decode(&mut buf).unwrap().is_none());
    }

    #[test]
    fn oversize_header_is_rejected_before_the_body_arrives() {
        let mut buf = BytesMut::from(&[0x7f, 0xff, 0xff, 0xff][..]);
        assert!(frame_codec(1024).decode(&mut buf).is_err());
    }

    #[test]
    fn damaged_request_keeps_its_id() {
        // Field 1 = 42, then a length-delimited field 2 claiming 100 bytes it lacks.
        let frame = Bytes::from_static(&[0x08, 42, 0x12, 100, 1, 2]);
        let err = decode_request(frame).unwrap_err();
        assert_eq!(err.id, 42);
        let garbage = Bytes::from_static(&[0xff, 0xff, 0xff]);
        assert_eq!(decode_request(garbage).unwrap_err().id, 0);
    }
}
