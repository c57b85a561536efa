//! The `ramkv` command-line contract, against a real server.

use std::process::{Command, Output};

fn ramkv(server: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ramkv"))
        .args(["--server", server])
        .args(args)
        .output()
        .expect("ramkv runs")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn put_get_del_ping_stats() {
    let srv = ramkv::start(&ramkv::Config::for_tests()).unwrap();
    let addr = srv.local_addr().to_string();

    let out = ramkv(&addr, &["put", "greeting", "hello world"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let version: u64 = text(&out.stdout)
        .trim()
        .parse()
        .expect("put prints the new version");

    let out = ramkv(&addr, &["get", "greeting"]);
    assert!(out.status.success());
    assert_eq!(text(&out.stdout), "hello world\n");

    let out = ramkv(
        &addr,
        &[
            "put",
            "greeting",
            "bye",
            "--expect",
            &(version + 99).to_string(),
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("version mismatch"),
        "{}",
        text(&out.stderr)
    );

    let out = ramkv(&addr, &["mget", "greeting", "missing"]);
    assert_eq!(text(&out.stdout), "hello world\n(not found)\n");

    assert!(ramkv(&addr, &["del", "greeting"]).status.success());
    for args in [&["get", "greeting"][..], &["del", "greeting"][..]] {
        let out = ramkv(&addr, args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert_eq!(text(&out.stderr).trim(), "not found");
    }

    let out = ramkv(&addr, &["ping"]);
    assert!(out.status.success() && text(&out.stdout).starts_with("pong"));
    let out = ramkv(&addr, &["stats"]);
    assert!(
        text(&out.stdout).contains("ramkv_connections_total "),
        "{}",
        text(&out.stdout)
    );
    srv.shutdown();
}

#[test]
fn unreachable_server_is_a_clear_error() {
    // Bind and drop a listener to find a port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = ramkv(&format!("127.0.0.1:{port}"), &["get", "k"]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("cannot connect to 127.0.0.1:") && err.contains("is ramkv-server running"),
        "{err}"
    );
}

#[test]
fn every_binary_answers_help() {
    for bin in [
        env!("CARGO_BIN_EXE_ramkv"),
        env!("CARGO_BIN_EXE_ramkv-bench"),
    ] {
        let out = Command::new(bin).arg("--help").output().unwrap();
        assert!(
            out.status.success() && text(&out.stdout).contains("Usage"),
            "{bin}"
        );
    }
}
