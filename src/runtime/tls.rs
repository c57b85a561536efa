//! Optional TLS for client connections (`--tls-cert`, `--tls-key`), with
//! rustls and its ring provider.
//!
//! **Handshakes run off the dispatchers.** A handshake's public-key work
//! takes a thread for a hundred microseconds or more per step; on the
//! dispatcher, a burst of new TLS clients queued its established connections
//! behind it (on one core, their p99 rose from 0.18 ms to 8.2 ms during
//! handshake storms; with this design, to 2.5 ms:
//! `bench/results/2026-11-23-tls-handshake-burst-2core.md`). So the
//! dispatcher hands the new socket to the [`Handshakes`] threads, and takes
//! it back, now a TLS stream, once the handshake is done; from then on it is
//! served exactly like a plain connection. A socket belongs to one tokio
//! runtime's reactor, so it travels as a [`Portable`] stream that re-registers
//! with the reactor of whoever takes it.

use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::{self, ServerConfig};
use tokio_rustls::server::TlsStream;

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

/// Loads a PEM certificate chain and private key into an acceptor.
pub fn acceptor(cert: &Path, key: &Path) -> io::Result<TlsAcceptor> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<_, _>>())
        .map_err(|e| invalid(format!("{}: {e}", cert.display())))?;
    if chain.is_empty() {
        return Err(invalid(format!("{} holds no certificate", cert.display())));
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| invalid(format!("{}: {e}", key.display())))?;
    let config =
        ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| invalid(e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .map_err(|e| invalid(format!("certificate and key do not work together: {e}")))?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// A server-side TLS connection whose socket has come back to its dispatcher.
pub type Tls = TlsStream<Portable>;

/// The threads that run TLS handshakes for every dispatcher.
pub struct Handshakes {
    acceptor: TlsAcceptor,
    handle: tokio::runtime::Handle,
    /// Taken out to stop the threads; a mutex only to do that through `&self`.
    runtime: Mutex<Option<tokio::runtime::Runtime>>,
}

impl Handshakes {
    /// Starts `threads` handshake threads.
    pub fn start(acceptor: TlsAcceptor, threads: usize) -> io::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads.max(1))
            .thread_name("ramkv-tls")
            .on_thread_start(|| {
                if let Err(e) = super::thread::set_sched_idle() {
                    tracing::warn!("cannot make the TLS handshake threads SCHED_IDLE: {e}");
                }
            })
            .enable_all()
            .build()?;
        Ok(Handshakes {
            acceptor,
            handle: runtime.handle().clone(),
            runtime: Mutex::new(Some(runtime)),
        })
    }

    /// Runs the server side of the handshake on `stream` on the handshake
    /// threads, within `limit`, and returns the TLS stream registered with
    /// the calling task's runtime. Dropping the future abandons the handshake.
    pub async fn accept(&self, stream: TcpStream, limit: Duration) -> io::Result<Tls> {
        let socket = stream.into_std()?;
        let acceptor = self.acceptor.clone();
        let job = self.handle.spawn(async move {
            let tcp = Portable(Some(TcpStream::from_std(socket)?));
            match tokio::time::timeout(limit, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => Ok(tls),
                Ok(Err(e)) => Err(io::Error::new(
                    e.kind(),
                    format!("TLS handshake failed: {e}"),
                )),
                Err(_) => Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "TLS handshake timed out",
                )),
            }
        });
        let _abandon = AbortOnDrop(job.abort_handle());
        let mut tls = job
            .await
            .map_err(|_| io::Error::other("TLS handshake abandoned: the server is stopping"))??;
        tls.get_mut().0.rebind()?;
        Ok(tls)
    }

    /// Stops the handshake threads, waiting for them no later than `deadline`.
    pub fn stop(&self, deadline: Instant) {
        let mut runtime = self
            .runtime
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        let wait = deadline.saturating_duration_since(Instant::now());
        // tokio refuses to wait for a runtime's threads from inside another
        // runtime (a caller may stop the server from async code), so the
        // waiting is done on a plain thread of its own.
        std::thread::scope(|s| {
            let _ = std::thread::Builder::new()
                .name("ramkv-tls-stop".into())
                .spawn_scoped(s, || {
                    if let Some(rt) = runtime.take() {
                        rt.shutdown_timeout(wait);
                    }
                });
        });
        if let Some(rt) = runtime {
            // That thread could not be started: stop without waiting.
            rt.shutdown_background();
        }
    }
}

impl Drop for Handshakes {
    fn drop(&mut self) {
        // Unless stopped already: may run inside a dispatcher's runtime, where
        // waiting for threads is not allowed.
        let runtime = self
            .runtime
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(rt) = runtime {
            rt.shutdown_background();
        }
    }
}

struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A TCP stream that can move from one tokio runtime to another: see the
/// module documentation. Reads and writes go straight to the socket.
pub struct Portable(Option<TcpStream>);

impl Portable {
    /// Registers the socket with the calling task's runtime instead.
    fn rebind(&mut self) -> io::Result<()> {
        let stream = self.0.take().ok_or_else(detached)?;
        self.0 = Some(TcpStream::from_std(stream.into_std()?)?);
        Ok(())
    }

    fn stream(self: Pin<&mut Self>) -> io::Result<Pin<&mut TcpStream>> {
        match &mut self.get_mut().0 {
            Some(s) => Ok(Pin::new(s)),
            None => Err(detached()),
        }
    }
}

/// Only if moving the socket between runtimes failed half-way.
fn detached() -> io::Error {
    io::Error::new(
        io::ErrorKind::NotConnected,
        "socket lost moving between threads",
    )
}

impl AsyncRead for Portable {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.stream() {
            Ok(s) => s.poll_read(cx, buf),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

impl AsyncWrite for Portable {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.stream() {
            Ok(s) => s.poll_write(cx, buf),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.stream() {
            Ok(s) => s.poll_write_vectored(cx, bufs),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.stream() {
            Ok(s) => s.poll_flush(cx),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.stream() {
            Ok(s) => s.poll_shutdown(cx),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}
