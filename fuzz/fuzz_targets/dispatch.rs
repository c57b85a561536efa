//! Fuzzes what a server does with bytes from a socket, through the very code
//! that serves them: the runtime's connection state machine (framing,
//! admission, the in-flight and reply accounting, closing), the key-value
//! service's admission (decoding, the authentication gate) and execution
//! against a real store, and reply encoding. Any panic, or a reply that does
//! not re-decode, is a bug.
#![no_main]

use std::sync::OnceLock;

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use prost::Message;
use ramkv::Limits;
use ramkv::internals::drive;
use ramkv::kv::{KvOptions, KvService};
use ramkv_proto::Response;

/// Two services, one open and one that requires a token.
fn services() -> &'static (KvService, KvService) {
    static S: OnceLock<(KvService, KvService)> = OnceLock::new();
    S.get_or_init(|| {
        let opts = KvOptions {
            max_key: 64,
            max_value: 1024,
            max_reply: 4096,
            max_memory: 1 << 20,
            ..KvOptions::default()
        };
        let token = std::env::temp_dir().join("ramkv-fuzz-token");
        std::fs::write(&token, "fuzz-token").expect("a temporary token file");
        let guarded = KvOptions {
            auth_token_file: Some(token),
            ..opts.clone()
        };
        (
            KvService::new(opts).expect("valid options"),
            KvService::new(guarded).expect("valid options"),
        )
    })
}

fuzz_target!(|data: &[u8]| {
    // The first byte picks the service and how the bytes arrive: an open or
    // a guarded connection, in reads of 1 to 64 bytes.
    let Some((&first, input)) = data.split_first() else { return };
    let (open, guarded) = services();
    let svc = if first & 1 == 0 { open } else { guarded };
    let limits = Limits {
        max_frame: 4096,
        max_outbound: 8192,
        max_in_flight: 16,
        ..Limits::default()
    };
    let (written, _) = drive(svc, &limits, input, 1 + (first as usize >> 2));
    // Every byte written must be a well-formed frame holding a Response.
    let mut out = BytesMut::from(&written[..]);
    while !out.is_empty() {
        assert!(out.len() >= 4, "a truncated reply header");
        let n = u32::from_be_bytes([out[0], out[1], out[2], out[3]]) as usize;
        assert!(out.len() >= 4 + n, "a truncated reply body");
        let body = out.split_to(4 + n);
        Response::decode(&body[4..]).expect("a reply that decodes");
    }
});
