//! Property test: random byte streams, raw or wrapped in plausible frames,
//! thrown at a live server. The server must answer with well-formed frames
//! or close cleanly, and keep serving everyone else; it must never panic
//! or hang.

mod common;

use std::net::Shutdown;
use std::sync::OnceLock;

use common::Raw;
use proptest::collection::vec;
use proptest::prelude::*;
use ramkv::Server;
use ramkv::kv::KvService;
use ramkv_proto::Status;
use ramkv_proto::{self as pb, request::Op};

fn shared_server() -> &'static Server<KvService> {
    static SERVER: OnceLock<Server<KvService>> = OnceLock::new();
    SERVER.get_or_init(|| {
        common::server(|c| {
            c.limits.max_frame = 4096;
            c.max_key = 64;
            c.max_value = 2048;
            c.workers = Some(2);
        })
    })
}

/// Either raw noise, or a frame whose length prefix matches a random body.
fn chunk() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        vec(any::<u8>(), 0..64),
        vec(any::<u8>(), 0..200).prop_map(|body| {
            let mut f = (body.len() as u32).to_be_bytes().to_vec();
            f.extend(body);
            f
        }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn random_streams_are_answered_or_closed_cleanly(chunks in vec(chunk(), 1..6)) {
        let addr = shared_server().local_addr();
        let mut raw = Raw::connect(addr);
        // The server may rightly close early (an oversize length prefix),
        // after which writes fail: that is not what is under test.
        for c in &chunks {
            if std::io::Write::write_all(&mut raw.stream, c).is_err() {
                break;
            }
        }
        let _ = raw.stream.shutdown(Shutdown::Write);
        // Every frame that comes back decodes as a Response (Raw::recv
        // panics otherwise), then the server closes.
        while let Some(r) = raw.recv() {
            prop_assert!(Status::try_from(r.status).is_ok());
        }
        let mut probe = Raw::connect(addr);
        probe.send(7, Op::Ping(pb::Ping::default()));
        let r = probe.recv().expect("the server still serves");
        prop_assert_eq!((r.id, r.status), (7, Status::Ok as i32));
    }
}
