//! A start that fails at its last step (the admin endpoint's address is
//! taken, after the listener, dispatchers and workers are up) must leave no
//! thread of the server running. In a file of its own: threads are counted
//! for the whole test process, so no other test may run beside it.

mod common;

use ramkv::Arch;

type Adjust = fn(&mut common::Setup);

/// The server's threads alive in this process (they are all named `ramkv-…`).
fn server_threads() -> Vec<String> {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("comm")).ok())
        .map(|name| name.trim().to_string())
        .filter(|name| name.starts_with("ramkv-"))
        .collect()
}

#[test]
fn a_failed_start_leaves_no_thread_running_in_any_architecture() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let variants: [(&str, Adjust); 4] = [
        ("lb, 3 workers", |s| s.workers = Some(3)),
        ("lb, reuseport x2", |s| {
            s.dispatchers = 2;
            s.reuseport = true;
        }),
        ("inline", |s| s.arch = Arch::Inline),
        ("thread-per-conn", |s| s.arch = Arch::ThreadPerConn),
    ];
    for (name, adjust) in variants {
        let mut setup = common::Setup {
            admin: Some(taken.local_addr().unwrap().to_string()),
            ..Default::default()
        };
        adjust(&mut setup);
        match setup.builder().unwrap().start() {
            Err(e) => assert!(e.to_string().contains("admin endpoint"), "{name}: {e}"),
            Ok(_) => panic!("{name}: started with its admin address taken"),
        }
        let left = server_threads();
        assert!(left.is_empty(), "{name}: still running: {left:?}");
    }
}
