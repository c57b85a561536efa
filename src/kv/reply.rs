//! What the key-value service answers, and its encoding.
//!
//! Most answers are a protobuf `Response` that prost encodes. A GET that
//! found its key is answered from the stored [`Item`] itself: the reply is
//! written field by field from the store's block, so the value is copied
//! once, into the reply, with no `Response` (and no `Bytes` handle on the
//! value) built on the way. The bytes are exactly what prost writes for the
//! same `Response`; a test holds the two to it.

use bytes::{BufMut, BytesMut};
use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint, key_len};
use ramkv_proto::{HEADER_LEN, Response, Status};

use super::store::Item;
use crate::runtime::service::EncodeError;

/// Field numbers (proto/ramkv.proto): `Response.id`, `Response.result`'s
/// `get`, and `GetResult`'s `value` and `version`.
const RESPONSE_ID: u32 = 1;
const RESPONSE_GET: u32 = 4;
const GET_VALUE: u32 = 1;
const GET_VERSION: u32 = 2;

/// One answer of the key-value service.
#[derive(Debug)]
pub enum Reply {
    /// Any answer but a found GET's.
    Message(Response),
    /// A GET that found its key: status OK, the item's value and version.
    Found {
        /// The request's id.
        id: u64,
        /// The item as the GET read it.
        item: Item,
    },
}

impl From<Response> for Reply {
    fn from(r: Response) -> Self {
        Reply::Message(r)
    }
}

impl Reply {
    /// The answer's status, as `Response.status` carries it.
    pub fn status(&self) -> i32 {
        match self {
            Reply::Message(r) => r.status,
            Reply::Found { .. } => Status::Ok as i32,
        }
    }

    /// Sets the id of the request answered.
    pub fn set_id(&mut self, to: u64) {
        match self {
            Reply::Message(r) => r.id = to,
            Reply::Found { id, .. } => *id = to,
        }
    }

    /// Appends the answer to `out` as one frame.
    pub fn encode(&self, out: &mut BytesMut) -> Result<(), EncodeError> {
        match self {
            Reply::Message(r) => {
                ramkv_proto::encode_frame(r, out).map_err(|e| EncodeError(e.to_string()))
            }
            Reply::Found { id, item } => encode_found(*id, item, out),
        }
    }
}

/// A varint field's encoded length; proto3 leaves out a zero.
fn varint_field_len(tag: u32, v: u64) -> usize {
    if v == 0 {
        0
    } else {
        key_len(tag) + encoded_len_varint(v)
    }
}

/// The frame prost would write for `Response { id, status: OK, result:
/// get { value, version } }`, written from the item.
fn encode_found(id: u64, item: &Item, out: &mut BytesMut) -> Result<(), EncodeError> {
    let value = item.value();
    let version = item.version();
    let value_len = match value.len() {
        0 => 0,
        n => key_len(GET_VALUE) + encoded_len_varint(n as u64) + n,
    };
    let get_len = value_len + varint_field_len(GET_VERSION, version);
    let body_len = varint_field_len(RESPONSE_ID, id)
        + key_len(RESPONSE_GET)
        + encoded_len_varint(get_len as u64)
        + get_len;
    let header = u32::try_from(body_len)
        .map_err(|_| EncodeError(format!("a {body_len}-byte reply does not fit a frame")))?;
    out.reserve(HEADER_LEN + body_len);
    out.put_u32(header);
    if id != 0 {
        encode_key(RESPONSE_ID, WireType::Varint, out);
        encode_varint(id, out);
    }
    encode_key(RESPONSE_GET, WireType::LengthDelimited, out);
    encode_varint(get_len as u64, out);
    if !value.is_empty() {
        encode_key(GET_VALUE, WireType::LengthDelimited, out);
        encode_varint(value.len() as u64, out);
        out.put_slice(value);
    }
    if version != 0 {
        encode_key(GET_VERSION, WireType::Varint, out);
        encode_varint(version, out);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::store::Store;
    use ramkv_proto::{self as pb, response::Result as Res};

    #[test]
    fn a_found_get_encodes_exactly_as_prost_does() {
        let store = Store::new(u64::MAX);
        for (key, value_len) in [("a", 0), ("b", 1), ("c", 127), ("d", 128), ("e", 70_000)] {
            let value: Vec<u8> = (0..value_len).map(|i| i as u8).collect();
            store.put(key.as_bytes(), &value, None).unwrap();
            let item = store.get(key.as_bytes()).unwrap();
            for id in [0, 1, 300, u64::MAX] {
                let mut ours = BytesMut::new();
                Reply::Found {
                    id,
                    item: item.clone(),
                }
                .encode(&mut ours)
                .unwrap();
                let prost = Response {
                    id,
                    status: Status::Ok as i32,
                    message: String::new(),
                    result: Some(Res::Get(pb::GetResult {
                        value: value.clone().into(),
                        version: item.version(),
                    })),
                };
                let mut theirs = BytesMut::new();
                ramkv_proto::encode_frame(&prost, &mut theirs).unwrap();
                assert_eq!(ours, theirs, "key {key}, id {id}");
            }
        }
    }
}
