//! Fuzzes what a dispatcher does with bytes from a socket: split frames,
//! decode requests, pass the authentication gate, execute against a store,
//! encode replies. Any panic, or a reply that does not re-decode, is a bug.
#![no_main]

use std::sync::{Arc, OnceLock};

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use prost::Message;
use ramkv::auth::{Authenticator, Gate};
use ramkv::metrics::Metrics;
use ramkv::service::{Limits, Service};
use ramkv::store::Store;
use ramkv::wire::{self, Response, Status, decode_request, error_response};
use tokio_util::codec::Decoder;

struct World {
    service: Service,
    metrics: Arc<Metrics>,
    auth: Authenticator,
}

fn world() -> &'static World {
    static W: OnceLock<World> = OnceLock::new();
    W.get_or_init(|| {
        let metrics = Arc::new(Metrics::new(1, 1));
        let limits = Limits { max_key: 64, max_value: 1024, max_frame: 4096, max_spin: None };
        World {
            service: Service::new(Store::new(1 << 20), limits, metrics.clone()),
            metrics,
            // The first byte of the input picks an open or a guarded connection.
            auth: Authenticator::with_token(b"fuzz-token"),
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let w = world();
    let guarded = data.first().is_some_and(|b| b & 1 == 1);
    let mut authed = !guarded;
    let open = Authenticator::open();
    let auth = if guarded { &w.auth } else { &open };
    let mut codec = wire::frame_codec(4096);
    let mut input = BytesMut::from(data.get(1..).unwrap_or_default());
    let mut out = BytesMut::new();
    loop {
        let frame = match codec.decode(&mut input) {
            Ok(Some(f)) => f,
            Ok(None) | Err(_) => break, // need more bytes, or an oversize frame: the connection ends
        };
        let resp = match decode_request(frame.freeze()) {
            Ok(req) => match auth.gate(&mut authed, req) {
                Gate::Pass(req) => w.service.execute(req, w.metrics.exec(0)),
                Gate::Reply(r) => r,
                Gate::ReplyAndClose(r) => {
                    wire::encode_response(&r, &mut out);
                    break;
                }
            },
            Err(e) => error_response(e.id, Status::InvalidRequest, e.to_string()),
        };
        wire::encode_response(&resp, &mut out);
    }
    // Every reply written must be a well-formed frame holding a Response.
    let mut replies = wire::frame_codec(usize::MAX >> 1);
    while let Some(f) = replies.decode(&mut out).expect("reply framing") {
        Response::decode(f.freeze()).expect("a reply that decodes");
    }
});
