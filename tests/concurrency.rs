//! Pipelining, out-of-order completion, and many connections at once.

mod common;

use std::collections::HashSet;

use common::{Raw, server};
use ramkv_client::Client;
use ramkv_proto::Status;
use ramkv_proto::{self as pb, request::Op};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_pipelined_requests_each_get_their_own_reply() {
    for workers in [1, 3] {
        let srv = server(|c| {
            c.workers = Some(workers);
            c.dispatchers = 2;
            c.reuseport = true;
        });
        // 4 connections x 2,500 concurrent calls: every call is in flight at once.
        let mut tasks = tokio::task::JoinSet::new();
        for conn in 0..4 {
            let c = Client::connect(srv.local_addr()).await.unwrap();
            for i in 0..2_500 {
                let c = c.clone();
                tasks.spawn(async move {
                    let key = format!("c{conn}-k{i}");
                    let value = format!("value of {key}");
                    let v = c.put(key.clone(), value.clone()).await.unwrap();
                    let e = c.get(key).await.unwrap().unwrap();
                    assert_eq!(e.value, value, "a reply went to the wrong caller");
                    assert_eq!(e.version, v);
                    v
                });
            }
        }
        let mut versions = HashSet::new();
        while let Some(v) = tasks.join_next().await {
            assert!(versions.insert(v.unwrap()), "two puts got the same version");
        }
        assert_eq!(versions.len(), 10_000);
        srv.shutdown();
    }
}

#[test]
fn raw_pipeline_replies_match_ids() {
    // Without the client library: 5,000 frames in one write; every id comes
    // back exactly once with the payload it was sent with.
    let srv = server(|c| c.workers = Some(2));
    let mut raw = Raw::connect(srv.local_addr());
    let mut burst = Vec::new();
    for id in 1..=5_000u64 {
        let payload = id.to_le_bytes().to_vec().into();
        burst.extend(common::frame(&ramkv_proto::Request {
            id,
            op: Some(Op::Ping(pb::Ping { payload })),
        }));
    }
    raw.send_bytes(&burst);
    let mut seen = HashSet::new();
    for _ in 0..5_000 {
        let r = raw.recv().unwrap();
        assert_eq!(r.status, Status::Ok as i32);
        let Some(pb::response::Result::Ping(p)) = r.result else {
            panic!("{r:?}")
        };
        assert_eq!(p.payload[..], r.id.to_le_bytes());
        assert!(seen.insert(r.id));
    }
    srv.shutdown();
}

#[test]
fn a_slow_request_does_not_delay_the_fast_ones_behind_it() {
    // A 1 s SPIN goes first on the connection, then 100 PINGs. Under lb
    // (two workers) every PING is answered before the SPIN: replies come
    // back as they finish, not in request order. Under inline, the
    // connection's own thread runs the SPIN first, and the PINGs wait
    // behind it: the head-of-line blocking lb exists to remove.
    for arch in [ramkv::Arch::Lb, ramkv::Arch::Inline] {
        let srv = server(|c| {
            c.arch = arch;
            c.workers = (arch == ramkv::Arch::Lb).then_some(2);
            c.enable_spin_op = true;
            c.spin_op_max_us = 5_000_000;
        });
        let mut raw = Raw::connect(srv.local_addr());
        let mut burst = common::frame(&ramkv_proto::Request {
            id: 1,
            op: Some(Op::Spin(pb::Spin {
                nanos: 1_000_000_000,
                sleep: false,
            })),
        });
        for id in 2..=101 {
            burst.extend(common::frame(&ramkv_proto::Request {
                id,
                op: Some(Op::Ping(pb::Ping::default())),
            }));
        }
        raw.send_bytes(&burst);
        let order: Vec<u64> = (0..101).map(|_| raw.recv().unwrap().id).collect();
        match arch {
            ramkv::Arch::Lb => assert_eq!(
                *order.last().unwrap(),
                1,
                "lb: the slow request held up faster ones: {order:?}"
            ),
            _ => assert_eq!(
                order[0], 1,
                "inline answers in order, the slow request first"
            ),
        }
        srv.shutdown();
    }
}

#[test]
fn quick_requests_skip_the_hand_off_only_while_no_worker_is_ready() {
    // Idle pool (two parked workers, no spinning): GETs run on the
    // dispatcher that read them, with no wake-up of a worker or of the
    // dispatcher. A SPIN is not quick and goes to a worker.
    let srv = server(|c| {
        c.workers = Some(2);
        c.spin_us = Some(0);
        c.enable_spin_op = true;
        c.spin_op_max_us = 1_000_000;
    });
    let mut raw = Raw::connect(srv.local_addr());
    for id in 1..=50 {
        raw.send(id, Op::Get(pb::Get { key: "k".into() }));
        assert_eq!(raw.recv().unwrap().status, Status::NotFound as i32);
    }
    let figures = srv.figures();
    let busy = |slot: usize| {
        common::stat(
            &figures,
            &format!("ramkv_worker_busy_ns_total{{worker=\"{slot}\"}}"),
        )
    };
    assert_eq!(busy(0) + busy(1), 0, "a worker ran a quick request");
    assert!(busy(2) > 0, "the dispatcher (slot 2) ran none");
    assert_eq!(common::stat(&figures, "ramkv_queue_delay_ns_count"), 0);
    raw.send(51, sleep_op(1));
    assert_eq!(raw.recv().unwrap().status, Status::Ok as i32);
    let figures = srv.figures();
    assert_eq!(
        common::stat(&figures, "ramkv_queue_delay_ns_count"),
        1,
        "SPIN was not queued"
    );
    srv.shutdown();
}

#[test]
fn a_pipelined_batch_of_quick_requests_is_spread_over_the_workers() {
    // 200 GETs in one write on an idle pool: the dispatcher runs a few
    // itself (at most QUICK_PER_ROUND a round) and hands the rest to the
    // workers, as lb promises for a hot connection. It used to run them all,
    // since a quick request never makes anyone ready.
    let srv = server(|c| {
        c.workers = Some(2);
        c.spin_us = Some(0);
    });
    let mut raw = Raw::connect(srv.local_addr());
    let mut burst = Vec::new();
    for id in 1..=200 {
        burst.extend(common::frame(&ramkv_proto::Request {
            id,
            op: Some(Op::Get(pb::Get { key: "k".into() })),
        }));
    }
    raw.send_bytes(&burst);
    for _ in 0..200 {
        assert_eq!(raw.recv().unwrap().status, Status::NotFound as i32);
    }
    let handed_off = common::stat(&srv.figures(), "ramkv_queue_delay_ns_count");
    assert!(
        handed_off >= 100,
        "only {handed_off} of 200 reached the workers"
    );
    srv.shutdown();
}

#[test]
fn without_the_quick_path_every_request_is_handed_off() {
    // The same idle pool with --no-quick-path: every GET goes through the
    // queue to a worker, and the dispatcher runs none.
    let srv = server(|c| {
        c.workers = Some(2);
        c.spin_us = Some(0);
        c.quick_path = false;
    });
    let mut raw = Raw::connect(srv.local_addr());
    for id in 1..=50 {
        raw.send(id, Op::Get(pb::Get { key: "k".into() }));
        assert_eq!(raw.recv().unwrap().status, Status::NotFound as i32);
    }
    let figures = srv.figures();
    assert_eq!(common::stat(&figures, "ramkv_queue_delay_ns_count"), 50);
    let dispatcher_busy = common::stat(&figures, "ramkv_worker_busy_ns_total{worker=\"2\"}");
    assert_eq!(dispatcher_busy, 0, "the dispatcher ran a request itself");
    srv.shutdown();
}

/// One request that sleeps (the emulated I/O-bound SPIN) for `ms`.
fn sleep_op(ms: u64) -> Op {
    Op::Spin(pb::Spin {
        nanos: ms * 1_000_000,
        sleep: true,
    })
}

#[test]
fn no_fast_request_waits_behind_a_slow_one_while_a_worker_is_free() {
    // One write: two 300 ms requests that occupy both workers, then a 200 ms
    // request (id 3), then 300 requests of 1 ms (ids 4..=303). When the first
    // two finish, one worker takes id 3 and the other must take 4, 5, 6…
    // at once, in order: none may wait behind id 3. (With batch stealing,
    // the worker that took id 3 also took 4, 5 and 6 into its own deque,
    // and they came back after it, after ~190 later requests.) The service
    // times are slept, so this holds however fast the machine is.
    for workers in [None, Some(2)] {
        let srv = server(|c| {
            c.workers = workers; // None: the default, which must keep the promise too
            c.enable_spin_op = true;
            c.spin_op_max_us = 1_000_000;
        });
        let mut raw = Raw::connect(srv.local_addr());
        let mut burst = Vec::new();
        for (id, ms) in [(1, 300), (2, 300), (3, 200)]
            .into_iter()
            .chain((4..=303).map(|id| (id, 1)))
        {
            burst.extend(common::frame(&ramkv_proto::Request {
                id,
                op: Some(sleep_op(ms)),
            }));
        }
        raw.send_bytes(&burst);
        let order: Vec<u64> = (0..303).map(|_| raw.recv().unwrap().id).collect();
        let fast_before_slow: Vec<u64> = order
            .iter()
            .take_while(|&&id| id != 3)
            .copied()
            .filter(|&id| id > 3)
            .collect();
        for id in [4, 5, 6] {
            assert!(
                fast_before_slow.contains(&id),
                "workers {workers:?}: request {id} waited behind the slow one: {:?}",
                &order[..12]
            );
        }
        if workers == Some(2) {
            // One free worker: it takes the fast requests one by one, in arrival order.
            let expected: Vec<u64> = (4..4 + fast_before_slow.len() as u64).collect();
            assert_eq!(fast_before_slow, expected, "out of arrival order");
        }
        srv.shutdown();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundreds_of_connections_at_once() {
    for reuseport in [false, true] {
        let srv = server(|c| {
            c.dispatchers = 3;
            c.reuseport = reuseport;
            c.workers = Some(2);
        });
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..300 {
            let addr = srv.local_addr();
            tasks.spawn(async move {
                let c = Client::connect(addr).await.unwrap();
                let v = c.put(format!("conn{i}"), format!("{i}")).await.unwrap();
                (c, i, v)
            });
        }
        let mut clients = Vec::new();
        while let Some(r) = tasks.join_next().await {
            clients.push(r.unwrap());
        }
        // All 300 are open at once; each still reads its own write.
        for (c, i, v) in &clients {
            let e = c.get(format!("conn{i}")).await.unwrap().unwrap();
            assert_eq!((e.value, e.version), (format!("{i}").into(), *v));
        }
        let stats = clients[0].0.stats().await.unwrap();
        assert_eq!(common::stat(&stats, "ramkv_connections_open"), 300);
        // The kernel's SO_REUSEPORT hash, or the acceptor's round-robin,
        // gave every dispatcher a share.
        for d in 0..3 {
            let n = common::stat(
                &stats,
                &format!("ramkv_dispatcher_connections_total{{dispatcher=\"{d}\"}}"),
            );
            assert!(
                n >= 30,
                "reuseport={reuseport}: dispatcher {d} got {n} of 300 connections"
            );
        }
        drop(clients);
        srv.shutdown();
    }
}

/// The scheduling policy (field 41 of /proc/PID/task/TID/stat) of each of
/// `pid`'s threads whose name starts with `prefix`.
#[cfg(target_os = "linux")]
fn thread_policies(pid: u32, prefix: &str) -> Vec<u32> {
    let mut policies = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let dir = task.unwrap().path();
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        if !comm.starts_with(prefix) {
            continue;
        }
        let stat = std::fs::read_to_string(dir.join("stat")).unwrap();
        // Fields after the parenthesised name start at field 3.
        let after_name = &stat[stat.rfind(')').unwrap() + 2..];
        let policy = after_name.split(' ').nth(41 - 3).unwrap();
        policies.push(policy.parse().unwrap());
    }
    policies
}

#[cfg(target_os = "linux")]
#[test]
fn workers_are_batch_threads_when_they_share_cores_or_when_told() {
    const SCHED_OTHER: u32 = 0;
    const SCHED_BATCH: u32 = 3;
    // Counted as the server counts them: the fewer of the CPUs this process
    // may run on and its CPU quota.
    let pinnable = core_affinity::get_core_ids().map_or(1, |c| c.len());
    let quota = std::thread::available_parallelism().map_or(1, |n| n.get());
    let cores = pinnable.min(quota);
    // One dispatcher plus cores + 1 workers cannot each have a core. The
    // server returns from start only once every worker has set itself up.
    let workers = (cores + 1).to_string();
    let (proc, _) = common::spawn_server(&["--workers", &workers]);
    let policies = thread_policies(proc.0.id(), "ramkv-worker");
    assert_eq!(policies.len(), cores + 1);
    assert!(policies.iter().all(|&p| p == SCHED_BATCH), "{policies:?}");
    drop(proc);
    if cores >= 2 {
        let workers = (cores - 1).to_string();
        let (proc, _) = common::spawn_server(&["--workers", &workers]);
        let policies = thread_policies(proc.0.id(), "ramkv-worker");
        assert_eq!(policies.len(), cores - 1);
        assert!(policies.iter().all(|&p| p == SCHED_OTHER), "{policies:?}");
    }
    // The flag overrides the core count either way.
    let (proc, _) = common::spawn_server(&["--workers", "1", "--worker-policy", "batch"]);
    assert_eq!(thread_policies(proc.0.id(), "ramkv-worker"), [SCHED_BATCH]);
    drop(proc);
    let workers = (cores + 1).to_string();
    let (proc, _) = common::spawn_server(&["--workers", &workers, "--worker-policy", "normal"]);
    let policies = thread_policies(proc.0.id(), "ramkv-worker");
    assert!(policies.iter().all(|&p| p == SCHED_OTHER), "{policies:?}");
}
