//! Starting and stopping a server: builds the store, the service, the
//! chosen architecture's threads and the listening sockets, pins threads to
//! cores, and drains everything on shutdown.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::admin::Admin;
use crate::arch::Executor;
use crate::arch::inline::InlineExecutor;
use crate::arch::lb::{self, PoolExecutor, Task};
use crate::arch::thread_per_conn::ThreadPerConn;
use crate::auth::Authenticator;
use crate::config::{Arch, Config};
use crate::dispatcher::{self, ConnLimits, Listener, Shared};
use crate::metrics::Metrics;
use crate::queue::{PoolConfig, TaskQueue, WorkerPool};
use crate::service::{Limits, Service};
use crate::store::Store;

/// Why a server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration is contradictory; the message says how.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A socket or thread could not be created.
    #[error("{context}: {source}")]
    Io {
        /// What was being attempted, e.g. "cannot listen on 127.0.0.1:7878".
        context: String,
        /// The operating system's error.
        source: io::Error,
    },
}

fn io_err(context: impl Into<String>) -> impl FnOnce(io::Error) -> StartError {
    move |source| StartError::Io {
        context: context.into(),
        source,
    }
}

/// A running server. Dropping it without [`ServerHandle::shutdown`] leaves
/// its threads running until the process exits.
pub struct ServerHandle {
    addr: SocketAddr,
    shutdown: CancellationToken,
    dispatchers: Vec<JoinHandle<()>>,
    pool: Option<WorkerPool<Task>>,
    thread_per_conn: Option<ThreadPerConn>,
    admin: Option<Admin>,
    service: Arc<Service>,
}

impl ServerHandle {
    /// The address the server listens on (with the real port when 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where the admin endpoint listens, if one was asked for.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().map(Admin::local_addr)
    }

    /// The service, to inspect the store and metrics in-process.
    pub fn service(&self) -> &Arc<Service> {
        &self.service
    }

    /// Graceful shutdown: stop accepting, finish the requests in flight,
    /// write their replies, close connections, stop the workers.
    pub fn shutdown(self) {
        self.shutdown.cancel();
        for d in self.dispatchers {
            let _ = d.join();
        }
        if let Some(pool) = self.pool {
            pool.shutdown();
        }
        if let Some(t) = self.thread_per_conn {
            t.shutdown();
        }
        if let Some(a) = self.admin {
            a.stop();
        }
    }
}

/// Binds a listening socket; with `reuseport`, one that others can share the port with.
fn bind(addr: SocketAddr, reuseport: bool) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if reuseport {
        socket.set_reuse_port(true)?;
    }
    socket.bind(&addr.into())?;
    socket.listen(4096)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// Assigns cores: dispatchers first, then workers, wrapping around when
/// there are more threads than cores. Logs each assignment.
fn plan_cores(
    cfg: &Config,
    dispatchers: usize,
    workers: usize,
) -> (
    Vec<Option<core_affinity::CoreId>>,
    Vec<Option<core_affinity::CoreId>>,
) {
    let cores = if cfg.no_pin {
        Vec::new()
    } else {
        core_affinity::get_core_ids().unwrap_or_default()
    };
    if cores.is_empty() {
        tracing::info!("threads are not pinned");
        return (vec![None; dispatchers], vec![None; workers]);
    }
    if dispatchers + workers > cores.len() {
        tracing::warn!(
            threads = dispatchers + workers,
            cores = cores.len(),
            "more threads than cores: some share a core"
        );
    }
    let pick = |i: usize| Some(cores[i % cores.len()]);
    let d: Vec<_> = (0..dispatchers).map(pick).collect();
    let w: Vec<_> = (0..workers).map(|j| pick(dispatchers + j)).collect();
    for (i, c) in d.iter().enumerate() {
        tracing::info!("dispatcher {i} pinned to core {}", c.map_or(0, |c| c.id));
    }
    for (i, c) in w.iter().enumerate() {
        tracing::info!("worker {i} pinned to core {}", c.map_or(0, |c| c.id));
    }
    (d, w)
}

/// Starts a server as `cfg` describes and returns once it is accepting.
pub fn start(cfg: &Config) -> Result<ServerHandle, StartError> {
    cfg.validate().map_err(StartError::Config)?;
    let dispatchers = if cfg.arch == Arch::ThreadPerConn {
        0
    } else {
        cfg.dispatchers
    };
    let workers = if cfg.arch == Arch::Lb {
        cfg.worker_count()
    } else {
        0
    };
    let exec_slots = match cfg.arch {
        Arch::Lb => workers,
        Arch::Inline => dispatchers,
        Arch::ThreadPerConn => 64,
    };
    let metrics = Arc::new(Metrics::new(exec_slots, dispatchers.max(1)));
    let service = Arc::new(Service::new(
        Store::new(cfg.max_memory),
        Limits::from_config(cfg),
        metrics.clone(),
    ));
    let limits = ConnLimits::from_config(cfg);
    let auth = match &cfg.auth_token_file {
        Some(path) => Authenticator::from_file(path).map_err(io_err(format!(
            "cannot read --auth-token-file {}",
            path.display()
        )))?,
        None => Authenticator::open(),
    };
    let tls = match (&cfg.tls_cert, &cfg.tls_key) {
        (Some(cert), Some(key)) => Some(
            crate::tls::acceptor(cert, key).map_err(io_err("cannot load the TLS certificate"))?,
        ),
        _ => None,
    };

    let first = bind(cfg.listen, cfg.reuseport)
        .map_err(io_err(format!("cannot listen on {}", cfg.listen)))?;
    let addr = first
        .local_addr()
        .map_err(io_err("cannot read the listening address"))?;

    if cfg.arch == Arch::ThreadPerConn {
        let t = ThreadPerConn::start(
            first,
            service.clone(),
            auth,
            metrics,
            limits,
            cfg.max_connections,
        )
        .map_err(io_err("cannot start the acceptor thread"))?;
        let handle = ServerHandle {
            addr,
            shutdown: CancellationToken::new(),
            dispatchers: vec![],
            pool: None,
            thread_per_conn: Some(t),
            admin: None,
            service,
        };
        return with_admin(handle, cfg);
    }

    // Where each dispatcher's connections come from. Every socket is bound
    // before any thread starts, so a failed bind leaves nothing running.
    let (senders, inboxes): (Vec<_>, Vec<_>) =
        (0..dispatchers).map(|_| mpsc::unbounded_channel()).unzip();
    let mut listeners = Vec::with_capacity(dispatchers);
    if cfg.reuseport {
        listeners.push(Listener::Accept(first));
        for _ in 1..dispatchers {
            let l = bind(addr, true).map_err(io_err(format!(
                "cannot add a SO_REUSEPORT listener on {addr}"
            )))?;
            listeners.push(Listener::Accept(l));
        }
    } else if cfg.arch == Arch::Inline {
        // Several acceptors on one shared socket.
        for _ in 1..dispatchers {
            listeners.push(Listener::Accept(
                first
                    .try_clone()
                    .map_err(io_err("cannot share the listening socket"))?,
            ));
        }
        listeners.push(Listener::Accept(first));
    } else {
        // One acceptor deals connections to every dispatcher.
        listeners.push(Listener::Distribute {
            listener: first,
            peers: senders.clone(),
        });
        listeners.extend((1..dispatchers).map(|_| Listener::Handoff));
    }

    let (dispatcher_cores, worker_cores) = plan_cores(cfg, dispatchers, workers);
    let mut pool = None;
    let executor: Arc<dyn Executor> = match cfg.arch {
        Arch::Lb => {
            let pool_cfg = PoolConfig {
                workers,
                spin: cfg.spin_window(),
                cores: worker_cores,
                batch_sched: cfg.batch_workers(),
            };
            tracing::info!(
                workers,
                spin_us = pool_cfg.spin.as_micros() as u64,
                batch_sched = pool_cfg.batch_sched,
                "starting worker pool"
            );
            let p = lb::start_pool(pool_cfg, service.clone(), metrics.clone())
                .map_err(io_err("cannot start worker threads"))?;
            let queue: Weak<TaskQueue<Task>> = Arc::downgrade(p.queue());
            service.set_extra_gauges(Box::new(move || {
                vec![(
                    "ramkv_queue_depth".into(),
                    queue.upgrade().map_or(0, |q| q.len() as u64),
                )]
            }));
            let exec = PoolExecutor {
                queue: p.queue().clone(),
                bound: cfg.queue_bound,
                metrics: metrics.clone(),
            };
            pool = Some(p);
            Arc::new(exec)
        }
        _ => Arc::new(InlineExecutor {
            service: service.clone(),
            metrics: metrics.clone(),
        }),
    };

    let shared = Arc::new(Shared {
        limits,
        metrics,
        executor,
        auth,
        tls,
        shutdown: CancellationToken::new(),
        open_connections: AtomicUsize::new(0),
        max_connections: cfg.max_connections,
        drain_timeout: cfg.drain_timeout,
    });

    let mut threads = Vec::with_capacity(dispatchers);
    for (i, (listener, inbox)) in listeners.into_iter().zip(inboxes).enumerate() {
        let t = dispatcher::spawn(i, shared.clone(), listener, inbox, dispatcher_cores[i])
            .map_err(io_err("cannot start a dispatcher thread"))?;
        threads.push(t);
    }
    let handle = ServerHandle {
        addr,
        shutdown: shared.shutdown.clone(),
        dispatchers: threads,
        pool,
        thread_per_conn: None,
        admin: None,
        service,
    };
    with_admin(handle, cfg)
}

/// Starts the admin endpoint last; if it cannot start, stops everything
/// else, so a failed start leaves nothing running.
fn with_admin(mut handle: ServerHandle, cfg: &Config) -> Result<ServerHandle, StartError> {
    if let Some(addr) = cfg.admin {
        match Admin::start(addr, handle.service.clone()) {
            Ok(admin) => handle.admin = Some(admin),
            Err(source) => {
                handle.shutdown();
                return Err(StartError::Io {
                    context: format!("cannot serve --admin on {addr}"),
                    source,
                });
            }
        }
    }
    Ok(handle)
}
