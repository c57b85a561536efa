//! The three protocols `ramkv-bench` speaks, so memcached and Redis run the
//! very same workload as ramkv: encode an operation, parse replies.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use prost::Message;

use ramkv_proto::{self as proto, Request, Response, Status, request::Op};

/// What a target server is and how to reach it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// Which protocol it speaks.
    pub kind: Kind,
    /// `host:port`.
    pub addr: String,
}

/// The wire protocol of a target.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    /// ramkv's framed protobuf.
    Ramkv,
    /// memcached's text protocol (`get`, `set`).
    Memcache,
    /// Redis RESP (`GET`, `SET`).
    Redis,
    /// 16-byte messages echoed back by `ramkv-bench --echo-server`: the
    /// floor that any request/response server over loopback TCP pays.
    Echo,
}

/// Bytes in one echo message: the id, then padding.
pub const ECHO_LEN: usize = 16;

impl Target {
    /// Parses `ramkv://host:port`, `memcache://host:port`, `redis://host:port`,
    /// or a bare `host:port` (ramkv).
    pub fn parse(s: &str) -> Result<Target, String> {
        let (kind, addr) = match s.split_once("://") {
            Some(("ramkv", a)) => (Kind::Ramkv, a),
            Some(("memcache", a)) | Some(("memcached", a)) => (Kind::Memcache, a),
            Some(("redis", a)) => (Kind::Redis, a),
            Some(("echo", a)) => (Kind::Echo, a),
            Some((scheme, _)) => {
                return Err(format!(
                    "unknown target scheme '{scheme}': use ramkv://, memcache://, redis:// or echo://"
                ));
            }
            None => (Kind::Ramkv, s),
        };
        if addr.is_empty() {
            return Err(format!("'{s}' has no host:port"));
        }
        Ok(Target {
            kind,
            addr: addr.trim_end_matches('/').to_string(),
        })
    }

    /// Whether replies carry the request id (ramkv, echo) rather than
    /// coming back in order.
    pub fn replies_carry_ids(&self) -> bool {
        matches!(self.kind, Kind::Ramkv | Kind::Echo)
    }
}

/// One operation of a workload.
pub enum Operation<'a> {
    /// Read a key.
    Get {
        /// The key.
        key: &'a [u8],
    },
    /// Write a key.
    Set {
        /// The key.
        key: &'a [u8],
        /// The value.
        value: Bytes,
    },
    /// ramkv's benchmark-only SPIN.
    Spin {
        /// How long the server should busy-wait (or sleep).
        nanos: u64,
        /// Sleep instead of spinning (an I/O-bound handler).
        sleep: bool,
    },
}

/// Appends one request to `out`. `id` is used only by ramkv.
pub fn encode(kind: Kind, id: u64, op: &Operation, out: &mut BytesMut) {
    match kind {
        Kind::Echo => {
            out.put_u64(id);
            out.put_bytes(0, ECHO_LEN - 8);
        }
        Kind::Ramkv => {
            let op = match op {
                Operation::Get { key } => Op::Get(proto::Get {
                    key: Bytes::copy_from_slice(key),
                }),
                Operation::Set { key, value } => Op::Put(proto::Put {
                    key: Bytes::copy_from_slice(key),
                    value: value.clone(),
                    expected_version: None,
                }),
                Operation::Spin { nanos, sleep } => Op::Spin(proto::Spin {
                    nanos: *nanos,
                    sleep: *sleep,
                }),
            };
            // Cannot fail: a generated request is far below 4 GiB.
            let _ = proto::encode_frame(&Request { id, op: Some(op) }, out);
        }
        Kind::Memcache => match op {
            Operation::Get { key } => {
                out.put_slice(b"get ");
                out.put_slice(key);
                out.put_slice(b"\r\n");
            }
            Operation::Set { key, value } => {
                out.put_slice(b"set ");
                out.put_slice(key);
                out.put_slice(format!(" 0 0 {}\r\n", value.len()).as_bytes());
                out.put_slice(value);
                out.put_slice(b"\r\n");
            }
            Operation::Spin { .. } => unreachable!("rejected when the workload is built"),
        },
        Kind::Redis => {
            let args: &[&[u8]] = match op {
                Operation::Get { key } => &[b"GET", key],
                Operation::Set { key, value } => &[b"SET", key, value],
                Operation::Spin { .. } => unreachable!("rejected when the workload is built"),
            };
            out.put_slice(format!("*{}\r\n", args.len()).as_bytes());
            for a in args {
                out.put_slice(format!("${}\r\n", a.len()).as_bytes());
                out.put_slice(a);
                out.put_slice(b"\r\n");
            }
        }
    }
}

/// One parsed reply.
#[derive(Debug, PartialEq, Eq)]
pub struct Reply {
    /// The request id (ramkv and echo; the others reply in order).
    pub id: u64,
    /// `None` for success (a miss is a success), else what went wrong.
    pub error: Option<ReplyError>,
}

/// An error reply, as the server put it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplyError {
    /// A short label to count by: ramkv's status name (`INVALID_REQUEST`),
    /// memcached's error word (`SERVER_ERROR`), Redis's error prefix (`ERR`).
    pub status: String,
    /// The server's message.
    pub message: String,
}

impl Reply {
    fn ok(id: u64) -> Reply {
        Reply { id, error: None }
    }

    fn failed(id: u64, status: impl Into<String>, message: impl Into<String>) -> Reply {
        Reply {
            id,
            error: Some(ReplyError {
                status: status.into(),
                message: message.into(),
            }),
        }
    }

    /// True for a successful reply.
    pub fn is_ok(&self) -> bool {
        self.error.is_none()
    }
}

/// Splits a text-protocol error line into its first word and the rest.
fn word_and_rest(line: &[u8]) -> (String, String) {
    let text = String::from_utf8_lossy(line);
    match text.split_once(' ') {
        Some((w, rest)) => (w.to_string(), rest.trim().to_string()),
        None => (text.to_string(), String::new()),
    }
}

/// Why a reply stream could not be parsed: the connection is unusable.
#[derive(Debug, thiserror::Error)]
#[error("malformed reply: {0}")]
pub struct ParseError(pub String);

fn line(buf: &[u8]) -> Option<usize> {
    buf.windows(2).position(|w| w == b"\r\n")
}

/// Takes one complete reply off the front of `buf`, if there is one.
pub fn parse(kind: Kind, buf: &mut BytesMut) -> Result<Option<Reply>, ParseError> {
    match kind {
        Kind::Echo => {
            if buf.len() < ECHO_LEN {
                return Ok(None);
            }
            let id = buf.get_u64();
            buf.advance(ECHO_LEN - 8);
            Ok(Some(Reply::ok(id)))
        }
        Kind::Ramkv => {
            if buf.len() < 4 {
                return Ok(None);
            }
            let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
            if buf.len() < 4 + len {
                buf.reserve(4 + len - buf.len());
                return Ok(None);
            }
            buf.advance(4);
            let body = buf.split_to(len).freeze();
            let resp = Response::decode(body).map_err(|e| ParseError(e.to_string()))?;
            Ok(Some(match Status::try_from(resp.status) {
                Ok(Status::Ok | Status::NotFound) => Reply::ok(resp.id),
                Ok(status) => Reply::failed(resp.id, status.as_str_name(), resp.message),
                Err(_) => Reply::failed(resp.id, format!("STATUS_{}", resp.status), resp.message),
            }))
        }
        Kind::Memcache => {
            let Some(end) = line(buf) else {
                return Ok(None);
            };
            let head = &buf[..end];
            if head.starts_with(b"VALUE ") {
                let bytes: usize = std::str::from_utf8(head)
                    .ok()
                    .and_then(|h| h.rsplit(' ').next())
                    .and_then(|n| n.parse().ok())
                    .ok_or_else(|| ParseError(String::from_utf8_lossy(head).into_owned()))?;
                // VALUE line, data, CRLF, END CRLF.
                let total = end + 2 + bytes + 2 + 5;
                if buf.len() < total {
                    return Ok(None);
                }
                buf.advance(total);
                return Ok(Some(Reply::ok(0)));
            }
            let reply = if head == b"END" || head == b"STORED" {
                Reply::ok(0)
            } else if head.starts_with(b"SERVER_ERROR")
                || head.starts_with(b"CLIENT_ERROR")
                || head == b"ERROR"
            {
                let (status, message) = word_and_rest(head);
                Reply::failed(0, status, message)
            } else {
                return Err(ParseError(String::from_utf8_lossy(head).into_owned()));
            };
            buf.advance(end + 2);
            Ok(Some(reply))
        }
        Kind::Redis => {
            let Some(end) = line(buf) else {
                return Ok(None);
            };
            match buf.first() {
                Some(b'+') | Some(b':') => {
                    buf.advance(end + 2);
                    Ok(Some(Reply::ok(0)))
                }
                Some(b'-') => {
                    let (status, message) = word_and_rest(&buf[1..end]);
                    buf.advance(end + 2);
                    Ok(Some(Reply::failed(0, status, message)))
                }
                Some(b'$') => {
                    let n: i64 = std::str::from_utf8(&buf[1..end])
                        .ok()
                        .and_then(|n| n.parse().ok())
                        .ok_or_else(|| ParseError("bad bulk length".into()))?;
                    let total = if n < 0 {
                        end + 2
                    } else {
                        end + 2 + n as usize + 2
                    };
                    if buf.len() < total {
                        return Ok(None);
                    }
                    buf.advance(total);
                    Ok(Some(Reply::ok(0)))
                }
                _ => Err(ParseError(
                    String::from_utf8_lossy(&buf[..end]).into_owned(),
                )),
            }
        }
    }
}

/// Serves the echo protocol: one blocking thread per connection that
/// writes back every byte it reads. The baseline for "how fast can a reply
/// come back at all".
pub fn echo_server(addr: &str) -> std::io::Result<()> {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind(addr)?;
    println!("echo server listening on {}", listener.local_addr()?);
    for stream in listener.incoming() {
        let mut s = stream?;
        s.set_nodelay(true)?;
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 64 * 1024];
            while let Ok(n) = s.read(&mut buf) {
                if n == 0 || s.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse() {
        assert_eq!(
            Target::parse("memcache://127.0.0.1:11211").unwrap().kind,
            Kind::Memcache
        );
        assert_eq!(Target::parse("127.0.0.1:7878").unwrap().kind, Kind::Ramkv);
        assert!(Target::parse("http://x:1").is_err());
    }

    #[test]
    fn text_protocol_replies_parse_in_pieces() {
        let mut b = BytesMut::from(&b"VALUE k 0 5\r\nhel"[..]);
        assert!(parse(Kind::Memcache, &mut b).unwrap().is_none());
        b.extend_from_slice(b"lo\r\nEND\r\nEND\r\nSTORED\r\n");
        for _ in 0..3 {
            assert!(parse(Kind::Memcache, &mut b).unwrap().unwrap().is_ok());
        }
        assert!(b.is_empty());
        b.extend_from_slice(b"SERVER_ERROR out of memory storing object\r\n");
        let e = parse(Kind::Memcache, &mut b)
            .unwrap()
            .unwrap()
            .error
            .unwrap();
        assert_eq!(
            (e.status.as_str(), e.message.as_str()),
            ("SERVER_ERROR", "out of memory storing object")
        );
        let mut r = BytesMut::from(&b"$3\r\nabc\r\n$-1\r\n+OK\r\n-ERR x y\r\n"[..]);
        let replies: Vec<Reply> = (0..4)
            .map(|_| parse(Kind::Redis, &mut r).unwrap().unwrap())
            .collect();
        assert!(replies[..3].iter().all(Reply::is_ok));
        assert_eq!(replies[3], Reply::failed(0, "ERR", "x y"));
    }
}
