//! The `ramkv` command-line contract, against a real server.

use std::process::{Command, Output};

fn ramkv(server: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ramkv"))
        .args(["--server", server])
        .args(args)
        .output()
        .expect("ramkv runs")
}

/// A ramkv server on a loopback port, with `kv` and, if given, TLS.
pub fn ramkv_server_with(
    kv: ramkv::kv::KvOptions,
    tls: Option<(std::path::PathBuf, std::path::PathBuf)>,
) -> ramkv::Server<ramkv::kv::KvService> {
    let svc = ramkv::kv::KvService::new(kv).expect("valid options");
    let mut b = ramkv::ServerBuilder::new(svc)
        .listen("127.0.0.1:0")
        .pin(false);
    if let Some((cert, key)) = tls {
        b = b.tls(cert, key);
    }
    b.start().expect("server starts")
}

/// A ramkv server with the default options on a loopback port.
pub fn ramkv_server() -> ramkv::Server<ramkv::kv::KvService> {
    ramkv_server_with(ramkv::kv::KvOptions::default(), None)
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn put_get_del_ping_stats() {
    let srv = ramkv_server_with(ramkv::kv::KvOptions::default(), None);
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
fn the_cli_answers_help() {
    let out = Command::new(env!("CARGO_BIN_EXE_ramkv"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success() && text(&out.stdout).contains("Usage"));
}

/// Writes a CA, a server certificate for 127.0.0.1 it signed, its key and
/// a token into a fresh directory.
fn secure_files(dir: &std::path::Path) {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    std::fs::create_dir_all(dir).unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    std::fs::write(dir.join("server.pem"), cert.pem()).unwrap();
    std::fs::write(dir.join("server.key"), key.serialize_pem()).unwrap();
    std::fs::write(dir.join("token"), "cli-secret\n").unwrap();
}

#[test]
fn the_cli_takes_a_token_file_and_a_tls_ca() {
    let dir = std::env::temp_dir().join(format!("ramkv-cli-secure-{}", std::process::id()));
    secure_files(&dir);
    let f = |name: &str| dir.join(name).to_string_lossy().into_owned();
    let kv = ramkv::kv::KvOptions {
        auth_token_file: Some(dir.join("token")),
        ..Default::default()
    };
    let srv = ramkv_server_with(kv, Some((dir.join("server.pem"), dir.join("server.key"))));
    let addr = srv.local_addr().to_string();
    let secure = ["--tls-ca", &f("ca.pem"), "--auth-token-file", &f("token")];

    let out = ramkv(&addr, &[&secure[..], &["put", "k", "v"]].concat());
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = ramkv(&addr, &[&secure[..], &["get", "k"]].concat());
    assert_eq!(text(&out.stdout), "v\n");
    // The connection flags are global: they work after the subcommand too.
    let out = ramkv(
        &addr,
        &[&["get", "k", "--timeout", "3s"][..], &secure[..]].concat(),
    );
    assert_eq!(text(&out.stdout), "v\n", "{}", text(&out.stderr));
    // A CA file that is not there is a local mistake, said as one.
    let out = ramkv(&addr, &["get", "k", "--tls-ca", &f("nope.pem")]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("nope.pem") && !err.contains("running there"),
        "{err}"
    );
    // TLS but no token: refused, and the message does not leak the token.
    let out = ramkv(&addr, &["--tls-ca", &f("ca.pem"), "get", "k"]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("not authenticated") && !err.contains("cli-secret"),
        "{err}"
    );

    srv.shutdown();
    let _ = std::fs::remove_dir_all(dir);
}
