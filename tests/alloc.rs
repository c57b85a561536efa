//! The lb request path (dispatcher read → decode → queue → worker → store
//! → reply encode → write) allocates nothing per GET in steady state. A
//! counting global allocator watches the whole process while 20,000
//! pipelined GETs are served; the client side uses pre-encoded frames and
//! a preallocated buffer, so it allocates nothing in the measured window.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::{Read, Write};
use std::sync::atomic::{AtomicU64, Ordering};

use ramkv_proto::Request;
use ramkv_proto::{self as pb, request::Op};

struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: defers every call to the system allocator unchanged; it only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Sends `frames` and reads back exactly `reply_bytes`, into `buf`.
fn round(stream: &mut std::net::TcpStream, frames: &[u8], buf: &mut [u8]) {
    stream.write_all(frames).unwrap();
    stream.read_exact(buf).unwrap();
}

#[test]
fn steady_state_gets_do_not_allocate_per_request() {
    const BATCH: usize = 200;
    const ROUNDS: usize = 100;
    let srv = common::server(|c| {
        c.workers = Some(1);
        // Park immediately, so idle spinning does not add timer or clock noise.
        c.spin_us = Some(0);
    });
    let mut raw = common::Raw::connect(srv.local_addr());
    raw.send(
        0,
        Op::Put(pb::Put {
            key: "k".into(),
            value: vec![7u8; 100].into(),
            expected_version: None,
        }),
    );
    assert_eq!(raw.recv().unwrap().status, 0);
    let mut frames = Vec::new();
    for id in 1..=BATCH as u64 {
        frames.extend(common::frame(&Request {
            id,
            op: Some(Op::Get(pb::Get { key: "k".into() })),
        }));
    }
    // Learn the size of one batch of replies, and warm every buffer up.
    raw.send_bytes(&frames);
    let mut reply_bytes = 0;
    for _ in 0..BATCH {
        let r = raw.recv().unwrap();
        reply_bytes += 4 + prost::Message::encoded_len(&r);
    }
    let mut buf = vec![0u8; reply_bytes];
    for _ in 0..20 {
        round(&mut raw.stream, &frames, &mut buf);
    }

    let before = ALLOCATIONS.load(Ordering::Relaxed);
    for _ in 0..ROUNDS {
        round(&mut raw.stream, &frames, &mut buf);
    }
    let per_request =
        (ALLOCATIONS.load(Ordering::Relaxed) - before) as f64 / (BATCH * ROUNDS) as f64;
    // The injector allocates one block per 63 tasks; anything near one
    // allocation per request means a per-request allocation crept in.
    assert!(per_request < 0.1, "{per_request:.3} allocations per GET");
    eprintln!("allocations per GET: {per_request:.4}");
    srv.shutdown();
}
