//! Every op and every status a client can provoke, over real sockets,
//! against every architecture: the protocol must not depend on the threading.

mod common;

use bytes::Bytes;
use common::{Raw, server, stat};
use ramkv_client::{Client, Error};
use ramkv_proto::Status;
use ramkv_proto::{self as pb, request::Op};

use common::architectures;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_op_and_status_in_every_architecture() {
    for (name, adjust) in architectures() {
        let srv = server(|c| {
            adjust(c);
            c.max_key = 16;
            c.max_value = 64;
            c.enable_spin_op = true;
            c.spin_op_max_us = 1000;
        });
        let addr = srv.local_addr();
        // Several connections, so sharded modes spread them over dispatchers.
        for conn in 0..3 {
            let c = Client::connect(addr)
                .await
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            let key = format!("k{conn}");
            assert_eq!(
                c.get(key.clone()).await.unwrap(),
                None,
                "{name}: missing key"
            );
            let v1 = c.put(key.clone(), "one").await.unwrap();
            let e = c.get(key.clone()).await.unwrap().unwrap();
            assert_eq!((e.value, e.version), (Bytes::from("one"), v1), "{name}");
            // Compare-and-set: the wrong version is refused with the current one.
            match c.cas(key.clone(), "two", v1 + 1000).await {
                Err(Error::VersionMismatch { current }) => assert_eq!(current, v1, "{name}"),
                other => panic!("{name}: {other:?}"),
            }
            let v2 = c.cas(key.clone(), "two", v1).await.unwrap();
            assert!(v2 > v1, "{name}");
            assert!(
                matches!(c.cas(key.clone(), "x", 0).await, Err(Error::VersionMismatch { current }) if current == v2)
            );
            assert!(c.delete(key.clone()).await.unwrap(), "{name}");
            assert!(
                !c.delete(key.clone()).await.unwrap(),
                "{name}: second delete"
            );
            assert!(
                c.cas(key.clone(), "three", 0).await.unwrap() > v2,
                "{name}: create-only put"
            );

            let versions = c.multi_put([("m1", "a"), ("m2", "b")]).await.unwrap();
            assert_eq!(versions.len(), 2);
            let items = c.multi_get(["m1", "nope", "m2"]).await.unwrap();
            assert_eq!(items[0].as_ref().unwrap().value, "a");
            assert_eq!(items[1], None);
            assert_eq!(items[2].as_ref().unwrap().version, versions[1]);
            c.ping().await.unwrap();

            // Limits: TOO_LARGE for key and value, INVALID_REQUEST for an empty key.
            let status_of = |r: Result<u64, Error>| match r {
                Err(Error::Server { status, .. }) => status,
                other => panic!("{name}: {other:?}"),
            };
            assert_eq!(
                status_of(c.put("k".repeat(17), "v").await),
                ramkv_client::Status::TooLarge
            );
            assert_eq!(
                status_of(c.put("k", "v".repeat(65)).await),
                ramkv_client::Status::TooLarge
            );
            assert_eq!(
                status_of(c.put("", "v").await),
                ramkv_client::Status::InvalidRequest
            );

            // SPIN within its bound works; past it is refused.
            let r = c
                .call(Op::Spin(pb::Spin {
                    nanos: 10_000,
                    sleep: false,
                }))
                .await
                .unwrap();
            assert_eq!(r.status, Status::Ok as i32, "{name}");
            let r = c
                .call(Op::Spin(pb::Spin {
                    nanos: 5_000_000,
                    sleep: false,
                }))
                .await
                .unwrap();
            assert_eq!(
                r.status,
                Status::InvalidRequest as i32,
                "{name}: {}",
                r.message
            );
        }
        // A request with no op is INVALID_REQUEST and echoes its id.
        let mut raw = Raw::connect(addr);
        raw.send_bytes(&common::frame(&ramkv_proto::Request { id: 99, op: None }));
        let r = raw.recv().unwrap();
        assert_eq!(
            (r.id, r.status),
            (99, Status::InvalidRequest as i32),
            "{name}"
        );

        let c = Client::connect(addr).await.unwrap();
        let stats = c.stats().await.unwrap();
        assert!(
            stat(&stats, r#"ramkv_requests_total{op="put",status="OK"}"#) >= 6,
            "{name}: {stats:?}"
        );
        assert!(
            stat(
                &stats,
                r#"ramkv_requests_total{op="get",status="NOT_FOUND"}"#
            ) >= 3,
            "{name}"
        );
        assert_eq!(stat(&stats, "ramkv_store_keys"), 5, "{name}");
        drop(c);
        srv.shutdown();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spin_is_refused_unless_enabled() {
    let srv = server(|_| {});
    let c = Client::connect(srv.local_addr()).await.unwrap();
    let r = c
        .call(Op::Spin(pb::Spin {
            nanos: 1,
            sleep: false,
        }))
        .await
        .unwrap();
    assert_eq!(r.status, Status::InvalidRequest as i32);
    assert!(r.message.contains("--enable-spin-op"), "{}", r.message);
    srv.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn puts_past_max_memory_fail_and_keep_what_is_stored() {
    let srv = server(|c| c.max_memory = 4096);
    let c = Client::connect(srv.local_addr()).await.unwrap();
    let mut stored = Vec::new();
    let err = loop {
        let key = format!("key{}", stored.len());
        match c.put(key.clone(), vec![7u8; 300]).await {
            Ok(v) => stored.push((key, v)),
            Err(e) => break e,
        }
    };
    match err {
        Error::Server { status, message } => {
            assert_eq!(status, ramkv_client::Status::OutOfMemory);
            assert!(message.contains("4096"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    assert!(!stored.is_empty());
    for (key, v) in &stored {
        assert_eq!(
            c.get(key.clone()).await.unwrap().unwrap().version,
            *v,
            "acknowledged put lost"
        );
    }
    // Deleting frees room for new puts.
    c.delete(stored[0].0.clone()).await.unwrap();
    c.put("fresh", vec![1u8; 300]).await.unwrap();
    srv.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_answers_overloaded_at_once() {
    // One worker busy with a long SPIN, a queue bound of 2: the burst behind
    // it overflows the queue and must be shed, not queued. The burst is of
    // short SPINs, not PINGs: a PING is quick, and a dispatcher runs quick
    // requests itself while no worker is free, so they never meet the queue.
    let srv = server(|c| {
        c.workers = Some(1);
        c.limits.queue_bound = 2;
        c.enable_spin_op = true;
        c.spin_op_max_us = 2_000_000;
    });
    let mut raw = Raw::connect(srv.local_addr());
    raw.send(
        1,
        Op::Spin(pb::Spin {
            nanos: 300_000_000,
            sleep: false,
        }),
    );
    let mut burst = Vec::new();
    for id in 2..50 {
        burst.extend(common::frame(&ramkv_proto::Request {
            id,
            op: Some(Op::Spin(pb::Spin {
                nanos: 1_000,
                sleep: false,
            })),
        }));
    }
    raw.send_bytes(&burst);
    let mut statuses = std::collections::HashMap::new();
    for _ in 1..50 {
        let r = raw.recv().unwrap();
        *statuses.entry(r.status).or_insert(0) += 1;
        if r.status == Status::Overloaded as i32 {
            assert!(r.message.contains("overloaded"));
        }
    }
    assert!(
        statuses
            .get(&(Status::Overloaded as i32))
            .copied()
            .unwrap_or(0)
            > 0,
        "{statuses:?}"
    );
    let c = Client::connect(srv.local_addr()).await.unwrap();
    assert!(stat(&c.stats().await.unwrap(), "ramkv_shed_total") > 0);
    srv.shutdown();
}

#[test]
fn the_spin_op_sleeps_when_asked_using_no_cpu() {
    // A 300 ms SPIN in sleep mode takes its 300 ms but almost no CPU: the
    // thread sleeps, as one blocked on I/O would. Measured by the server
    // process's own getrusage (in its own process, so nothing else counts).
    let (_srv, addr) = common::spawn_server(&["--enable-spin-op", "--spin-op-max-us", "1000000"]);
    let cpu = |raw: &mut Raw| -> u64 {
        raw.send(9, Op::Stats(pb::Stats {}));
        let Some(pb::response::Result::Stats(s)) = raw.recv().unwrap().result else {
            panic!("no stats")
        };
        let m = s
            .metrics
            .iter()
            .find(|m| m.name == "ramkv_process_cpu_us_total");
        m.expect("process CPU in STATS").value
    };
    let mut raw = Raw::connect(addr);
    let before = cpu(&mut raw);
    let started = std::time::Instant::now();
    raw.send(
        1,
        Op::Spin(pb::Spin {
            nanos: 300_000_000,
            sleep: true,
        }),
    );
    let r = raw.recv().unwrap();
    assert_eq!((r.id, r.status), (1, Status::Ok as i32));
    assert!(started.elapsed() >= std::time::Duration::from_millis(300));
    let used = cpu(&mut raw) - before;
    // Spinning would use ~300 ms; sleeping uses what a few syscalls cost.
    assert!(used < 100_000, "a 300 ms sleep used {used} µs of CPU");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_keeps_the_replies_that_follow_a_connection_error() {
    // Under lb a connection-level error (id 0: a frame over --max-frame) can
    // overtake the replies to earlier requests still running; the server
    // writes those before it closes. The client used to stop reading at the
    // error and fail them too.
    let srv = server(|c| {
        c.workers = Some(2);
        c.enable_spin_op = true;
        c.spin_op_max_us = 10_000_000;
        c.limits.max_frame = 1 << 20;
    });
    let c = Client::connect(srv.local_addr()).await.unwrap();
    let slow = {
        let c = c.clone();
        tokio::spawn(async move {
            c.call(Op::Spin(pb::Spin {
                nanos: 300_000_000,
                sleep: true,
            }))
            .await
        })
    };
    // The event: a worker has started the SPIN.
    let start = std::time::Instant::now();
    while stat(&srv.figures(), "ramkv_queue_delay_ns_count") == 0 {
        assert!(
            start.elapsed() < common::HANG_GUARD,
            "the SPIN never started"
        );
        tokio::task::yield_now().await;
    }
    match c.put("big", vec![b'v'; 2 << 20]).await {
        Err(Error::Closed(why)) => assert!(why.contains("frame"), "{why}"),
        other => panic!("an oversize frame was not refused: {other:?}"),
    }
    let spin = slow
        .await
        .unwrap()
        .expect("the earlier request's reply arrived");
    assert_eq!(spin.status, Status::Ok as i32);
    srv.shutdown();
}
