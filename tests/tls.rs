//! TLS: a working round trip, mismatched ends, and certificates a client
//! must refuse. Certificates are made fresh for each test with rcgen.

mod common;

use std::path::{Path, PathBuf};

use ramkv_client::{Client, ClientOptions, Error};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};

/// A CA and a server certificate it signed, as PEM files in a fresh directory.
struct Pki {
    dir: PathBuf,
}

fn ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
}

impl Pki {
    /// `expired`: the server certificate's validity ended in 2021.
    /// `foreign`: it was signed by a CA other than the one in `ca.pem`.
    fn new(tag: &str, expired: bool, foreign: bool) -> Pki {
        let dir = std::env::temp_dir().join(format!("ramkv-tls-{}-{tag}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let trusted = ca("ramkv test CA");
        let signer = if foreign {
            ca("someone else's CA")
        } else {
            ca("unused")
        };
        let issuer = if foreign { &signer } else { &trusted };
        let mut params =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        if expired {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, issuer).unwrap();
        std::fs::write(dir.join("ca.pem"), trusted.pem()).unwrap();
        std::fs::write(dir.join("server.pem"), cert.pem()).unwrap();
        std::fs::write(dir.join("server.key"), key.serialize_pem()).unwrap();
        Pki { dir }
    }

    /// A server mistakenly given its CA's certificate and key as its own
    /// (the CA names the server, so only its being a CA is wrong).
    fn ca_as_server(tag: &str) -> Pki {
        let dir = std::env::temp_dir().join(format!("ramkv-tls-{}-{tag}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut params =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let key = KeyPair::generate().unwrap();
        let ca = CertifiedIssuer::self_signed(params, key).unwrap();
        std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
        std::fs::write(dir.join("server.pem"), ca.pem()).unwrap();
        std::fs::write(dir.join("server.key"), ca.key().serialize_pem()).unwrap();
        Pki { dir }
    }

    fn path(&self, f: &str) -> PathBuf {
        self.dir.join(f)
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn tls_server(pki: &Pki, arch: ramkv::Arch) -> ramkv::Server<ramkv::kv::KvService> {
    common::server(|c| {
        c.arch = arch;
        c.tls_cert = Some(pki.path("server.pem"));
        c.tls_key = Some(pki.path("server.key"));
    })
}

/// Changes to the default setup that pick a dispatcher layout.
type Layout = fn(&mut common::Setup);

fn open_connections(srv: &ramkv::Server<ramkv::kv::KvService>) -> u64 {
    srv.figures()
        .iter()
        .find(|(name, _)| name == "ramkv_connections_open")
        .map_or(0, |(_, v)| *v)
}

fn tls_opts(ca: &Path) -> ClientOptions {
    ClientOptions {
        tls_ca: Some(ca.to_path_buf()),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_round_trip_in_lb_and_inline() {
    let pki = Pki::new("ok", false, false);
    for arch in [ramkv::Arch::Lb, ramkv::Arch::Inline] {
        let srv = tls_server(&pki, arch);
        let c = Client::connect_with(srv.local_addr(), tls_opts(&pki.path("ca.pem")))
            .await
            .unwrap();
        let v = c.put("secret", "sauce").await.unwrap();
        let e = c.get("secret").await.unwrap().unwrap();
        assert_eq!((e.value, e.version), ("sauce".into(), v), "{arch:?}");
        // Pipelined calls over TLS still match their replies.
        let calls: Vec<_> = (0..200)
            .map(|i| {
                let c = c.clone();
                tokio::spawn(async move { c.put(format!("k{i}"), format!("{i}")).await })
            })
            .collect();
        for call in calls {
            call.await.unwrap().unwrap();
        }
        srv.shutdown();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_client_against_a_plain_server_fails_cleanly() {
    let pki = Pki::new("plain-server", false, false);
    let srv = common::server(|_| {});
    match Client::connect_with(srv.local_addr(), tls_opts(&pki.path("ca.pem"))).await {
        Err(Error::Connect { message, .. }) => assert!(message.contains("TLS"), "{message}"),
        Err(other) => panic!("{other:?}"),
        Ok(_) => panic!("a TLS client must not talk to a plain server"),
    }
    // The plain server shrugged it off.
    Client::connect(srv.local_addr())
        .await
        .unwrap()
        .ping()
        .await
        .unwrap();
    srv.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_client_against_a_tls_server_is_closed() {
    let pki = Pki::new("tls-server", false, false);
    let srv = tls_server(&pki, ramkv::Arch::Lb);
    let c = Client::connect(srv.local_addr()).await.unwrap();
    assert!(
        matches!(c.ping().await, Err(Error::Closed(_))),
        "plain bytes must not reach the protocol"
    );
    let ok = Client::connect_with(srv.local_addr(), tls_opts(&pki.path("ca.pem")))
        .await
        .unwrap();
    ok.ping().await.unwrap();
    srv.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_connection_past_the_limit_reads_why_it_was_refused() {
    // The refusal goes inside TLS. Written in plaintext, as it was, it
    // reached the client's TLS stack as a corrupt record, and the client
    // never learnt that the server was full.
    let pki = Pki::new("tls-limit", false, false);
    for arch in [ramkv::Arch::Lb, ramkv::Arch::Inline] {
        let srv = common::server(|c| {
            c.arch = arch;
            c.tls_cert = Some(pki.path("server.pem"));
            c.tls_key = Some(pki.path("server.key"));
            c.limits.max_connections = 1;
        });
        let opts = || tls_opts(&pki.path("ca.pem"));
        let first = Client::connect_with(srv.local_addr(), opts())
            .await
            .unwrap();
        first.ping().await.unwrap();
        let refused = Client::connect_with(srv.local_addr(), opts())
            .await
            .unwrap();
        let err = refused.ping().await.expect_err("refused at the limit");
        assert!(
            err.to_string().contains("too many connections"),
            "{arch:?}: {err}"
        );
        first.ping().await.unwrap();
        srv.shutdown();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_and_untrusted_certificates_are_refused() {
    for (tag, expired, foreign, why) in [
        ("expired", true, false, "expired"),
        ("foreign", false, true, "issuer"),
    ] {
        let pki = Pki::new(tag, expired, foreign);
        let srv = tls_server(&pki, ramkv::Arch::Lb);
        match Client::connect_with(srv.local_addr(), tls_opts(&pki.path("ca.pem"))).await {
            Err(Error::Connect { message, .. }) => {
                assert!(message.to_lowercase().contains(why), "{tag}: {message}")
            }
            Err(other) => panic!("{tag}: {other:?}"),
            Ok(_) => panic!("{tag}: the certificate was accepted"),
        }
        srv.shutdown();
    }
}

#[test]
fn tls_needs_its_files_and_a_dispatcher_architecture() {
    let start = |arch| {
        let setup = common::Setup {
            arch,
            tls_cert: Some("x.pem".into()),
            tls_key: Some("x.key".into()),
            ..Default::default()
        };
        setup.builder().unwrap().start()
    };
    match start(ramkv::Arch::ThreadPerConn) {
        Err(e) => assert!(e.to_string().contains("thread-per-conn"), "{e}"),
        Ok(_) => panic!("thread-per-conn must refuse TLS"),
    }
    match start(ramkv::Arch::Lb) {
        Err(e) => assert!(e.to_string().contains("TLS certificate"), "{e}"),
        Ok(_) => panic!("missing certificate files must stop the start"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_pipelined_replies_over_tls_all_arrive() {
    // Enough reply bytes at once (16 MiB) to fill socket buffers, so TLS
    // records are left buffered whenever a write would block; each must
    // still be flushed out rather than wait for the next write.
    let pki = Pki::new("bulk", false, false);
    let srv = tls_server(&pki, ramkv::Arch::Lb);
    let c = Client::connect_with(srv.local_addr(), tls_opts(&pki.path("ca.pem")))
        .await
        .unwrap();
    c.put("big", vec![b'x'; 64 * 1024]).await.unwrap();
    let gets: Vec<_> = (0..256)
        .map(|_| {
            let c = c.clone();
            tokio::spawn(async move { c.get("big").await })
        })
        .collect();
    for g in gets {
        assert_eq!(g.await.unwrap().unwrap().unwrap().value.len(), 64 * 1024);
    }
    // One request at a time, each with a 1 MiB reply: if a reply's last TLS
    // records were left unflushed, nothing else would push them out, and
    // the call would time out.
    for _ in 0..100 {
        let items = c.multi_get(vec!["big"; 16]).await.unwrap();
        assert_eq!(items.len(), 16);
    }
    srv.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_tls_client_closes_its_connection() {
    // Dropping the client sends close_notify and a FIN, so the server closes
    // its side at once; before, the connection stayed open on the server
    // until its idle timeout (300 s by default).
    let pki = Pki::new("drop", false, false);
    let srv = tls_server(&pki, ramkv::Arch::Lb);
    let open = || open_connections(&srv);
    let c = Client::connect_with(srv.local_addr(), tls_opts(&pki.path("ca.pem")))
        .await
        .unwrap();
    c.ping().await.unwrap();
    assert_eq!(open(), 1);
    drop(c);
    let start = std::time::Instant::now();
    while open() > 0 {
        assert!(
            start.elapsed() < common::HANG_GUARD,
            "the server never saw the close"
        );
        tokio::task::yield_now().await;
    }
    srv.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ca_certificate_served_as_the_servers_own_is_named_in_plain_words() {
    let pki = Pki::ca_as_server("ca-as-server");
    let srv = tls_server(&pki, ramkv::Arch::Lb);
    match Client::connect_with(srv.local_addr(), tls_opts(&pki.path("ca.pem"))).await {
        Err(e @ Error::Connect { .. }) => {
            let says = e.to_string();
            assert!(says.contains("presents a CA certificate"), "{says}");
            assert!(!says.contains("running there"), "{says}");
        }
        Err(other) => panic!("{other:?}"),
        Ok(_) => panic!("a CA certificate was accepted as a server's own"),
    }
    srv.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_local_ca_file_is_a_setup_error_not_a_connection_error() {
    let pki = Pki::new("bad-ca", false, false);
    let empty = pki.path("empty.pem");
    std::fs::write(&empty, "").unwrap();
    // Nothing listens there: the files are checked before anything is dialled.
    let nowhere = "127.0.0.1:1";
    for (ca, says) in [
        (pki.path("missing.pem"), "missing.pem"),
        (empty, "no certificate"),
    ] {
        match Client::connect_with(nowhere, tls_opts(&ca)).await {
            Err(e @ Error::TlsSetup(_)) => {
                let text = e.to_string();
                assert!(text.contains(says), "{text}");
                assert!(!text.contains("running there"), "{text}");
            }
            Err(other) => panic!("{ca:?}: {other:?}"),
            Ok(_) => panic!("{ca:?}: connected"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshakes_in_bulk_beside_established_traffic_in_every_dispatcher_layout() {
    // Handshakes run on their own threads and the sockets move back to
    // their dispatchers: 200 at once while an established connection keeps
    // calling, with one dispatcher, several sharing a socket, and reuseport.
    let pki = Pki::new("bulk-handshakes", false, false);
    let layouts: [(&str, Layout); 3] = [
        ("lb", |_| {}),
        ("inline x2 shared", |c| {
            c.arch = ramkv::Arch::Inline;
            c.dispatchers = 2;
        }),
        ("lb reuseport x2", |c| {
            c.dispatchers = 2;
            c.reuseport = true;
        }),
    ];
    for (name, adjust) in layouts {
        let srv = common::server(|c| {
            adjust(c);
            c.tls_cert = Some(pki.path("server.pem"));
            c.tls_key = Some(pki.path("server.key"));
        });
        let opts = tls_opts(&pki.path("ca.pem"));
        let steady = Client::connect_with(srv.local_addr(), opts.clone())
            .await
            .unwrap();
        let fresh: Vec<_> = (0..200)
            .map(|i| {
                let opts = opts.clone();
                let addr = srv.local_addr();
                tokio::spawn(async move {
                    let c = Client::connect_with(addr, opts).await?;
                    c.put(format!("k{i}"), "v").await
                })
            })
            .collect();
        for i in 0..200 {
            steady.put("steady", format!("{i}")).await.unwrap();
        }
        for f in fresh {
            f.await.unwrap().unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        assert_eq!(steady.get("k199").await.unwrap().unwrap().value, "v");
        srv.shutdown();
    }
}

#[test]
fn shutdown_drops_a_handshake_that_never_finishes() {
    // A client that connects and never sends its ClientHello leaves a
    // handshake pending on the handshake threads. Nothing is owed to it, so
    // shutdown drops it rather than wait out the drain timeout.
    let pki = Pki::new("stalled-handshake", false, false);
    let srv = common::server(|c| {
        c.tls_cert = Some(pki.path("server.pem"));
        c.tls_key = Some(pki.path("server.key"));
        c.limits.frame_timeout = common::HANG_GUARD * 2;
        c.limits.drain_timeout = common::HANG_GUARD;
    });
    let silent = std::net::TcpStream::connect(srv.local_addr()).unwrap();
    // The event: the server has taken the connection (and so started its
    // handshake).
    let waiting = std::time::Instant::now();
    while open_connections(&srv) == 0 {
        assert!(waiting.elapsed() < common::HANG_GUARD, "never accepted");
        std::thread::yield_now();
    }
    let start = std::time::Instant::now();
    srv.shutdown();
    assert!(
        start.elapsed() < common::HANG_GUARD / 2,
        "shutdown waited {:?} for a stalled handshake",
        start.elapsed()
    );
    drop(silent);
}
